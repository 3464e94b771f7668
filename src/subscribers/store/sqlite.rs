//! SQLite: the zero-setup default. One file (created with its folder on
//! first use), WAL mode so readers never wait for the writer, a busy
//! timeout so a second process waits a little before being told the
//! database is locked.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqlitePool, Transaction, TypeInfo, ValueRef};

use super::{Backend, Conn, Driver, Row, StoreError, Val};

/// How long a statement waits for another process's write to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteDriver {
    pool: SqlitePool,
    name: String,
}

impl SqliteDriver {
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
            // Safe with WAL (a crash loses at most the last commit, never
            // corrupts), and many times faster than FULL for imports.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // `remove` erases a person: overwrite deleted content with
            // zeros instead of leaving it readable in free pages.
            .pragma("secure_delete", "ON");
        let driver = |pool| SqliteDriver {
            pool,
            name: name.clone(),
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(busy_timeout + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| match classify(e) {
                Classified::Locked => StoreError::Locked { db: name.clone() },
                Classified::Other(m) => open_err(m),
            })?;
        let driver = driver(pool);
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

    fn backend(&self) -> Backend {
        Backend::Sqlite(self.pool.clone())
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

    fn scratch_table(&self) -> &'static str {
        "temp.tidings_import_seen"
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

struct SqliteTx(Transaction<'static, Sqlite>);

fn query(
    sql: &str,
    args: Vec<Val>,
) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
    for a in args {
        q = match a {
            Val::Null => q.bind(None::<String>),
            Val::Int(i) => q.bind(i),
            Val::Text(s) => q.bind(s),
        };
    }
    q
}

#[async_trait::async_trait]
impl Conn for SqliteTx {
    async fn exec(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, sqlx::Error> {
        Ok(query(sql, args)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn fetch(&mut self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, sqlx::Error> {
        let rows = query(sql, args).fetch_all(&mut *self.0).await?;
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

    async fn commit(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }
}
