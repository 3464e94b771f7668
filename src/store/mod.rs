//! The store: the one module that speaks SQL. It owns every table
//! (subscribers, lists, suppressions, events, campaigns, deliveries,
//! workers) and every query, behind one [`Store`] API of typed operations
//! and one error type, [`StoreError`]; no other module sees a pool, a
//! transaction or `sqlx`. The rule of who may be mailed is in `rule.rs`,
//! the status changes (unsubscribe, resubscribe, bounce) in `status.rs`, the
//! send journal in `journal.rs`. It must not import `deliver`, `serve` or
//! `cli`.
//!
//! One [`Driver`] trait has two implementations, SQLite (the zero-setup
//! default) and PostgreSQL.
//!
//! All rules (what an import does to whom, what is counted, which events
//! are recorded) live once in this module and in `import.rs`, written in
//! SQL both databases accept; a driver only opens the database, runs its
//! embedded migrations, starts transactions, runs a statement with bound
//! values, and turns its errors into messages a person can act on. That is
//! how both stores behave the same, and why the test suite can run one set
//! of tests against each.
//!
//! Every time in the database is Unix milliseconds (migration 0007 moved
//! the subscriber tables to it); the API shows subscriber times as RFC 3339
//! UTC with whole seconds, the same whichever database is used.

mod bounces;
mod import;
pub mod journal;
pub mod postgres;
mod rule;
pub mod sqlite;
mod status;

pub use bounces::{Action, BounceRow, Kind, Learned};
use rule::Who;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::config::ENV_DATABASE_URL;
use crate::subscribers::csv::CsvError;
use crate::subscribers::model::{
    self, AddOutcome, BounceOutcome, ImportOptions, ImportReport, ListFilter, ListStats,
    NewSubscriber, RemoveOutcome, ResubscribeOutcome, SkippedRow, Stats, Status, Subscriber,
    UnsubscribeOutcome,
};
use crate::subscribers::{Recipient, email_hash_hex, normalise_email};

/// A database error, said so that a person can act on it. Every message
/// names the database (a PostgreSQL URL without its password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database `{url}` is not understood: {message} (use sqlite:PATH or postgres://user@host/db)"
    )]
    Url { url: String, message: String },
    #[error(
        "cannot open SQLite database {db}: {message} (check the folder exists and is writable)"
    )]
    Open { db: String, message: String },
    #[error("database {db} is locked by another process: wait for it to finish or stop it")]
    Locked { db: String },
    #[error(
        "cannot connect to PostgreSQL at {db}: {message} (set {ENV_DATABASE_URL} or `database` in tidings.toml)"
    )]
    Unavailable { db: String, message: String },
    #[error("cannot prepare database {db}: {message}")]
    Migrate { db: String, message: String },
    #[error("database {db}: {message}")]
    Query { db: String, message: String },
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// Input the store refuses (an invalid address given to `add`, …).
    #[error("{0}")]
    Invalid(String),
    /// The export's output failed (a full disk, a closed pipe).
    #[error("cannot write the export: {0}")]
    Write(#[source] std::io::Error),
    /// The request conflicts with the state in the database (a campaign
    /// another process runs, a worker id already in use, …).
    #[error("{0}")]
    Conflict(String),
    /// Writing somewhere other than the database failed (a report file),
    /// or the journal's writer stopped.
    #[error("{0}")]
    Io(String),
}

/// A connection kept between transactions (see [`Driver::begin_kept`]).
#[derive(Default)]
pub struct Kept(KeptConn);

#[derive(Default)]
enum KeptConn {
    #[default]
    None,
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Kept {
    /// Lets the connection go (after an error, the next transaction starts
    /// on a fresh one).
    pub fn drop_connection(&mut self) {
        self.0 = KeptConn::None;
    }
}

/// A bound value or a column value: the few types the schema uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    /// A NULL for an integer column (PostgreSQL types every parameter).
    NullInt,
    Int(i64),
    Text(String),
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Text(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Text(s)
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Val {
        Val::Int(i)
    }
}
impl From<Option<i64>> for Val {
    fn from(i: Option<i64>) -> Val {
        i.map_or(Val::NullInt, Val::Int)
    }
}
impl From<Option<String>> for Val {
    fn from(s: Option<String>) -> Val {
        s.map_or(Val::Null, Val::Text)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

impl Row {
    pub fn int(&self, i: usize) -> i64 {
        match &self.0[i] {
            Val::Int(v) => *v,
            Val::Text(t) => t.parse().unwrap_or(0),
            Val::Null | Val::NullInt => 0,
        }
    }
    pub fn text(&mut self, i: usize) -> String {
        match std::mem::replace(&mut self.0[i], Val::Null) {
            Val::Text(t) => t,
            Val::Int(v) => v.to_string(),
            Val::Null | Val::NullInt => String::new(),
        }
    }
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match &self.0[i] {
            Val::Null | Val::NullInt => None,
            _ => Some(self.int(i)),
        }
    }
    pub fn opt_text(&mut self, i: usize) -> Option<String> {
        match &self.0[i] {
            Val::Null | Val::NullInt => None,
            _ => Some(self.text(i)),
        }
    }
}

/// An open transaction on one connection.
#[async_trait::async_trait]
pub trait Conn: Send {
    /// Runs a statement (`$1, $2…` placeholders); rows affected.
    async fn exec(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, sqlx::Error>;
    async fn fetch(&mut self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, sqlx::Error>;
    /// Inserts rows of `width` values each (`values` holds them one row
    /// after another) with `insert`, e.g. `INSERT INTO t (a, b)`; returns
    /// the rows inserted. Multi-row `VALUES` statements unless the database
    /// has something faster.
    async fn insert_rows(
        &mut self,
        insert: &str,
        width: usize,
        values: Vec<Val>,
    ) -> Result<u64, sqlx::Error> {
        let per_statement = (MAX_PARAMS / width.max(1)).max(1) * width.max(1);
        let mut values = values.into_iter().peekable();
        let mut inserted = 0;
        while values.peek().is_some() {
            let chunk: Vec<Val> = values.by_ref().take(per_statement).collect();
            let mut sql = format!("{insert} VALUES ");
            for (i, _) in chunk.chunks(width.max(1)).enumerate() {
                push_tuple(&mut sql, i, width, 0);
            }
            inserted += self.exec(&sql, chunk).await?;
        }
        Ok(inserted)
    }
    /// True when the database takes rows in bulk with [`Conn::copy_in`].
    fn copies(&self) -> bool {
        false
    }
    /// Streams rows into `copy` (`COPY t (a, b) FROM STDIN`): each chunk
    /// holds whole lines of PostgreSQL's COPY text format (see
    /// `postgres::copy_field`); returns the rows taken. Only where
    /// [`Conn::copies`] says so.
    async fn copy_in(
        &mut self,
        _copy: &str,
        _chunks: BoxStream<'_, Vec<u8>>,
    ) -> Result<u64, sqlx::Error> {
        Err(sqlx::Error::Protocol("COPY is not supported here".into()))
    }
    async fn commit(self: Box<Self>) -> Result<(), sqlx::Error>;
    async fn rollback(self: Box<Self>) -> Result<(), sqlx::Error>;
}

/// What each database implements; everything else is shared.
#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// The database for messages (never with a password).
    fn name(&self) -> &str;
    /// A transaction. `write` takes the database's write lock up front
    /// where it has one (SQLite), so a busy database is reported before any
    /// work and a long import cannot fail half-way on the lock.
    async fn begin(&self, write: bool) -> Result<Box<dyn Conn>, StoreError>;
    /// Runs one statement on its own (autocommit); rows affected.
    async fn run(&self, sql: &str, args: Vec<Val>) -> Result<u64, StoreError>;
    /// Runs one query on its own.
    async fn query(&self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, StoreError>;
    /// A transaction on the connection the caller keeps in `kept` between
    /// calls (opened when there is none): the journal's writer commits
    /// often and skips the pool's round trip.
    async fn begin_kept<'k>(&self, kept: &'k mut Kept) -> Result<Box<dyn Conn + 'k>, StoreError>;
    /// One statement on its own (autocommit) on the kept connection.
    async fn run_kept(&self, kept: &mut Kept, sql: &str, args: Vec<Val>)
    -> Result<u64, StoreError>;
    /// True when several processes may send one campaign together:
    /// PostgreSQL's advisory locks, `FOR UPDATE SKIP LOCKED`, and its clock
    /// for the shared send schedule.
    fn shared_sends(&self) -> bool {
        false
    }
    /// Turns a database error into one a person can act on.
    fn error(&self, e: sqlx::Error) -> StoreError;
    /// True when a write transaction shuts out every other writer (SQLite),
    /// so facts checked at its start stay true until it ends.
    fn exclusive_writes(&self) -> bool;
    /// Distinct attribute names, sorted (JSON functions differ).
    fn attribute_keys_sql(&self) -> &'static str;
    /// The schema of per-connection scratch tables (`temp`, `pg_temp`).
    fn temp_schema(&self) -> &'static str;
    /// A statement that gives the planner statistics for a scratch table
    /// once filled, if the database needs one (PostgreSQL never analyzes
    /// temp tables by itself, and plans joins on them blind).
    fn analyze_sql(&self, _table: &str) -> Option<String> {
        None
    }
    /// Lines per statement when deleting from an import's stage: SQLite
    /// gathers the row ids of a multi-row delete in memory first, so one
    /// statement over a whole file would grow with the file.
    fn delete_range(&self) -> Option<i64> {
        Some(50_000)
    }
    /// A bulk load on a database other writers share: statements that
    /// shut them out and drop what the load rebuilds besides the address
    /// indexes (run first), and those that rebuild it (run last).
    fn bulk_load(&self) -> Option<(&'static [&'static str], &'static [&'static str])> {
        None
    }
    /// After an erasure: make sure the deleted bytes are gone from the
    /// database's files too, as far as the database allows.
    async fn erase_traces(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Bind parameters per statement: under SQLite's 32766 and PostgreSQL's 65535.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// Appends `($a, $a+1, …)` for row `i` of `width` values, after `offset`
/// shared parameters, with a separating comma when needed.
pub(crate) fn push_tuple(sql: &mut String, i: usize, width: usize, offset: usize) {
    use std::fmt::Write as _;
    if i > 0 {
        sql.push_str(", ");
    }
    sql.push('(');
    let base = offset + i * width;
    for j in 0..width {
        if j > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "${}", base + j + 1);
    }
    sql.push(')');
}

/// A transaction with errors already mapped for the person.
pub(crate) struct Tx<'a> {
    conn: Box<dyn Conn + 'a>,
    driver: &'a dyn Driver,
}

impl<'a> Tx<'a> {
    /// A transaction begun elsewhere (the journal's own connection).
    pub(crate) fn over(conn: Box<dyn Conn + 'a>, driver: &'a dyn Driver) -> Tx<'a> {
        Tx { conn, driver }
    }

    pub(crate) async fn begin(driver: &'a dyn Driver, write: bool) -> Result<Tx<'a>, StoreError> {
        Ok(Tx {
            conn: driver.begin(write).await?,
            driver,
        })
    }
    pub(crate) async fn exec(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, StoreError> {
        self.conn
            .exec(sql, args)
            .await
            .map_err(|e| self.driver.error(e))
    }
    pub(crate) async fn fetch(
        &mut self,
        sql: &str,
        args: Vec<Val>,
    ) -> Result<Vec<Row>, StoreError> {
        self.conn
            .fetch(sql, args)
            .await
            .map_err(|e| self.driver.error(e))
    }
    pub(crate) async fn insert_rows(
        &mut self,
        insert: &str,
        width: usize,
        values: Vec<Val>,
    ) -> Result<u64, StoreError> {
        self.conn
            .insert_rows(insert, width, values)
            .await
            .map_err(|e| self.driver.error(e))
    }
    pub(crate) fn copies(&self) -> bool {
        self.conn.copies()
    }
    pub(crate) async fn copy_in(
        &mut self,
        copy: &str,
        chunks: BoxStream<'_, Vec<u8>>,
    ) -> Result<u64, StoreError> {
        self.conn
            .copy_in(copy, chunks)
            .await
            .map_err(|e| self.driver.error(e))
    }
    pub(crate) async fn one(
        &mut self,
        sql: &str,
        args: Vec<Val>,
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.fetch(sql, args).await?.into_iter().next())
    }
    pub(crate) async fn count(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, StoreError> {
        Ok(self.one(sql, args).await?.map_or(0, |r| r.int(0)) as u64)
    }
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        let driver = self.driver;
        self.conn.commit().await.map_err(|e| driver.error(e))
    }
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        let driver = self.driver;
        self.conn.rollback().await.map_err(|e| driver.error(e))
    }
    /// Records a status change: the hash, never the address.
    pub(crate) async fn event(
        &mut self,
        hash: &str,
        event: &str,
        source: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.event_in(hash, event, source, at, None).await
    }

    /// Records a status change that a campaign's message led to (a bounce,
    /// a complaint).
    pub(crate) async fn event_in(
        &mut self,
        hash: &str,
        event: &str,
        source: &str,
        at: i64,
        campaign: Option<i64>,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO subscriber_events (email_hash, event, source, at, campaign_id) VALUES ($1, $2, $3, $4, $5)",
            vec![hash.into(), event.into(), source.into(), at.into(), campaign.into()],
        )
        .await
        .map(drop)
    }
}

/// Columns of a full subscriber row, in [`subscriber_from_row`] order.
const COLUMNS: &str = "s.id, s.email, s.email_key, s.email_hash, s.first_name, s.last_name, s.attributes, s.status, s.source, s.created_at, s.updated_at, s.unsubscribed_at";

fn subscriber_from_row(mut r: Row) -> Subscriber {
    Subscriber {
        id: r.int(0),
        email: r.text(1),
        email_key: r.text(2),
        email_hash: r.text(3),
        first_name: r.text(4),
        last_name: r.text(5),
        attributes: parse_attributes(&r.text(6)),
        status: parse_status(&r.text(7)),
        source: r.text(8),
        created_at: rfc3339(r.int(9)),
        updated_at: rfc3339(r.int(10)),
        unsubscribed_at: r.opt_int(11).map(rfc3339),
        lists: Vec::new(),
    }
}

/// Stored statuses are constrained by the schema; anything else reads as
/// bounced, so a corrupted row is never sent to.
fn parse_status(s: &str) -> Status {
    s.parse().unwrap_or(Status::Bounced)
}

pub(crate) fn parse_attributes(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// Attributes as stored: a JSON object, keys sorted, no spaces.
pub(crate) fn attributes_json(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into())
}

/// Now, as the database keeps every time: Unix milliseconds (the journal's
/// representation, and the bounces', so times compare across tables).
pub(crate) fn stamp() -> i64 {
    journal::now_ms()
}

/// A stored time as the API shows it: RFC 3339 UTC with whole seconds.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Rows per page when walking the store.
const PAGE: i64 = 500;

/// The database: subscribers, lists, suppressions, events, campaigns,
/// deliveries and workers. Cheap to clone (one shared pool).
#[derive(Clone)]
pub struct Store {
    driver: std::sync::Arc<dyn Driver>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.driver.name())
            .finish()
    }
}

impl Store {
    /// Opens the configured database: `sqlite:PATH` (relative to `base`;
    /// the file and its folder are created on first use) or
    /// `postgres://…`; applies the embedded migrations.
    pub async fn open(url: &str, base: &Path) -> Result<Store, StoreError> {
        let driver: Box<dyn Driver> = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() || path.starts_with(":memory:") {
                return Err(StoreError::Url {
                    url: url.to_string(),
                    message: "give a file path, e.g. sqlite:subscribers/subscribers.db".into(),
                });
            }
            let path = PathBuf::from(path);
            let path = if path.is_relative() {
                base.join(path)
            } else {
                path
            };
            Box::new(sqlite::SqliteDriver::open(&path).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Box::new(postgres::PgDriver::open(url).await?)
        } else {
            return Err(StoreError::Url {
                url: redact_url(url),
                message: "unknown kind of database".into(),
            });
        };
        Ok(Store {
            driver: driver.into(),
        })
    }

    pub fn from_driver(driver: Box<dyn Driver>) -> Store {
        Store {
            driver: driver.into(),
        }
    }

    /// The database, for messages (a PostgreSQL URL without its password).
    pub fn name(&self) -> &str {
        self.driver.name()
    }

    /// True when several processes can send one campaign together
    /// (PostgreSQL: row locks that skip what another worker holds).
    pub fn supports_workers(&self) -> bool {
        self.driver.shared_sends()
    }

    /// True when the database answers a trivial query (`serve`'s health
    /// check).
    pub async fn ping(&self) -> bool {
        match Tx::begin(self.driver.as_ref(), false).await {
            Ok(mut tx) => {
                let ok = tx.fetch("SELECT 1", vec![]).await.is_ok();
                let _ = tx.rollback().await;
                ok
            }
            Err(_) => false,
        }
    }

    /// Imports a CSV file; see [`Store::import`].
    pub async fn import_file(
        &self,
        path: &Path,
        mut options: ImportOptions,
        on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
    ) -> Result<ImportReport, StoreError> {
        let file = std::fs::File::open(path).map_err(|source| CsvError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if options.source.is_empty() {
            let name = path.file_name().unwrap_or(path.as_os_str());
            options.source = format!("import:{}", name.to_string_lossy());
        }
        self.import(Box::new(file), path, options, on_skip).await
    }

    /// Imports CSV rows, streaming: memory does not grow with the input.
    /// Each skipped row is handed to `on_skip` as it is found (in line
    /// order). One transaction: nothing is written if the import fails,
    /// or with `strict` if any row is bad, or with `dry_run`.
    pub async fn import(
        &self,
        input: Box<dyn Read + Send>,
        path: &Path,
        options: ImportOptions,
        on_skip: &mut (dyn FnMut(&SkippedRow) + Send),
    ) -> Result<ImportReport, StoreError> {
        import::import(self.driver.as_ref(), input, path, options, on_skip).await
    }

    /// Adds back a person who was removed (erased), when they asked to come
    /// back: lifts the `removed` suppression with an event that records who
    /// decided it, then adds them as new. An unsubscribe or a bounce is not
    /// lifted by this (that is `add(…, resubscribe)`).
    pub async fn add_after_removal(
        &self,
        new: &NewSubscriber,
        decided_by: &str,
    ) -> Result<AddOutcome, StoreError> {
        check_new(new)?;
        let decided_by = decided_by.trim();
        if decided_by.is_empty() {
            return Err(StoreError::Invalid(
                "--after-removal needs who decided it and why, e.g. --after-removal \"Ana: they asked by phone on 2026-12-01\"".into(),
            ));
        }
        model::check_text("--after-removal", decided_by, true).map_err(StoreError::Invalid)?;
        let hash = email_hash_hex(new.email.trim());
        let now = stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let removed = tx
            .one(
                "SELECT reason FROM suppressions WHERE email_hash = $1",
                vec![hash.clone().into()],
            )
            .await?
            .is_some_and(|mut r| r.text(0) == SUPPRESSED_REMOVED);
        if removed {
            tx.exec(
                "DELETE FROM suppressions WHERE email_hash = $1",
                vec![hash.clone().into()],
            )
            .await?;
            let source = format!("after removal, decided by: {decided_by}");
            tx.event(&hash, "resubscribed", &source, now).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        self.add(new, "add --after-removal", false).await
    }

    /// Adds one person, or updates their details if they are active.
    /// Unsubscribed and bounced people are left alone unless `resubscribe`
    /// (they asked to come back); removed people are always refused.
    pub async fn add(
        &self,
        new: &NewSubscriber,
        source: &str,
        resubscribe: bool,
    ) -> Result<AddOutcome, StoreError> {
        let email = new.email.trim();
        check_new(new)?;
        let key = normalise_email(email);
        let hash = email_hash_hex(email);
        let now = stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let mut lifted_suppression = false;
        if let Some(mut s) = tx
            .one(
                "SELECT reason, created_at FROM suppressions WHERE email_hash = $1",
                vec![hash.clone().into()],
            )
            .await?
        {
            let reason = s.text(0);
            if !(resubscribe && reason == SUPPRESSED_UNSUBSCRIBED) {
                tx.rollback().await?;
                return Ok(AddOutcome::Suppressed {
                    reason,
                    since: rfc3339(s.int(1)),
                });
            }
            tx.exec(
                "DELETE FROM suppressions WHERE email_hash = $1",
                vec![hash.clone().into()],
            )
            .await?;
            lifted_suppression = true;
        }
        let existing = tx
            .one(
                &format!("SELECT {COLUMNS} FROM subscribers s WHERE s.email_key = $1"),
                vec![key.clone().into()],
            )
            .await?
            .map(subscriber_from_row);
        let outcome = match existing {
            None => {
                let mut attributes = new.attributes.clone();
                attributes.retain(|_, v| !v.trim().is_empty());
                let row = tx
                    .one(
                        "INSERT INTO subscribers (email, email_key, email_hash, first_name, last_name, attributes, status, source, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $8) RETURNING id",
                        vec![
                            email.into(),
                            key.into(),
                            hash.clone().into(),
                            new.first_name.as_deref().unwrap_or("").trim().into(),
                            new.last_name.as_deref().unwrap_or("").trim().into(),
                            attributes_json(&attributes).into(),
                            source.into(),
                            now.into(),
                        ],
                    )
                    .await?;
                let id = row.map_or(0, |r| r.int(0));
                add_lists(&mut tx, id, &new.lists).await?;
                let event = if lifted_suppression {
                    "resubscribed"
                } else {
                    "added"
                };
                tx.event(&hash, event, source, now).await?;
                if lifted_suppression {
                    AddOutcome::Resubscribed { id }
                } else {
                    AddOutcome::Added { id }
                }
            }
            Some(mut s) => {
                s.lists = list_names(&mut tx, s.id).await?;
                let inactive = s.status != Status::Active;
                if inactive && !resubscribe {
                    tx.rollback().await?;
                    return Ok(match s.status {
                        Status::Bounced => AddOutcome::Bounced,
                        _ => AddOutcome::Unsubscribed {
                            since: s.unsubscribed_at,
                        },
                    });
                }
                let mut merged = s.clone();
                merged.email = email.to_string();
                if let Some(f) = &new.first_name {
                    merged.first_name = f.trim().to_string();
                }
                if let Some(l) = &new.last_name {
                    merged.last_name = l.trim().to_string();
                }
                for (k, v) in &new.attributes {
                    if v.trim().is_empty() {
                        merged.attributes.remove(k);
                    } else {
                        merged.attributes.insert(k.clone(), v.trim().to_string());
                    }
                }
                let new_lists: Vec<String> = new
                    .lists
                    .iter()
                    .filter(|l| !s.lists.contains(l))
                    .cloned()
                    .collect();
                let changed = merged.email != s.email
                    || merged.first_name != s.first_name
                    || merged.last_name != s.last_name
                    || merged.attributes != s.attributes
                    || !new_lists.is_empty();
                if changed || inactive {
                    tx.exec(
                        "UPDATE subscribers SET email = $1, first_name = $2, last_name = $3, attributes = $4, \
                         status = 'active', unsubscribed_at = NULL, updated_at = $5 WHERE id = $6",
                        vec![
                            merged.email.into(),
                            merged.first_name.into(),
                            merged.last_name.into(),
                            attributes_json(&merged.attributes).into(),
                            now.into(),
                            s.id.into(),
                        ],
                    )
                    .await?;
                    add_lists(&mut tx, s.id, &new_lists).await?;
                }
                if inactive {
                    tx.event(&hash, "resubscribed", source, now).await?;
                    AddOutcome::Resubscribed { id: s.id }
                } else if changed {
                    tx.event(&hash, "updated", source, now).await?;
                    AddOutcome::Updated { id: s.id }
                } else {
                    AddOutcome::Unchanged { id: s.id }
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Unsubscribes an address; see [`Store::unsubscribe_by_hash`].
    pub async fn unsubscribe(
        &self,
        email: &str,
        source: &str,
    ) -> Result<UnsubscribeOutcome, StoreError> {
        self.unsubscribe_by_hash(&email_hash_hex(email), source)
            .await
    }

    /// Unsubscribes whoever has this address hash (from a signed link).
    /// Idempotent: a second call changes nothing and records nothing. An
    /// address not in the store gets a suppression entry (reason
    /// `unsubscribed`), so importing it later keeps it out.
    pub async fn unsubscribe_by_hash(
        &self,
        hash: &str,
        source: &str,
    ) -> Result<UnsubscribeOutcome, StoreError> {
        let hash = check_hash(hash)?;
        let now = stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let outcome = status::unsubscribe(&mut tx, &hash, source, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Re-activates an unsubscribed person who asked to come back (from a
    /// signed link). Bounced people are not re-activated this way.
    pub async fn resubscribe_by_hash(
        &self,
        hash: &str,
        source: &str,
    ) -> Result<ResubscribeOutcome, StoreError> {
        let hash = check_hash(hash)?;
        let now = stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let outcome = status::resubscribe(&mut tx, &hash, source, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Erases a person's data, keeping only the hash of their address as a
    /// suppression entry, so a later import or add cannot bring them back.
    pub async fn remove(&self, email: &str, source: &str) -> Result<RemoveOutcome, StoreError> {
        let key = normalise_email(email);
        let hash = email_hash_hex(email);
        let now = stamp();
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        // Lists go with the row (ON DELETE CASCADE).
        let n = tx
            .exec(
                "DELETE FROM subscribers WHERE email_key = $1",
                vec![key.clone().into()],
            )
            .await?;
        // The send journal keeps who each issue went to: erase the person
        // there too, leaving only the hash (as in the suppression list).
        let journaled = tx
            .exec(
                "UPDATE deliveries SET email_key = 'erased:' || email_hash, email = '', \
                 first_name = '', last_name = '', attributes = '{}', message_id = NULL \
                 WHERE email_key = $1",
                vec![key.into()],
            )
            .await?;
        // A complaint stays a complaint: `add --after-removal` lifts a
        // removal, never a "this is spam".
        tx.exec(
            "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (email_hash) DO UPDATE SET reason = excluded.reason \
             WHERE suppressions.reason <> 'complained'",
            vec![hash.clone().into(), SUPPRESSED_REMOVED.into(), now.into()],
        )
        .await?;
        tx.event(&hash, "removed", source, now).await?;
        tx.commit().await?;
        if n + journaled > 0 {
            self.driver.erase_traces().await?;
        }
        Ok(if n + journaled > 0 {
            RemoveOutcome::Removed
        } else {
            RemoveOutcome::NotFound
        })
    }

    /// Marks an address as bounced (a permanent delivery failure; see
    /// [`status::bounce`]). The reason is recorded with the address itself
    /// blanked out.
    pub async fn mark_bounced(
        &self,
        email: &str,
        reason: &str,
    ) -> Result<BounceOutcome, StoreError> {
        let key = normalise_email(email);
        let hash = email_hash_hex(email);
        let now = stamp();
        let source = format!("bounce: {}", redact_address(reason, &key));
        let mut tx = Tx::begin(self.driver.as_ref(), true).await?;
        let outcome = status::bounce(&mut tx, &hash, status::Cause::from(&source), now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn get(&self, email: &str) -> Result<Option<Subscriber>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let found = tx
            .one(
                &format!("SELECT {COLUMNS} FROM subscribers s WHERE s.email_key = $1"),
                vec![normalise_email(email).into()],
            )
            .await?;
        let Some(row) = found else {
            tx.rollback().await?;
            return Ok(None);
        };
        let mut s = subscriber_from_row(row);
        s.lists = list_names(&mut tx, s.id).await?;
        tx.rollback().await?;
        Ok(Some(s))
    }

    /// Whether an address hash is suppressed, and why (`removed` or `unsubscribed`).
    pub async fn suppression(&self, email: &str) -> Result<Option<String>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let r = tx
            .one(
                "SELECT reason FROM suppressions WHERE email_hash = $1",
                vec![email_hash_hex(email).into()],
            )
            .await?;
        tx.rollback().await?;
        Ok(r.map(|mut r| r.text(0)))
    }

    /// Subscribers matching `filter`, by id, a page at a time (memory stays
    /// flat however many there are).
    pub fn list(&self, filter: ListFilter) -> BoxStream<'_, Result<Subscriber, StoreError>> {
        let mut sql = format!("SELECT {COLUMNS} FROM subscribers s WHERE s.id > $1");
        let mut args = vec![];
        if let Some(status) = filter.status {
            args.push(Val::from(status.as_str()));
            sql.push_str(&format!(" AND s.status = ${}", args.len() + 1));
        }
        if let Some(list) = filter.list {
            args.push(Val::from(list));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = ${})",
                args.len() + 1
            ));
        }
        sql.push_str(&format!(" ORDER BY s.id LIMIT {PAGE}"));
        self.pages(sql, args, i64::MAX)
    }

    /// Walks pages of `sql` (whose `$1` is the last id seen) up to `max_id`.
    fn pages(
        &self,
        sql: String,
        args: Vec<Val>,
        max_id: i64,
    ) -> BoxStream<'_, Result<Subscriber, StoreError>> {
        let driver = self.driver.as_ref();
        stream::try_unfold(Some(0i64), move |last| {
            let (sql, args) = (sql.clone(), args.clone());
            async move {
                let Some(last) = last else {
                    return Ok::<_, StoreError>(None);
                };
                let mut tx = Tx::begin(driver, false).await?;
                let mut all = vec![Val::Int(last)];
                all.extend(args);
                let mut page: Vec<Subscriber> = tx
                    .fetch(&sql, all)
                    .await?
                    .into_iter()
                    .map(subscriber_from_row)
                    .filter(|s| s.id <= max_id)
                    .collect();
                if let (Some(first), Some(end)) = (page.first(), page.last()) {
                    let (first, end) = (first.id, end.id);
                    let rows = tx
                        .fetch(
                            "SELECT subscriber_id, list FROM subscriber_lists WHERE subscriber_id BETWEEN $1 AND $2 ORDER BY subscriber_id, list",
                            vec![first.into(), end.into()],
                        )
                        .await?;
                    let mut by_id: BTreeMap<i64, Vec<String>> = BTreeMap::new();
                    for mut r in rows {
                        by_id.entry(r.int(0)).or_default().push(r.text(1));
                    }
                    for s in &mut page {
                        s.lists = by_id.remove(&s.id).unwrap_or_default();
                    }
                }
                tx.rollback().await?;
                let next = match page.last() {
                    Some(s) if page.len() as i64 == PAGE && s.id < max_id => Some(s.id),
                    _ => None,
                };
                if page.is_empty() {
                    return Ok(None);
                }
                Ok(Some((page, next)))
            }
        })
        .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    /// Who an issue goes to: active, not suppressed, on `list` if given, by
    /// id. Only subscribers that existed when the walk started are
    /// included, so people added during a send are not pulled into it.
    pub fn recipients(
        &self,
        list: Option<&str>,
    ) -> BoxStream<'_, Result<(i64, Recipient), StoreError>> {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM subscribers s WHERE s.id > $1 AND {}",
            rule::mailable(Who::Row("s"))
        );
        let mut args = vec![];
        if let Some(list) = list {
            args.push(Val::from(list));
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = $2)",
            );
        }
        sql.push_str(&format!(" ORDER BY s.id LIMIT {PAGE}"));
        let driver = self.driver.as_ref();
        stream::once(async move {
            let mut tx = Tx::begin(driver, false).await?;
            let max = tx
                .one("SELECT COALESCE(MAX(id), 0) FROM subscribers", vec![])
                .await?
                .map_or(0, |r| r.int(0));
            tx.rollback().await?;
            Ok::<i64, StoreError>(max)
        })
        .map_ok(move |max| {
            self.pages(sql.clone(), args.clone(), max)
                .map_ok(|s| (s.id, s.recipient()))
        })
        .try_flatten()
        .boxed()
    }

    /// Writes every subscriber matching `filter` as CSV in the import format.
    pub async fn export<W: std::io::Write>(
        &self,
        out: W,
        filter: ListFilter,
    ) -> Result<u64, StoreError> {
        let keys = self.attribute_keys().await?;
        let write_err = |e: csv::Error| {
            if !e.is_io_error() {
                return StoreError::Invalid(format!("cannot write the export: {e}"));
            }
            match e.into_kind() {
                csv::ErrorKind::Io(io) => StoreError::Write(io),
                _ => unreachable!("is_io_error"),
            }
        };
        let mut writer = crate::subscribers::csv::CsvWriter::new(out, &keys).map_err(write_err)?;
        let mut rows = self.list(filter);
        let mut n = 0;
        while let Some(s) = rows.try_next().await? {
            writer.write(&s).map_err(write_err)?;
            n += 1;
        }
        writer.finish().map_err(write_err)?;
        Ok(n)
    }

    /// Counts by status, suppressions, and counts by list and status.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let mut stats = Stats::default();
        for mut r in tx
            .fetch(
                "SELECT status, COUNT(*) FROM subscribers GROUP BY status",
                vec![],
            )
            .await?
        {
            let n = r.int(1) as u64;
            match parse_status(&r.text(0)) {
                Status::Active => stats.active += n,
                Status::Unsubscribed => stats.unsubscribed += n,
                Status::Bounced => stats.bounced += n,
            }
        }
        for mut r in tx
            .fetch(
                "SELECT reason, COUNT(*) FROM suppressions GROUP BY reason ORDER BY reason",
                vec![],
            )
            .await?
        {
            let n = r.int(1) as u64;
            stats.suppressed += n;
            stats.suppressed_by.push((r.text(0), n));
        }
        for mut r in tx
            .fetch(
                "SELECT l.list, s.status, COUNT(*) FROM subscriber_lists l JOIN subscribers s ON s.id = l.subscriber_id \
                 GROUP BY l.list, s.status ORDER BY l.list",
                vec![],
            )
            .await?
        {
            let list = r.text(0);
            let n = r.int(2) as u64;
            if stats.lists.last().is_none_or(|l| l.list != list) {
                stats.lists.push(ListStats {
                    list,
                    ..ListStats::default()
                });
            }
            let entry = stats.lists.last_mut().expect("pushed above");
            match parse_status(&r.text(1)) {
                Status::Active => entry.active += n,
                Status::Unsubscribed => entry.unsubscribed += n,
                Status::Bounced => entry.bounced += n,
            }
        }
        tx.rollback().await?;
        Ok(stats)
    }

    /// How many an issue would go to right now (the same rule as
    /// `recipients`), on `list` if given; reads only.
    pub async fn audience_size(&self, list: Option<&str>) -> Result<u64, StoreError> {
        let mut sql = format!(
            "SELECT COUNT(*) FROM subscribers s WHERE {}",
            rule::mailable(Who::Row("s"))
        );
        let mut args = vec![];
        if let Some(list) = list {
            args.push(Val::from(list));
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = $1)",
            );
        }
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let n = tx.count(&sql, args).await?;
        tx.rollback().await?;
        Ok(n)
    }

    /// Of these addresses (by key), the ones that must not be mailed, with
    /// why (see [`rule`]): the check a CSV send makes, since its addresses
    /// need not be subscribers. One query per 500 addresses.
    pub async fn blocked(
        &self,
        recipients: &[Recipient],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let mut out = std::collections::HashMap::new();
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        for chunk in recipients.chunks(500) {
            let mut sql = String::from("WITH c(k, h) AS (VALUES ");
            let mut args = Vec::with_capacity(chunk.len() * 2);
            for (i, r) in chunk.iter().enumerate() {
                push_tuple(&mut sql, i, 2, 0);
                args.push(Val::from(r.key()));
                args.push(Val::from(email_hash_hex(&r.email)));
            }
            // Only numbered placeholders and the rule's constant SQL are
            // interpolated; the addresses are bound.
            sql.push_str(&format!(
                ") SELECT k, r FROM (SELECT c.k AS k, {} AS r FROM c) t WHERE r IS NOT NULL",
                rule::blocked_reason(Who::Address {
                    key: "c.k",
                    hash: "c.h"
                })
            ));
            for mut row in tx.fetch(&sql, args).await? {
                out.insert(row.text(0), row.text(1));
            }
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// The lists that have members, sorted.
    pub async fn list_names(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let names = tx
            .fetch(
                "SELECT DISTINCT list FROM subscriber_lists ORDER BY list",
                vec![],
            )
            .await?
            .into_iter()
            .map(|mut r| r.text(0))
            .collect();
        tx.rollback().await?;
        Ok(names)
    }

    /// Distinct attribute names over all subscribers, sorted (the fields
    /// templates may use).
    pub async fn attribute_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let keys = tx
            .fetch(self.driver.attribute_keys_sql(), vec![])
            .await?
            .into_iter()
            .map(|mut r| r.text(0))
            .collect();
        tx.rollback().await?;
        Ok(keys)
    }

    /// Status-change events of one address, oldest first: (event, source, at).
    pub async fn events(&self, email: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut tx = Tx::begin(self.driver.as_ref(), false).await?;
        let rows = tx
            .fetch(
                "SELECT event, source, at FROM subscriber_events WHERE email_hash = $1 ORDER BY id",
                vec![email_hash_hex(email).into()],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(|mut r| (r.text(0), r.text(1), rfc3339(r.int(2))))
            .collect())
    }
}

/// Sources of an unsubscribe the person made themselves (the links of
/// `tidings serve`); only those may be undone from a link.
const SELF_SERVICE_SOURCES: &[&str] = &["one-click", "link"];

/// Whether the last time this address stopped receiving mail (unsubscribe,
/// bounce, removal) was the person's own unsubscribe from a link.
async fn self_service(tx: &mut Tx<'_>, hash: &str) -> Result<bool, StoreError> {
    let row = tx
        .one(
            "SELECT event, source FROM subscriber_events WHERE email_hash = $1 \
             AND event IN ('unsubscribed', 'bounced', 'removed', 'complained') ORDER BY id DESC LIMIT 1",
            vec![hash.to_string().into()],
        )
        .await?;
    Ok(row.is_some_and(|mut r| {
        r.text(0) == "unsubscribed" && SELF_SERVICE_SOURCES.contains(&r.text(1).as_str())
    }))
}

/// Suppression reasons.
pub const SUPPRESSED_REMOVED: &str = "removed";
pub const SUPPRESSED_UNSUBSCRIBED: &str = "unsubscribed";
pub const SUPPRESSED_COMPLAINED: &str = "complained";

async fn list_names(tx: &mut Tx<'_>, id: i64) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .fetch(
            "SELECT list FROM subscriber_lists WHERE subscriber_id = $1 ORDER BY list",
            vec![id.into()],
        )
        .await?
        .into_iter()
        .map(|mut r| r.text(0))
        .collect())
}

async fn add_lists(tx: &mut Tx<'_>, id: i64, lists: &[String]) -> Result<(), StoreError> {
    for l in lists {
        tx.exec(
            "INSERT INTO subscriber_lists (subscriber_id, list) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![id.into(), l.as_str().into()],
        )
        .await?;
    }
    Ok(())
}

fn check_hash(hash: &str) -> Result<String, StoreError> {
    let hash = hash.trim().to_ascii_lowercase();
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash)
    } else {
        Err(StoreError::Invalid(format!(
            "`{hash}` is not an address hash (64 hexadecimal digits)"
        )))
    }
}

/// A bounce message with the address itself blanked out: the event trail
/// keeps no personal data but the hash.
pub(crate) fn redact_address(text: &str, key: &str) -> String {
    let lower = text.to_lowercase();
    if key.is_empty() || lower.len() != text.len() {
        // Case folding changed byte lengths: blank conservatively.
        return if lower.contains(key) {
            "<address>".into()
        } else {
            text.to_string()
        };
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (i, _) in lower.match_indices(key) {
        out.push_str(&text[rest..i]);
        out.push_str("<address>");
        rest = i + key.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// The checks every added person passes, before anything is written.
fn check_new(new: &NewSubscriber) -> Result<(), StoreError> {
    model::check_email(new.email.trim()).map_err(StoreError::Invalid)?;
    for (field, value) in [
        ("first_name", &new.first_name),
        ("last_name", &new.last_name),
    ] {
        if let Some(v) = value {
            model::check_text(field, v, true).map_err(StoreError::Invalid)?;
        }
    }
    for (k, v) in &new.attributes {
        model::check_attribute_name(k).map_err(StoreError::Invalid)?;
        model::check_text(k, v, false).map_err(StoreError::Invalid)?;
    }
    for l in &new.lists {
        model::check_list_name(l).map_err(StoreError::Invalid)?;
    }
    Ok(())
}

/// A database URL fit to print: the password replaced by `***`, in the
/// user-info part and in a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_show_as_rfc3339() {
        assert_eq!(rfc3339(1_795_681_620_000), "2026-11-26T08:27:00Z");
        assert_eq!(rfc3339(1_795_681_620_999), "2026-11-26T08:27:00Z");
        assert_eq!(rfc3339(stamp()).len(), "2026-11-26T08:27:00Z".len());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://tidings:s3cret@localhost/tidings"),
            "postgres://tidings:***@localhost/tidings"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss:w@db:5432/x?sslmode=require&password=zz"),
            "postgres://u:***@db:5432/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/postgres"),
            "postgres://postgres@127.0.0.1/postgres"
        );
    }

    #[test]
    fn bounce_reason_loses_the_address() {
        assert_eq!(
            redact_address(
                "550 5.1.1 <Ana@Example.org>: user unknown",
                "ana@example.org"
            ),
            "550 5.1.1 <<address>>: user unknown"
        );
    }

    #[test]
    fn hashes_are_checked() {
        assert!(check_hash(&"A".repeat(64)).is_ok());
        assert!(check_hash("abc").is_err());
    }
}
