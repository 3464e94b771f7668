//! Fresh databases for tests: a SQLite file in a temp folder, or a new
//! PostgreSQL database (unique name) on the server in
//! `TIDINGS_TEST_POSTGRES_URL`, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sqlx::Connection;
use tempfile::TempDir;
use tidings::store::Store;

pub const PG_ENV: &str = "TIDINGS_TEST_POSTGRES_URL";

/// The server for PostgreSQL tests. Missing is a failure, not a skip: these
/// tests only run when asked for.
pub fn pg_admin_url() -> String {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{PG_ENV} is not set: PostgreSQL tests need a server, e.g. \
             {PG_ENV}=postgres://postgres@127.0.0.1:5432/postgres (scripts/test.sh sets it)"
        ),
    }
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// Creates an empty PostgreSQL database; returns its URL and name.
pub async fn create_pg_database() -> (String, String) {
    let admin = pg_admin_url();
    let name = format!("tidings_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    (with_database(&admin, &name), name)
}

pub async fn drop_pg_database(name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A test's database(s); `fresh` makes another empty one of the same kind.
pub struct Ctx {
    pub store: Store,
    pub kind: Kind,
    pub dir: TempDir,
    pg_databases: Mutex<Vec<String>>,
}

impl Ctx {
    pub async fn new(kind: Kind) -> Ctx {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, pg) = open_fresh(kind, dir.path(), "main").await;
        Ctx {
            store,
            kind,
            dir,
            pg_databases: Mutex::new(pg.into_iter().collect()),
        }
    }

    /// Another empty store of the same kind.
    pub async fn fresh(&self) -> Store {
        let (store, pg) = open_fresh(self.kind, self.dir.path(), "other").await;
        if let Some(name) = pg {
            self.pg_databases.lock().unwrap().push(name);
        }
        store
    }

    /// The SQLite file of the main store.
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("main.db")
    }

    pub async fn cleanup(self) {
        let names = std::mem::take(&mut *self.pg_databases.lock().unwrap());
        drop(self.store);
        for name in names {
            drop_pg_database(&name).await;
        }
    }
}

async fn open_fresh(kind: Kind, dir: &Path, stem: &str) -> (Store, Option<String>) {
    match kind {
        Kind::Sqlite => {
            let url = format!("sqlite:{}", dir.join(format!("{stem}.db")).display());
            (
                Store::open(&url, dir).await.expect("open SQLite store"),
                None,
            )
        }
        Kind::Postgres => {
            let (url, name) = create_pg_database().await;
            let store = Store::open(&url, dir).await.expect("open PostgreSQL store");
            (store, Some(name))
        }
    }
}
