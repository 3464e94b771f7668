//! The database the subscriber list and the send journal live in: an
//! embedded SQLite file by default, PostgreSQL when one machine is not
//! enough. Migrations are embedded and applied on open.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {db}: {message}")]
    Open { db: String, message: String },
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
}

/// The URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Db {
    /// Opens (creating an SQLite file and its folder when missing) and
    /// migrates.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        let shown = redact(url);
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                    db: shown.clone(),
                    message: format!("cannot create folder {}: {e}", dir.display()),
                })?;
            }
            let options = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))
                .map_err(|e| DbError::Open {
                    db: shown.clone(),
                    message: e.to_string(),
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL survives a crash of the process (kill -9)
                // and fsyncs only at checkpoints; FULL would fsync every
                // journal commit, several per second of sending.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(|e| DbError::Open {
                    db: shown.clone(),
                    message: format!("{e} (check the folder exists and is writable)"),
                })?;
            sqlx::migrate!("migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| DbError::Open {
                    db: shown,
                    message: format!("cannot apply migrations: {e}"),
                })?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(|e| DbError::Open {
                db: shown.clone(),
                message: e.to_string(),
            })?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(|e| DbError::Open {
                    db: shown.clone(),
                    message: format!("{e}: is the server running? (set TIDINGS_DATABASE_URL or `database` in tidings.toml)"),
                })?;
            sqlx::migrate!("migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| DbError::Open {
                    db: shown,
                    message: format!("cannot apply migrations: {e}"),
                })?;
            Ok(Db::Postgres(pool))
        } else {
            Err(DbError::Open {
                db: shown,
                message: "unknown kind of database: use sqlite:path/to/file.db or postgres://user@host/db".into(),
            })
        }
    }

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
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

use crate::subscribers::Recipient;
use sqlx::Row;

fn recipient_from_row<R: Row>(row: &R) -> Result<(i64, Recipient), sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let attributes: String = row.try_get("attributes")?;
    Ok((
        row.try_get("id")?,
        Recipient {
            email: row.try_get("email")?,
            first_name: row.try_get("first_name")?,
            last_name: row.try_get("last_name")?,
            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        },
    ))
}

impl Db {
    /// Attribute names that subscribers carry, for templates.
    pub async fn attribute_keys(&self) -> Result<Vec<String>, DbError> {
        let sql = match self {
            Db::Sqlite(_) => {
                "SELECT DISTINCT j.key FROM subscribers s, json_each(s.attributes) j ORDER BY 1"
            }
            Db::Postgres(_) => {
                "SELECT DISTINCT k FROM subscribers s, jsonb_object_keys(s.attributes::jsonb) k ORDER BY 1"
            }
        };
        on_db!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await)
            .map_err(|e| self.error("read subscriber attributes", e))
    }

    /// Active subscribers (on `list`, if given) with an id above `after`,
    /// in id order: pages through the list in constant memory.
    pub async fn active_after(
        &self,
        list: Option<&str>,
        after: i64,
        n: usize,
    ) -> Result<Vec<(i64, Recipient)>, DbError> {
        on_db!(self, pool => sqlx::query(
            "SELECT s.id, s.email, s.first_name, s.last_name, s.attributes FROM subscribers s
             WHERE s.id > $1 AND s.status = 'active'
               AND ($2 = '' OR EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = $2))
               AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = s.email_hash)
             ORDER BY s.id LIMIT $3",
        )
        .bind(after)
        .bind(list.unwrap_or(""))
        .bind(n as i64)
        .fetch_all(pool)
        .await
        .and_then(|rows| rows.iter().map(recipient_from_row).collect()))
        .map_err(|e| self.error("read subscribers", e))
    }

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

    /// The stored subscriber with this address, if any.
    pub async fn find(&self, email: &str) -> Result<Option<Recipient>, DbError> {
        on_db!(self, pool => sqlx::query(
            "SELECT id, email, first_name, last_name, attributes FROM subscribers WHERE email_key = $1",
        )
        .bind(crate::subscribers::normalise_email(email))
        .fetch_optional(pool)
        .await
        .and_then(|row| row.as_ref().map(recipient_from_row).transpose()))
        .map(|r| r.map(|(_, r)| r))
        .map_err(|e| self.error("read subscribers", e))
    }
}
