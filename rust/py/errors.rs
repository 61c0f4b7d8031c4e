//! Rust errors become Python exceptions here and nowhere else.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(zcache._native, NativeError, PyException, "Base class of every error raised by the Rust core.");
create_exception!(zcache._native, MalformedError, NativeError, "Input bytes do not form a valid message.");
create_exception!(zcache._native, UnknownRelationError, NativeError, "A row change names a relation no Relation message described.");
create_exception!(zcache._native, ColumnCountMismatchError, NativeError, "A tuple's column count differs from its Relation message's.");
create_exception!(zcache._native, InvalidValueError, NativeError, "A column value does not decode as its type.");
create_exception!(zcache._native, UnsupportedTypeError, NativeError, "A value's type is not supported for replication.");
create_exception!(zcache._native, ReplicationProtocolError, NativeError, "The replication stream breaks its own rules.");
create_exception!(zcache._native, SchemaError, NativeError, "A published schema the replica cannot be built from.");
create_exception!(zcache._native, ResyncRequiredError, NativeError, "Upstream changed in a way that needs a new initial sync.");
create_exception!(zcache._native, UpstreamError, NativeError, "Talking to upstream Postgres failed (connect, auth, snapshot, copy).");
create_exception!(zcache._native, ReplicaStorageError, NativeError, "The replica's SQLite file or its directory failed.");
create_exception!(zcache._native, InvalidQueryError, NativeError, "A query AST that does not parse or does not fit the replica's tables.");
create_exception!(zcache._native, UnknownQueryError, NativeError, "A client group or query the query engine does not have.");

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::Malformed { .. } | Error::MalformedMessage { .. } => MalformedError::new_err(message),
            Error::UnknownRelation { .. } => UnknownRelationError::new_err(message),
            Error::ColumnCountMismatch { .. } => ColumnCountMismatchError::new_err(message),
            Error::InvalidValue { .. } => InvalidValueError::new_err(message),
            Error::UnsupportedType { .. } => UnsupportedTypeError::new_err(message),
            Error::Protocol { .. } => ReplicationProtocolError::new_err(message),
            Error::Schema { .. } => SchemaError::new_err(message),
            Error::ResyncRequired { .. } => ResyncRequiredError::new_err(message),
            Error::Upstream { .. } => UpstreamError::new_err(message),
            Error::Sqlite(_) | Error::Io(_) => ReplicaStorageError::new_err(message),
            Error::InvalidQuery { .. } => InvalidQueryError::new_err(message),
            Error::UnknownQuery { .. } => UnknownQueryError::new_err(message),
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("MalformedError", py.get_type::<MalformedError>())?;
    m.add("UnknownRelationError", py.get_type::<UnknownRelationError>())?;
    m.add("ColumnCountMismatchError", py.get_type::<ColumnCountMismatchError>())?;
    m.add("InvalidValueError", py.get_type::<InvalidValueError>())?;
    m.add("UnsupportedTypeError", py.get_type::<UnsupportedTypeError>())?;
    m.add("ReplicationProtocolError", py.get_type::<ReplicationProtocolError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;
    m.add("ResyncRequiredError", py.get_type::<ResyncRequiredError>())?;
    m.add("UpstreamError", py.get_type::<UpstreamError>())?;
    m.add("ReplicaStorageError", py.get_type::<ReplicaStorageError>())?;
    m.add("InvalidQueryError", py.get_type::<InvalidQueryError>())?;
    m.add("UnknownQueryError", py.get_type::<UnknownQueryError>())?;
    Ok(())
}
