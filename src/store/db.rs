//! The pool of whichever database is configured, for the journal's own
//! queries (its hot path binds native types on dedicated connections).
//! Private to the store: nothing outside `src/store/` sees a pool.

pub use super::Backend as Db;

use super::StoreError;

impl Db {
    pub fn describe(&self) -> String {
        match self {
            Db::Sqlite(p) => format!("sqlite:{}", p.connect_options().get_filename().display()),
            Db::Postgres(p) => {
                let o = p.connect_options();
                format!(
                    "postgres://{}@{}:{}/{}",
                    o.get_username(),
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("")
                )
            }
        }
    }

    /// An error while doing `action`, with what to do for the usual causes.
    pub fn error(&self, action: &str, e: sqlx::Error) -> StoreError {
        let mut message = format!("cannot {action}: {e}");
        if message.contains("database is locked") {
            message.push_str(": another process is using the database; wait for it to finish");
        }
        StoreError::Query {
            db: self.describe(),
            message,
        }
    }
}

/// Runs the same SQL on whichever pool `db` holds (`$1`-style placeholders
/// work on both: SQLite numbers them in order of first use).
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::db::Db::Sqlite($pool) => $body,
            $crate::store::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;
