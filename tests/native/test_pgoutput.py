"""The Rust pgoutput decoder seen from Python, checked against an independent Python encoder.

The encoder below is written from the PostgreSQL 15 protocol documentation (replication frames
and "Logical Replication Message Formats"); each Hypothesis strategy yields a frame's bytes
together with the line ``describe_replication_frames`` must render for it (grammar in
``rust/pg/describe.rs``), computed here without the Rust code.
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcache import _native
from zcache._native import MalformedError, NativeError

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "pgoutput"
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)

u8 = st.integers(0, 2**8 - 1)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
# Mostly plausible timestamps, sometimes anything (rendered as ts(<µs>) outside years 1..9999).
timestamps = st.one_of(st.integers(-(10**15), 10**15), i64)
# Any Unicode except NUL (the terminator) and lone surrogates (not encodable as UTF-8).
names = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
values_bytes = st.one_of(st.binary(max_size=16), st.binary(min_size=90, max_size=130))
# Decoding is microseconds per example: the fuzz-like properties run 10x the profile's examples.
fuzz = settings(max_examples=10 * settings().max_examples)


class Encoded(NamedTuple):
    data: bytes
    line: str


# --- expected rendering ---------------------------------------------------------------------


def quoted(raw: bytes) -> str:
    out = []
    for b in raw:
        if b == 0x22:
            out.append('\\"')
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def shown(raw: bytes) -> str:
    if len(raw) > 96:
        return f"{quoted(raw[:64])}...({len(raw)} bytes)"
    return quoted(raw)


def lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


def ts(us: int) -> str:
    try:
        t = PG_EPOCH + dt.timedelta(microseconds=us)
    except OverflowError:
        return f"ts({us})"
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"
    )


def s(text: str) -> str:
    return quoted(text.encode())


# --- encoder ----------------------------------------------------------------------------------


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


@st.composite
def tuples(draw: st.DrawFn) -> Encoded:
    """TupleData: Int16 count, then per column 'n' | 'u' | 't' Int32 len bytes | 'b' Int32 len bytes."""
    data = bytearray()
    shown_values = []
    columns = draw(st.lists(st.sampled_from("nutb"), max_size=6))
    data += struct.pack("!h", len(columns))
    for kind in columns:
        data += kind.encode()
        if kind == "n":
            shown_values.append("null")
        elif kind == "u":
            shown_values.append("unchanged")
        else:
            raw = draw(values_bytes)
            data += struct.pack("!i", len(raw)) + raw
            shown_values.append(kind + shown(raw))
    return Encoded(bytes(data), "(" + ", ".join(shown_values) + ")")


@st.composite
def begins(draw: st.DrawFn) -> Encoded:
    final, time, xid = draw(u64), draw(timestamps), draw(u32)
    return Encoded(b"B" + struct.pack("!QqI", final, time, xid), f"BEGIN final_lsn={lsn(final)} commit_time={ts(time)} xid={xid}")


@st.composite
def commits(draw: st.DrawFn) -> Encoded:
    flags, commit, end, time = draw(u8), draw(u64), draw(u64), draw(timestamps)
    return Encoded(
        b"C" + struct.pack("!BQQq", flags, commit, end, time),
        f"COMMIT flags={flags} commit_lsn={lsn(commit)} end_lsn={lsn(end)} commit_time={ts(time)}",
    )


@st.composite
def origins(draw: st.DrawFn) -> Encoded:
    at, name = draw(u64), draw(names)
    return Encoded(b"O" + struct.pack("!Q", at) + cstr(name), f"ORIGIN commit_lsn={lsn(at)} name={s(name)}")


@st.composite
def relations(draw: st.DrawFn) -> Encoded:
    oid, namespace, name = draw(u32), draw(names), draw(names)
    identity = draw(st.sampled_from(["default", "nothing", "full", "index"]))
    data = b"R" + struct.pack("!I", oid) + cstr(namespace) + cstr(name) + identity[0].encode()
    columns = draw(st.lists(st.tuples(u8, names, u32, i32), max_size=6))
    data += struct.pack("!h", len(columns))
    shown_columns = []
    for flags, column, type_oid, typmod in columns:
        data += bytes([flags]) + cstr(column) + struct.pack("!Ii", type_oid, typmod)
        text = f"{s(column)} type={type_oid} typmod={typmod}"
        if flags == 1:
            text += " key"
        elif flags:
            text += f" flags={flags}"
        shown_columns.append(text)
    line = f"RELATION oid={oid} {s(namespace)}.{s(name)} identity={identity} columns=[{', '.join(shown_columns)}]"
    return Encoded(data, line)


@st.composite
def types(draw: st.DrawFn) -> Encoded:
    oid, namespace, name = draw(u32), draw(names), draw(names)
    return Encoded(b"Y" + struct.pack("!I", oid) + cstr(namespace) + cstr(name), f"TYPE oid={oid} {s(namespace)}.{s(name)}")


@st.composite
def inserts(draw: st.DrawFn) -> Encoded:
    oid, new = draw(u32), draw(tuples())
    return Encoded(b"I" + struct.pack("!I", oid) + b"N" + new.data, f"INSERT oid={oid} new={new.line}")


@st.composite
def updates(draw: st.DrawFn) -> Encoded:
    oid, old_kind, old, new = draw(u32), draw(st.sampled_from(["", "K", "O"])), draw(tuples()), draw(tuples())
    data = b"U" + struct.pack("!I", oid)
    line = f"UPDATE oid={oid}"
    if old_kind:
        data += old_kind.encode() + old.data
        line += (" key=" if old_kind == "K" else " old=") + old.line
    return Encoded(data + b"N" + new.data, f"{line} new={new.line}")


@st.composite
def deletes(draw: st.DrawFn) -> Encoded:
    oid, kind, old = draw(u32), draw(st.sampled_from("KO")), draw(tuples())
    label = "key" if kind == "K" else "old"
    return Encoded(b"D" + struct.pack("!I", oid) + kind.encode() + old.data, f"DELETE oid={oid} {label}={old.line}")


@st.composite
def truncates(draw: st.DrawFn) -> Encoded:
    options, oids = draw(u8), draw(st.lists(u32, max_size=5))
    data = b"T" + struct.pack("!iB", len(oids), options) + b"".join(struct.pack("!I", o) for o in oids)
    line = (
        f"TRUNCATE oids=[{', '.join(map(str, oids))}] "
        f"cascade={str(bool(options & 1)).lower()} restart_identity={str(bool(options & 2)).lower()}"
    )
    if options & ~3:
        line += f" options={options}"
    return Encoded(data, line)


@st.composite
def logical_messages(draw: st.DrawFn) -> Encoded:
    flags, at, prefix, content = draw(u8), draw(u64), draw(names), draw(values_bytes)
    data = b"M" + struct.pack("!BQ", flags, at) + cstr(prefix) + struct.pack("!i", len(content)) + content
    line = f"MESSAGE transactional={str(bool(flags & 1)).lower()}"
    if flags > 1:
        line += f" flags={flags}"
    return Encoded(data, f"{line} lsn={lsn(at)} prefix={s(prefix)} content={shown(content)}")


messages = st.one_of(
    begins(), commits(), origins(), relations(), types(), inserts(), updates(), deletes(), truncates(), logical_messages()
)


@st.composite
def xlog_frames(draw: st.DrawFn) -> Encoded:
    start, end, time, message = draw(u64), draw(u64), draw(timestamps), draw(messages)
    return Encoded(
        b"w" + struct.pack("!QQq", start, end, time) + message.data,
        f"w start={lsn(start)} end={lsn(end)} time={ts(time)} | {message.line}",
    )


@st.composite
def keepalives(draw: st.DrawFn) -> Encoded:
    end, time, reply = draw(u64), draw(timestamps), draw(st.booleans())
    return Encoded(
        b"k" + struct.pack("!Qq?", end, time, reply), f"k end={lsn(end)} time={ts(time)} reply={str(reply).lower()}"
    )


frames = st.one_of(xlog_frames(), xlog_frames(), xlog_frames(), keepalives())


# --- tests ------------------------------------------------------------------------------------


@fuzz
@given(st.lists(frames, max_size=8))
def test_valid_frames_render_as_the_python_encoder_expects(batch: list[Encoded]) -> None:
    assert _native.describe_replication_frames([f.data for f in batch]) == [f.line for f in batch]


@given(frames)
def test_bytearray_is_accepted(frame: Encoded) -> None:
    assert _native.describe_replication_frames([bytearray(frame.data)]) == [frame.line]


@fuzz
@given(frames, st.data())
def test_every_strict_prefix_and_any_suffix_is_malformed(frame: Encoded, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame.data) - 1), label="cut")
    with pytest.raises(MalformedError):
        _native.describe_replication_frames([frame.data[:cut]])
    extra = data.draw(st.binary(min_size=1, max_size=4), label="extra")
    with pytest.raises(MalformedError, match="trailing bytes"):
        _native.describe_replication_frames([frame.data + extra])


@fuzz
@given(frames, st.data())
def test_mutated_frames_decode_or_raise_malformed(frame: Encoded, data: st.DataObject) -> None:
    mutated = bytearray(frame.data)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        at = data.draw(st.integers(0, len(mutated) - 1), label="at")
        mutated[at] = data.draw(u8, label="byte")
    try:
        lines = _native.describe_replication_frames([bytes(mutated)])
    except MalformedError:
        return
    assert len(lines) == 1


@fuzz
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_malformed(raw: bytes) -> None:
    try:
        lines = _native.describe_replication_frames([raw])
    except MalformedError:
        return
    assert len(lines) == 1


def test_one_bad_frame_fails_the_batch_with_a_located_error() -> None:
    good = b"k" + struct.pack("!Qq?", 1, 0, False)
    bad = b"w" + struct.pack("!QQq", 0, 0, 0) + b"Z"
    with pytest.raises(MalformedError, match=r"pgoutput message at byte 25: unknown tag 'Z' \(0x5a\)"):
        _native.describe_replication_frames([good, bad])
    with pytest.raises(MalformedError, match="Stream Start"):
        _native.describe_replication_frames([b"w" + bytes(24) + b"S" + bytes(4)])
    assert _native.describe_replication_frames([]) == []


def test_error_hierarchy() -> None:
    for cls in (MalformedError, _native.UnknownRelationError, _native.ColumnCountMismatchError):
        assert issubclass(cls, NativeError)
    assert issubclass(NativeError, Exception)


def test_golden_capture_renders_through_the_binding() -> None:
    raw = (GOLDEN / "stream.bin").read_bytes()
    assert raw[:8] == b"ZCPGFRM1"
    frames_in_file = []
    pos = 8
    while pos < len(raw):
        (n,) = struct.unpack_from("!I", raw, pos)
        frames_in_file.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    expected = (GOLDEN / "stream.txt").read_text().splitlines()
    assert _native.describe_replication_frames(frames_in_file) == expected


@given(u64, u64, u64, i64, st.booleans())
def test_standby_status_matches_the_documented_layout(write: int, flush: int, apply: int, now: int, reply: bool) -> None:
    encoded = _native.encode_standby_status(write, flush, apply, now, reply)
    assert encoded == b"r" + struct.pack("!QQQqB", write, flush, apply, now, int(reply))
    assert len(encoded) == 34


def test_standby_status_rejects_out_of_range_ints() -> None:
    with pytest.raises(OverflowError):
        _native.encode_standby_status(-1, 0, 0, 0, False)
    with pytest.raises(OverflowError):
        _native.encode_standby_status(0, 0, 0, 2**63, False)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "00"), (1, "01"), (10, "0a"), (35, "0z"), (36, "110"), (46655, "2zzz"), (0x0654E298, "51r8src"),
     (2**64 - 1, "c3w5e11264sgsf")],
)
def test_lexi_version_examples(value: int, text: str) -> None:
    assert _native.lexi_version(value) == text
    assert _native.parse_lexi_version(text) == value


def test_lexi_version_of_an_lsn() -> None:
    assert _native.lexi_version(_native.parse_lsn("0/0654E298")) == "51r8src"


@given(u64, u64)
def test_lexi_version_round_trips_and_sorts_numerically(a: int, b: int) -> None:
    la, lb = _native.lexi_version(a), _native.lexi_version(b)
    assert _native.parse_lexi_version(la) == a
    assert (la < lb) == (a < b)


@pytest.mark.parametrize("text", ["", "0", "000", "100", "0Z", "c3w5e11264sgsg", "d3w5e11264sgsfa", "é"])
def test_parse_lexi_version_rejects_non_canonical(text: str) -> None:
    with pytest.raises(MalformedError):
        _native.parse_lexi_version(text)


def test_lexi_version_rejects_negative() -> None:
    with pytest.raises(OverflowError):
        _native.lexi_version(-1)


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [("0/0", 0, "0/0"), ("0/0654E298", 0x0654E298, "0/654E298"), ("16/b374d848", 0x16B374D848, "16/B374D848"),
     ("FFFFFFFF/FFFFFFFF", 2**64 - 1, "FFFFFFFF/FFFFFFFF")],
)
def test_lsn_examples(text: str, value: int, canonical: str) -> None:
    assert _native.parse_lsn(text) == value
    assert _native.format_lsn(value) == canonical


@given(u64)
def test_lsn_round_trips(value: int) -> None:
    text = _native.format_lsn(value)
    assert text == lsn(value)
    assert _native.parse_lsn(text) == value
    assert _native.parse_lsn(f"{value >> 32:08x}/{value & 0xFFFFFFFF:08x}") == value


@pytest.mark.parametrize("text", ["", "/", "0", "0/", "1/2/3", "x/0", "123456789/0", " 0/1", "0/-1"])
def test_parse_lsn_rejects_garbage(text: str) -> None:
    with pytest.raises(MalformedError):
        _native.parse_lsn(text)
