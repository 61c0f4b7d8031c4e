"""The `zcache` command.

    zcache [options]                     run the server; options are zero-cache's, as ZERO_* env or flags
    zcache migrate [--db URL] [--dir D] [--dry-run | --status]
                                         apply the tldraw app migrations to the upstream database

With no ZERO_UPSTREAM_DB, `zcache` runs the development default: an embedded PostgreSQL (data in
`./.zcache/`) with the tldraw schema migrated and a small demo data set loaded, and it prints
where everything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import trio

from zcache import config as zconfig
from zcache import demo_data, migrations
from zcache.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, PostgresNotFoundError, create_database
from zcache.log import configure_logging

log = logging.getLogger("zcache.cli")

DEV_DIR_ENV = "ZCACHE_DEV_DIR"
DEV_DATABASE = "zcache"
DEV_DEMO_USERS = 20
# The cyclic collector's thresholds for the server process. With the defaults (700, 10, 10) the
# collector took 3.5–4.7 s of the event loop's ~11–13 CPU-s while 1,000 clients connected at once
# (bench/README, "Sync server end to end"): every socket's tasks, channels and parsed messages
# outlive a few hundred allocations, are promoted, and die in the older generations, whose
# collections traverse every connection's state again, a full one (0.2–0.5 s) every few seconds.
# Collecting the youngest generation every 50,000 net allocations lets most of that die by
# reference count before promotion; cyclic garbage is still reclaimed, a little later.
GC_THRESHOLDS = (50_000, 20, 100)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv[:1] == ["migrate"]:
        return _migrate_command(argv[1:], environ)
    try:
        config = zconfig.load_config(argv, environ)
    except zconfig.ConfigError as e:
        print(f"zcache: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log.level, config.log.format)
    for notice in config.notices:
        log.warning("%s", notice)
    for name in zconfig.unknown_zero_env(environ):
        log.warning("ignoring unknown environment variable %s", name)
    if config.upstream.db is not None:
        return _serve(config)
    return _serve_with_embedded_postgres(config, environ)


def _serve(config: zconfig.ZeroConfig) -> int:
    from zcache.server.main import serve

    log.debug("configuration: %s", config.redacted())
    tune_gc()
    trio.run(serve, config)
    return 0


def tune_gc() -> None:
    """Server-process collector settings: `GC_THRESHOLDS`, and everything allocated so far (modules,
    configuration) moved out of the collector's sight, so no collection traverses it again."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def _serve_with_embedded_postgres(config: zconfig.ZeroConfig, environ: Mapping[str, str]) -> int:
    dev_dir = Path(environ.get(DEV_DIR_ENV) or ".zcache").absolute()
    dev_dir.mkdir(parents=True, exist_ok=True)
    # The server account must reach the data directory when we run as root.
    dev_dir.chmod(0o755)
    try:
        cluster = EmbeddedPostgres(dev_dir / "pgdata", avoid_ports={config.port})
        cluster.start()
    except (PostgresNotFoundError, EmbeddedPostgresError) as e:
        print(f"zcache: cannot start the embedded PostgreSQL: {e}", file=sys.stderr)
        return 1
    try:
        dsn = _prepare_dev_database(cluster)
        replica_file = config.replica.file
        if replica_file == zconfig.DEFAULT_REPLICA_FILE:
            replica_file = str(dev_dir / "replica.db")
        config = dataclasses.replace(
            config,
            upstream=dataclasses.replace(config.upstream, db=dsn),
            cvr=dataclasses.replace(config.cvr, db=config.cvr.db or dsn),
            change=dataclasses.replace(config.change, db=config.change.db or dsn),
            replica=dataclasses.replace(config.replica, file=replica_file),
        )
        print(
            "\n".join(
                [
                    "zcache development setup (no ZERO_UPSTREAM_DB given):",
                    f"  PostgreSQL (embedded)  {dsn}    data: {cluster.data_dir}",
                    f"                         psql '{dsn}'",
                    f"  replica file           {replica_file}",
                    f"  sync endpoint          ws://localhost:{config.port}/sync/v51/connect",
                    f"  Zero clients           new Zero({{cacheURL: 'http://localhost:{config.port}', schema, userID, …}})",
                    "                         (named queries and custom mutators also need ZERO_QUERY_URL / ZERO_MUTATE_URL:",
                    "                          your app server's /query and /mutate)",
                    "  Set ZERO_UPSTREAM_DB to serve your own database instead.",
                ]
            ),
            flush=True,
        )
        return _serve(config)
    finally:
        cluster.stop()


def _prepare_dev_database(cluster: EmbeddedPostgres) -> str:
    with_db = cluster.dsn(DEV_DATABASE)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DEV_DATABASE]).fetchone()
    if not exists:
        create_database(cluster.dsn(), DEV_DATABASE)
    print(migrations.format_report(migrations.migrate(with_db)), flush=True)
    print(demo_data.load_demo_data(with_db, users=DEV_DEMO_USERS).summary(), flush=True)
    return with_db


def _migrate_command(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zcache migrate",
        description="Apply the tldraw app migrations (migrations/*.sql) to the upstream database, in one transaction.",
    )
    parser.add_argument("--db", default=environ.get("ZERO_UPSTREAM_DB") or None, help="database URL (default: ZERO_UPSTREAM_DB)")
    parser.add_argument("--dir", type=Path, default=None, help="migrations directory (default: the one shipped with zcache)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print what would be applied; change nothing")
    mode.add_argument("--status", action="store_true", help="list applied and pending migrations")
    args = parser.parse_args(argv)
    if not args.db:
        parser.error("no database: pass --db or set ZERO_UPSTREAM_DB")
    try:
        if args.status:
            print(migrations.format_status(migrations.status(args.db, directory=args.dir)))
        else:
            print(migrations.format_report(migrations.migrate(args.db, directory=args.dir, dry_run=args.dry_run)))
    except (migrations.MigrationError, psycopg.OperationalError) as e:
        print(f"zcache migrate: {e}", file=sys.stderr)
        return 1
    return 0
