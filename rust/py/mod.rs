//! The Python module `zcache._native`: registers classes and exceptions. Glue only, no logic.

mod errors;
mod ivm;
mod pg;
mod replica;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    pg::register(m)?;
    replica::register(m)?;
    ivm::register(m)?;
    Ok(())
}
