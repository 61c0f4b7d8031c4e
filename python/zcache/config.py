"""zcache's configuration: one declarative table of zero-cache 1.9.0's options.

Mechanism
---------
`OPTIONS` lists every option of zero-cache 1.9.0 (`@rocicorp/zero`,
`zero-cache/src/config/zero-config.ts`), hidden and deprecated ones included, in
zero-cache's order. Each `Option` has a dotted name in snake case
(`upstream.max_conns`), and its environment variable and command-line flag are derived
from that name exactly as zero-cache derives them from its camel-case path:

    upstream.max_conns  ->  ZERO_UPSTREAM_MAX_CONNS  and  --upstream-max-conns

so an env file written for zero-cache works unchanged, as long as it sets only options
zcache supports (see below). `tests/golden/zero-cache-1.9.0-help.txt` is zero-cache's own
`--help`; a unit test checks the table against it.

`load_config(argv, environ)` reads each option from, in order of precedence: its flag, the
flag of an older name (`--push-url` for `--mutate-url`), its environment variable, the
variable of an older name (`ZERO_PUSH_URL`), an environment fallback (`LOG_LEVEL`), and
finally the table's default. As in zero-cache, an environment variable set to the empty
string counts as unset, list values are comma-separated in the environment but given as
separate words on the command line, and booleans are `true`/`false`/`1`/`0` in any case.
Every value that is set is validated, even one a higher-precedence source overrides,
because zero-cache validates them all too.

Each option states whether zcache supports it (`Support`):

* `YES`: zcache honours it; its value appears in the returned `ZeroConfig`.
* `IGNORED`: accepted for compatibility but has no effect (zero-cache itself no longer
  uses it, or zcache never does what it would switch off); setting it yields a notice.
* `NO`: setting it raises `ConfigError` saying why, instead of being silently ignored.
* `REMOVED`: zero-cache itself refuses it; so do we, with zero-cache's advice.

The result is a tree of frozen dataclasses grouped as zero-cache groups its config
(`config.upstream.db`, `config.auth.secret`, `config.port`), holding only the options
zcache honours. Nothing else in zcache reads the environment: the config is parsed once,
at startup, and passed explicitly.
"""

from __future__ import annotations

import argparse
import enum
import re
import textwrap
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal, NoReturn

ENV_PREFIX = "ZERO_"
ZERO_CACHE_VERSION = "1.9.0"

Value = str | int | float | bool | tuple[str, ...] | None
LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["text", "json"]


# zero-cache defaults to zero.db; a different name keeps the two replicas apart.
DEFAULT_REPLICA_FILE = "zcache-replica.db"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names each offending option.

    All problems found are reported together, one per line, so that a broken env file
    can be fixed in one pass.
    """


class Kind(enum.Enum):
    """How an option's text is parsed, and the Python type it yields."""

    STRING = "string"
    INT = "integer"
    NUMBER = "number"  # zero-cache's `number` where fractions are meaningful (hours, rates)
    BOOL = "boolean"
    CHOICE = "choice"
    LIST = "list"  # comma-separated in the environment; tuple[str, ...]


class Support(enum.Enum):
    """What zcache does with an option; see the module docstring."""

    YES = "supported"
    IGNORED = "accepted for compatibility; has no effect"
    NO = "not supported by zcache yet"
    REMOVED = "no longer an option"


class Secret(enum.Enum):
    """How `ZeroConfig.redacted()` hides an option's value."""

    NONE = "none"
    VALUE = "value"  # the whole value becomes ***
    DB_URL = "db_url"  # only the password inside a PostgreSQL connection string


@dataclass(frozen=True)
class Option:
    """One row of the option table."""

    name: str  # dotted path in snake case: "upstream.db", "port"
    kind: Kind
    default: Value
    help: str  # short and ours; zero-cache's long text is in the golden help file
    support: Support = Support.YES
    why: str = ""  # for NO / REMOVED / IGNORED: the reason, shown in errors and help
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    # Extra validation; returns what is wrong with one value (or list item), or None.
    check: Callable[[str], str | None] | None = None
    secret: Secret = Secret.NONE
    metavar: str = ""
    hidden: bool = False  # hidden from zero-cache's own --help
    deprecated: str = ""  # zero-cache's deprecation advice; using the option yields a notice
    renamed_from: tuple[str, ...] = ()  # older dotted names still accepted (push.url)
    env_fallbacks: tuple[str, ...] = ()  # non-ZERO_ variables read last (LOG_LEVEL)

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def group(self) -> str:
        """The config group: `upstream` for `upstream.db`; `server` for top-level options."""
        head, dot, _ = self.name.partition(".")
        return head if dot else "server"

    @property
    def supported(self) -> bool:
        """Whether setting the option is accepted (`YES` or `IGNORED`)."""
        return self.support in (Support.YES, Support.IGNORED)

    @property
    def label(self) -> str:
        """How messages name the option: `ZERO_PORT (--port)`."""
        return _label(self.name)


def _label(dotted: str) -> str:
    return f"{env_name(dotted)} ({flag_name(dotted)})"


def env_name(dotted: str) -> str:
    """`upstream.max_conns` -> `ZERO_UPSTREAM_MAX_CONNS`, as zero-cache's `flagToEnv`."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def flag_name(dotted: str) -> str:
    """`upstream.max_conns` -> `--upstream-max-conns`, as zero-cache's kebab-casing."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


_APP_ID = re.compile(r"[a-z0-9_]+")


def _check_app_id(value: str) -> str | None:
    # zero-cache's rule (types/shards.ts): the app id is part of replication slot names.
    if _APP_ID.fullmatch(value):
        return None
    return "may only consist of lower-case letters, numbers, and the underscore character"


def _check_publication(value: str) -> str | None:
    # zero-cache refuses these at startup (change-source/pg/schema/shard.ts); refusing them
    # here reports the mistake before any connection is made.
    if value.startswith("_"):
        return "names may not begin with an underscore (reserved for zero's own publications)"
    return None


_AUTH_DEPRECATED = (
    "Use cookie-based authentication or an auth token instead"
    " - see https://zero.rocicorp.dev/docs/auth."
)
_URL_PATTERNS = "Comma-separated in the environment; URLPattern syntax."
_MULTI_NODE = (
    "zcache runs the change streamer in-process; there is no separate replication-manager"
)
_LITESTREAM = (
    "zcache does not back up the replica with Litestream; a lost replica is re-synced"
    " from upstream"
)
_SHADOW_SYNC = "the periodic shadow initial-sync canary is not implemented"
_CLOUD_EVENTS = "publishing ZeroEvents to a CloudEvents sink is not implemented"


def _api_server_options(group: str, old_group: str, purpose: str) -> tuple[Option, ...]:
    """mutate.* and query.*: zero-cache builds both groups from one template too."""
    return (
        Option(
            f"{group}.url", Kind.LIST, (),
            f"URL(s) of the API server to which zcache {purpose}. {_URL_PATTERNS}",
            metavar="URL", renamed_from=(f"{old_group}.url",),
        ),
        Option(
            f"{group}.api_key", Kind.STRING, None,
            "Secret that authorises zcache's calls to that API server.",
            secret=Secret.VALUE, metavar="KEY", renamed_from=(f"{old_group}.api_key",),
        ),
        Option(
            f"{group}.forward_cookies", Kind.BOOL, False,
            "Forward the client's cookies to that API server.",
            renamed_from=(f"{old_group}.forward_cookies",),
        ),
        Option(
            f"{group}.allowed_client_headers", Kind.LIST, (),
            "Names of client-set headers forwarded to that API server (case-insensitive).",
            metavar="HEADER", renamed_from=(f"{old_group}.allowed_client_headers",),
        ),
        Option(
            f"{group}.allowed_request_headers", Kind.LIST, (),
            "Names of headers copied from the connection's HTTP request (e.g. added by a"
            " proxy) to that API server (case-insensitive).",
            metavar="HEADER", renamed_from=(f"{old_group}.allowed_request_headers",),
        ),
    )


# fmt: off
OPTIONS: tuple[Option, ...] = (
    # --- upstream ---------------------------------------------------------------------
    Option("upstream.db", Kind.STRING, None,
           "PostgreSQL connection string of the authoritative upstream database. Required"
           " by zero-cache; when unset, zcache starts an embedded PostgreSQL for development.",
           secret=Secret.DB_URL, metavar="URL"),
    Option("upstream.type", Kind.CHOICE, "pg",
           "What upstream-db points at: PostgreSQL or a custom change-source endpoint.",
           support=Support.NO, choices=("pg", "custom"), hidden=True,
           why="zcache replicates only from PostgreSQL"),
    Option("upstream.max_conns", Kind.INT, 20,
           "Maximum connections to the upstream database for committing mutations; the"
           " replication stream uses one more.", minimum=1),
    Option("upstream.max_conns_per_worker", Kind.INT, None,
           "Each sync worker's share of upstream-max-conns.",
           support=Support.NO, hidden=True,
           why="zero-cache sets it internally for its worker processes"),
    Option("upstream.pg_replication_slot_failover", Kind.BOOL, False,
           "Create the replication slot with failover enabled (PostgreSQL 17 and later)."),
    Option("upstream.pg_stream_inbound_timeout_ms", Kind.INT, None,
           "Reconnect the replication stream after this long without a message from the"
           " WAL sender. Default: twice the server's wal_sender_timeout.", minimum=1),
    # --- mutate, query (push and get-queries are their older names) ---------------------
    *_api_server_options("mutate", "push", "pushes custom mutations"),
    *_api_server_options("query", "get_queries", "sends synced queries"),
    Option("enable_crud_mutations", Kind.BOOL, True,
           "Accept legacy CRUD mutations. When false, CRUD pushes are rejected with"
           " InvalidPush and no upstream connections are opened for them."),
    # --- cvr ----------------------------------------------------------------------------
    Option("cvr.db", Kind.STRING, None,
           "PostgreSQL connection string of the database holding client view records"
           " (CVRs). Default: upstream-db.", secret=Secret.DB_URL, metavar="URL"),
    Option("cvr.max_conns", Kind.INT, 30,
           "Maximum connections to the CVR database.", minimum=1),
    Option("cvr.max_conns_per_worker", Kind.INT, None,
           "Each sync worker's share of cvr-max-conns.",
           support=Support.NO, hidden=True,
           why="zero-cache sets it internally for its worker processes"),
    Option("cvr.garbage_collection_inactivity_threshold_hours", Kind.NUMBER, 48.0,
           "Hours of inactivity after which a CVR may be garbage-collected.", minimum=0),
    Option("cvr.garbage_collection_initial_interval_seconds", Kind.NUMBER, 60.0,
           "Initial seconds between CVR garbage-collection passes; grows up to 16 minutes"
           " while there is nothing to purge.", minimum=0),
    Option("cvr.garbage_collection_initial_batch_size", Kind.INT, 25,
           "CVRs purged per pass at first (raised while new CVRs outpace purging); 0"
           " disables CVR garbage collection.", minimum=0),
    Option("query_hydration_stats", Kind.BOOL, False,
           "Log the rows considered by slow query hydrations.",
           support=Support.NO, why="zcache's IVM does not count rows per hydration"),
    Option("sqlite_corruption_checks", Kind.BOOL, False,
           "Run SQLite quick_check and integrity_check when replica corruption is detected.",
           support=Support.NO, hidden=True,
           why="zcache does not run SQLite integrity checks on corruption"),
    Option("enable_query_planner", Kind.BOOL, True,
           "Use zero-cache's cost-based join planner for ZQL queries.",
           support=Support.NO, why="zcache's IVM has no switchable join planner"),
    Option("enable_query_covering", Kind.BOOL, True,
           "Log how often new queries are covered by running ones (shadow mode).",
           support=Support.NO, why="zcache does not do query-covering detection"),
    Option("yield_threshold_ms", Kind.INT, 10,
           "Longest a sync worker spends in IVM (hydration or advancement) before letting"
           " other work run.", minimum=0),
    # --- change -------------------------------------------------------------------------
    Option("change.db", Kind.STRING, None,
           "PostgreSQL connection string of the database holding the replication change"
           " log. Default: upstream-db.", secret=Secret.DB_URL, metavar="URL"),
    Option("change.max_conns", Kind.INT, 5,
           "Maximum connections to the change database.", minimum=1),
    Option("change.statement_timeout_ms", Kind.INT, 20000,
           "Fail a change-log transaction when Postgres does not answer a statement in time.",
           support=Support.NO, hidden=True,
           why="a workaround specific to zero-cache's Postgres client"),
    Option("change.log_batch_size", Kind.INT, 2000,
           "Maximum change-log rows written per multi-row INSERT.",
           support=Support.NO, hidden=True,
           why="a tuning knob of zero-cache's change-log writer"),
    # --- replica ------------------------------------------------------------------------
    Option("replica.file", Kind.STRING, DEFAULT_REPLICA_FILE,
           "Path of the SQLite replica; losing it costs a full re-sync. zcache's default is"
           " zcache-replica.db in the current directory (zero-cache's is zero.db), so the"
           " two never share a file by accident.", metavar="PATH"),
    Option("replica.vacuum_interval_hours", Kind.NUMBER, None,
           "At startup, VACUUM the replica if this many hours have passed since the last"
           " VACUUM or initial sync. Unset: never.", minimum=0),
    # --- log ----------------------------------------------------------------------------
    Option("log.level", Kind.CHOICE, "info",
           "Lowest level logged. zcache also reads LOG_LEVEL when ZERO_LOG_LEVEL is unset"
           " (zero-cache does not).",
           choices=("debug", "info", "warn", "error"), env_fallbacks=("LOG_LEVEL",)),
    Option("log.format", Kind.CHOICE, "text",
           "text for people at a console, json for log collectors.",
           choices=("text", "json")),
    Option("log.slow_row_threshold", Kind.NUMBER, 2.0,
           "Milliseconds a row fetch may take before it is logged as slow.",
           support=Support.NO, why="zcache does not time individual row fetches"),
    Option("log.slow_hydrate_threshold", Kind.NUMBER, 100.0,
           "Milliseconds a query hydration may take before it is logged as slow.",
           minimum=0),
    Option("log.ivm_sampling", Kind.INT, 5000,
           "Collect IVM metrics for 1 in N requests.",
           support=Support.NO, why="zcache does not export zero-cache's IVM metrics"),
    # --- app ----------------------------------------------------------------------------
    Option("app.id", Kind.STRING, "zero",
           "Identifier of the app; names its upstream schemas and replication slots."
           " Lower-case letters, digits and underscore only.", check=_check_app_id),
    Option("app.publications", Kind.LIST, (),
           "PostgreSQL publications to replicate (comma-separated in the environment)."
           " Default: one internal publication of every table in the public schema.",
           check=_check_publication, metavar="NAME"),
    # --- shard --------------------------------------------------------------------------
    Option("shard.id", Kind.STRING, None,
           "Removed from zero-cache; the app id took its place.",
           support=Support.REMOVED, hidden=True, why="Please use ZERO_APP_ID instead."),
    Option("shard.num", Kind.INT, 0,
           "Shard number of the app (hidden in zero-cache until sharding is meaningful).",
           minimum=0, hidden=True),
    # --- auth ---------------------------------------------------------------------------
    Option("auth.jwk", Kind.STRING, None,
           "Public key (JWK) that verifies client JWTs. Set at most one of auth-jwk,"
           " auth-jwks-url and auth-secret.",
           secret=Secret.VALUE, metavar="JWK", deprecated=_AUTH_DEPRECATED),
    Option("auth.jwks_url", Kind.STRING, None,
           "URL of a JWK set that verifies client JWTs.",
           metavar="URL", deprecated=_AUTH_DEPRECATED),
    Option("auth.secret", Kind.STRING, None,
           "Symmetric key that verifies client JWTs.",
           secret=Secret.VALUE, metavar="SECRET", deprecated=_AUTH_DEPRECATED),
    Option("auth.issuer", Kind.STRING, None,
           "Required issuer (iss claim) of client JWTs.", deprecated=_AUTH_DEPRECATED),
    Option("auth.audience", Kind.STRING, None,
           "Required audience (aud claim) of client JWTs.", deprecated=_AUTH_DEPRECATED),
    Option("auth.revalidate_interval_seconds", Kind.NUMBER, 300.0,
           "Seconds between re-validations of a connection's auth through the query"
           " API server.", minimum=0),
    Option("auth.retransform_interval_seconds", Kind.NUMBER, 300.0,
           "Seconds between re-transforms of a client group's queries through the query"
           " API server.", minimum=0),
    # --- server (top level) -------------------------------------------------------------
    Option("port", Kind.INT, 4848,
           "Port for sync connections.", minimum=1, maximum=65535),
    Option("keepalive_timeout_ms", Kind.INT, None,
           "Start a graceful drain when /keepalive has not been requested for this long"
           " (for AWS ECS). Unset: disabled, except 20000 inside ECS.", minimum=0),
    # --- change streamer (multi-node deployments) ---------------------------------------
    Option("change_streamer.uri", Kind.STRING, None,
           "URI of the replication-manager's change streamer, for view-syncer nodes.",
           support=Support.NO, why=_MULTI_NODE, metavar="URI"),
    Option("change_streamer.mode", Kind.CHOICE, "dedicated",
           "How view-syncers find the change streamer: dedicated, or discover the address"
           " the replication-manager registered.",
           support=Support.NO, why=_MULTI_NODE, choices=("dedicated", "discover")),
    Option("change_streamer.port", Kind.INT, None,
           "Port of the change streamer. Default: port + 1.",
           support=Support.NO, why=_MULTI_NODE),
    Option("change_streamer.address", Kind.STRING, None,
           "Address the replication-manager registers for discovery.",
           support=Support.NO, why=_MULTI_NODE, hidden=True,
           deprecated="Set the ZERO_CHANGE_STREAMER_URI on view-syncers instead."),
    Option("change_streamer.protocol", Kind.CHOICE, "ws",
           "Protocol of the registered change-streamer address.",
           support=Support.NO, why=_MULTI_NODE, choices=("ws", "wss"), hidden=True,
           deprecated="Set the ZERO_CHANGE_STREAMER_URI on view-syncers instead."),
    Option("change_streamer.discovery_interface_preferences", Kind.LIST, ("eth", "en"),
           "Network interface name prefixes preferred when finding the address to register.",
           support=Support.NO, why=_MULTI_NODE, hidden=True, metavar="PREFIX"),
    Option("change_streamer.startup_delay_ms", Kind.INT, 15000,
           "Delay before a new replication-manager takes over the replication stream.",
           support=Support.NO, why=_MULTI_NODE),
    Option("change_streamer.back_pressure_limit_heap_proportion", Kind.NUMBER, 0.04,
           "Share of the Node heap that may buffer replication spikes.",
           support=Support.NO,
           why="zcache bounds its queues by design, not by a share of a JavaScript heap"),
    Option("change_streamer.flow_control_consensus_padding_seconds", Kind.NUMBER, 1.0,
           "Extra wait for slow subscribers once most have acknowledged a flush.",
           support=Support.NO, why=_MULTI_NODE),
    Option("task_id", Kind.STRING, None,
           "Globally unique id of this instance, shown in logs. Unset: the ECS task ARN"
           " inside AWS ECS, else a random id."),
    Option("per_user_mutation_limit.max", Kind.INT, None,
           "Maximum mutations per user within the window. Unset: no limit.", minimum=0),
    Option("per_user_mutation_limit.window_ms", Kind.INT, 60000,
           "Sliding window of per-user-mutation-limit-max.", minimum=1),
    Option("num_sync_workers", Kind.INT, None,
           "Number of sync workers. Unset: one less than the available CPUs, at least one."
           " zero-cache's 0 (replication-manager only) is not supported.", minimum=1),
    Option("auto_reset", Kind.BOOL, True,
           "When replication halts on a schema change it cannot replicate, shut down and"
           " re-sync the replica and its clients on restart."),
    Option("replication_lag.report_interval_ms", Kind.INT, 30000,
           "Interval of replication-lag reports written upstream.",
           support=Support.NO,
           why="replication-lag reports and their OpenTelemetry metrics are not implemented"),
    Option("admin_password", Kind.STRING, None,
           "Password for administrative endpoints such as /statz; required unless"
           " NODE_ENV=development.", secret=Secret.VALUE, metavar="PASSWORD"),
    Option("websocket_compression", Kind.BOOL, False,
           "Compress WebSocket messages (per-message deflate)."),
    Option("websocket_compression_options", Kind.STRING, None,
           "JSON options for per-message deflate.",
           support=Support.NO, why="its JSON holds options of Node's ws library",
           metavar="JSON"),
    Option("websocket_max_payload_bytes", Kind.INT, 10 * 1024 * 1024,
           "Largest incoming WebSocket message accepted, in bytes.", minimum=1),
    # --- litestream ---------------------------------------------------------------------
    Option("litestream.executable", Kind.STRING, None,
           "Path of the litestream executable.",
           support=Support.NO, why=_LITESTREAM, metavar="PATH"),
    Option("litestream.executable_v5", Kind.STRING, None,
           "Path of the litestream v0.5 executable used for restores.",
           support=Support.NO, why=_LITESTREAM, metavar="PATH"),
    Option("litestream.restore_using_v5", Kind.BOOL, True,
           "Restore backups with the litestream v0.5 executable.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.backup_using_v5", Kind.BOOL, False,
           "Back up with litestream v0.5.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.config_path", Kind.STRING, "./src/services/litestream/config.yml",
           "Path of the litestream configuration file.",
           support=Support.NO, why=_LITESTREAM, metavar="PATH"),
    Option("litestream.vfs_extension_path", Kind.STRING, "/usr/local/lib/litestream-vfs.so",
           "Path of the litestream SQLite VFS extension.",
           support=Support.NO, why=_LITESTREAM, metavar="PATH"),
    Option("litestream.vfs_probe_interval_ms", Kind.INT, 30000,
           "Interval of the backup watermark reader's probes.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.vfs_probe_timeout_ms", Kind.INT, 30000,
           "Timeout of requests to the backup watermark reader.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.vfs_log_file", Kind.STRING, None,
           "Log file of the litestream VFS extension.",
           support=Support.NO, why=_LITESTREAM, metavar="PATH"),
    Option("litestream.log_level", Kind.CHOICE, "warn",
           "Lowest level litestream logs.",
           support=Support.NO, why=_LITESTREAM, choices=("debug", "info", "warn", "error")),
    Option("litestream.backup_url", Kind.STRING, None,
           "Location of the replica backup, usually an s3:// URL.",
           support=Support.NO, why=_LITESTREAM, metavar="URL"),
    Option("litestream.endpoint", Kind.STRING, None,
           "S3-compatible endpoint of the backup, for non-AWS services.",
           support=Support.NO, why=_LITESTREAM, metavar="URL"),
    Option("litestream.region", Kind.STRING, None,
           "AWS region of the backup bucket.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.port", Kind.INT, None,
           "Port of litestream's metrics. Default: port + 2.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.checkpoint_threshold_mb", Kind.NUMBER, 40.0,
           "WAL size at which the replica is checkpointed.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.min_checkpoint_page_count", Kind.INT, None,
           "WAL pages at which a PASSIVE checkpoint is attempted.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.max_checkpoint_page_count", Kind.INT, None,
           "WAL pages at which a blocking RESTART checkpoint is run.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.incremental_backup_interval_minutes", Kind.NUMBER, 15.0,
           "Minutes between incremental backups.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.snapshot_backup_interval_hours", Kind.NUMBER, 12.0,
           "Hours between snapshot backups.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.restore_parallelism", Kind.INT, 48,
           "WAL files downloaded in parallel during a restore.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.multipart_concurrency", Kind.INT, 48,
           "Snapshot parts transferred in parallel.",
           support=Support.NO, why=_LITESTREAM),
    Option("litestream.multipart_size", Kind.INT, 16 * 1024 * 1024,
           "Size of each snapshot part, in bytes.",
           support=Support.NO, why=_LITESTREAM),
    # --- IVM storage, initial sync, shadow sync -----------------------------------------
    Option("storage_db_tmp_dir", Kind.STRING, None,
           "Directory for the temporary databases of IVM operator state.",
           support=Support.NO,
           why="zcache does not keep IVM operator state in temporary SQLite databases",
           metavar="PATH"),
    Option("initial_sync.table_copy_workers", Kind.INT, 5,
           "Tables copied in parallel during initial sync, each over its own upstream"
           " connection.", minimum=1),
    Option("initial_sync.profile_copy", Kind.BOOL, False,
           "Write a CPU profile of the initial-sync copy.",
           support=Support.NO, hidden=True, why="it writes a Node CPU profile"),
    Option("initial_sync.text_copy", Kind.BOOL, False,
           "Use text COPY instead of binary COPY for initial sync: slower, but avoids"
           " problems with the binary encoding of some types."),
    Option("shadow_sync.enabled", Kind.BOOL, False,
           "Periodically rehearse initial sync on a sample of rows, as a canary.",
           support=Support.NO, why=_SHADOW_SYNC),
    Option("shadow_sync.interval_hours", Kind.NUMBER, 12.0,
           "Hours between shadow initial-sync runs.",
           support=Support.NO, why=_SHADOW_SYNC),
    Option("shadow_sync.sample_rate", Kind.NUMBER, 0.1,
           "Fraction of each table's rows sampled.",
           support=Support.NO, why=_SHADOW_SYNC),
    Option("shadow_sync.max_rows_per_table", Kind.INT, 10000,
           "Most rows copied per table per run.",
           support=Support.NO, why=_SHADOW_SYNC),
    # --- the rest of the top level ------------------------------------------------------
    Option("target_client_row_count", Kind.INT, 20000,
           "Former client-side row limit, replaced by TTL-based expiry.",
           support=Support.IGNORED, hidden=True, why="zero-cache no longer uses it either",
           deprecated="This option is no longer used and will be removed in a future"
                      " version."),
    Option("lazy_startup", Kind.BOOL, False,
           "Delay most of startup, including connecting to the replication stream, until"
           " the first request."),
    Option("server_version", Kind.STRING, None,
           "Version string logged at startup. Default: zcache's own version."),
    Option("enable_telemetry", Kind.BOOL, True,
           "Anonymous usage telemetry to Rocicorp.",
           support=Support.IGNORED, why="zcache never sends telemetry"),
    Option("cloud_event.sink_env", Kind.STRING, None,
           "Name of the variable holding the URI of a CloudEvents sink for ZeroEvents.",
           support=Support.NO, why=_CLOUD_EVENTS, metavar="VAR"),
    Option("cloud_event.extension_overrides_env", Kind.STRING, None,
           "Name of the variable holding CloudEvents extension overrides (JSON).",
           support=Support.NO, why=_CLOUD_EVENTS, metavar="VAR"),
)
# fmt: on


# --- the parsed result ------------------------------------------------------------------
#
# One frozen dataclass per zero-cache group, holding the options zcache honours
# (`Support.YES`). Field names are the last part of the option's dotted name; `_assemble`
# fails loudly if a field and the table ever disagree. The fields repeat the table so that
# type checkers and readers see `config.cvr.max_conns: int`.


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    db: str | None  # None: the CLI starts an embedded PostgreSQL
    max_conns: int
    pg_replication_slot_failover: bool
    pg_stream_inbound_timeout_ms: int | None


@dataclass(frozen=True, kw_only=True)
class ApiServerConfig:
    """The app's API server for custom mutations (`mutate`) or synced queries (`query`)."""

    url: tuple[str, ...]  # URLPattern strings; empty when not configured
    api_key: str | None
    forward_cookies: bool
    allowed_client_headers: tuple[str, ...]
    allowed_request_headers: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class CvrConfig:
    db: str | None  # defaults to upstream.db
    max_conns: int
    garbage_collection_inactivity_threshold_hours: float
    garbage_collection_initial_interval_seconds: float
    garbage_collection_initial_batch_size: int


@dataclass(frozen=True, kw_only=True)
class ChangeConfig:
    db: str | None  # defaults to upstream.db
    max_conns: int


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    file: str
    vacuum_interval_hours: float | None


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: LogLevel
    format: LogFormat
    slow_hydrate_threshold: float  # milliseconds


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    id: str
    publications: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    num: int


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    jwk: str | None
    jwks_url: str | None
    secret: str | None
    issuer: str | None
    audience: str | None
    revalidate_interval_seconds: float
    retransform_interval_seconds: float


@dataclass(frozen=True, kw_only=True)
class PerUserMutationLimitConfig:
    max: int | None  # None: no limit
    window_ms: int


@dataclass(frozen=True, kw_only=True)
class InitialSyncConfig:
    table_copy_workers: int
    text_copy: bool


@dataclass(frozen=True, kw_only=True)
class ZeroConfig:
    """The whole configuration, grouped as zero-cache groups it."""

    upstream: UpstreamConfig
    mutate: ApiServerConfig
    query: ApiServerConfig
    enable_crud_mutations: bool
    cvr: CvrConfig
    yield_threshold_ms: int
    change: ChangeConfig
    replica: ReplicaConfig
    log: LogConfig
    app: AppConfig
    shard: ShardConfig
    auth: AuthConfig
    port: int
    keepalive_timeout_ms: int | None
    task_id: str | None
    per_user_mutation_limit: PerUserMutationLimitConfig
    num_sync_workers: int | None  # None: the CLI picks from the CPU count
    auto_reset: bool
    admin_password: str | None
    websocket_compression: bool
    websocket_max_payload_bytes: int
    initial_sync: InitialSyncConfig
    lazy_startup: bool
    server_version: str | None
    # Not options: things the operator should hear about that do not stop startup
    # (deprecated names in use, options accepted without effect). The CLI logs them.
    notices: tuple[str, ...] = field(default=(), compare=False)

    def redacted(self) -> dict[str, Any]:
        """The configuration as nested dicts for logging, with secrets replaced by ***.

        Connection strings keep everything but their password, so the log still shows
        which database is used.
        """
        tree = asdict(self)
        del tree["notices"]
        for option in OPTIONS:
            if option.secret is Secret.NONE or option.support is not Support.YES:
                continue
            group, _, leaf = option.name.rpartition(".")
            node = tree[group] if group else tree
            node[leaf] = _redact(option.secret, node[leaf])
        return tree


_REDACTED = "***"
# libpq keyword/value form: `host=db password='s e c' dbname=app`.
_CONNINFO_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
# URL form: `postgres://user:secret@host/db?password=secret`.
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def _redact(secret: Secret, value: Any) -> Any:
    if not value:
        return value
    if secret is Secret.VALUE:
        return _REDACTED
    return _redact_db_url(value)


def _redact_db_url(url: str) -> str:
    """Hide the password of a PostgreSQL connection string, URL or keyword/value form."""
    if "://" not in url:
        return _CONNINFO_PASSWORD.sub(rf"\1{_REDACTED}", url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        # Unparseable (e.g. a broken IPv6 host): hiding all of it beats leaking a password.
        return _REDACTED
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{_REDACTED}@{hostport}"
    query = _QUERY_PASSWORD.sub(rf"\1{_REDACTED}", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


# --- command line ------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    # A fixed width keeps `--help` identical on every terminal (and in the golden file).
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100, max_help_position=36)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Keep the help's own line breaks (description / support / env lines), and never
        # split names such as ZERO_PUSH_URL or --push-url at a hyphen.
        return [
            wrapped
            for line in text.splitlines()
            for wrapped in textwrap.wrap(line, width, break_on_hyphens=False)
        ]


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print usage and exit(2); callers get one error type instead.
        raise ConfigError(message)


_METAVARS = {
    Kind.STRING: "TEXT",
    Kind.INT: "INT",
    Kind.NUMBER: "NUMBER",
    Kind.BOOL: "BOOL",
    Kind.LIST: "VALUE",
}


def build_arg_parser(prog: str = "zcache") -> argparse.ArgumentParser:
    """The command line, derived from `OPTIONS`: one flag per option, grouped by group.

    Unsupported options have flags too, so using one gets the "not supported" error
    rather than "unrecognized arguments". Older names (`--push-url`) are accepted but
    not listed. Every default is `argparse.SUPPRESS`, so the parsed namespace holds only
    the flags actually given. Errors raise `ConfigError`; `--help` prints and exits.
    """
    parser = _ArgumentParser(
        prog=prog,
        usage="%(prog)s [options]",
        description=(
            f"A drop-in replacement for zero-cache (@rocicorp/zero {ZERO_CACHE_VERSION})."
            " Every option can also be set by its environment variable; a flag overrides"
            " the environment, which overrides the default."
        ),
        epilog=(
            "Options marked 'not supported by zcache yet' are refused when set, never"
            " silently ignored. Other ZERO_* variables are ignored with a warning."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,  # zero-cache accepts only whole flag names
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        if option.group not in groups:
            title = option.group.replace("_", "-") + " options"
            groups[option.group] = parser.add_argument_group(title)
        group = groups[option.group]
        shape = _flag_shape(option)
        group.add_argument(
            option.flag, dest=option.name, default=argparse.SUPPRESS,
            help=_flag_help(option), **shape,
        )
        for old in option.renamed_from:
            group.add_argument(
                flag_name(old), dest=old, default=argparse.SUPPRESS,
                help=argparse.SUPPRESS, **shape,
            )
    return parser


def _flag_shape(option: Option) -> dict[str, Any]:
    """argparse arguments for how many words the flag takes and how help shows them."""
    metavar = "{" + ",".join(option.choices) + "}" if option.choices else (
        option.metavar or _METAVARS[option.kind]
    )
    if option.kind is Kind.BOOL:
        # As in zero-cache, a bare `--lazy-startup` means true.
        return {"nargs": "?", "const": "true", "metavar": metavar}
    if option.kind is Kind.LIST:
        # `--mutate-url A B` and `--mutate-url A --mutate-url B` both give [A, B].
        return {"nargs": "+", "action": "extend", "metavar": metavar}
    return {"metavar": metavar}


def _flag_help(option: Option) -> str:
    """What the option does, whether zcache supports it, and where else it is read from."""
    lines = [option.help]
    if option.support is Support.REMOVED:
        lines.append(f"({option.support.value}. {option.why})")
    elif option.support is not Support.YES:
        lines.append(f"({option.support.value}: {option.why})")
    elif option.deprecated:
        lines.append(f"(deprecated in zero-cache {ZERO_CACHE_VERSION})")
    sources = [f"env {option.env}"]
    sources += [f"older name {env_name(old)} / {flag_name(old)}" for old in option.renamed_from]
    sources += [f"fallback {var}" for var in option.env_fallbacks]
    if option.default not in (None, ()):
        sources.append(f"default {_show(option.default)}")
    lines.append("; ".join(sources))
    # argparse %-formats help strings.
    return "\n".join(lines).replace("%", "%%")


def _show(value: Value) -> str:
    """A default as a user would type it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


# --- loading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """A raw value for an option, and the name it was given under."""

    spelled: str  # the name used: `ZERO_PUSH_URL`, `--port`, `LOG_LEVEL`
    label: str  # how errors name it: `ZERO_PUSH_URL (--push-url)`
    raw: str | list[str]
    older_name: bool  # given under a deprecated name (renamed_from)


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> ZeroConfig:
    """Parse flags and environment into a `ZeroConfig`.

    `argv` excludes the program name. Raises `ConfigError` listing every bad or
    unsupported setting. `--help` prints the help and raises `SystemExit(0)`, as argparse
    does.
    """
    given = vars(build_arg_parser().parse_args(list(argv)))
    problems: list[str] = []
    notices: list[str] = []
    values: dict[str, Value] = {}
    for option in OPTIONS:
        settings = _settings(option, given, environ)
        if not settings:
            values[option.name] = option.default
            continue
        if option.support is Support.NO:
            problems.append(f"{option.label} is {option.support.value}: {option.why}")
            continue
        if option.support is Support.REMOVED:
            problems.append(f"{option.label} is {option.support.value}. {option.why}")
            continue
        parsed: list[Value] = []
        for setting in settings:
            try:
                parsed.append(_parse(option, setting.raw))
            except _BadValue as bad:
                problems.append(f"{setting.label} {bad.rule}, got {bad.text!r}")
        values[option.name] = parsed[0] if parsed else option.default
        notices.extend(_notices(option, settings))
    if problems:
        raise ConfigError("\n".join(problems))

    # zero-cache's normalisation (config/normalize.ts): CVRs and the change log live in
    # the upstream database unless told otherwise.
    for db in ("cvr.db", "change.db"):
        if values[db] is None:
            values[db] = values["upstream.db"]

    honoured = {o.name: values[o.name] for o in OPTIONS if o.support is Support.YES}
    return replace(_assemble(ZeroConfig, honoured), notices=tuple(notices))


def unknown_zero_env(environ: Mapping[str, str]) -> list[str]:
    """`ZERO_*` variables that name no zero-cache option, sorted; zcache ignores them.

    zero-cache ignores them too, so they are not errors; the CLI warns because they are
    usually typos. Besides typos this lists the few tuning variables zero-cache reads
    outside its option table (e.g. ZERO_PG_SOCKET_INACTIVITY_TIMEOUT), which zcache
    does not read either.
    """
    known = {o.env for o in OPTIONS}
    known.update(env_name(old) for o in OPTIONS for old in o.renamed_from)
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)


def _settings(
    option: Option, given: Mapping[str, Any], environ: Mapping[str, str]
) -> list[_Setting]:
    """Every raw value given for the option, highest precedence first."""
    names = [(option.name, False), *((old, True) for old in option.renamed_from)]
    settings = [
        _Setting(flag_name(name), _label(name), given[name], older)
        for name, older in names
        if name in given
    ]
    # zero-cache treats a variable set to the empty string as unset.
    settings += [
        _Setting(env_name(name), _label(name), environ[env_name(name)], older)
        for name, older in names
        if environ.get(env_name(name))
    ]
    settings += [
        _Setting(var, var, environ[var], False)
        for var in option.env_fallbacks
        if environ.get(var)
    ]
    return settings


def _notices(option: Option, settings: list[_Setting]) -> list[str]:
    notices = [
        f"{s.spelled} is an older name; use {option.env} ({option.flag}) instead."
        for s in settings
        if s.older_name
    ]
    if option.support is Support.IGNORED:
        notices.append(f"{option.label} has no effect: {option.why}.")
    elif option.deprecated:
        notices.append(
            f"{option.label} is deprecated in zero-cache {ZERO_CACHE_VERSION}:"
            f" {option.deprecated}"
        )
    return notices


class _BadValue(Exception):
    def __init__(self, rule: str, text: str) -> None:
        super().__init__(rule)
        self.rule = rule  # what is allowed: "must be an integer between 1 and 65535"
        self.text = text  # the offending text (one item, for lists)


_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE = ("true", "1")
_FALSE = ("false", "0")


def _parse(option: Option, raw: str | list[str]) -> Value:
    """Raw text (or the words of a list flag) -> the option's typed value."""
    if option.kind is Kind.LIST:
        # Environment values are comma-separated; flag values arrive as separate words.
        items = raw.split(",") if isinstance(raw, str) else raw
        # Surrounding blanks and empty items (`a, b,`) are slips, not values.
        cleaned = tuple(item.strip() for item in items if item.strip())
        for item in cleaned:
            _apply_check(option, item)
        return cleaned
    assert isinstance(raw, str)
    if option.kind is Kind.STRING:
        # Taken verbatim: blanks may matter in secrets and connection strings.
        _apply_check(option, raw)
        return raw
    text = raw.strip()
    if option.kind is Kind.BOOL:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _BadValue("must be true or false (or 1 or 0)", raw)
    if option.kind is Kind.CHOICE:
        if text in option.choices:
            return text
        raise _BadValue(f"must be one of {', '.join(option.choices)}", raw)
    if option.kind is Kind.INT:
        if _INTEGER.fullmatch(text) and _in_range(option, int(text)):
            return int(text)
        raise _BadValue(f"must be an integer{_range_rule(option)}", raw)
    if _DECIMAL.fullmatch(text) and _in_range(option, float(text)):
        return float(text)
    raise _BadValue(f"must be a number{_range_rule(option)}", raw)


def _apply_check(option: Option, text: str) -> None:
    if option.check and (problem := option.check(text)):
        raise _BadValue(problem, text)


def _in_range(option: Option, number: float) -> bool:
    return (option.minimum is None or number >= option.minimum) and (
        option.maximum is None or number <= option.maximum
    )


def _range_rule(option: Option) -> str:
    if option.minimum is not None and option.maximum is not None:
        return f" between {option.minimum} and {option.maximum}"
    if option.minimum is not None:
        return f" >= {option.minimum}"
    return ""


def _assemble(cls: type, values: dict[str, Value], prefix: str = "") -> Any:
    """Build `cls` from the dotted-name values under `prefix`, consuming them.

    A field whose type is itself a dataclass is a group (`upstream`), built recursively.
    A field without an option fails with KeyError, an option without a field with
    AssertionError: either way on the first load, so the two cannot drift apart.
    """
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "notices":  # set by load_config, not an option
            continue
        path = prefix + f.name
        group = hints[f.name]
        kwargs[f.name] = (
            _assemble(group, values, path + ".") if is_dataclass(group) else values.pop(path)
        )
    if not prefix and values:
        raise AssertionError(f"supported options without a ZeroConfig field: {sorted(values)}")
    return cls(**kwargs)
