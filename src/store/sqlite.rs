//! SQLite: the zero-setup default. One file (created with its folder on
//! first use), WAL mode so readers never wait for the writer, a busy
//! timeout so a second process waits a little before being told the
//! database is locked.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqlitePool, Transaction, TypeInfo, ValueRef};

use libsqlite3_sys as ffi;

use super::{Conn, Driver, Kept, KeptConn, Row, StoreError, Val};

/// How long a statement waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteDriver {
    pool: SqlitePool,
    name: String,
}

impl SqliteDriver {
    /// The connection kept in `kept`, opened from the pool when there is
    /// none (or it held the other database's).
    async fn kept_connection<'k>(
        &self,
        kept: &'k mut Kept,
    ) -> Result<&'k mut sqlx::pool::PoolConnection<Sqlite>, StoreError> {
        if !matches!(kept.0, KeptConn::Sqlite(_)) {
            kept.0 = KeptConn::Sqlite(self.pool.acquire().await.map_err(|e| self.error(e))?);
        }
        match &mut kept.0 {
            KeptConn::Sqlite(conn) => Ok(conn),
            _ => unreachable!("set above"),
        }
    }

    /// Opens (creating if missing) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<SqliteDriver, StoreError> {
        Self::open_with(path, BUSY_TIMEOUT).await
    }

    pub async fn open_with(
        path: &Path,
        busy_timeout: Duration,
    ) -> Result<SqliteDriver, StoreError> {
        let name = path.display().to_string();
        let open_err = |message: String| StoreError::Open {
            db: name.clone(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Safe with WAL: a killed process loses no commit, a power
            // loss may roll back those since the last checkpoint (never
            // corrupts); many times faster than FULL for imports. The send
            // journal's guarantee rests on this (see README, Sending).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // `remove` erases a person: overwrite deleted content with
            // zeros instead of leaving it readable in free pages.
            .pragma("secure_delete", "ON")
            // Import scratch tables and sorts spill to temp files: memory
            // stays flat whatever the size of the file.
            .pragma("temp_store", "FILE")
            // Sorts (duplicate check, index builds) may use a second core.
            .pragma("threads", "2")
            // For a new file only: fewer, fuller pages made a bulk import
            // about 15% faster than the 4 KiB default.
            .page_size(16384);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| match classify(e) {
                Classified::Locked => StoreError::Locked { db: name.clone() },
                Classified::Other(m) => open_err(m),
            })?;
        let driver = SqliteDriver { pool, name };
        sqlx::migrate!("migrations/sqlite")
            .run(&driver.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => driver.error(e),
                other => StoreError::Migrate {
                    db: driver.name.clone(),
                    message: format!("{other} (was it written by another version of tidings?)"),
                },
            })?;
        Ok(driver)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

enum Classified {
    Locked,
    Other(String),
}

fn classify(e: sqlx::Error) -> Classified {
    if let sqlx::Error::Database(db) = &e {
        let code: i64 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        // Primary codes 5 (SQLITE_BUSY) and 6 (SQLITE_LOCKED), with any
        // extended code in the high bits.
        if matches!(code & 0xff, 5 | 6) {
            return Classified::Locked;
        }
        return Classified::Other(db.message().to_string());
    }
    Classified::Other(e.to_string())
}

#[async_trait::async_trait]
impl Driver for SqliteDriver {
    fn name(&self) -> &str {
        &self.name
    }

    async fn begin(&self, write: bool) -> Result<Box<dyn Conn>, StoreError> {
        // IMMEDIATE takes the write lock now: waiting (busy timeout) or
        // failing happens here, not after half the work.
        let tx = if write {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        };
        Ok(Box::new(SqliteTx(tx.map_err(|e| self.error(e))?)))
    }

    async fn run(&self, sql: &str, args: Vec<Val>) -> Result<u64, StoreError> {
        Ok(query(sql, args)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected())
    }

    async fn query(&self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        let rows = query(sql, args)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        to_rows(&rows).map_err(|e| self.error(e))
    }

    async fn run_kept(
        &self,
        kept: &mut Kept,
        sql: &str,
        args: Vec<Val>,
    ) -> Result<u64, StoreError> {
        let conn = self.kept_connection(kept).await?;
        Ok(query(sql, args)
            .execute(&mut **conn)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected())
    }

    async fn begin_kept<'k>(&self, kept: &'k mut Kept) -> Result<Box<dyn Conn + 'k>, StoreError> {
        let conn = self.kept_connection(kept).await?;
        let tx = sqlx::Connection::begin(&mut **conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Box::new(SqliteTx(tx)))
    }

    fn error(&self, e: sqlx::Error) -> StoreError {
        match classify(e) {
            Classified::Locked => StoreError::Locked {
                db: self.name.clone(),
            },
            Classified::Other(message) => StoreError::Query {
                db: self.name.clone(),
                message,
            },
        }
    }

    fn exclusive_writes(&self) -> bool {
        true
    }

    fn attribute_keys_sql(&self) -> &'static str {
        "SELECT DISTINCT j.key FROM subscribers s, json_each(s.attributes) j ORDER BY 1"
    }

    fn temp_schema(&self) -> &'static str {
        "temp"
    }

    /// The WAL still holds the pages as they were before the erasure:
    /// copy the log into the database and truncate it to nothing.
    async fn erase_traces(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

struct SqliteTx<'c>(Transaction<'c, Sqlite>);

fn query(
    sql: &str,
    args: Vec<Val>,
) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    let (sql, args) = positional(sql, args);
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for a in args {
        q = match a {
            Val::Null => q.bind(None::<String>),
            Val::NullInt => q.bind(None::<i64>),
            Val::Int(i) => q.bind(i),
            Val::Text(s) => q.bind(s),
        };
    }
    q
}

/// Rewrites `$N` placeholders as plain `?`, with the values in order of
/// appearance (repeated where a `$N` is). SQLite finds a named parameter's
/// number by a linear scan of all names, so binding thousands of `$N` in one
/// statement takes quadratic time (56 s for 200,000 staged rows); plain `?`
/// binds in order without a lookup.
fn positional(sql: &str, args: Vec<Val>) -> (String, Vec<Val>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::with_capacity(args.len());
    let bytes = sql.as_bytes();
    let (mut copied, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = (i + 1..bytes.len())
                    .find(|&j| !bytes[j].is_ascii_digit())
                    .unwrap_or(bytes.len());
                order.push(sql[i + 1..end].parse::<usize>().unwrap_or(0));
                out.push_str(&sql[copied..i]);
                out.push('?');
                copied = end;
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&sql[copied..]);
    // Each value is moved at its last use and copied before that, so a
    // large one used once (a batch's JSON) is never copied.
    let mut uses = vec![0usize; args.len()];
    for &n in &order {
        if let Some(u) = n.checked_sub(1).and_then(|k| uses.get_mut(k)) {
            *u += 1;
        }
    }
    let mut args: Vec<Option<Val>> = args.into_iter().map(Some).collect();
    let ordered = order
        .iter()
        .map(|&n| {
            let Some(k) = n.checked_sub(1).filter(|&k| k < args.len()) else {
                return Val::Null;
            };
            uses[k] -= 1;
            if uses[k] == 0 {
                args[k].take().unwrap_or(Val::Null)
            } else {
                args[k].clone().unwrap_or(Val::Null)
            }
        })
        .collect();
    (out, ordered)
}

/// Rows as [`Val`]s.
fn to_rows(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<Row>, sqlx::Error> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let raw = r.try_get_raw(i)?;
                    if raw.is_null() {
                        return Ok(Val::Null);
                    }
                    // The value's own storage class, not the column's.
                    let int = matches!(raw.type_info().name(), "INTEGER" | "BOOLEAN");
                    Ok(if int {
                        Val::Int(r.try_get_unchecked::<i64, _>(i)?)
                    } else {
                        Val::Text(r.try_get_unchecked::<String, _>(i)?)
                    })
                })
                .collect::<Result<Vec<Val>, sqlx::Error>>()
                .map(Row)
        })
        .collect()
}

#[async_trait::async_trait]
impl<'c> Conn for SqliteTx<'c> {
    async fn exec(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, sqlx::Error> {
        Ok(query(sql, args)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn fetch(&mut self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, sqlx::Error> {
        to_rows(&query(sql, args).fetch_all(&mut *self.0).await?)
    }

    async fn insert_rows(
        &mut self,
        insert: &str,
        width: usize,
        values: Vec<Val>,
    ) -> Result<u64, sqlx::Error> {
        let mut handle = self.0.lock_handle().await?;
        let db = handle.as_raw_handle();
        let placeholders = vec!["?"; width].join(", ");
        bulk_insert(
            db,
            &format!("{insert} VALUES ({placeholders})"),
            width,
            &values,
        )
    }

    async fn commit(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }
}

/// Inserts rows with one statement prepared once and run per row, the
/// values bound in place (`SQLITE_STATIC`: no copy). Through sqlx each
/// value costs three allocations and two copies, which made binding the
/// bottleneck of an import; this is sqlx's documented escape hatch for such
/// cases (`lock_handle`): its worker makes no calls on the connection while
/// the handle is held. Runs inside the caller's open transaction.
fn bulk_insert(
    db: std::ptr::NonNull<ffi::sqlite3>,
    sql: &str,
    width: usize,
    values: &[Val],
) -> Result<u64, sqlx::Error> {
    use std::ffi::c_int;

    /// Finalizes the statement however the loop ends.
    struct Statement(*mut ffi::sqlite3_stmt);
    impl Drop for Statement {
        fn drop(&mut self) {
            // SAFETY: prepared below on this connection, finalized once.
            unsafe { ffi::sqlite3_finalize(self.0) };
        }
    }
    let db = db.as_ptr();
    let error = |db: *mut ffi::sqlite3| {
        // SAFETY: `db` is a valid open connection; the message is copied
        // before any other call on it.
        let message = unsafe { std::ffi::CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
            .to_string_lossy()
            .into_owned();
        sqlx::Error::Protocol(format!("bulk insert: {message}"))
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: `db` is valid while the handle is locked; `sql` is passed with
    // its length, so it needs no terminating NUL.
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(
            db,
            sql.as_ptr().cast(),
            c_int::try_from(sql.len()).unwrap_or(c_int::MAX),
            &mut raw,
            std::ptr::null_mut(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(error(db));
    }
    let statement = Statement(raw);
    let mut inserted = 0u64;
    for row in values.chunks(width) {
        for (i, value) in row.iter().enumerate() {
            let index = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
            // SAFETY: the statement is live; text stays borrowed from
            // `values`, which outlives every step of this statement.
            let rc = unsafe {
                match value {
                    Val::Null | Val::NullInt => ffi::sqlite3_bind_null(statement.0, index),
                    Val::Int(n) => ffi::sqlite3_bind_int64(statement.0, index, *n),
                    Val::Text(t) => ffi::sqlite3_bind_text64(
                        statement.0,
                        index,
                        t.as_ptr().cast(),
                        t.len() as u64,
                        ffi::SQLITE_STATIC(),
                        ffi::SQLITE_UTF8 as u8,
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(error(db));
            }
        }
        // SAFETY: all parameters are bound; reset makes it ready again.
        let rc = unsafe { ffi::sqlite3_step(statement.0) };
        if rc != ffi::SQLITE_DONE {
            let e = error(db);
            unsafe { ffi::sqlite3_reset(statement.0) };
            return Err(e);
        }
        unsafe { ffi::sqlite3_reset(statement.0) };
        inserted += 1;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional() {
        let (sql, args) = positional(
            "SELECT '$1', $2, $1 || $10",
            (1..=10).map(Val::Int).collect(),
        );
        assert_eq!(sql, "SELECT '$1', ?, ? || ?");
        assert_eq!(args, [Val::Int(2), Val::Int(1), Val::Int(10)]);
    }
}
