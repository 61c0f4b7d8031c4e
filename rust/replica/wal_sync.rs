//! Makes the replica's commits durable after the fact, off the path that applies them.
//!
//! The writer commits with `synchronous = NORMAL`: a commit is in the replica's WAL file (in the
//! kernel's page cache) when it returns, so readers and a restarted process see it, but it is not
//! on the disk yet. Waiting for the disk at every commit (`synchronous = FULL`) put an fsync on
//! every change's way to the clients. [`WalSync::sync`] syncs the WAL file from another thread;
//! every commit that returned before it started is then on the disk, which is what upstream may
//! be told (the LSN confirmed as flushed). After a power loss the replica comes back at a
//! consistent earlier commit (SQLite's guarantee under `NORMAL`) that is not older than what was
//! confirmed, and the slot still holds everything after it.
//!
//! SQLite checkpoints sync the WAL before copying it into the database and the database after, so
//! commits a checkpoint moved out of the WAL are durable too, and a WAL that SQLite restarted from
//! its beginning holds nothing that was not.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

pub struct WalSync {
    wal: PathBuf,
    directory: PathBuf,
    /// The directory entry of the WAL file has been synced (once: SQLite keeps the file while the
    /// writer's connection is open, as it does itself at the first sync of a new WAL).
    directory_synced: AtomicBool,
}

impl WalSync {
    /// For the replica database at `replica_path` (its WAL is `<replica_path>-wal`).
    pub fn new(replica_path: &Path) -> Self {
        let mut wal = replica_path.as_os_str().to_owned();
        wal.push("-wal");
        let directory = match replica_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        WalSync { wal: PathBuf::from(wal), directory, directory_synced: AtomicBool::new(false) }
    }

    /// Waits until every commit made before this call is on the disk.
    pub fn sync(&self) -> Result<()> {
        match File::open(&self.wal) {
            Ok(file) => file.sync_data().map_err(|e| self.failed(&self.wal, e))?,
            // No WAL: the last connection closed it after checkpointing it into the (synced)
            // database, so nothing waits to be synced.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.failed(&self.wal, e)),
        }
        if !self.directory_synced.load(Ordering::Acquire) {
            File::open(&self.directory).and_then(|d| d.sync_all()).map_err(|e| self.failed(&self.directory, e))?;
            self.directory_synced.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn failed(&self, path: &Path, e: io::Error) -> Error {
        Error::Io(io::Error::new(e.kind(), format!("syncing {} to the disk: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn directory(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zcache-wal-sync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn syncs_the_wal_of_an_open_replica() {
        let dir = directory("open");
        let path = dir.join("replica.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE t (a); INSERT INTO t VALUES (1);")
            .unwrap();
        let wal = WalSync::new(&path);
        assert!(wal.wal.exists(), "the WAL is {}", wal.wal.display());
        wal.sync().unwrap();
        wal.sync().unwrap();
        assert!(wal.directory_synced.load(Ordering::Acquire));
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_wal_has_nothing_to_sync() {
        let dir = directory("missing");
        WalSync::new(&dir.join("replica.db")).sync().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wal_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = directory("unreadable");
        let path = dir.join("replica.db");
        // A replica path under a regular file: its WAL cannot be opened (not a directory).
        std::fs::write(&path, b"").unwrap();
        let inside_a_file = path.join("nested.db");
        let err = WalSync::new(&inside_a_file).sync().unwrap_err();
        assert!(matches!(err, Error::Io(_)));
        assert!(err.to_string().contains("nested.db-wal"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
