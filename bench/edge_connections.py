"""The sync edge's own CPU per connection and for idle connections, without a view syncer.

    .venv/bin/python bench/edge_connections.py [--clients 1000] [--idle-s 20] [--profile out.txt]

The edge (`Listener` with the scripted view syncer of `tests/fixtures/edge.py`, which answers each
`initConnection` with the empty first poke) runs in a child process; this process opens N
trio-websocket clients at once (each its own client group), waits for `connected` and the poke on
all of them, then leaves them idle. Printed, from the child's /proc CPU counters: the edge's CPU per
connection for the handshakes, and its CPU per second while the N sockets sit idle (idle pongs
only). `--profile` runs the child under py-spy (raw format; the CPU figures then count py-spy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def _serve() -> None:
    import trio

    from tests.fixtures.edge import run_edge

    async with trio.open_nursery() as nursery:
        edge = await run_edge(nursery)
        print(edge.port, flush=True)
        await trio.sleep_forever()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(port: int, clients: int, idle_s: float, pid: int) -> dict[str, float]:
    import trio
    import trio_websocket

    from tests.fixtures.edge import INIT, connect_query, subprotocol

    ready: list[int] = []
    stop = trio.Event()

    async def client(i: int) -> None:
        url = f"ws://127.0.0.1:{port}/sync/v51/connect?" + connect_query(f"c{i}", f"g{i}")
        async with trio_websocket.open_websocket_url(url, subprotocols=[subprotocol(INIT)], message_queue_size=64) as ws:
            for _ in range(3):  # connected, pokeStart, pokeEnd
                await ws.get_message()
            ready.append(i)
            await stop.wait()

    start = _cpu_s(pid)
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
        while len(ready) < clients:
            await trio.sleep(0.05)
        connected = _cpu_s(pid)
        await trio.sleep(idle_s)
        idle = _cpu_s(pid)
        stop.set()
    return {
        "clients": clients,
        "connect_cpu_ms_per_connection": round((connected - start) * 1000 / clients, 3),
        "idle_cpu_s_per_s": round((idle - connected) / idle_s, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--profile", help="py-spy raw output file for the edge process")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import trio

    if args.serve:
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))  # the driver is done: no clean-up to wait for
        trio.run(_serve)
        return 0
    command = [sys.executable, __file__, "--serve"]
    if args.profile:
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "500", "-f", "raw", "-o", args.profile, "--", *command]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        while line and not line.strip().isdigit():  # py-spy prints its own lines first
            line = child.stdout.readline()
        result = trio.run(_drive, int(line), args.clients, args.idle_s, child.pid)
        print(json.dumps(result))
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
