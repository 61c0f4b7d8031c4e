//! The initial sync's multi-row `INSERT`, bound and stepped through SQLite's C API.
//!
//! Every copied row goes through one writer thread, so its per-value cost is the sync's. Through
//! rusqlite each bound text is copied by SQLite (`SQLITE_TRANSIENT`) and each value passes
//! through a conversion enum; here text is bound in place (`SQLITE_STATIC`) from the decoded
//! batch, which outlives the step that reads it. That took a fifth of the writer thread's
//! instructions away (bench/README.md, Replication).
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rusqlite::ffi;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// One decoded field, ready to bind; text is a range of its batch's text buffer (16 bytes: the
/// queued batches are most of the sync's memory).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text { start: u32, len: u32 },
}

/// A prepared multi-row `INSERT` of a connection that outlives it.
pub(crate) struct BulkInsert<'c> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    parameters: usize,
    connection: PhantomData<&'c Connection>,
}

impl<'c> BulkInsert<'c> {
    /// Prepares `sql` (one statement) on `conn`.
    pub(crate) fn prepare(conn: &'c Connection, sql: &str) -> Result<Self> {
        let length = c_int::try_from(sql.len())
            .map_err(|_| Error::Schema { detail: "an INSERT statement of 2 GiB or more".into() })?;
        // SAFETY: the handle is the live connection's, borrowed for 'c; SQLite only reads `sql`
        // (`length` bytes) during the call.
        let (db, stmt) = unsafe {
            let db = NonNull::new(conn.handle()).ok_or_else(closed)?;
            let mut stmt = ptr::null_mut();
            let rc = ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr().cast(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                ptr::null_mut(),
            );
            if rc != ffi::SQLITE_OK {
                return Err(sqlite_error(db, rc));
            }
            (db, NonNull::new(stmt).ok_or_else(|| Error::Schema { detail: format!("no statement in {sql:?}") })?)
        };
        // SAFETY: `stmt` is the statement just prepared.
        let parameters = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) };
        Ok(BulkInsert { db, stmt, parameters: usize::try_from(parameters).unwrap_or(0), connection: PhantomData })
    }

    /// Binds `cells` (exactly one value per parameter, text as ranges of `text`) and runs the
    /// statement once.
    pub(crate) fn run(&mut self, cells: &[Cell], text: &[u8]) -> Result<()> {
        if cells.len() != self.parameters {
            return Err(Error::Protocol {
                detail: format!("{} values for an INSERT of {} parameters", cells.len(), self.parameters),
            });
        }
        let stmt = self.stmt.as_ptr();
        for (index, cell) in cells.iter().enumerate() {
            // `index` < `parameters`, which came from a c_int.
            let position = index as c_int + 1;
            // SAFETY: `stmt` is live; bound text points into `text`, borrowed until this call
            // returns, and is read only by the step below. Every run binds every parameter
            // before it steps, so text left bound from an earlier call is never read.
            let rc = unsafe {
                match *cell {
                    Cell::Null => ffi::sqlite3_bind_null(stmt, position),
                    Cell::Integer(i) => ffi::sqlite3_bind_int64(stmt, position, i),
                    Cell::Real(f) => ffi::sqlite3_bind_double(stmt, position, f),
                    Cell::Text { start, len } => {
                        let bytes = text.get(start as usize..start as usize + len as usize).ok_or_else(|| {
                            Error::Protocol { detail: format!("text range {start}+{len} outside a batch of {} bytes", text.len()) }
                        })?;
                        ffi::sqlite3_bind_text(stmt, position, bytes.as_ptr().cast(), len as c_int, ffi::SQLITE_STATIC())
                    }
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.error(rc));
            }
        }
        // SAFETY: `stmt` is live and fully bound.
        let rc = unsafe { ffi::sqlite3_step(stmt) };
        // SAFETY: as above; the reset's code repeats the step's, which is reported instead.
        unsafe { ffi::sqlite3_reset(stmt) };
        if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            Err(self.error(rc))
        }
    }

    fn error(&self, rc: c_int) -> Error {
        // SAFETY: the connection is live for 'c.
        unsafe { sqlite_error(self.db, rc) }
    }
}

impl Drop for BulkInsert<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is this value's own and finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The connection's error message for `rc`, as rusqlite reports its own.
///
/// # Safety
/// `db` must be a live connection handle.
unsafe fn sqlite_error(db: NonNull<ffi::sqlite3>, rc: c_int) -> Error {
    let message = ffi::sqlite3_errmsg(db.as_ptr());
    let message = (!message.is_null()).then(|| CStr::from_ptr(message).to_string_lossy().into_owned());
    Error::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message))
}

fn closed() -> Error {
    Error::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_MISUSE), Some("the connection is closed".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().expect("opens");
        conn.execute_batch(r#"CREATE TABLE "t" ("id" INTEGER PRIMARY KEY, "label" TEXT, "score" REAL)"#).expect("creates");
        conn
    }

    fn rows(conn: &Connection) -> Vec<(i64, Option<String>, Option<f64>)> {
        let mut stmt = conn.prepare(r#"SELECT "id", "label", "score" FROM "t" ORDER BY "id""#).expect("prepares");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).expect("queries").collect::<rusqlite::Result<_>>().expect("rows")
    }

    #[test]
    fn binds_every_kind_of_value_and_reuses_the_statement() {
        let conn = table();
        let mut insert = BulkInsert::prepare(&conn, r#"INSERT INTO "t" VALUES (?, ?, ?), (?, ?, ?)"#).expect("prepares");
        let text = "alphabeta".as_bytes();
        let first = [
            Cell::Integer(1),
            Cell::Text { start: 0, len: 5 },
            Cell::Real(0.5),
            Cell::Integer(2),
            Cell::Null,
            Cell::Null,
        ];
        insert.run(&first, text).expect("inserts");
        let other = "beta".to_owned();
        let second = [
            Cell::Integer(3),
            Cell::Text { start: 0, len: 4 },
            Cell::Integer(7),
            Cell::Integer(4),
            Cell::Text { start: 0, len: 0 },
            Cell::Real(-1.0),
        ];
        insert.run(&second, other.as_bytes()).expect("inserts again");
        drop(insert);
        assert_eq!(
            rows(&conn),
            vec![
                (1, Some("alpha".into()), Some(0.5)),
                (2, None, None),
                (3, Some("beta".into()), Some(7.0)),
                (4, Some(String::new()), Some(-1.0)),
            ]
        );
    }

    #[test]
    fn a_wrong_value_count_or_text_range_is_refused_before_any_step() {
        let conn = table();
        let mut insert = BulkInsert::prepare(&conn, r#"INSERT INTO "t" VALUES (?, ?, ?)"#).expect("prepares");
        let err = insert.run(&[Cell::Integer(1)], b"").expect_err("too few values");
        assert!(err.to_string().contains("1 values for an INSERT of 3 parameters"), "{err}");
        let err = insert.run(&[Cell::Integer(1), Cell::Text { start: 2, len: 3 }, Cell::Null], b"abcd").expect_err("outside");
        assert!(err.to_string().contains("text range 2+3 outside a batch of 4 bytes"), "{err}");
        drop(insert);
        assert!(rows(&conn).is_empty());
    }

    #[test]
    fn sqlite_errors_carry_sqlite_s_message() {
        let conn = table();
        let err = BulkInsert::prepare(&conn, r#"INSERT INTO "missing" VALUES (?)"#).err().expect("no such table");
        assert!(err.to_string().contains("no such table: missing"), "{err}");
        let mut insert = BulkInsert::prepare(&conn, r#"INSERT INTO "t" VALUES (?, ?, ?)"#).expect("prepares");
        insert.run(&[Cell::Integer(1), Cell::Null, Cell::Null], b"").expect("inserts");
        let err = insert.run(&[Cell::Integer(1), Cell::Null, Cell::Null], b"").expect_err("duplicate key");
        assert!(err.to_string().contains("UNIQUE constraint failed: t.id"), "{err}");
        insert.run(&[Cell::Integer(2), Cell::Null, Cell::Null], b"").expect("usable after an error");
    }
}
