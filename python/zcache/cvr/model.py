"""What a client view record (CVR) holds, in memory: versions, queries, desires, row changes.

A CVR version is the replica state version its content reflects plus a counter of the
config-only changes made since (query-set and transformation changes): cookie ``"527vbqo"`` or
``"527vbqo:01"``. A brand-new client group is at ``"00"``. Versions order as their cookies do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zcache import _native

NEW_GROUP_STATE = "00"


@dataclass(frozen=True, order=True)
class CVRVersion:
    state: str
    minor: int = 0

    @property
    def cookie(self) -> str:
        return self.state if self.minor == 0 else f"{self.state}:{_native.lexi_version(self.minor)}"

    @classmethod
    def parse(cls, cookie: str) -> CVRVersion:
        """Raises ValueError for anything that is not a cookie zcache (or zero-cache) writes."""
        state, sep, minor = cookie.partition(":")
        try:
            _native.parse_lexi_version(state)
            return cls(state, _native.parse_lexi_version(minor) if sep else 0)
        except _native.MalformedError as e:
            raise ValueError(f"malformed cookie {cookie!r}: {e}") from None

    def next(self, state_version: str) -> CVRVersion:
        """The version of a change that reflects the replica at `state_version`: the replica's
        version once it is ahead of this CVR, otherwise one more change at the same state."""
        if state_version > self.state:
            return CVRVersion(state_version)
        return CVRVersion(self.state, self.minor + 1)

    def __str__(self) -> str:
        return self.cookie


@dataclass
class QueryRecord:
    """A query of the group (zero-cache's `queries` row). `patch_version` is when it became
    "got" (None: desired, not yet got); `deleted` marks a got-del tombstone kept for catch-up."""

    hash: str
    client_ast: dict[str, Any] | None = None  # legacy and internal queries
    name: str | None = None  # named queries
    args: list[Any] | None = None
    internal: bool = False
    patch_version: CVRVersion | None = None
    transformation_hash: str | None = None
    transformation_version: CVRVersion | None = None
    deleted: bool = False


@dataclass
class DesireRecord:
    """One client's wish for one query (zero-cache's `desires` row). `deleted`: the client
    removed it (a del tombstone for catch-up); `inactivated_at_ms` is on the group's TTL clock."""

    client_id: str
    query_hash: str
    patch_version: CVRVersion
    deleted: bool = False
    ttl_ms: float | None = None
    inactivated_at_ms: float | None = None


@dataclass
class InstanceRecord:
    """The group itself (zero-cache's `instances` row)."""

    group_id: str
    version: CVRVersion
    last_active_ms: float
    ttl_clock_ms: float = 0.0
    replica_version: str | None = None
    owner: str | None = None
    granted_at_ms: float | None = None
    client_schema: dict[str, Any] | None = None
    profile_id: str | None = None
    deleted: bool = False


@dataclass
class CVRSnapshot:
    """A group as loaded from the store; `instance` is None for a group never flushed."""

    instance: InstanceRecord | None
    clients: set[str] = field(default_factory=set)
    queries: dict[str, QueryRecord] = field(default_factory=dict)
    desires: dict[tuple[str, str], DesireRecord] = field(default_factory=dict)
    # The version up to which the group's row records are complete (``rowsVersion``).
    rows_version: str | None = None

    @property
    def rows_behind(self) -> bool:
        """The row records lag the instance: deferred records not written (yet, or ever)."""
        inst = self.instance
        return inst is not None and not inst.deleted and self.rows_version is not None and self.rows_version != inst.version.cookie


@dataclass
class CVRFlush:
    """Everything one group changed at `instance.version`, written in one transaction with the
    other groups of the same flush. `expected_version` is the version the store must still hold
    (None: the group must not exist yet): anything else means another process wrote it."""

    instance: InstanceRecord
    expected_version: CVRVersion | None
    clients_added: list[str] = field(default_factory=list)
    clients_removed: list[str] = field(default_factory=list)
    queries: list[QueryRecord] = field(default_factory=list)
    desires: list[DesireRecord] = field(default_factory=list)
    # The rows the group's clients got (with their row version) or lost, at `instance.version`
    # (canonical keys, as `_native.read_patch` writes them).
    rows: _native.RowChanges = field(default_factory=_native.RowChanges)
    # No row record of the group exists yet: the rows are inserted, not upserted.
    rows_new: bool = False
    # `instance.client_schema` is written only when this is set (a new group, or its schema
    # just set): otherwise the stored one stays, and the flush of an advance does not carry
    # (and Postgres does not re-parse and re-write) a few kB of JSON per group.
    write_client_schema: bool = True


@dataclass(frozen=True)
class CatchupRow:
    """A row recorded after a client's cookie: `row_version` None is a tombstone."""

    table: str
    row_key: str  # canonical text
    row_version: str | None
