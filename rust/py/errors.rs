//! Rust errors become Python exceptions here and nowhere else.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(zcache._native, NativeError, PyException, "Base class of every error raised by the Rust core.");
create_exception!(zcache._native, MalformedError, NativeError, "Input bytes do not form a valid message.");
create_exception!(zcache._native, UnknownRelationError, NativeError, "A row change names a relation no Relation message described.");
create_exception!(zcache._native, ColumnCountMismatchError, NativeError, "A tuple's column count differs from its Relation message's.");

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::Malformed { .. } | Error::MalformedMessage { .. } => MalformedError::new_err(message),
            Error::UnknownRelation { .. } => UnknownRelationError::new_err(message),
            Error::ColumnCountMismatch { .. } => ColumnCountMismatchError::new_err(message),
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NativeError", py.get_type::<NativeError>())?;
    m.add("MalformedError", py.get_type::<MalformedError>())?;
    m.add("UnknownRelationError", py.get_type::<UnknownRelationError>())?;
    m.add("ColumnCountMismatchError", py.get_type::<ColumnCountMismatchError>())?;
    Ok(())
}
