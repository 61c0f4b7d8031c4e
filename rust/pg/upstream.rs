//! The one place the Rust core talks to Postgres itself: the initial sync's table copies.
//!
//! Each copy runs on its own connection in a REPEATABLE READ transaction on the snapshot the
//! replication slot exported, so every table is read exactly as of the slot's consistent point.
//! The COPY output is handed on in chunks of about [`CHUNK_BYTES`]; what the chunks mean is the
//! business of [`crate::pg::copy`]. Plain TCP or Unix socket only: Python uses this path only when
//! its own connection does not use TLS.

use std::io::BufRead;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

/// Bytes of COPY output per chunk: large enough to amortise the hand-over, small enough that the
/// queued chunks stay a few MiB.
pub const CHUNK_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to connect: the parameters psycopg resolved (DSN, environment, passfile) for
/// the connection it already has.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// A host name, an address, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl ConnectParams {
    fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// A connection that reads tables in the exported snapshot.
pub struct SnapshotReader {
    client: Client,
    params: ConnectParams,
    snapshot: String,
}

impl SnapshotReader {
    pub fn connect(params: &ConnectParams, snapshot: &str) -> Result<Self> {
        let mut config = Config::new();
        config
            .host(&params.host)
            .port(params.port)
            .user(&params.user)
            .dbname(&params.dbname)
            .application_name("zcache-initial-sync")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(password) = &params.password {
            config.password(password);
        }
        let client = config.connect(NoTls).map_err(|e| upstream_error(params, "connecting", &e))?;
        Ok(SnapshotReader { client, params: params.clone(), snapshot: snapshot.to_owned() })
    }

    /// Runs `statement` (a `COPY … TO STDOUT`) in a new transaction on the snapshot and gives
    /// `sink` its output in chunks of about [`CHUNK_BYTES`]. A `sink` error stops the copy.
    pub fn copy(&mut self, statement: &str, mut sink: impl FnMut(Vec<u8>) -> Result<()>) -> Result<()> {
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            self.snapshot.replace('\'', "''")
        );
        let params = &self.params;
        let snapshot = &self.snapshot;
        self.client.batch_execute(&begin).map_err(|e| match e.as_db_error() {
            Some(db) => Error::Upstream {
                detail: format!(
                    "the exported snapshot {snapshot} cannot be imported on {} ({}): the replication connection \
                     that exported it closed or was not idle; the initial sync must start over",
                    params.describe(),
                    db.message()
                ),
            },
            None => upstream_error(params, "importing the snapshot", &e),
        })?;
        let mut reader = self.client.copy_out(statement).map_err(|e| upstream_error(params, statement, &e))?;
        let mut data = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
        loop {
            let message = reader.fill_buf().map_err(|e| io_upstream_error(params, statement, &e))?;
            if message.is_empty() {
                break;
            }
            data.extend_from_slice(message);
            let n = message.len();
            reader.consume(n);
            if data.len() >= CHUNK_BYTES {
                sink(std::mem::replace(&mut data, Vec::with_capacity(CHUNK_BYTES + (64 << 10))))?;
            }
        }
        drop(reader);
        if !data.is_empty() {
            sink(data)?;
        }
        self.client.batch_execute("COMMIT").map_err(|e| upstream_error(params, "COMMIT", &e))
    }
}

/// An actionable message for what went wrong talking to upstream.
fn upstream_error(params: &ConnectParams, doing: &str, e: &postgres::Error) -> Error {
    let target = params.describe();
    let detail = match e.as_db_error() {
        Some(db) if *db.code() == SqlState::INVALID_PASSWORD || *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            format!("authentication failed for {target}: {} (check the user and password of ZERO_UPSTREAM_DB)", db.message())
        }
        Some(db) => format!("{doing} on {target} failed: {} (SQLSTATE {})", db.message(), db.code().code()),
        None if e.is_closed() => format!("{doing} on {target}: the connection closed unexpectedly"),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{doing} on {target} failed: {e}: {source} (is Postgres running and reachable there?)"),
            None => format!("{doing} on {target} failed: {e}"),
        },
    };
    Error::Upstream { detail }
}

/// Errors while reading the COPY output come as `io::Error`s around the client's error.
fn io_upstream_error(params: &ConnectParams, doing: &str, e: &std::io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<postgres::Error>()) {
        Some(pg) => upstream_error(params, doing, pg),
        None => Error::Upstream { detail: format!("{doing} on {} failed: {e}", params.describe()) },
    }
}
