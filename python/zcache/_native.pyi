"""The Rust core of zcache (``rust/``), built by maturin as ``zcache._native``.

Everything here is sans-IO: functions take and return bytes, strings and ints. Errors raised by
the core are subclasses of :class:`NativeError`. Integer arguments outside their Rust type's
range (e.g. a negative LSN) raise :class:`OverflowError` before the core runs.
"""

from collections.abc import Sequence

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
