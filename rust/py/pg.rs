//! Bindings for `crate::pg` and `crate::version`: replication helpers and diagnostics.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

use crate::error::Result;
use crate::pg::describe::describe_frame;
use crate::pg::{encode_standby_status as encode_status, Lsn};
use crate::version;

#[pyfunction]
#[pyo3(signature = (write_lsn, flush_lsn, apply_lsn, now_us, reply))]
fn encode_standby_status(
    py: Python<'_>,
    write_lsn: u64,
    flush_lsn: u64,
    apply_lsn: u64,
    now_us: i64,
    reply: bool,
) -> Bound<'_, PyBytes> {
    PyBytes::new(
        py,
        &encode_status(Lsn(write_lsn), Lsn(flush_lsn), Lsn(apply_lsn), now_us, reply),
    )
}

#[pyfunction]
fn parse_lsn(text: &str) -> PyResult<u64> {
    Ok(text.parse::<Lsn>()?.0)
}

#[pyfunction]
fn format_lsn(lsn: u64) -> String {
    Lsn(lsn).to_string()
}

#[pyfunction]
fn lexi_version(value: u64) -> String {
    version::lexi_version(value)
}

#[pyfunction]
fn parse_lexi_version(text: &str) -> PyResult<u64> {
    Ok(version::parse_lexi_version(text)?)
}

#[pyfunction]
fn describe_replication_frames(py: Python<'_>, frames: Vec<PyBackedBytes>) -> PyResult<Vec<String>> {
    let lines = py.detach(move || frames.iter().map(|f| describe_frame(f)).collect::<Result<Vec<_>>>())?;
    Ok(lines)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_standby_status, m)?)?;
    m.add_function(wrap_pyfunction!(parse_lsn, m)?)?;
    m.add_function(wrap_pyfunction!(format_lsn, m)?)?;
    m.add_function(wrap_pyfunction!(lexi_version, m)?)?;
    m.add_function(wrap_pyfunction!(parse_lexi_version, m)?)?;
    m.add_function(wrap_pyfunction!(describe_replication_frames, m)?)?;
    Ok(())
}
