//! Bindings for `crate::replica`: the initial sync and the stream writer. Whole batches cross the
//! boundary (lists of COPY chunks, lists of replication frames); the work runs with the GIL
//! released.

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use crate::pg::schema::PublishedSchema;
use crate::pg::upstream::ConnectParams;
use crate::replica;

fn parse_schema(schema_json: &str) -> PyResult<PublishedSchema> {
    serde_json::from_str(schema_json).map_err(|e| {
        crate::error::Error::Schema { detail: format!("published schema JSON does not match the contract: {e}") }.into()
    })
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err("a previous call panicked while holding this object; discard it")
}

/// What one `ReplicaWriter.apply_frames` call did.
#[pyclass(module = "zcache._native", frozen, get_all)]
pub struct ApplyOutcome {
    transactions: u64,
    rows: u64,
    skipped_transactions: u64,
    state_version: String,
    ack_lsn: u64,
    in_transaction: bool,
    reply_requested: bool,
    schema_changed: bool,
}

#[pymethods]
impl ApplyOutcome {
    fn __repr__(&self) -> String {
        format!(
            "ApplyOutcome(transactions={}, rows={}, skipped_transactions={}, state_version={:?}, ack_lsn={}, in_transaction={}, reply_requested={}, schema_changed={})",
            self.transactions,
            self.rows,
            self.skipped_transactions,
            self.state_version,
            self.ack_lsn,
            self.in_transaction,
            self.reply_requested,
            self.schema_changed
        )
    }
}

impl From<replica::ApplyOutcome> for ApplyOutcome {
    fn from(o: replica::ApplyOutcome) -> Self {
        ApplyOutcome {
            transactions: o.transactions,
            rows: o.rows,
            skipped_transactions: o.skipped_transactions,
            state_version: o.state_version,
            ack_lsn: o.ack_lsn,
            in_transaction: o.in_transaction,
            reply_requested: o.reply_requested,
            schema_changed: o.schema_changed,
        }
    }
}

#[pyclass(module = "zcache._native")]
pub struct ReplicaWriter {
    inner: Mutex<replica::ReplicaWriter>,
    path: PathBuf,
}

/// Syncs a replica's WAL to the disk (`replica::WalSync`): a separate object, so that a sync runs
/// in one thread while the writer applies the next batch in another.
#[pyclass(module = "zcache._native", frozen)]
pub struct ReplicaWalSync {
    inner: replica::WalSync,
}

#[pymethods]
impl ReplicaWalSync {
    /// Returns once every commit made before the call is on the disk.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.sync().map_err(PyErr::from))
    }
}

#[pymethods]
impl ReplicaWriter {
    #[new]
    fn new(py: Python<'_>, path: PathBuf, ddl_message_prefix: String) -> PyResult<Self> {
        let writer = py.detach(|| replica::ReplicaWriter::open(&path, &ddl_message_prefix))?;
        Ok(ReplicaWriter { inner: Mutex::new(writer), path })
    }

    /// What makes this writer's commits durable (see `ApplyOutcome.ack_lsn`).
    fn wal_sync(&self) -> ReplicaWalSync {
        ReplicaWalSync { inner: replica::WalSync::new(&self.path) }
    }

    fn apply_frames(&self, py: Python<'_>, frames: Vec<PyBackedBytes>) -> PyResult<ApplyOutcome> {
        let outcome = py.detach(|| {
            let mut writer = self.inner.lock().map_err(|_| poisoned())?;
            writer.apply_frames(&frames).map_err(PyErr::from)
        })?;
        Ok(outcome.into())
    }

    fn add_indexes(&self, py: Python<'_>, requests: Vec<(String, Vec<String>)>) -> PyResult<Vec<bool>> {
        py.detach(|| self.inner.lock().map_err(|_| poisoned())?.add_indexes(&requests).map_err(PyErr::from))
    }

    fn indexes(&self, py: Python<'_>) -> PyResult<Vec<(String, Vec<String>)>> {
        py.detach(|| self.inner.lock().map_err(|_| poisoned())?.indexes().map_err(PyErr::from))
    }

    fn reset_session(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.lock().map_err(|_| poisoned())?.reset_session().map_err(PyErr::from))
    }

    #[getter]
    fn state_version(&self) -> PyResult<String> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.state_version().to_owned())
    }

    #[getter]
    fn replica_version(&self) -> PyResult<String> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.identity().replica_version.clone())
    }

    #[getter]
    fn slot(&self) -> PyResult<String> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.identity().slot.clone())
    }

    #[getter]
    fn publications(&self) -> PyResult<Vec<String>> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.identity().publications.clone())
    }

    #[getter]
    fn watermark_lsn(&self) -> PyResult<u64> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.watermark_lsn().0)
    }
}

#[pyclass(module = "zcache._native")]
pub struct InitialSync {
    /// Shared by the copying threads; taken (exclusively) by `finish`.
    inner: RwLock<Option<replica::InitialSync>>,
}

impl InitialSync {
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&replica::InitialSync) -> crate::error::Result<T> + Send) -> PyResult<T> {
        py.detach(|| {
            let guard = self.inner.read().map_err(|_| poisoned())?;
            let sync = guard.as_ref().ok_or_else(|| PyRuntimeError::new_err("the initial sync has finished"))?;
            f(sync).map_err(PyErr::from)
        })
    }
}

#[pymethods]
impl InitialSync {
    #[new]
    #[pyo3(signature = (staging_path, schema_json, *, consistent_point, slot, publications, app_id, shard_num, ddl_detection))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        staging_path: PathBuf,
        schema_json: &str,
        consistent_point: u64,
        slot: String,
        publications: Vec<String>,
        app_id: String,
        shard_num: u32,
        ddl_detection: bool,
    ) -> PyResult<Self> {
        let schema = parse_schema(schema_json)?;
        let config = replica::ReplicaConfig { consistent_point, slot, publications, app_id, shard_num, ddl_detection };
        let sync = py.detach(|| replica::InitialSync::create(&staging_path, schema, config))?;
        Ok(InitialSync { inner: RwLock::new(Some(sync)) })
    }

    fn copy_statement(&self, py: Python<'_>, oid: u32) -> PyResult<String> {
        self.with(py, |s| s.copy_statement(oid))
    }

    fn copy_chunks(&self, py: Python<'_>, oid: u32, chunks: Vec<PyBackedBytes>) -> PyResult<()> {
        self.with(py, |s| {
            let mut data = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
            for chunk in &chunks {
                data.extend_from_slice(chunk);
            }
            drop(chunks);
            s.copy_chunks(oid, &data)
        })
    }

    #[pyo3(signature = (oids, *, snapshot, host, port, user, password, dbname, workers))]
    #[allow(clippy::too_many_arguments)]
    fn copy_tables(
        &self,
        py: Python<'_>,
        oids: Vec<u32>,
        snapshot: String,
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        dbname: String,
        workers: usize,
    ) -> PyResult<()> {
        let params = ConnectParams { host, port, user, password, dbname };
        self.with(py, |s| s.copy_tables(&params, &snapshot, &oids, workers))
    }

    #[getter]
    fn tables_done(&self) -> PyResult<u64> {
        let guard = self.inner.read().map_err(|_| poisoned())?;
        Ok(guard.as_ref().map_or(0, replica::InitialSync::tables_done))
    }

    fn finish_table(&self, py: Python<'_>, oid: u32) -> PyResult<u64> {
        self.with(py, |s| s.finish_table(oid))
    }

    #[getter]
    fn rows(&self) -> PyResult<u64> {
        let guard = self.inner.read().map_err(|_| poisoned())?;
        Ok(guard.as_ref().map_or(0, replica::InitialSync::rows))
    }

    fn finish(&self, py: Python<'_>, replica_path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let sync = self
                .inner
                .write()
                .map_err(|_| poisoned())?
                .take()
                .ok_or_else(|| PyRuntimeError::new_err("the initial sync has finished"))?;
            sync.finish(&replica_path).map_err(PyErr::from)
        })
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ApplyOutcome>()?;
    m.add_class::<ReplicaWriter>()?;
    m.add_class::<ReplicaWalSync>()?;
    m.add_class::<InitialSync>()?;
    Ok(())
}
