//! SQL the send journal and the send sources share with the subscriber
//! store: the database is the store's (`subscribers::Store::open` opens it
//! and applies every migration, the journal's included); `Db` is its pool.

pub use super::Backend as Db;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {db}: cannot {action}: {message}")]
    Query {
        db: String,
        action: String,
        message: String,
    },
    /// The request conflicts with the state in the database.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

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
    pub fn error(&self, action: &str, e: sqlx::Error) -> DbError {
        let mut message = e.to_string();
        if message.contains("database is locked") {
            message.push_str(": another process is using the database; wait for it to finish");
        }
        DbError::Query {
            db: self.describe(),
            action: action.to_string(),
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

use crate::subscribers::Recipient;

impl Db {
    /// Of these addresses (by key), the ones that must not be mailed, with
    /// why: unsubscribed, bounced, or suppressed (removed). Two queries per
    /// call, whatever the number of addresses.
    pub async fn blocked(
        &self,
        recipients: &[Recipient],
    ) -> Result<std::collections::HashMap<String, String>, DbError> {
        let mut out = std::collections::HashMap::new();
        if recipients.is_empty() {
            return Ok(out);
        }
        let keys: Vec<String> = recipients.iter().map(Recipient::key).collect();
        let hashes: Vec<String> = recipients
            .iter()
            .map(|r| crate::subscribers::email_hash_hex(&r.email))
            .collect();
        let list = (1..=keys.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Only numbered placeholders are interpolated; values are bound.
        let by_status = format!(
            "SELECT email_key, status FROM subscribers WHERE status <> 'active' AND email_key IN ({list})"
        );
        let by_hash = format!("SELECT email_hash FROM suppressions WHERE email_hash IN ({list})");
        let err = |e| self.error("read subscribers", e);
        let (statuses, suppressed): (Vec<(String, String)>, Vec<String>) = on_db!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(by_status));
            for k in &keys {
                q = q.bind(k);
            }
            let statuses = q.fetch_all(pool).await.map_err(err)?;
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(by_hash));
            for h in &hashes {
                q = q.bind(h);
            }
            (statuses, q.fetch_all(pool).await.map_err(err)?)
        });
        out.extend(statuses);
        for (key, hash) in keys.iter().zip(&hashes) {
            if suppressed.contains(hash) {
                out.entry(key.clone())
                    .or_insert_with(|| "suppressed".into());
            }
        }
        Ok(out)
    }
}
