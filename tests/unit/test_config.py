"""The option table, parsing, errors, aliases and redaction of `zcache.config`.

The table is checked against zero-cache 1.9.0's own `--help`
(`tests/golden/zero-cache-1.9.0-help.txt`) so that no option, env name, flag, type or
default can drift from the server we replace.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from zcache.config import (
    OPTIONS,
    ConfigError,
    Kind,
    Option,
    Support,
    ZeroConfig,
    build_arg_parser,
    env_name,
    flag_name,
    load_config,
    unknown_zero_env,
)

pytestmark = pytest.mark.unit

ZERO_CACHE_HELP = Path(__file__).parents[1] / "golden" / "zero-cache-1.9.0-help.txt"

# zero-cache 1.9.0 options that its --help does not list: hidden ones, and deprecated ones
# (which zero-cache hides automatically). Read from its zero-config.js.
ZERO_CACHE_HIDDEN_ENV = {
    "ZERO_UPSTREAM_TYPE",
    "ZERO_UPSTREAM_MAX_CONNS_PER_WORKER",
    "ZERO_PUSH_URL",
    "ZERO_PUSH_API_KEY",
    "ZERO_PUSH_FORWARD_COOKIES",
    "ZERO_PUSH_ALLOWED_CLIENT_HEADERS",
    "ZERO_PUSH_ALLOWED_REQUEST_HEADERS",
    "ZERO_GET_QUERIES_URL",
    "ZERO_GET_QUERIES_API_KEY",
    "ZERO_GET_QUERIES_FORWARD_COOKIES",
    "ZERO_GET_QUERIES_ALLOWED_CLIENT_HEADERS",
    "ZERO_GET_QUERIES_ALLOWED_REQUEST_HEADERS",
    "ZERO_CVR_MAX_CONNS_PER_WORKER",
    "ZERO_SQLITE_CORRUPTION_CHECKS",
    "ZERO_CHANGE_STATEMENT_TIMEOUT_MS",
    "ZERO_CHANGE_LOG_BATCH_SIZE",
    "ZERO_SHARD_ID",
    "ZERO_SHARD_NUM",
    "ZERO_AUTH_JWK",
    "ZERO_AUTH_JWKS_URL",
    "ZERO_AUTH_SECRET",
    "ZERO_AUTH_ISSUER",
    "ZERO_AUTH_AUDIENCE",
    "ZERO_CHANGE_STREAMER_ADDRESS",
    "ZERO_CHANGE_STREAMER_PROTOCOL",
    "ZERO_CHANGE_STREAMER_DISCOVERY_INTERFACE_PREFERENCES",
    "ZERO_INITIAL_SYNC_PROFILE_COPY",
    "ZERO_TARGET_CLIENT_ROW_COUNT",
}

# Defaults where zcache deliberately differs from zero-cache, and why.
DELIBERATE_DEFAULTS = {
    # A zcache replica must never be mistaken for a zero-cache one in the same directory.
    "ZERO_REPLICA_FILE": "zcache-replica.db",
}

# Options the zcache design honours; guards against marking one unsupported by mistake.
MUST_BE_SUPPORTED = {
    "ZERO_UPSTREAM_DB",
    "ZERO_UPSTREAM_MAX_CONNS",
    "ZERO_CVR_DB",
    "ZERO_CVR_MAX_CONNS",
    "ZERO_CHANGE_DB",
    "ZERO_CHANGE_MAX_CONNS",
    "ZERO_REPLICA_FILE",
    "ZERO_PORT",
    "ZERO_APP_ID",
    "ZERO_APP_PUBLICATIONS",
    "ZERO_SHARD_NUM",
    "ZERO_AUTH_JWKS_URL",
    "ZERO_AUTH_JWK",
    "ZERO_AUTH_SECRET",
    "ZERO_MUTATE_URL",
    "ZERO_MUTATE_API_KEY",
    "ZERO_MUTATE_FORWARD_COOKIES",
    "ZERO_MUTATE_ALLOWED_CLIENT_HEADERS",
    "ZERO_QUERY_URL",
    "ZERO_QUERY_API_KEY",
    "ZERO_LAZY_STARTUP",
    "ZERO_LOG_LEVEL",
    "ZERO_LOG_FORMAT",
    "ZERO_NUM_SYNC_WORKERS",
    "ZERO_ADMIN_PASSWORD",
    "ZERO_ENABLE_CRUD_MUTATIONS",
    "ZERO_WEBSOCKET_MAX_PAYLOAD_BYTES",
    "ZERO_AUTH_REVALIDATE_INTERVAL_SECONDS",
    "ZERO_AUTH_RETRANSFORM_INTERVAL_SECONDS",
    "ZERO_CVR_GARBAGE_COLLECTION_INACTIVITY_THRESHOLD_HOURS",
    "ZERO_YIELD_THRESHOLD_MS",
    "ZERO_INITIAL_SYNC_TABLE_COPY_WORKERS",
    "ZERO_PER_USER_MUTATION_LIMIT_MAX",
    "ZERO_PER_USER_MUTATION_LIMIT_WINDOW_MS",
}

BY_ENV = {o.env: o for o in OPTIONS}


def load(*argv: str, **environ: str) -> ZeroConfig:
    return load_config(argv, environ)


def config_error(*argv: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(argv, environ)
    return str(caught.value)


# --- the table against zero-cache's --help ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZeroCacheOption:
    flag: str
    env: str
    type_label: str  # "string", "number", "boolean", "string[]" or "a,b,c" choices
    spec: str  # "required", "optional" or "default: <json>"


def zero_cache_options() -> list[ZeroCacheOption]:
    """The options in zero-cache's --help: ` --flag type   spec` then `   ENV env`."""
    lines = ZERO_CACHE_HELP.read_text(encoding="utf-8").splitlines()
    found = []
    for line, next_line in zip(lines, lines[1:]):
        head = re.fullmatch(r" (--\S+) (\S+) +(required|optional|default: .*)", line)
        if head:
            env = re.fullmatch(r"   (ZERO_\w+) env", next_line)
            assert env, f"no env line after {line!r}"
            found.append(ZeroCacheOption(head[1], env[1], head[2], head[3]))
    return found


def test_golden_help_parses() -> None:
    # zero-cache 1.9.0 lists 89 options; a parser that finds fewer is broken, not lucky.
    assert len(zero_cache_options()) == 89


@pytest.mark.parametrize("theirs", zero_cache_options(), ids=lambda o: o.env)
def test_every_zero_cache_option_is_in_the_table(theirs: ZeroCacheOption) -> None:
    ours = BY_ENV.get(theirs.env)
    assert ours is not None, f"{theirs.env} missing from OPTIONS"
    assert ours.flag == theirs.flag
    assert not ours.hidden

    if theirs.type_label == "string":
        assert ours.kind is Kind.STRING
    elif theirs.type_label == "number":
        assert ours.kind in (Kind.INT, Kind.NUMBER)
    elif theirs.type_label == "boolean":
        assert ours.kind is Kind.BOOL
    elif theirs.type_label == "string[]":
        assert ours.kind is Kind.LIST
    else:
        assert ours.kind is Kind.CHOICE
        assert ",".join(ours.choices) == theirs.type_label

    if theirs.env in DELIBERATE_DEFAULTS:
        assert ours.default == DELIBERATE_DEFAULTS[theirs.env]
    elif theirs.spec in ("required", "optional"):
        # Unset means false for a boolean and empty for a list; keep the types simple.
        assert ours.default == {Kind.BOOL: False, Kind.LIST: ()}.get(ours.kind)
    else:
        default = json.loads(theirs.spec.removeprefix("default: "))
        expected = tuple(default) if isinstance(default, list) else default
        assert ours.default == expected
        assert type(ours.default) is not bool or type(expected) is bool


def test_hidden_zero_cache_options_are_in_the_table() -> None:
    ours = set(BY_ENV) | {env_name(old) for o in OPTIONS for old in o.renamed_from}
    assert ZERO_CACHE_HIDDEN_ENV <= ours


def test_the_table_invents_no_options() -> None:
    theirs = {o.env for o in zero_cache_options()} | ZERO_CACHE_HIDDEN_ENV
    ours = [o.env for o in OPTIONS] + [env_name(old) for o in OPTIONS for old in o.renamed_from]
    assert len(ours) == len(set(ours)), "duplicate option"
    assert set(ours) == theirs


def test_names_derive_mechanically() -> None:
    assert env_name("upstream.max_conns") == "ZERO_UPSTREAM_MAX_CONNS"
    assert flag_name("upstream.max_conns") == "--upstream-max-conns"
    option = BY_ENV["ZERO_CVR_GARBAGE_COLLECTION_INACTIVITY_THRESHOLD_HOURS"]
    assert option.name == "cvr.garbage_collection_inactivity_threshold_hours"
    assert option.group == "cvr"
    assert BY_ENV["ZERO_PORT"].group == "server"


def test_required_options_are_supported() -> None:
    unsupported = {env for env in MUST_BE_SUPPORTED if not BY_ENV[env].supported}
    assert not unsupported


def test_every_unsupported_option_says_why() -> None:
    assert all(o.why for o in OPTIONS if o.support is not Support.YES)


# --- defaults ----------------------------------------------------------------------------


def test_defaults() -> None:
    config = load()
    assert config.upstream.db is None  # the CLI starts an embedded PostgreSQL
    assert config.upstream.max_conns == 20
    assert config.cvr.db is None
    assert config.cvr.max_conns == 30
    assert config.cvr.garbage_collection_inactivity_threshold_hours == 48.0
    assert config.change.db is None
    assert config.change.max_conns == 5
    assert config.replica.file == "zcache-replica.db"
    assert config.replica.vacuum_interval_hours is None
    assert config.port == 4848
    assert config.app.id == "zero"
    assert config.app.publications == ()
    assert config.shard.num == 0
    assert config.log.level == "info"
    assert config.log.format == "text"
    assert config.mutate.url == ()
    assert config.mutate.forward_cookies is False
    assert config.query.api_key is None
    assert config.auth.secret is None
    assert config.auth.revalidate_interval_seconds == 300.0
    assert config.enable_crud_mutations is True
    assert config.lazy_startup is False
    assert config.num_sync_workers is None
    assert config.yield_threshold_ms == 10
    assert config.websocket_max_payload_bytes == 10 * 1024 * 1024
    assert config.initial_sync.table_copy_workers == 5
    assert config.per_user_mutation_limit.max is None
    assert config.per_user_mutation_limit.window_ms == 60000
    assert config.notices == ()


def test_cvr_and_change_db_default_to_upstream_db() -> None:
    config = load(ZERO_UPSTREAM_DB="postgres://up/db")
    assert config.cvr.db == "postgres://up/db"
    assert config.change.db == "postgres://up/db"

    config = load(ZERO_UPSTREAM_DB="postgres://up/db", ZERO_CVR_DB="postgres://cvr/db")
    assert config.cvr.db == "postgres://cvr/db"
    assert config.change.db == "postgres://up/db"


def test_config_is_frozen() -> None:
    config = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.upstream.db = "x"  # type: ignore[misc]


# --- environment and flags ---------------------------------------------------------------


def test_environment_values_are_typed() -> None:
    config = load(
        ZERO_UPSTREAM_DB="postgres://u@h/db",
        ZERO_PORT=" 5000 ",
        ZERO_CVR_GARBAGE_COLLECTION_INACTIVITY_THRESHOLD_HOURS="0.5",
        ZERO_LAZY_STARTUP="true",
        ZERO_LOG_LEVEL="debug",
        ZERO_APP_PUBLICATIONS="pub_a, pub_b,",
        ZERO_MUTATE_URL="https://api.example.com/mutate,https://*.example.com/mutate",
        ZERO_NUM_SYNC_WORKERS="3",
    )
    assert config.upstream.db == "postgres://u@h/db"
    assert config.port == 5000
    assert config.cvr.garbage_collection_inactivity_threshold_hours == 0.5
    assert config.lazy_startup is True
    assert config.log.level == "debug"
    assert config.app.publications == ("pub_a", "pub_b")
    assert config.mutate.url == ("https://api.example.com/mutate", "https://*.example.com/mutate")
    assert config.num_sync_workers == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    # zero-cache's parseBoolean: true/false/1/0, any case.
    assert load(ZERO_LAZY_STARTUP=text).lazy_startup is expected


def test_empty_environment_variable_counts_as_unset() -> None:
    # As in zero-cache, so `ZERO_CVR_DB=` in a compose file means "use the default".
    config = load(ZERO_PORT="", ZERO_CVR_DB="", ZERO_LITESTREAM_BACKUP_URL="")
    assert config.port == 4848
    assert config.cvr.db is None


def test_strings_are_taken_verbatim() -> None:
    assert load(ZERO_AUTH_SECRET=" s3cret ").auth.secret == " s3cret "


def test_flags_override_environment() -> None:
    config = load("--port", "5000", "--log-level=warn", ZERO_PORT="6000", ZERO_LOG_LEVEL="debug")
    assert config.port == 5000
    assert config.log.level == "warn"


def test_bare_boolean_flag_means_true() -> None:
    config = load("--lazy-startup", "--auto-reset", "false", ZERO_LAZY_STARTUP="false")
    assert config.lazy_startup is True
    assert config.auto_reset is False


def test_list_flags_take_words_not_commas() -> None:
    # zero-cache splits only environment values on commas.
    config = load("--app-publications", "a", "b", "--app-publications", "c")
    assert config.app.publications == ("a", "b", "c")
    assert load("--query-url", "https://x/?a=1,2").query.url == ("https://x/?a=1,2",)


def test_flag_replaces_environment_list() -> None:
    config = load("--app-publications", "flag_pub", ZERO_APP_PUBLICATIONS="env_a,env_b")
    assert config.app.publications == ("flag_pub",)


# --- bad values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("ZERO_PORT", "abc",
         "ZERO_PORT (--port) must be an integer between 1 and 65535, got 'abc'"),
        ("ZERO_PORT", "70000",
         "ZERO_PORT (--port) must be an integer between 1 and 65535, got '70000'"),
        ("ZERO_UPSTREAM_MAX_CONNS", "2.5",
         "ZERO_UPSTREAM_MAX_CONNS (--upstream-max-conns) must be an integer >= 1, got '2.5'"),
        ("ZERO_NUM_SYNC_WORKERS", "0",
         "ZERO_NUM_SYNC_WORKERS (--num-sync-workers) must be an integer >= 1, got '0'"),
        ("ZERO_CVR_GARBAGE_COLLECTION_INACTIVITY_THRESHOLD_HOURS", "soon",
         "ZERO_CVR_GARBAGE_COLLECTION_INACTIVITY_THRESHOLD_HOURS"
         " (--cvr-garbage-collection-inactivity-threshold-hours) must be a number >= 0,"
         " got 'soon'"),
        ("ZERO_LAZY_STARTUP", "yes",
         "ZERO_LAZY_STARTUP (--lazy-startup) must be true or false (or 1 or 0), got 'yes'"),
        ("ZERO_LOG_FORMAT", "xml",
         "ZERO_LOG_FORMAT (--log-format) must be one of text, json, got 'xml'"),
        ("ZERO_LOG_LEVEL", "INFO",
         "ZERO_LOG_LEVEL (--log-level) must be one of debug, info, warn, error, got 'INFO'"),
        ("ZERO_APP_PUBLICATIONS", "ok,_internal",
         "ZERO_APP_PUBLICATIONS (--app-publications) names may not begin with an underscore"
         " (reserved for zero's own publications), got '_internal'"),
    ],
)
def test_bad_environment_value(env: str, value: str, message: str) -> None:
    assert config_error(**{env: value}) == message


def test_bad_flag_value_names_the_environment_variable_too() -> None:
    assert config_error("--port", "x") == (
        "ZERO_PORT (--port) must be an integer between 1 and 65535, got 'x'"
    )


def test_overridden_bad_value_is_still_an_error() -> None:
    # zero-cache validates every value it is given, not just the winning one.
    assert "got 'abc'" in config_error("--port", "5000", ZERO_PORT="abc")


def test_all_problems_are_reported_together() -> None:
    lines = config_error(ZERO_PORT="x", ZERO_LOG_FORMAT="xml").splitlines()
    assert [line.split(" ")[0] for line in lines] == ["ZERO_LOG_FORMAT", "ZERO_PORT"]


@pytest.mark.parametrize("app_id", ["zero", "my_app", "app2", "_"])
def test_valid_app_ids(app_id: str) -> None:
    assert load(ZERO_APP_ID=app_id).app.id == app_id


@pytest.mark.parametrize("app_id", ["MyApp", "my-app", "app.1", "app id", "ünï"])
def test_app_id_rule(app_id: str) -> None:
    assert config_error(ZERO_APP_ID=app_id) == (
        "ZERO_APP_ID (--app-id) may only consist of lower-case letters, numbers, and the"
        f" underscore character, got {app_id!r}"
    )


def test_empty_app_id_flag_is_refused() -> None:
    assert config_error("--app-id", "").startswith("ZERO_APP_ID (--app-id) may only consist")


def test_argument_errors_raise_config_error() -> None:
    assert config_error("--no-such-flag") == "unrecognized arguments: --no-such-flag"
    assert config_error("--port") == "argument --port: expected one argument"
    # Like zero-cache, only whole flag names are accepted.
    assert config_error("--upstream", "x") == "unrecognized arguments: --upstream x"


# --- unsupported, removed and ignored options --------------------------------------------


def test_unsupported_option_refused_from_environment() -> None:
    assert config_error(ZERO_LITESTREAM_BACKUP_URL="s3://bucket/replica") == (
        "ZERO_LITESTREAM_BACKUP_URL (--litestream-backup-url) is not supported by zcache yet:"
        " zcache does not back up the replica with Litestream; a lost replica is re-synced"
        " from upstream"
    )


def test_unsupported_option_refused_from_flag() -> None:
    message = config_error("--change-streamer-uri", "ws://replication-manager:4849")
    assert message.startswith(
        "ZERO_CHANGE_STREAMER_URI (--change-streamer-uri) is not supported by zcache yet: "
    )


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.support is Support.NO], ids=lambda o: o.env
)
def test_every_unsupported_option_is_refused(option: Option) -> None:
    # Even a value equal to zero-cache's default: a setting is never silently dropped.
    assert config_error(**{option.env: "1"}) == (
        f"{option.env} ({option.flag}) is not supported by zcache yet: {option.why}"
    )


def test_removed_option_gets_zero_cache_advice() -> None:
    assert config_error(ZERO_SHARD_ID="x") == (
        "ZERO_SHARD_ID (--shard-id) is no longer an option. Please use ZERO_APP_ID instead."
    )


def test_ignored_option_is_accepted_with_a_notice() -> None:
    config = load(ZERO_ENABLE_TELEMETRY="false", ZERO_TARGET_CLIENT_ROW_COUNT="500")
    assert config.notices == (
        "ZERO_TARGET_CLIENT_ROW_COUNT (--target-client-row-count) has no effect:"
        " zero-cache no longer uses it either.",
        "ZERO_ENABLE_TELEMETRY (--enable-telemetry) has no effect:"
        " zcache never sends telemetry.",
    )


def test_ignored_option_is_still_validated() -> None:
    assert config_error(ZERO_ENABLE_TELEMETRY="nope").startswith(
        "ZERO_ENABLE_TELEMETRY (--enable-telemetry) must be true or false"
    )


def test_supported_config_excludes_unsupported_options() -> None:
    assert not hasattr(load(), "litestream")
    assert not hasattr(load(), "enable_telemetry")


# --- older names and fallbacks -----------------------------------------------------------


def test_push_url_is_the_older_mutate_url() -> None:
    config = load(ZERO_PUSH_URL="https://a/push", ZERO_PUSH_API_KEY="k")
    assert config.mutate.url == ("https://a/push",)
    assert config.mutate.api_key == "k"
    assert config.notices == (
        "ZERO_PUSH_URL is an older name; use ZERO_MUTATE_URL (--mutate-url) instead.",
        "ZERO_PUSH_API_KEY is an older name; use ZERO_MUTATE_API_KEY (--mutate-api-key)"
        " instead.",
    )


def test_new_name_wins_over_older_name() -> None:
    config = load(ZERO_PUSH_URL="https://old", ZERO_MUTATE_URL="https://new")
    assert config.mutate.url == ("https://new",)
    config = load("--push-url", "https://old", "--mutate-url", "https://new")
    assert config.mutate.url == ("https://new",)


def test_older_flag_wins_over_new_environment_variable() -> None:
    # Flags override the environment whatever the name.
    config = load("--push-url", "https://flag", ZERO_MUTATE_URL="https://env")
    assert config.mutate.url == ("https://flag",)
    assert config.notices == (
        "--push-url is an older name; use ZERO_MUTATE_URL (--mutate-url) instead.",
    )


def test_get_queries_is_the_older_query() -> None:
    config = load(ZERO_GET_QUERIES_URL="https://a/q", ZERO_GET_QUERIES_FORWARD_COOKIES="1")
    assert config.query.url == ("https://a/q",)
    assert config.query.forward_cookies is True


def test_bad_value_under_older_name_names_it() -> None:
    assert config_error(ZERO_PUSH_FORWARD_COOKIES="maybe") == (
        "ZERO_PUSH_FORWARD_COOKIES (--push-forward-cookies) must be true or false (or 1 or 0),"
        " got 'maybe'"
    )


def test_log_level_fallback() -> None:
    assert load(LOG_LEVEL="debug").log.level == "debug"
    assert load(LOG_LEVEL="debug", ZERO_LOG_LEVEL="warn").log.level == "warn"
    assert config_error(LOG_LEVEL="verbose") == (
        "LOG_LEVEL must be one of debug, info, warn, error, got 'verbose'"
    )


def test_deprecated_auth_option_works_with_a_notice() -> None:
    config = load(ZERO_AUTH_JWKS_URL="https://auth.example.com/.well-known/jwks.json")
    assert config.auth.jwks_url == "https://auth.example.com/.well-known/jwks.json"
    assert config.notices == (
        "ZERO_AUTH_JWKS_URL (--auth-jwks-url) is deprecated in zero-cache 1.9.0: Use"
        " cookie-based authentication or an auth token instead"
        " - see https://zero.rocicorp.dev/docs/auth.",
    )


def test_unknown_zero_environment_variables() -> None:
    environ = {
        "ZERO_PORT": "1",
        "ZERO_PUSH_URL": "x",
        "ZERO_LITESTREAM_BACKUP_URL": "x",
        "ZERO_UPSTREAM_DBB": "typo",
        "ZERO_IN_CONTAINER": "1",
        "LOG_LEVEL": "info",
        "PATH": "/bin",
    }
    assert unknown_zero_env(environ) == ["ZERO_IN_CONTAINER", "ZERO_UPSTREAM_DBB"]
    # Not an error: zero-cache ignores them too.
    assert load(**{**environ, "ZERO_LITESTREAM_BACKUP_URL": ""}).port == 1


# --- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://user:pw@db:5432/app", "postgres://user:***@db:5432/app"),
        ("postgresql://user:p%40ss@db/app?sslmode=require",
         "postgresql://user:***@db/app?sslmode=require"),
        ("postgres://user@db/app?password=pw&sslmode=require",
         "postgres://user@db/app?password=***&sslmode=require"),
        ("postgres://db/app", "postgres://db/app"),
        ("host=db user=u password=pw dbname=app", "host=db user=u password=*** dbname=app"),
        ("host=db password='p w' dbname=app", "host=db password=*** dbname=app"),
    ],
)
def test_redacted_database_urls(url: str, shown: str) -> None:
    redacted = load(ZERO_UPSTREAM_DB=url).redacted()
    assert redacted["upstream"]["db"] == shown
    assert redacted["cvr"]["db"] == shown
    assert redacted["change"]["db"] == shown


def test_redacted_secrets() -> None:
    config = load(
        ZERO_AUTH_SECRET="s",
        ZERO_AUTH_JWK='{"kty":"oct","k":"x"}',
        ZERO_MUTATE_API_KEY="mk",
        ZERO_QUERY_API_KEY="qk",
        ZERO_ADMIN_PASSWORD="pw",
        ZERO_AUTH_JWKS_URL="https://auth/jwks",
    )
    redacted = config.redacted()
    assert redacted["auth"]["secret"] == "***"
    assert redacted["auth"]["jwk"] == "***"
    assert redacted["mutate"]["api_key"] == "***"
    assert redacted["query"]["api_key"] == "***"
    assert redacted["admin_password"] == "***"
    assert redacted["auth"]["jwks_url"] == "https://auth/jwks"  # not a secret
    assert "notices" not in redacted
    assert config.auth.secret == "s"  # the config itself keeps the value
    assert json.dumps(redacted)  # loggable as JSON


def test_redacted_leaves_unset_secrets_unset() -> None:
    redacted = load().redacted()
    assert redacted["auth"]["secret"] is None
    assert redacted["upstream"]["db"] is None
    assert redacted["port"] == 4848


# --- the argument parser -----------------------------------------------------------------


def test_every_option_has_a_flag_and_its_help_names_the_env_var() -> None:
    help_text = build_arg_parser().format_help()
    for option in OPTIONS:
        assert f"  {option.flag} " in help_text or f"  {option.flag}\n" in help_text
        assert option.env in help_text


def test_unsupported_options_are_marked_in_help() -> None:
    help_text = build_arg_parser().format_help()
    unsupported = sum(o.support is Support.NO for o in OPTIONS)
    assert help_text.count("(not supported by zcache yet:") == unsupported


def test_parser_reports_only_given_flags() -> None:
    namespace = build_arg_parser().parse_args(["--port", "1", "--push-url", "u"])
    assert vars(namespace) == {"port": "1", "push.url": ["u"]}


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_config(["--help"], {})
    assert caught.value.code == 0
    assert "ZERO_UPSTREAM_DB" in capsys.readouterr().out
