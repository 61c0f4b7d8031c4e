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

    fn add_query_changes(&self, py: Python<'_>, group: &str, query_hash: &str, ast_json: &str) -> PyResult<GroupChanges> {
        let changes = self.with(py, |e| e.add_query_changes(group, query_hash, ast_json))?;
        Ok(group_changes(changes))
    }

    fn remove_query_changes(&self, py: Python<'_>, group: &str, query_hash: &str) -> PyResult<GroupChanges> {
        let changes = self.with(py, |e| e.remove_query_changes(group, query_hash))?;
        Ok(group_changes(changes))
    }

    fn advance_changes<'py>(
        &self,
        py: Python<'py>,
        groups: Vec<Bound<'py, PyString>>,
    ) -> PyResult<Vec<(Bound<'py, PyString>, GroupChanges)>> {
        let names = groups.iter().map(|g| g.to_str()).collect::<PyResult<Vec<&str>>>()?;
        let changes = self.with(py, |e| e.advance_changes(&names))?;
        Ok(groups.iter().cloned().zip(changes.into_iter().map(group_changes)).collect())
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

/// A group's patch for the view syncer: `(version, rows, {query hash: error})`.
type GroupChanges = (String, RowChanges, HashMap<String, String>);

fn group_changes(changes: ivm::engine::Changes) -> GroupChanges {
    (changes.version, RowChanges { inner: changes.rows }, changes.errors.into_iter().collect())
}

/// `(version, [(table, key, row_version | None, op_json)], {query hash: error})`.
type PatchRows = (String, Vec<(String, String, Option<String>, String)>, HashMap<String, String>);

#[pyfunction]
fn read_patch(py: Python<'_>, patch: &[u8]) -> PyResult<PatchRows> {
    let view = py.detach(|| ivm::engine::read_patch(patch))?;
    Ok((
        view.version,
        view.rows
            .into_iter()
            .map(|r| (r.table.to_string(), r.key.to_string(), r.row_version.map(|v| v.to_string()), r.op))
            .collect(),
        view.query_errors.into_iter().collect(),
    ))
}

/// A change's row ops, held in Rust (`ivm::engine::RowChanges`): merged from engine patches, then
/// turned into the poke's row ops and the CVR's row records without a Python object per row.
#[pyclass(module = "zcache._native")]
#[derive(Default)]
pub struct RowChanges {
    inner: ivm::engine::RowChanges,
}

#[pymethods]
impl RowChanges {
    #[new]
    fn new() -> Self {
        RowChanges::default()
    }

    /// Row records without client ops (what a CVR flush alone needs).
    #[staticmethod]
    fn of_records(records: Vec<(String, String, Option<String>)>) -> Self {
        let mut out = RowChanges::default();
        for (table, key, row_version) in records {
            let (table, key): (Arc<str>, Arc<str>) = (Arc::from(table), Arc::from(key));
            out.inner.insert(match row_version {
                None => ivm::engine::RowOp::deleted(table, key),
                Some(v) => ivm::engine::RowOp { table, key, row_version: Some(Arc::from(v)), op: String::new() },
            });
        }
        out
    }

    fn merge(&mut self, py: Python<'_>, patch: &[u8]) -> PyResult<(String, HashMap<String, String>)> {
        let inner = &mut self.inner;
        let (version, errors) = py.detach(|| inner.merge(patch))?;
        Ok((version, errors.into_iter().collect()))
    }

    fn absorb(&mut self, mut other: PyRefMut<'_, RowChanges>) {
        self.inner.absorb(&mut other.inner);
    }

    fn delete(&mut self, table: &str, key: &str) {
        self.inner.insert(ivm::engine::RowOp::deleted(Arc::from(table), Arc::from(key)));
    }

    fn diff_recorded(&mut self, py: Python<'_>, recorded: HashMap<(String, String), String>) {
        let inner = &mut self.inner;
        py.detach(|| inner.diff_recorded(&recorded));
    }

    fn records(&self) -> Vec<(&str, &str, Option<&str>)> {
        self.inner.rows().iter().map(|r| (&*r.table, &*r.key, r.row_version.as_deref())).collect()
    }

    fn poke_ops<'py>(
        &self,
        py: Python<'py>,
        clients_table: &str,
        mutations_table: &str,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let rows = self.inner.rows();
        let plain = PyList::new(
            py,
            rows.iter().filter(|r| &*r.table != clients_table && &*r.table != mutations_table).map(|r| r.op.as_str()),
        )?;
        let special = PyList::new(
            py,
            rows.iter()
                .filter(|r| &*r.table == clients_table || &*r.table == mutations_table)
                .map(|r| (&*r.table, r.op.as_str(), r.row_version.is_none())),
        )?;
        Ok((plain, special))
    }

    fn counts(&self) -> (usize, usize) {
        let dels = self.inner.rows().iter().filter(|r| r.row_version.is_none()).count();
        (self.inner.len() - dels, dels)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __bool__(&self) -> bool {
        !self.inner.is_empty()
    }
}

/// The row records of several groups' flushes, `[(group, patch version, rows)]`, as one set of
/// Postgres array literals: `((groups, tables, keys, row versions, patch versions) of the puts,
/// (groups, tables, keys, patch versions) of the deletes, puts, deletes)`.
#[pyfunction]
fn cvr_row_arrays(
    py: Python<'_>,
    flushes: Vec<(String, String, PyRef<'_, RowChanges>)>,
) -> ([String; 5], [String; 4], usize, usize) {
    let parts: Vec<(&str, &str, &ivm::engine::RowChanges)> =
        flushes.iter().map(|(g, v, rows)| (g.as_str(), v.as_str(), &rows.inner)).collect();
    py.detach(|| {
        let mut arrays = ivm::engine::RecordArrays::default();
        for (group, version, rows) in &parts {
            rows.write_records(group, version, &mut arrays);
        }
        let (puts, dels) = (arrays.puts, arrays.dels);
        let (put, del) = arrays.finish();
        (put, del, puts, dels)
    })
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
    m.add_class::<RowChanges>()?;
    m.add_function(wrap_pyfunction!(read_patch, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_json, m)?)?;
    m.add_function(wrap_pyfunction!(cvr_row_arrays, m)?)?;
    Ok(())
}
