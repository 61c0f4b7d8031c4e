//! Bindings for `crate::ivm`: the query engine. Every method runs with the GIL released; patches
//! cross the boundary as JSON bytes serialised by Rust.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::ivm;
use crate::ivm::value::Val;

fn poisoned() -> PyErr {
    PyRuntimeError::new_err("a previous call panicked while holding the query engine; discard it")
}

#[pyclass(module = "zcache._native")]
pub struct QueryEngine {
    inner: Mutex<ivm::QueryEngine>,
}

impl QueryEngine {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut ivm::QueryEngine) -> crate::error::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut engine = self.inner.lock().map_err(|_| poisoned())?;
            f(&mut engine).map_err(PyErr::from)
        })
    }
}

impl QueryEngine {
    /// `(group, patch)` for the groups advanced, and the groups left for a later call. The
    /// caller's own `str` objects go back, so group names are neither copied nor re-created.
    fn advance_slice<'py>(
        &self,
        py: Python<'py>,
        groups: &[Bound<'py, PyString>],
        budget: u64,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let names = groups.iter().map(|g| g.to_str()).collect::<PyResult<Vec<&str>>>()?;
        let patches = self.with(py, |e| e.advance_within(&names, budget))?;
        let done = patches.len();
        let pairs = PyList::new(
            py,
            groups.iter().zip(patches.iter()).map(|(group, patch)| (group, PyBytes::new(py, patch))),
        )?;
        Ok((pairs, PyList::new(py, &groups[done..])?))
    }
}

#[pymethods]
impl QueryEngine {
    #[new]
    fn new(py: Python<'_>, replica_path: PathBuf) -> PyResult<Self> {
        let engine = py.detach(|| ivm::QueryEngine::open(&replica_path))?;
        Ok(QueryEngine {
            inner: Mutex::new(engine),
        })
    }

    fn add_query<'py>(
        &self,
        py: Python<'py>,
        group: &str,
        query_hash: &str,
        ast_json: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let patch = self.with(py, |e| e.add_query(group, query_hash, ast_json))?;
        Ok(PyBytes::new(py, &patch))
    }

    fn remove_query<'py>(&self, py: Python<'py>, group: &str, query_hash: &str) -> PyResult<Bound<'py, PyBytes>> {
        let patch = self.with(py, |e| e.remove_query(group, query_hash))?;
        Ok(PyBytes::new(py, &patch))
    }

    fn advance<'py>(&self, py: Python<'py>, groups: Vec<Bound<'py, PyString>>) -> PyResult<Bound<'py, PyList>> {
        let (patches, _) = self.advance_slice(py, &groups, u64::MAX)?;
        Ok(patches)
    }

    fn advance_within<'py>(
        &self,
        py: Python<'py>,
        groups: Vec<Bound<'py, PyString>>,
        budget: u64,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        self.advance_slice(py, &groups, budget)
    }

    fn select_baseline(&self, py: Python<'_>, sql: &str, params: Vec<Bound<'_, PyAny>>) -> PyResult<u64> {
        let values = params.iter().map(sql_param).collect::<PyResult<Vec<_>>>()?;
        self.with(py, |e| e.select_baseline(sql, &values))
    }

    fn remove_group(&self, py: Python<'_>, group: &str) -> PyResult<()> {
        self.with(py, |e| {
            e.remove_group(group);
            Ok(())
        })
    }

    fn group_version(&self, py: Python<'_>, group: &str) -> PyResult<String> {
        self.with(py, |e| e.group_version(group))
    }

    fn query_rows(&self, py: Python<'_>, group: &str, query_hash: &str) -> PyResult<u64> {
        self.with(py, |e| e.query_rows(group, query_hash))
    }

    fn query_error(&self, py: Python<'_>, group: &str, query_hash: &str) -> PyResult<Option<String>> {
        self.with(py, |e| e.query_error(group, query_hash))
    }

    fn fetch_rows<'py>(&self, py: Python<'py>, keys: Vec<(String, String)>) -> PyResult<Bound<'py, PyBytes>> {
        let rows = self.with(py, |e| e.fetch_rows(&keys))?;
        Ok(PyBytes::new(py, &rows))
    }

    fn client_tables<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let tables = self.with(py, |e| e.client_tables())?;
        Ok(PyBytes::new(py, &tables))
    }

    fn index_suggestions(&self, py: Python<'_>) -> PyResult<Vec<(String, Vec<String>)>> {
        self.with(py, |e| Ok(e.index_suggestions()))
    }

    fn statistics(&self, py: Python<'_>) -> PyResult<HashMap<String, u64>> {
        self.with(py, |e| {
            Ok(e.statistics().into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
    }
}

/// `(version, [(table, key, row_version | None, op_json)], {query hash: error})`.
type PatchRows = (String, Vec<(String, String, Option<String>, String)>, HashMap<String, String>);

#[pyfunction]
fn read_patch(py: Python<'_>, patch: &[u8]) -> PyResult<PatchRows> {
    let view = py.detach(|| ivm::engine::read_patch(patch))?;
    Ok((
        view.version,
        view.rows.into_iter().map(|r| (r.table, r.key, r.row_version, r.op)).collect(),
        view.query_errors.into_iter().collect(),
    ))
}

#[pyfunction]
fn canonical_json(py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<String>> {
    let out = py.detach(|| texts.iter().map(|t| ivm::engine::canonical_json(t)).collect::<crate::error::Result<Vec<_>>>())?;
    Ok(out)
}

/// A statement parameter: `None`, `int`, `float` or `str`.
fn sql_param(value: &Bound<'_, PyAny>) -> PyResult<Val> {
    if value.is_none() {
        Ok(Val::Null)
    } else if let Ok(i) = value.extract::<i64>() {
        Ok(Val::Int(i))
    } else if let Ok(f) = value.extract::<f64>() {
        Ok(Val::Real(f))
    } else if let Ok(s) = value.extract::<String>() {
        Ok(Val::Text(Arc::from(s)))
    } else {
        Err(PyTypeError::new_err(format!("a statement parameter must be None, int, float or str, not {}", value.get_type().name()?)))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<QueryEngine>()?;
    m.add_function(wrap_pyfunction!(read_patch, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_json, m)?)?;
    Ok(())
}
