"""The Rust core of zcache (``rust/``), built by maturin as ``zcache._native``.

Everything here is sans-IO: functions take and return bytes, strings and ints. Errors raised by
the core are subclasses of :class:`NativeError`. Integer arguments outside their Rust type's
range (e.g. a negative LSN) raise :class:`OverflowError` before the core runs.
"""

from collections.abc import Mapping, Sequence

__version__: str

class NativeError(Exception):
    """Base class of every error raised by the Rust core."""

class MalformedError(NativeError):
    """Input bytes (or text) do not form a valid message.

    For replication frames the message names the structure being decoded, the byte offset from
    the start of the frame, and the problem, e.g.
    ``malformed pgoutput message at byte 25: unknown tag 'Z' (0x5a)``.
    """

class UnknownRelationError(NativeError):
    """A pgoutput row change or truncate names a relation OID that no Relation message of the
    current replication session has described."""

class ColumnCountMismatchError(NativeError):
    """A pgoutput tuple has a different number of columns than its relation's Relation message."""

def encode_standby_status(write_lsn: int, flush_lsn: int, apply_lsn: int, now_us: int, reply: bool) -> bytes:
    """Encode a Standby Status Update (``'r'``, 34 bytes) for ``PGconn.put_copy_data``.

    ``write_lsn``/``flush_lsn``/``apply_lsn`` are the last WAL positions received, durably stored
    and applied (the server frees WAL up to ``flush_lsn``: only advance it to the end LSN of
    transactions committed to the replica). ``now_us`` is the client clock in microseconds since
    2000-01-01 00:00:00 UTC (``int(time.time() * 1e6) - 946_684_800_000_000``). ``reply`` asks the
    server to answer at once with a keepalive.
    """

def parse_lsn(text: str) -> int:
    """Parse a Postgres LSN in ``X/Y`` hex form (``'16/B374D848'``, padding and lower case
    allowed) into its 64-bit integer. Raises :class:`MalformedError` otherwise."""

def format_lsn(lsn: int) -> str:
    """Format a 64-bit LSN as Postgres does: upper-case hex, unpadded (``'0/654E298'``)."""

def lexi_version(value: int) -> str:
    """The LexiVersion of a non-negative 64-bit integer: base-36 digits prefixed by one base-36
    digit equal to the digit count minus one (``0`` → ``'00'``, ``36`` → ``'110'``; LSN
    ``0/0654E298`` → ``'51r8src'``). String order equals numeric order."""

def parse_lexi_version(text: str) -> int:
    """Inverse of :func:`lexi_version`. Only canonical encodings are accepted (lower case, no
    leading zero, matching length prefix, value below 2**64); anything else raises
    :class:`MalformedError`."""

def describe_replication_frames(frames: Sequence[bytes | bytearray]) -> list[str]:
    """Decode replication CopyData frames (``'w'`` XLogData carrying a pgoutput v1 message, or
    ``'k'`` keepalive) and render each as one stable, human-readable line.

    Diagnostic only (golden tests, debugging commands): it is not the replication hot path and
    keeps no relation state across frames. Raises :class:`MalformedError` if any frame does not
    decode. The GIL is released while decoding. The line grammar is documented in
    ``rust/pg/describe.rs``.
    """

class ReplicationProtocolError(NativeError):
    """The replication stream breaks its own rules (a Commit without a Begin, a row change
    outside a transaction, an unreadable DDL message)."""

class SchemaError(NativeError):
    """A published schema the replica cannot be built from (a table without a usable key, a key
    column of an unsupported type), or a file that is not a zcache replica."""

class ResyncRequiredError(NativeError):
    """Upstream changed in a way the replica cannot follow from the stream alone (a column type
    change, a table added to the publications with its rows, a schema change without a DDL
    event): a new initial sync is needed."""

class UpstreamError(NativeError):
    """Talking to upstream Postgres failed: connecting, authenticating, importing the exported
    snapshot or copying. The message names the server (``user@host:port/db``) and what to check."""

class ReplicaStorageError(NativeError):
    """The replica's SQLite file, or a file operation on it, failed."""

class InvalidValueError(NativeError):
    """A column value's bytes are not a valid encoding of its type."""

class UnsupportedTypeError(NativeError):
    """A value of a type zcache does not replicate was asked to be decoded."""

class ApplyOutcome:
    """What one :meth:`ReplicaWriter.apply_frames` call did."""

    transactions: int
    """Upstream transactions committed by the call."""
    rows: int
    """Row changes applied (committed, or pending in an open upstream transaction)."""
    skipped_transactions: int
    """Transactions skipped because the replica already had them (a resumed stream)."""
    state_version: str
    """The replica's committed state version (LexiVersion of the last commit LSN)."""
    ack_lsn: int
    """The LSN that may be confirmed upstream as flushed once a :meth:`ReplicaWalSync.sync`
    started after this call has returned."""
    in_transaction: bool
    """An upstream transaction is still open; its Commit arrives in a later batch."""
    reply_requested: bool
    """A keepalive in the batch asked for an immediate status update."""
    schema_changed: bool
    """A replicated table's schema changed (DDL) in the batch."""

class ReplicaWalSync:
    """Syncs a replica's WAL file to the disk, from any thread (GIL released)."""

    def sync(self) -> None:
        """Return once every commit made before the call is on the disk. Raises
        :class:`ReplicaStorageError` naming the file if the sync fails."""

class ReplicaWriter:
    """Applies the replication stream to an existing replica (one writer per replica file).

    Each upstream transaction lands in one SQLite transaction with its watermark and change-log
    entries. A commit is visible to readers (and survives a crash of the process) when
    :meth:`apply_frames` returns, and on the disk once :meth:`wal_sync`'s ``sync`` has run after
    it (see :attr:`ApplyOutcome.ack_lsn`). Transactions
    the replica already has are skipped. On error the open transaction is rolled back and the
    writer reloads its state from the file.
    """

    def __init__(self, path: str, ddl_message_prefix: str) -> None:
        """Open the replica at ``path``; ``ddl_message_prefix`` is the logical-message prefix of
        the shard's DDL events (``upstream.ddl_message_prefix``). Raises :class:`SchemaError` if
        the file is not a zcache replica."""

    def apply_frames(self, frames: Sequence[bytes | bytearray]) -> ApplyOutcome:
        """Decode and apply a batch of replication CopyData frames (GIL released)."""

    def wal_sync(self) -> ReplicaWalSync:
        """What syncs this replica's commits to the disk, usable while a batch is applied."""

    def reset_session(self) -> None:
        """Forget the replication session after a disconnect: roll back an open upstream
        transaction (the next session resends it) and the Relation messages seen."""

    def add_indexes(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[bool]:
        """Build an index per ``(table, columns)`` (e.g. :meth:`QueryEngine.index_suggestions`)
        and record it in ``_zcache_indexes``: re-created when the writer opens the replica,
        dropped before a DDL drops one of its columns, following renames. Per request, whether
        it was built now (False: it existed, or the primary key serves it). Raises
        :class:`SchemaError` for an unknown table or column. Call it between batches."""

    def indexes(self) -> list[tuple[str, list[str]]]:
        """The recorded index requests ``(table, columns)``."""

    @property
    def state_version(self) -> str: ...
    @property
    def watermark_lsn(self) -> int:
        """End LSN of the last applied transaction: where streaming resumes."""
    @property
    def replica_version(self) -> str:
        """The initial sync's version (LexiVersion of the slot's consistent point)."""
    @property
    def slot(self) -> str: ...
    @property
    def publications(self) -> list[str]: ...

class InitialSync:
    """Builds a new replica from binary COPY output in a staging file, then renames it into place.

    ``schema_json`` is the shard's published schema (``upstream.published_schema``).
    """

    def __init__(
        self,
        staging_path: str,
        schema_json: str,
        *,
        consistent_point: int,
        slot: str,
        publications: Sequence[str],
        app_id: str,
        shard_num: int,
        ddl_detection: bool,
    ) -> None: ...
    def copy_statement(self, oid: int) -> str:
        """The ``COPY … TO STDOUT (FORMAT binary)`` whose output :meth:`copy_chunks` expects."""
    def copy_chunks(self, oid: int, chunks: Sequence[bytes | bytearray]) -> None:
        """Decode these chunks of table ``oid``'s COPY output (any chunking; GIL released) and
        queue the complete rows for Rust's writer thread, which inserts them; waits while the
        queue is full. Raises this chunk's decoding error, or the writer's if it failed on
        earlier rows; either stops the sync."""
    def copy_tables(
        self,
        oids: Sequence[int],
        *,
        snapshot: str,
        host: str,
        port: int,
        user: str,
        password: str | None,
        dbname: str,
        workers: int,
    ) -> None:
        """Copy the tables ``oids`` (in this order, ``workers`` at a time) straight from Postgres:
        each Rust worker thread connects (plain TCP or Unix socket ``host``; no TLS), imports the
        exported ``snapshot`` in a REPEATABLE READ transaction and runs :meth:`copy_statement`,
        feeding the writer thread. GIL released throughout. Raises :class:`UpstreamError` (connect,
        auth, snapshot, copy failures) or the writer's error; the other workers then stop."""
    @property
    def tables_done(self) -> int:
        """Tables completely copied by :meth:`copy_tables` so far (0 once finished)."""
    def finish_table(self, oid: int) -> int:
        """Wait until the table's queued rows are inserted and check that its COPY output ended
        properly; returns its row count."""
    @property
    def rows(self) -> int:
        """Rows inserted so far, over all tables (0 once finished)."""
    def finish(self, replica_path: str) -> None:
        """Build indexes, record config and state, make the file durable and rename it over
        ``replica_path`` atomically. The object cannot be used afterwards."""

# --- query engine (rust/ivm/, binding rust/py/ivm.rs) ------------------------------------------

class InvalidQueryError(NativeError):
    """A query AST that does not parse or does not fit the replica's tables. The message names
    the offending part, e.g. ``invalid query: where.conditions[1].op: unknown operator "LIKEX"``
    or ``invalid query: table: unknown table "nope"``."""

class UnknownQueryError(NativeError):
    """A client group (or a query of a group) the query engine does not have."""

class QueryEngine:
    """Zero query ASTs hydrated from the replica and maintained incrementally from its change
    log (design: ``rust/ivm/mod.rs``). One per process, shared by every client group; each group
    has its own version. All methods release the GIL; each call reads the replica in one short
    read transaction at its current version.

    A patch is JSON bytes::

        {"version": "<state version>",
         "ops": [{"op": "put", "table": "file", "value": {...all columns...},
                  "rowKey": {"id": "f1"}, "rowVersion": "<_0_version>"},
                 {"op": "del", "table": "file", "rowKey": {"id": "f2"}}],
         "queryErrors": {"<query hash>": "<message>"}}

    ``value`` has every column the replica stores (not ``_0_version``) as the client sees it:
    booleans ``true``/``false``, numbers, strings, json/jsonb/arrays parsed. A row is put when
    the group starts holding it or its version changes while held, deleted when no query of the
    group holds it any more. A query that fails (its table was dropped, a SQL error) releases
    its rows and is reported in ``queryErrors``; the other queries and groups carry on.
    """

    def __init__(self, replica_path: str) -> None:
        """Open the replica (read-only use). Raises :class:`SchemaError` if the file is not a
        zcache replica."""
    def add_query(self, group: str, query_hash: str, ast_json: str) -> bytes:
        """Add (or replace) a query of ``group`` and hydrate it at the replica's current version;
        the group's other queries are advanced to that version first. Returns the group's patch.
        Raises :class:`InvalidQueryError` (and changes nothing) if the AST does not parse or does
        not fit the replica (unknown table or column, unresolved static parameter, ...)."""
    def remove_query(self, group: str, query_hash: str) -> bytes:
        """Remove a query; returns the group's patch (deletes for rows no other query holds).
        Unknown hashes are ignored; an unknown group raises :class:`UnknownQueryError`."""
    def advance(self, groups: Sequence[str]) -> list[tuple[str, bytes]]:
        """Advance each group to the replica's current version: one ``(group, patch)`` per
        group, in order. Unknown groups are created empty at that version."""
    def add_query_changes(self, group: str, query_hash: str, ast_json: str) -> tuple[str, RowChanges, dict[str, str]]:
        """:meth:`add_query`, the patch as the view syncer takes it: ``(version, rows,
        queryErrors)``, ``rows`` what :meth:`RowChanges.merge` makes of the JSON patch (same rows,
        order, canonical keys and client ops), built directly from the engine's rows."""
    def remove_query_changes(self, group: str, query_hash: str) -> tuple[str, RowChanges, dict[str, str]]:
        """:meth:`remove_query`, the patch as :meth:`add_query_changes` returns it."""
    def advance_changes(self, groups: Sequence[str]) -> list[tuple[str, tuple[str, RowChanges, dict[str, str]]]]:
        """:meth:`advance`, each group's patch as :meth:`add_query_changes` returns it."""
    def advance_within(self, groups: Sequence[str], budget: int) -> tuple[list[tuple[str, bytes]], list[str]]:
        """Advance groups in order, as :meth:`advance` does, until ``budget`` units of work are
        spent: one per group, plus one per row read from the replica and per row put or deleted
        in its patch (a one-row change seen by a group costs about 2, hydrating a 10,000-row
        query about 20,000). The group that reaches the budget finishes, and the first group
        always advances. Returns ``(patches, rest)``: ``(group, patch)`` for the groups advanced
        (a prefix of ``groups``) and the groups left at their version, to pass first to a later
        call, so that a caller can serve other work (other groups, new queries) between slices
        instead of holding the engine for one long call."""
    def remove_group(self, group: str) -> None:
        """Forget a group and its queries (no patch)."""
    def group_version(self, group: str) -> str:
        """The state version the group is at."""
    def query_rows(self, group: str, query_hash: str) -> int:
        """How many distinct rows the query syncs (0 when it failed)."""
    def query_error(self, group: str, query_hash: str) -> str | None:
        """Why the query failed, or ``None`` while it is hydrated."""
    def fetch_rows(self, keys: Sequence[tuple[str, str]]) -> bytes:
        """The current value of each ``(table, row key)`` (row keys as JSON objects of the
        primary-key columns, e.g. ``'{"id":"f1"}'``), read in one read transaction, as a patch
        of puts (the format above, ``queryErrors`` empty), in request order. Rows (or tables)
        that no longer exist are left out. A client catching up from its cookie gets the rows
        its CVR recorded since, by key, through this."""
    def client_tables(self) -> bytes:
        """The replica's queryable tables as a client schema declares them: JSON bytes
        ``{"version", "replicaVersion", "tables": {"<table>": {"columns": {"<col>": "string" |
        "number" | "boolean" | "json"}, "unsupported": {"<col>": "<upstream type>"},
        "primaryKey": [...]}}}`` (``unsupported``: upstream columns that are not replicated)."""
    def index_suggestions(self) -> list[tuple[str, list[str]]]:
        """``(table, columns)`` of the indexes that would let the registered queries'
        statements seek instead of scanning the replica: correlation columns of subqueries,
        parent lookups of EXISTS, root equality/order columns. The engine does not build them:
        :meth:`ReplicaWriter.add_indexes` does (SQLite cannot drop a column an index uses, so
        the writer owns every index)."""
    def statistics(self) -> dict[str, int]:
        """Sizes (groups, queries, partitions, rows) and cumulative counters (hydrations,
        statements run, rehydrations, ...)."""
    def select_baseline(self, sql: str, params: Sequence[str | int | float | None]) -> int:
        """For benchmarks: run a read-only ``SELECT`` through the engine's own connection (in
        its own short read transaction) and read every column of every row, as the engine's
        statements do, without building anything from them; returns the row count. What
        hydrating the same rows costs beyond this is the engine's own work."""


def read_patch(patch: bytes) -> tuple[str, list[tuple[str, str, str | None, str]], dict[str, str]]:
    """A patch (of ``QueryEngine``) as pokes and CVR flushes use it: ``(version, rows,
    queryErrors)``, one ``(table, canonical key, row version or None for a delete, client op)``
    per row in patch order, where the client op is the encoded ``rowsPatch`` op
    (``{"op":"put","tableName":…,"value":{…}}`` or ``{"op":"del","tableName":…,"id":{…}}``).
    Raises :class:`MalformedError` for bytes that are not a patch. The GIL is released while
    parsing."""

class RowChanges:
    """The row ops of one view-syncer change, held in Rust: merged from engine patches in order
    (a later op of a row replaces an earlier one, keeping the row's first position), then turned
    into the poke's row ops and the CVR's row records without a Python object per row. Keys are
    canonical (as ``read_patch`` writes them)."""

    def __init__(self) -> None: ...
    @staticmethod
    def of_records(records: Sequence[tuple[str, str, str | None]]) -> RowChanges:
        """Row records ``(table, canonical key, row version or None for a delete)`` without client
        ops (for a CVR flush alone)."""
    def merge(self, patch: bytes) -> tuple[str, dict[str, str]]:
        """Merges a ``QueryEngine`` patch's rows (values kept as the engine encoded them);
        returns its version and ``queryErrors``. Raises :class:`MalformedError`. The GIL is
        released while parsing."""
    def absorb(self, other: RowChanges) -> None:
        """Moves ``other``'s rows in after these (``other`` is left empty)."""
    def delete(self, table: str, key: str) -> None:
        """Records the row's deletion (its ``del`` op)."""
    def diff_recorded(self, recorded: Mapping[tuple[str, str], str]) -> None:
        """Against what the CVR records (``(table, key)`` → row version): keeps the puts of rows
        not recorded at that version and the deletes of recorded rows, and adds deletes of the
        recorded rows these changes do not put."""
    def records(self) -> list[tuple[str, str, str | None]]:
        """``(table, key, row version or None)`` per row, in order."""
    def poke_ops(self, clients_table: str, mutations_table: str) -> tuple[list[str], list[tuple[str, str, bool]]]:
        """The encoded ``rowsPatch`` ops of every other table's rows, in order; and the rows of
        the shard's two tables as ``(table, op, deleted)`` (they become ``lastMutationIDChanges``
        and ``mutationsPatch`` entries)."""
    def counts(self) -> tuple[int, int]:
        """``(puts, deletes)``."""
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...

def cvr_row_arrays(
    flushes: Sequence[tuple[str, str, RowChanges]],
) -> tuple[tuple[str, str, str, str, str], tuple[str, str, str, str], int, int]:
    """The row records of flushes ``(group, patch version, rows)`` as Postgres text-array
    literals, one per column, each flush's rows sorted by table and key: ``((groups, tables,
    keys, row versions, patch versions) of the puts, (groups, tables, keys, patch versions) of
    the deletes, puts, deletes)``."""

def canonical_json(texts: Sequence[str]) -> list[str]:
    """Each JSON text in canonical form (compact, object keys sorted by their UTF-8 bytes): the
    keys ``read_patch`` writes, for keys read back from Postgres ``jsonb``. Raises
    :class:`MalformedError` for text that is not JSON."""
