"""Client view records (CVRs): what each client group has been sent, persisted in Postgres so
that a client reconnecting with its cookie — to this process or after a restart — receives only
what changed since. `model` holds the in-memory records, `schema` the tables, `store` the I/O."""

from zcache.cvr.model import (
    NEW_GROUP_STATE,
    CatchupRow,
    CVRFlush,
    CVRSnapshot,
    CVRVersion,
    DesireRecord,
    InstanceRecord,
    QueryRecord,
)
from zcache.cvr.schema import CVRSchemaError, cvr_schema
from zcache.cvr.store import CVRRowsBehind, CVRStore, CVRStoreUnavailable

__all__ = [
    "NEW_GROUP_STATE",
    "CVRFlush",
    "CVRRowsBehind",
    "CVRSchemaError",
    "CVRSnapshot",
    "CVRStore",
    "CVRStoreUnavailable",
    "CVRVersion",
    "CatchupRow",
    "DesireRecord",
    "InstanceRecord",
    "QueryRecord",
    "cvr_schema",
]
