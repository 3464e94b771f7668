//! PostgreSQL: `database = "postgres://…"` or `TIDINGS_DATABASE_URL`.
//! The same schema and the same SQL as SQLite; only errors, the scratch
//! table's schema and the JSON function differ.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Row as _, Transaction, TypeInfo,
    ValueRef,
};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{Conn, Driver, Kept, KeptConn, Row, StoreError, Val, redact_url};

/// How long to wait for the server before saying it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgDriver {
    pool: PgPool,
    name: String,
}

impl PgDriver {
    /// The connection kept in `kept`, opened from the pool when there is
    /// none (or it held the other database's).
    async fn kept_connection<'k>(
        &self,
        kept: &'k mut Kept,
    ) -> Result<&'k mut sqlx::pool::PoolConnection<Postgres>, StoreError> {
        if !matches!(kept.0, KeptConn::Postgres(_)) {
            kept.0 = KeptConn::Postgres(self.pool.acquire().await.map_err(|e| self.error(e))?);
        }
        match &mut kept.0 {
            KeptConn::Postgres(conn) => Ok(conn),
            _ => unreachable!("set above"),
        }
    }

    /// Connects and migrates. The first connection is made by hand: the
    /// pool retries a refused connection until its timeout and then only
    /// says "timed out", while a person needs to hear "connection refused".
    pub async fn open(url: &str) -> Result<PgDriver, StoreError> {
        let name = redact_url(url);
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Url {
            url: name.clone(),
            message: e.to_string(),
        })?;
        let unavailable = |message: String| StoreError::Unavailable {
            db: name.clone(),
            message,
        };
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "no answer within {} s — is the server running and reachable?",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| unavailable(connect_message(&e, url)))?;
        probe.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| unavailable(connect_message(&e, url)))?;
        let driver = PgDriver { pool, name };
        sqlx::migrate!("migrations/postgres")
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

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// What went wrong connecting, without the password (which some errors echo).
fn connect_message(e: &sqlx::Error, url: &str) -> String {
    let message = match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused — is the server running?".to_string()
        }
        sqlx::Error::Io(io) => format!("{io} — is the server running and reachable?"),
        sqlx::Error::PoolTimedOut => "timed out — is the server running?".to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    };
    match password_of(url) {
        Some(p) if !p.is_empty() => message.replace(p, "***"),
        _ => message,
    }
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

#[async_trait::async_trait]
impl Driver for PgDriver {
    fn name(&self) -> &str {
        &self.name
    }

    async fn begin(&self, _write: bool) -> Result<Box<dyn Conn>, StoreError> {
        let tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        Ok(Box::new(PgTx(tx)))
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
        Ok(Box::new(PgTx(tx)))
    }

    fn error(&self, e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreError::Unavailable {
                    db: self.name.clone(),
                    message: connect_message(&e, ""),
                }
            }
            // 55P03 lock_not_available, 40P01 deadlock_detected
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("55P03" | "40P01")) =>
            {
                StoreError::Locked {
                    db: self.name.clone(),
                }
            }
            sqlx::Error::Database(db) => StoreError::Query {
                db: self.name.clone(),
                message: db.message().to_string(),
            },
            other => StoreError::Query {
                db: self.name.clone(),
                message: other.to_string(),
            },
        }
    }

    fn exclusive_writes(&self) -> bool {
        false
    }

    fn shared_sends(&self) -> bool {
        true
    }

    fn attribute_keys_sql(&self) -> &'static str {
        "SELECT DISTINCT k FROM subscribers s, jsonb_object_keys(s.attributes::jsonb) AS k ORDER BY 1"
    }

    fn temp_schema(&self) -> &'static str {
        "pg_temp"
    }

    fn analyze_sql(&self, table: &str) -> Option<String> {
        Some(format!("ANALYZE {table}"))
    }

    fn delete_range(&self) -> Option<i64> {
        // The server's memory, not ours: one statement, one plan.
        None
    }

    /// Row by row, a million new subscribers cost a foreign-key check per
    /// list membership (a row lock and a WAL record each) and a random
    /// insert into every index; a bulk load shuts other writers and readers
    /// out of the two tables until it commits, then rebuilds the
    /// memberships' keys and checks the foreign key with one sort and one
    /// join each. The names are the migrations'.
    fn bulk_load(&self) -> Option<(&'static [&'static str], &'static [&'static str])> {
        Some((
            &[
                "LOCK TABLE subscribers, subscriber_lists IN ACCESS EXCLUSIVE MODE",
                "SET LOCAL maintenance_work_mem = '256MB'",
                "ALTER TABLE subscriber_lists DROP CONSTRAINT subscriber_lists_subscriber_id_fkey",
                "ALTER TABLE subscriber_lists DROP CONSTRAINT subscriber_lists_pkey",
                "DROP INDEX subscriber_lists_list",
            ],
            &[
                // Ids were given explicitly: the identity goes on after them.
                "SELECT setval(pg_get_serial_sequence('subscribers', 'id'), MAX(id)) FROM subscribers",
                "ALTER TABLE subscriber_lists ADD CONSTRAINT subscriber_lists_pkey PRIMARY KEY (subscriber_id, list)",
                "CREATE INDEX subscriber_lists_list ON subscriber_lists (list, subscriber_id)",
                "ALTER TABLE subscriber_lists ADD CONSTRAINT subscriber_lists_subscriber_id_fkey \
                 FOREIGN KEY (subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE",
            ],
        ))
    }
}

/// Appends one field of a row in COPY's text format: `\N` for NULL; a
/// backslash, tab, newline and carriage return escaped (the only bytes
/// the format gives a meaning), everything else as it is (UTF-8).
pub(crate) fn copy_field(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(value) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends one row in COPY's text format: fields separated by tabs, a
/// newline at the end.
pub(crate) fn copy_row<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = Option<&'a str>>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        copy_field(out, f);
    }
    out.push(b'\n');
}

struct PgTx<'c>(Transaction<'c, Postgres>);

fn query(
    sql: &str,
    args: Vec<Val>,
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
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

/// Rows as [`Val`]s.
fn to_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Row>, sqlx::Error> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let raw = r.try_get_raw(i)?;
                    if raw.is_null() {
                        return Ok(Val::Null);
                    }
                    let kind = raw.type_info().name().to_string();
                    Ok(match kind.as_str() {
                        "INT8" => Val::Int(r.try_get::<i64, _>(i)?),
                        "INT4" => Val::Int(r.try_get::<i32, _>(i)?.into()),
                        "INT2" => Val::Int(r.try_get::<i16, _>(i)?.into()),
                        "BOOL" => Val::Int(r.try_get::<bool, _>(i)?.into()),
                        _ => Val::Text(r.try_get_unchecked::<String, _>(i)?),
                    })
                })
                .collect::<Result<Vec<Val>, sqlx::Error>>()
                .map(Row)
        })
        .collect()
}

#[async_trait::async_trait]
impl<'c> Conn for PgTx<'c> {
    async fn exec(&mut self, sql: &str, args: Vec<Val>) -> Result<u64, sqlx::Error> {
        Ok(query(sql, args)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn fetch(&mut self, sql: &str, args: Vec<Val>) -> Result<Vec<Row>, sqlx::Error> {
        to_rows(&query(sql, args).fetch_all(&mut *self.0).await?)
    }

    /// One statement per call, one array parameter per column
    /// (`UNNEST($1::bigint[], $2::text[], …)`): a handful of parameters
    /// however many rows, instead of thousands. (`COPY` was no faster here:
    /// sqlx flushes its last data and the closing message separately, and
    /// the small second packet waits ~40 ms for the delayed ACK.)
    async fn insert_rows(
        &mut self,
        insert: &str,
        width: usize,
        values: Vec<Val>,
    ) -> Result<u64, sqlx::Error> {
        let width = width.max(1);
        let rows = values.len() / width;
        // A column is numbers if any value in it is one.
        let numeric: Vec<bool> = (0..width)
            .map(|c| {
                values
                    .iter()
                    .skip(c)
                    .step_by(width)
                    .any(|v| matches!(v, Val::Int(_)))
            })
            .collect();
        let mut ints: Vec<Vec<Option<i64>>> = vec![Vec::new(); width];
        let mut texts: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
        for c in 0..width {
            if numeric[c] {
                ints[c].reserve(rows);
            } else {
                texts[c].reserve(rows);
            }
        }
        for (i, v) in values.into_iter().enumerate() {
            let c = i % width;
            match (numeric[c], v) {
                (true, Val::Int(n)) => ints[c].push(Some(n)),
                (true, Val::Text(t)) => ints[c].push(t.parse().ok()),
                (true, Val::Null | Val::NullInt) => ints[c].push(None),
                (false, Val::Text(t)) => texts[c].push(Some(t)),
                (false, _) => texts[c].push(None),
            }
        }
        let arrays: Vec<String> = (0..width)
            .map(|c| {
                format!(
                    "${}::{}[]",
                    c + 1,
                    if numeric[c] { "bigint" } else { "text" }
                )
            })
            .collect();
        let sql = format!("{insert} SELECT * FROM UNNEST({})", arrays.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for c in 0..width {
            q = if numeric[c] {
                q.bind(std::mem::take(&mut ints[c]))
            } else {
                q.bind(std::mem::take(&mut texts[c]))
            };
        }
        Ok(q.execute(&mut *self.0).await?.rows_affected())
    }

    fn copies(&self) -> bool {
        true
    }

    /// One `COPY` for the whole stream: each `COPY` ends with a small
    /// message that sqlx writes apart from the data, and on a TCP
    /// connection (Nagle on) it waits ~40 ms for the server's delayed ACK,
    /// so a `COPY` per batch would cost more than it saves.
    async fn copy_in(
        &mut self,
        copy: &str,
        mut chunks: BoxStream<'_, Vec<u8>>,
    ) -> Result<u64, sqlx::Error> {
        let mut sink = self.0.copy_in_raw(copy).await?;
        while let Some(chunk) = chunks.next().await {
            if let Err(e) = sink.send(chunk).await {
                sink.abort(e.to_string()).await.ok();
                return Err(e);
            }
        }
        sink.finish().await
    }

    async fn commit(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }
}

#[cfg(test)]
mod tests {
    use super::copy_row;

    #[test]
    fn copy_text_escapes_what_the_format_gives_a_meaning() {
        let mut out = Vec::new();
        copy_row(
            &mut out,
            [
                Some("a\tb\nc\rd\\e"),
                None,
                Some(""),
                Some("\\N"),
                Some("\\."),
                Some("Zoë \"q\" ,;"),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\nc\\rd\\\\e\t\\N\t\t\\\\N\t\\\\.\tZoë \"q\" ,;\n"
        );
    }
}
