//! The send journal, in the subscriber database: a campaign per send of an
//! issue, a delivery row per recipient (pending -> sending -> sent, or
//! deferred, failed, skipped).
//!
//! A row becomes `sent` only after the server accepted the message. Rows
//! are claimed (`sending`) a little ahead; a claimed row is marked
//! `on_wire` (committed) before the server can accept its message, and the
//! mark is cleared with its outcome. After a crash the only rows that may
//! have reached the server without being recorded are those on the wire:
//! the next run counts them as possible duplicates and sends them again;
//! the other claimed rows simply go back to the queue. Nothing is lost.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;

use super::db::{Db, on_db};
use super::rule::{self, Who};
use super::{Store, StoreError, Tx};
use crate::subscribers::Recipient;

/// What became of one attempt, as the journal records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server accepted it.
    Sent {
        key: String,
        message_id: String,
        attempts: u32,
    },
    /// A transient failure: try again at `retry_at` (Unix ms).
    Deferred {
        key: String,
        attempts: u32,
        retry_at: i64,
        error: Failure,
    },
    /// Given up: a permanent failure, or transient ones until the limit.
    Failed {
        key: String,
        attempts: u32,
        error: Failure,
        /// The address was rejected: the subscriber is marked bounced.
        bounced: bool,
    },
}

impl Outcome {
    /// The recipient's key.
    pub fn key(&self) -> &str {
        match self {
            Outcome::Sent { key, .. }
            | Outcome::Deferred { key, .. }
            | Outcome::Failed { key, .. } => key,
        }
    }
}

/// Why an attempt failed: the SMTP reply code, when there was one, and the
/// server's reply or the local cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Option<u16>,
    pub message: String,
}

/// Who a campaign goes to; part of its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every active subscriber in the store.
    All,
    /// Active subscribers on one list.
    List(String),
    /// The rows of a CSV file (by its path as given).
    Csv(String),
}

impl Audience {
    pub fn key(&self) -> String {
        match self {
            Audience::All => "all".into(),
            Audience::List(l) => format!("list:{l}"),
            Audience::Csv(p) => format!("csv:{p}"),
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::All => write!(f, "all active subscribers"),
            Audience::List(l) => write!(f, "list `{l}`"),
            Audience::Csv(p) => write!(f, "the recipients in {p}"),
        }
    }
}

/// One recipient to send to, as claimed from the journal.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: String,
    pub seq: i64,
    pub recipient: Recipient,
    /// Attempts made before this one.
    pub attempts: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub pending: u64,
    pub sending: u64,
    /// Of `sending`: messages that may have reached the server (a run that
    /// dies leaves these as possible duplicates).
    pub on_wire: u64,
    pub sent: u64,
    pub deferred: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Skipped, by reason (unsubscribed, bounced, suppressed, duplicate…).
    pub skipped_by: BTreeMap<String, u64>,
    /// Failed, by the server's reply or the local cause.
    pub failed_by: BTreeMap<String, u64>,
}

impl Counts {
    /// Recipients still to be sent to (now or after a retry delay).
    pub fn remaining(&self) -> u64 {
        self.pending + self.sending + self.deferred
    }
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: i64,
    pub issue: String,
    pub audience: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub possible_duplicates: i64,
    pub paused_reason: Option<String>,
}

pub struct Journal {
    store: Store,
    db: Db,
    campaign: Campaign,
    /// Marks the rows this process claims: the worker id, or `host:pid`.
    runner: String,
    /// Set when this process is one of several workers (PostgreSQL).
    worker: Option<String>,
    /// The connection `record` keeps.
    recorder: Recorder,
}

/// A pool connection kept for recording (by the database's kind).
#[derive(Default)]
struct Recorder {
    sqlite: tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>>,
    postgres: tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
}

/// What happened when a send started.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// A new campaign was made (the recipient set was fixed now).
    pub created: bool,
    /// Rows found in flight from a run that died; sent again.
    pub recovered_in_flight: u64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long a runner's claim on a campaign holds without renewal.
const RUNNER_LEASE: Duration = Duration::from_secs(20);

/// A worker whose heartbeat is older than this is taken for dead: the rows
/// it had in flight go back to the queue for the others.
pub const WORKER_STALE: Duration = Duration::from_secs(15);

/// Which campaign a send of `issue` to `audience` continues: the latest,
/// unless `resend` asks for a new one while no worker is sending it. The
/// latest made for another audience is an error.
fn continued(
    issue: &str,
    audience: &Audience,
    resend: bool,
    latest: Option<Campaign>,
    live_workers: i64,
) -> Result<Option<Campaign>, StoreError> {
    match latest {
        Some(c) if !resend || live_workers > 0 => {
            if c.audience != audience.key() {
                return Err(StoreError::Conflict(format!(
                    "{issue} was already sent to {} (campaign {} of {}); it can only continue there. To send it to {audience} as well, pass --resend (everyone in that audience gets it, including those who had it)",
                    describe_audience(&c.audience),
                    c.id,
                    format_time(c.created_at)
                )));
            }
            Ok(Some(c))
        }
        _ => Ok(None),
    }
}

fn this_process() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

fn runner_is_dead(runner: &str) -> bool {
    // `host:pid`: on this host, a pid that no longer exists is a dead
    // runner and need not wait for its lease to expire.
    let Some((host, pid)) = runner.rsplit_once(':') else {
        return false;
    };
    host == hostname() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Journal {
    pub fn campaign(&self) -> &Campaign {
        &self.campaign
    }

    /// The issue's campaign for `audience`: the current one, or a new one
    /// with its recipients fixed, in one transaction (on PostgreSQL under a
    /// lock on the issue, so workers starting together make one campaign).
    /// A campaign made for another audience is an error. `resend` starts a
    /// new campaign, unless workers are sending one right now: then it is
    /// joined. `csv` holds the recipients when the audience is a CSV file.
    pub async fn open_or_create(
        store: &Store,
        issue: &str,
        audience: &Audience,
        resend: bool,
        csv: Option<&[Recipient]>,
    ) -> Result<(Campaign, bool), StoreError> {
        let db = &store.backend();
        let now = now_ms();
        let err = |e| db.error("start the campaign", e);
        let is_pg = matches!(db, Db::Postgres(_));
        let (campaign, created) = on_db!(db, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            if is_pg {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidings:' || $1))")
                    .bind(issue)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
            let latest = sqlx::query(
                "SELECT id, issue, audience, created_at, finished_at, possible_duplicates, paused_reason
                 FROM campaigns WHERE issue = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(issue)
            .fetch_optional(&mut *tx)
            .await
            .and_then(|row| row.as_ref().map(campaign_from_row).transpose())
            .map_err(err)?;
            let live_workers: i64 = match &latest {
                Some(c) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at > $2 AND exited_at IS NULL",
                )
                .bind(c.id)
                .bind(now - WORKER_STALE.as_millis() as i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?,
                None => 0,
            };
            match continued(issue, audience, resend, latest, live_workers)? {
                Some(c) => {
                    tx.commit().await.map_err(err)?;
                    (c, false)
                }
                None => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO campaigns (issue, audience, created_at) VALUES ($1, $2, $3) RETURNING id",
                    )
                    .bind(issue)
                    .bind(audience.key())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(err)?;
                    match (audience, csv) {
                        (Audience::Csv(_), Some(rows)) => {
                            // Many rows per statement: one round trip per
                            // chunk, not per recipient (PostgreSQL).
                            for (chunk_no, chunk) in rows.chunks(200).enumerate() {
                                let values = (0..chunk.len())
                                    .map(|i| {
                                        let p = i * 8;
                                        format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5, p + 6, p + 7, p + 8)
                                    })
                                    .collect::<Vec<_>>()
                                    .join(", ");
                                // Only numbered placeholders are interpolated.
                                let sql = format!(
                                    "INSERT INTO deliveries (campaign_id, seq, email_key, email_hash, email, first_name, last_name, attributes)
                                     VALUES {values} ON CONFLICT (campaign_id, email_key) DO NOTHING"
                                );
                                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                                for (i, r) in chunk.iter().enumerate() {
                                    q = q
                                        .bind(id)
                                        .bind((chunk_no * 200 + i) as i64 + 1)
                                        .bind(r.key())
                                        .bind(crate::subscribers::email_hash_hex(&r.email))
                                        .bind(r.email.clone())
                                        .bind(r.first_name.clone())
                                        .bind(r.last_name.clone())
                                        .bind(serde_json::to_string(&r.attributes).unwrap_or_else(|_| "{}".into()));
                                }
                                q.execute(&mut *tx).await.map_err(err)?;
                            }
                        }
                        _ => {
                            let list = match audience {
                                Audience::List(l) => l.clone(),
                                _ => String::new(),
                            };
                            // Built only from the rule's constant SQL.
                            let blocked = rule::blocked_reason(Who::Row("s"));
                            sqlx::query(sqlx::AssertSqlSafe(format!(
                                "INSERT INTO deliveries (campaign_id, seq, email_key, email_hash, email, first_name, last_name, attributes, status, last_error)
                                 SELECT $1, s.id, s.email_key, s.email_hash, s.email, s.first_name, s.last_name, s.attributes,
                                        CASE WHEN {blocked} IS NULL THEN 'pending' ELSE 'skipped' END, {blocked}
                                 FROM subscribers s
                                 WHERE $2 = '' OR EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = $2)"
                            )))
                            .bind(id)
                            .bind(list)
                            .execute(&mut *tx)
                            .await
                            .map_err(err)?;
                        }
                    }
                    tx.commit().await.map_err(err)?;
                    (
                        Campaign {
                            id,
                            issue: issue.to_string(),
                            audience: audience.key(),
                            created_at: now,
                            finished_at: None,
                            possible_duplicates: 0,
                            paused_reason: None,
                        },
                        true,
                    )
                }
            }
        });
        Ok((campaign, created))
    }

    /// The campaign a send would continue, or `None` when it would start a
    /// new one (the same decision as `open_or_create`, which takes it
    /// again under a lock); reads only, so a declined send leaves no trace.
    pub async fn current(
        store: &Store,
        issue: &str,
        audience: &Audience,
        resend: bool,
    ) -> Result<Option<Campaign>, StoreError> {
        let db = &store.backend();
        let latest = campaigns(store, issue).await?.into_iter().next();
        let live_workers: i64 = match &latest {
            Some(c) => on_db!(db, pool => sqlx::query_scalar(
                "SELECT COUNT(*) FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at > $2 AND exited_at IS NULL",
            )
            .bind(c.id)
            .bind(now_ms() - WORKER_STALE.as_millis() as i64)
            .fetch_one(pool)
            .await)
            .map_err(|e| db.error("read the send journal", e))?,
            None => 0,
        };
        continued(issue, audience, resend, latest, live_workers)
    }

    /// Takes the campaign for this process: refuses while another live
    /// runner holds it, then turns rows a dead run left `sending` back to
    /// pending and counts them as possible duplicates.
    pub async fn attach(store: &Store, campaign: Campaign) -> Result<(Journal, u64), StoreError> {
        let db = &store.backend();
        let runner = this_process();
        let now = now_ms();
        let err = |e| db.error("claim the campaign", e);
        let live_workers: i64 = on_db!(db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at > $2 AND exited_at IS NULL",
        )
        .bind(campaign.id)
        .bind(now - WORKER_STALE.as_millis() as i64)
        .fetch_one(pool)
        .await)
        .map_err(err)?;
        if live_workers > 0 {
            return Err(StoreError::Conflict(format!(
                "{} is being sent by {live_workers} worker{} (--worker-id): join them with --worker-id, or wait for them to finish",
                campaign.issue,
                if live_workers == 1 { "" } else { "s" }
            )));
        }
        let holder: Option<(Option<String>, Option<i64>)> = on_db!(db, pool => sqlx::query_as(
            "SELECT runner, runner_until FROM campaigns WHERE id = $1",
        )
        .bind(campaign.id)
        .fetch_optional(pool)
        .await)
        .map_err(err)?;
        if let Some((Some(other), Some(until))) = holder
            && other != runner
            && until > now
            && !runner_is_dead(&other)
        {
            return Err(StoreError::Conflict(format!(
                "{} is being sent by another process ({other}); wait for it to finish. If that process is gone, its claim expires at {}",
                campaign.issue,
                format_time(until)
            )));
        }
        let recovered = on_db!(db, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            sqlx::query("UPDATE campaigns SET runner = $1, runner_until = $2, paused_reason = NULL WHERE id = $3")
                .bind(&runner)
                .bind(now + RUNNER_LEASE.as_millis() as i64)
                .bind(campaign.id)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            // Only rows on the wire may have reached the server; the rest
            // were claimed but never started.
            let n = sqlx::query(
                "UPDATE deliveries SET status = 'pending', worker = NULL, lease_until = NULL, on_wire = 0
                 WHERE campaign_id = $1 AND status = 'sending' AND on_wire = 1",
            )
            .bind(campaign.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
            sqlx::query(
                "UPDATE deliveries SET status = 'pending', worker = NULL, lease_until = NULL
                 WHERE campaign_id = $1 AND status = 'sending'",
            )
            .bind(campaign.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            if n > 0 {
                sqlx::query("UPDATE campaigns SET possible_duplicates = possible_duplicates + $1 WHERE id = $2")
                    .bind(n as i64)
                    .bind(campaign.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            n
        });
        let mut campaign = campaign;
        campaign.possible_duplicates += recovered as i64;
        Ok((
            Journal {
                store: store.clone(),
                db: db.clone(),
                campaign,
                runner,
                worker: None,
                recorder: Recorder::default(),
            },
            recovered,
        ))
    }

    /// Joins the campaign as one of several workers sharing a PostgreSQL
    /// database. Rows left in flight by a dead worker (its heartbeat is
    /// stale), or by an earlier run of this worker id, go back to the queue
    /// and count as possible duplicates.
    pub async fn join(
        store: &Store,
        campaign: Campaign,
        worker: &str,
    ) -> Result<(Journal, u64), StoreError> {
        let db = &store.backend();
        let Db::Postgres(pool) = db else {
            return Err(StoreError::Conflict(
                "--worker-id needs PostgreSQL: several senders coordinate through it. SQLite is for one machine; set database = \"postgres://…\" (or TIDINGS_DATABASE_URL)".into(),
            ));
        };
        let process = this_process();
        let now = now_ms();
        let err = |e| db.error("join the campaign", e);
        let mut tx = pool.begin().await.map_err(err)?;
        // One joiner at a time per campaign: the checks below stay true.
        sqlx::query("SELECT id FROM campaigns WHERE id = $1 FOR UPDATE")
            .bind(campaign.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let holder: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT runner, runner_until FROM campaigns WHERE id = $1")
                .bind(campaign.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(err)?;
        if let Some((Some(other), Some(until))) = holder
            && until > now
            && !runner_is_dead(&other)
        {
            return Err(StoreError::Conflict(format!(
                "{} is being sent by a single sender ({other}) without --worker-id; wait for it to finish",
                campaign.issue
            )));
        }
        let same: Option<(String, i64)> = sqlx::query_as(
            "SELECT process, heartbeat_at FROM campaign_workers WHERE campaign_id = $1 AND worker = $2",
        )
        .bind(campaign.id)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if let Some((other, beat)) = same
            && other != process
            && beat > now - WORKER_STALE.as_millis() as i64
            && !runner_is_dead(&other)
        {
            return Err(StoreError::Conflict(format!(
                "worker id `{worker}` is already sending {} ({other}): give each sender its own --worker-id",
                campaign.issue
            )));
        }
        sqlx::query(
            "INSERT INTO campaign_workers (campaign_id, worker, process, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (campaign_id, worker) DO UPDATE SET process = $3, started_at = $4, heartbeat_at = $4, exited_at = NULL, exit_reason = NULL",
        )
        .bind(campaign.id)
        .bind(worker)
        .bind(&process)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        let journal = Journal {
            store: store.clone(),
            db: db.clone(),
            campaign,
            runner: worker.to_string(),
            worker: Some(worker.to_string()),
            recorder: Recorder::default(),
        };
        let recovered = journal.reclaim(true).await?;
        let mut journal = journal;
        journal.campaign.possible_duplicates += recovered as i64;
        Ok((journal, recovered))
    }

    /// Returns to the queue the rows in flight with dead workers (and with
    /// an earlier run of this worker id when `own`), counting them as
    /// possible duplicates.
    async fn reclaim(&self, own: bool) -> Result<u64, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(0);
        };
        let err = |e| self.db.error("reclaim recipients of a stopped worker", e);
        let stale = now_ms() - WORKER_STALE.as_millis() as i64;
        let mut tx = pool.begin().await.map_err(err)?;
        // Rows on the wire first (counted: they may have reached the
        // server), then the ones claimed but never started.
        let mut n = 0;
        for which in ["on_wire = 1", "on_wire = 0"] {
            // Built only from the two constant conditions above.
            let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'pending' END, worker = NULL, on_wire = 0
                 WHERE campaign_id = $1 AND status = 'sending' AND {which}
                   AND ((worker = $2 AND $3)
                        OR worker IN (SELECT worker FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at < $4 AND worker <> $2))",
            )))
            .bind(self.campaign.id)
            .bind(&self.runner)
            .bind(own)
            .bind(stale)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
            if which == "on_wire = 1" {
                n = moved;
            }
        }
        if n > 0 {
            sqlx::query(
                "UPDATE campaigns SET possible_duplicates = possible_duplicates + $1 WHERE id = $2",
            )
            .bind(n as i64)
            .bind(self.campaign.id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(n)
    }

    /// Reserves `k` consecutive send slots `interval` apart from the
    /// campaign's shared schedule, in the database's clock; returns how
    /// long from now the first one is. Workers pace themselves by these, so
    /// the campaign's total rate is the configured one.
    pub async fn reserve_slots(&self, k: u32, interval: Duration) -> Result<Duration, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(Duration::ZERO);
        };
        let span = (interval.as_micros() as i64) * i64::from(k);
        let (start, now): (i64, i64) = sqlx::query_as(
            "WITH now AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT AS us)
             UPDATE campaigns SET next_slot_us = GREATEST(next_slot_us, (SELECT us FROM now)) + $2
             WHERE id = $1
             RETURNING next_slot_us - $2, (SELECT us FROM now)",
        )
        .bind(self.campaign.id)
        .bind(span)
        .fetch_one(pool)
        .await
        .map_err(|e| self.db.error("reserve send slots", e))?;
        Ok(Duration::from_micros((start - now).max(0) as u64))
    }

    pub fn is_worker(&self) -> bool {
        self.worker.is_some()
    }

    /// Keeps this process's claim (or worker heartbeat) alive; a worker
    /// also takes back what dead workers left in flight.
    pub async fn renew(&self) -> Result<(), StoreError> {
        if let Some(worker) = &self.worker {
            on_db!(&self.db, pool => sqlx::query("UPDATE campaign_workers SET heartbeat_at = $1 WHERE campaign_id = $2 AND worker = $3")
                .bind(now_ms())
                .bind(self.campaign.id)
                .bind(worker)
                .execute(pool)
                .await
                .map(|_| ()))
            .map_err(|e| self.db.error("send the worker heartbeat", e))?;
            self.reclaim(false).await?;
            return Ok(());
        }
        on_db!(&self.db, pool => sqlx::query("UPDATE campaigns SET runner_until = $1 WHERE id = $2 AND runner = $3")
            .bind(now_ms() + RUNNER_LEASE.as_millis() as i64)
            .bind(self.campaign.id)
            .bind(&self.runner)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(|e| self.db.error("renew the campaign claim", e))?;
        Ok(())
    }

    /// Claims up to `n` due rows: deferred ones whose retry time has come
    /// first, then pending ones in send order. Candidates whose subscriber
    /// unsubscribed, bounced or was removed since the campaign started are
    /// marked skipped instead. Every statement walks an index and touches
    /// only the candidates, so a claim costs the same at any list size.
    pub async fn claim(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        let now = now_ms();
        let id = self.campaign.id;
        let err = |e| self.db.error("claim recipients", e);
        // Several senders on one PostgreSQL never claim the same row (SKIP
        // LOCKED). The candidates go through ARRAY(…), evaluated once: as
        // `IN (SELECT … LIMIT n)` PostgreSQL may rescan the subquery for
        // each row, and rows this statement already updated are skipped on
        // the rescan, so one claim took the whole campaign.
        let within = |select: &str| match self.db {
            Db::Sqlite(_) => format!("email_key IN ({select})"),
            Db::Postgres(_) => format!("email_key = ANY(ARRAY({select} FOR UPDATE SKIP LOCKED))"),
        };
        let candidates = [
            "SELECT email_key FROM deliveries WHERE campaign_id = $1 AND status = 'deferred' AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3",
            "SELECT email_key FROM deliveries WHERE campaign_id = $1 AND status = 'pending' AND $2 >= 0 ORDER BY seq LIMIT $3",
        ];
        let mut jobs = Vec::new();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            let blocked = rule::blocked_reason(Who::Address {
                key: "deliveries.email_key",
                hash: "deliveries.email_hash",
            });
            for select in candidates {
                let want = n - jobs.len();
                if want == 0 {
                    break;
                }
                // Built only from the constant fragments above.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'skipped', last_error = {blocked}
                     WHERE campaign_id = $1 AND {} AND {blocked} IS NOT NULL",
                    within(select)
                )))
                .bind(id)
                .bind(now)
                .bind(want as i64)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'sending', worker = $4, on_wire = 0
                     WHERE campaign_id = $1 AND {}
                     RETURNING seq, email_key, email, first_name, last_name, attributes, attempts",
                    within(select)
                )))
                .bind(id)
                .bind(now)
                .bind(want as i64)
                .bind(&self.runner)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
                for row in &rows {
                    jobs.push(job_from_row(row).map_err(err)?);
                }
            }
            tx.commit().await.map_err(err)?;
        });
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    /// Returns claimed rows that were never started to the queue.
    pub async fn release(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let err = |e| self.db.error("release recipients", e);
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await.map_err(err)?;
            for k in keys {
                sqlx::query(
                    "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'pending' END, worker = NULL, on_wire = 0
                     WHERE campaign_id = $1 AND email_key = $2 AND status = 'sending'",
                )
                .bind(self.campaign.id)
                .bind(k)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
        });
        Ok(())
    }

    /// Records, in one transaction, the claimed rows whose messages are
    /// about to reach the server (`on_wire`) and the outcomes of finished
    /// attempts; bounces also mark the subscriber. The send loop lets the
    /// server accept a message only after this commit.
    pub async fn record(&self, on_wire: &[String], outcomes: &[Outcome]) -> Result<(), StoreError> {
        if on_wire.is_empty() && outcomes.is_empty() {
            return Ok(());
        }
        let id = self.campaign.id;
        let now = now_ms();
        let err = |e| self.db.error("record sends", e);
        // Rows going on the wire and rows sent, the common case, in one
        // statement per chunk (one round trip, and on its own one commit):
        // (key, sent, attempts, message id). A row whose outcome is here
        // too needs no mark.
        let finished: std::collections::HashSet<&str> = outcomes.iter().map(|o| o.key()).collect();
        let mut rows: Vec<(&str, i64, i64, Option<&str>)> = on_wire
            .iter()
            .filter(|k| !finished.contains(k.as_str()))
            .map(|k| (k.as_str(), 0, 0, None))
            .collect();
        let mut others = Vec::new();
        for o in outcomes {
            match o {
                Outcome::Sent {
                    key,
                    message_id,
                    attempts,
                } => rows.push((key, 1, i64::from(*attempts), Some(message_id))),
                o => others.push(o),
            }
        }
        const CHUNK: usize = 500;
        let batch_sql = |n: usize| {
            let values = (0..n)
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, ${})",
                        4 * i + 3,
                        4 * i + 4,
                        4 * i + 5,
                        4 * i + 6
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            // Only numbered placeholders are interpolated. VALUES columns
            // are column1… in both databases.
            format!(
                "UPDATE deliveries SET
                     on_wire = 1 - v.column2,
                     status = CASE WHEN v.column2 = 1 THEN 'sent' ELSE deliveries.status END,
                     attempts = CASE WHEN v.column2 = 1 THEN v.column3 ELSE deliveries.attempts END,
                     sent_at = CASE WHEN v.column2 = 1 THEN $2 ELSE deliveries.sent_at END,
                     message_id = CASE WHEN v.column2 = 1 THEN v.column4 ELSE deliveries.message_id END,
                     last_code = CASE WHEN v.column2 = 1 THEN NULL ELSE deliveries.last_code END,
                     last_error = CASE WHEN v.column2 = 1 THEN NULL ELSE deliveries.last_error END
                 FROM (VALUES {values}) AS v
                 WHERE deliveries.campaign_id = $1 AND deliveries.email_key = v.column1
                   AND (v.column2 = 1 OR deliveries.status = 'sending')"
            )
        };
        macro_rules! batch {
            ($chunk:expr) => {{
                let mut q = sqlx::query(sqlx::AssertSqlSafe(batch_sql($chunk.len())))
                    .bind(id)
                    .bind(now);
                for (key, sent, attempts, message_id) in $chunk {
                    q = q.bind(*key).bind(*sent).bind(*attempts).bind(*message_id);
                }
                q
            }};
        }
        // On a connection of its own, kept: no pool round trip per commit.
        macro_rules! record_on {
            ($conn:ident, $wrap:path) => {{
                if others.is_empty() && !rows.is_empty() && rows.len() <= CHUNK {
                    batch!(&rows).execute(&mut **$conn).await.map_err(err)?;
                    return Ok(());
                }
                let mut tx = sqlx::Connection::begin(&mut **$conn).await.map_err(err)?;
                for chunk in rows.chunks(CHUNK) {
                    batch!(chunk).execute(&mut *tx).await.map_err(err)?;
                }
                // The rare outcomes go through the store's operations, in the
                // same transaction.
                let mut tx = Tx::over($wrap(tx), self.store.driver.as_ref());
                for o in others {
                    self.record_failure(&mut tx, o).await?;
                }
                tx.commit().await?;
            }};
        }
        // The connection is kept between groups; dropped after an error, so
        // the next group starts on a fresh one.
        macro_rules! on_held {
            ($pool:ident, $held:expr, $wrap:path) => {{
                let mut held = $held.lock().await;
                if held.is_none() {
                    *held = Some($pool.acquire().await.map_err(err)?);
                }
                let conn = held.as_mut().expect("just set");
                let result: Result<(), StoreError> = async {
                    record_on!(conn, $wrap);
                    Ok(())
                }
                .await;
                if result.is_err() {
                    *held = None;
                }
                result
            }};
        }
        match &self.db {
            Db::Sqlite(pool) => on_held!(pool, self.recorder.sqlite, super::sqlite::wrap),
            Db::Postgres(pool) => on_held!(pool, self.recorder.postgres, super::postgres::wrap),
        }
    }

    /// Records a deferral or a failure; a rejected address is bounced by
    /// the store's one bounce operation ([`super::status::bounce`]).
    async fn record_failure(&self, tx: &mut Tx<'_>, outcome: &Outcome) -> Result<(), StoreError> {
        let id = self.campaign.id;
        match outcome {
            Outcome::Sent { .. } => unreachable!("recorded in the batch"),
            Outcome::Deferred {
                key,
                attempts,
                retry_at,
                error,
            } => {
                tx.exec(
                    "UPDATE deliveries SET status = 'deferred', on_wire = 0, attempts = $1, next_attempt_at = $2, last_code = $3, last_error = $4, worker = NULL
                     WHERE campaign_id = $5 AND email_key = $6",
                    vec![
                        i64::from(*attempts).into(),
                        (*retry_at).into(),
                        error.code.map(i64::from).into(),
                        error.message.clone().into(),
                        id.into(),
                        key.clone().into(),
                    ],
                )
                .await?;
            }
            Outcome::Failed {
                key,
                attempts,
                error,
                bounced,
            } => {
                tx.exec(
                    "UPDATE deliveries SET status = 'failed', on_wire = 0, attempts = $1, last_code = $2, last_error = $3
                     WHERE campaign_id = $4 AND email_key = $5",
                    vec![
                        i64::from(*attempts).into(),
                        error.code.map(i64::from).into(),
                        error.message.clone().into(),
                        id.into(),
                        key.clone().into(),
                    ],
                )
                .await?;
                if *bounced {
                    let hash = tx
                        .one(
                            "SELECT email_hash FROM deliveries WHERE campaign_id = $1 AND email_key = $2",
                            vec![id.into(), key.clone().into()],
                        )
                        .await?
                        .map(|mut r| r.text(0))
                        .unwrap_or_default();
                    let source = format!(
                        "bounce: {} on sending {}",
                        error.code.map_or(String::new(), |c| c.to_string()),
                        self.campaign.issue
                    );
                    let now = crate::subscribers::model::now();
                    let cause = super::status::Cause {
                        source: &source,
                        campaign: Some(id),
                    };
                    super::status::bounce(tx, &hash, cause, &now).await?;
                }
            }
        }
        Ok(())
    }

    /// When the earliest deferred row is due, if any is waiting. A worker
    /// also waits for rows other workers have in flight: they are sent, or
    /// come back when that worker's heartbeat goes stale.
    pub async fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        let err = |e| self.db.error("read the send journal", e);
        if self.worker.is_some() {
            self.reclaim(false).await?;
        }
        let due: Option<i64> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE campaign_id = $1 AND status IN ('pending', 'deferred')",
        )
        .bind(self.campaign.id)
        .fetch_one(pool)
        .await)
        .map_err(err)?;
        if self.worker.is_none() {
            return Ok(due);
        }
        let others: Option<i64> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT MIN(w.heartbeat_at) FROM deliveries d
             JOIN campaign_workers w ON w.campaign_id = d.campaign_id AND w.worker = d.worker
             WHERE d.campaign_id = $1 AND d.status = 'sending' AND d.worker <> $2",
        )
        .bind(self.campaign.id)
        .bind(&self.runner)
        .fetch_one(pool)
        .await)
        .map_err(err)?;
        let stale_at = others.map(|beat| beat + WORKER_STALE.as_millis() as i64 + 500);
        Ok(match (due, stale_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    pub async fn counts(&self) -> Result<Counts, StoreError> {
        counts(&self.store, self.campaign.id).await
    }

    /// Records why the run stopped early (or clears it), and the finish time
    /// when nothing is left.
    pub async fn close(
        &self,
        paused_reason: Option<&str>,
        finished: bool,
    ) -> Result<(), StoreError> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE campaigns SET runner = NULL, runner_until = NULL, paused_reason = $1,
                 finished_at = CASE WHEN $2 THEN $3 ELSE NULL END
             WHERE id = $4",
        )
        .bind(paused_reason)
        .bind(finished)
        .bind(now_ms())
        .bind(self.campaign.id)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(|e| self.db.error("close the campaign", e))?;
        Ok(())
    }

    /// A worker says it exited and why (`finished`, `interrupted`, …), so
    /// `status` can tell it from a dead one.
    pub async fn leave(&self, reason: &str) -> Result<(), StoreError> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE campaign_workers SET exited_at = $1, exit_reason = $2 WHERE campaign_id = $3 AND worker = $4",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(self.campaign.id)
        .bind(worker)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(|e| self.db.error("record the worker's exit", e))?;
        Ok(())
    }
}

/// Counts of a campaign's rows by status (and reasons).
pub async fn counts(store: &Store, campaign: i64) -> Result<Counts, StoreError> {
    let db = &store.backend();
    let err = |e| db.error("read the send journal", e);
    let rows: Vec<(String, Option<String>, i64, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT status, CASE WHEN status IN ('skipped', 'failed') THEN last_error ELSE NULL END, COUNT(*),
                COALESCE(SUM(on_wire), 0)
         FROM deliveries WHERE campaign_id = $1 GROUP BY 1, 2",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await)
    .map_err(err)?;
    let mut c = Counts::default();
    for (status, reason, n, on_wire) in rows {
        let n = n as u64;
        c.total += n;
        match status.as_str() {
            "pending" => c.pending += n,
            "sending" => {
                c.sending += n;
                c.on_wire += on_wire as u64;
            }
            "sent" => c.sent += n,
            "deferred" => c.deferred += n,
            "failed" => {
                c.failed += n;
                *c.failed_by.entry(reason.unwrap_or_default()).or_default() += n;
            }
            "skipped" => {
                c.skipped += n;
                *c.skipped_by.entry(reason.unwrap_or_default()).or_default() += n;
            }
            _ => {}
        }
    }
    Ok(c)
}

/// What one worker did in a campaign.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    pub worker: String,
    /// Rows it took: sent, failed, and still in flight.
    pub claimed: u64,
    pub sent: u64,
    pub failed: u64,
    pub in_flight: u64,
    /// Of `in_flight`: messages that may have reached the server.
    pub on_wire: u64,
    /// Its send rate between its first and last accepted message.
    pub rate: f64,
    /// Its last heartbeat.
    pub heartbeat_at: i64,
    /// When it exited, and why (`finished`, `interrupted`, …); `None` while
    /// it runs, or when it died.
    pub exited: Option<(i64, String)>,
}

/// Per-worker counts for a campaign sent with --worker-id.
pub async fn worker_stats(store: &Store, campaign: i64) -> Result<Vec<WorkerStats>, StoreError> {
    let db = &store.backend();
    let err = |e| db.error("read the send journal", e);
    let workers: Vec<(String, i64, Option<i64>, Option<String>)> = on_db!(db, pool => sqlx::query_as(
        "SELECT worker, heartbeat_at, exited_at, exit_reason FROM campaign_workers WHERE campaign_id = $1 ORDER BY worker",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await)
    .map_err(err)?;
    // worker, status, count, first and last send time
    type Group = (String, String, i64, Option<i64>, Option<i64>, i64);
    let rows: Vec<Group> = on_db!(db, pool => sqlx::query_as(
        "SELECT worker, status, COUNT(*), MIN(sent_at), MAX(sent_at), COALESCE(SUM(on_wire), 0) FROM deliveries
         WHERE campaign_id = $1 AND worker IS NOT NULL GROUP BY worker, status",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await)
    .map_err(err)?;
    let mut out: Vec<WorkerStats> = workers
        .into_iter()
        .map(|(worker, heartbeat_at, exited_at, reason)| WorkerStats {
            worker,
            heartbeat_at,
            exited: exited_at.map(|t| (t, reason.unwrap_or_default())),
            ..WorkerStats::default()
        })
        .collect();
    for (worker, status, n, first, last, on_wire) in rows {
        let Some(w) = out.iter_mut().find(|w| w.worker == worker) else {
            continue;
        };
        let n = n as u64;
        match status.as_str() {
            "sent" => {
                w.sent += n;
                if let (Some(a), Some(b)) = (first, last)
                    && b > a
                {
                    w.rate = (n.saturating_sub(1)) as f64 / ((b - a) as f64 / 1000.0);
                }
            }
            "failed" => w.failed += n,
            "sending" => {
                w.in_flight += n;
                w.on_wire += on_wire as u64;
            }
            _ => continue,
        }
        w.claimed += n;
    }
    Ok(out)
}

/// All campaigns of an issue, newest first.
pub async fn campaigns(store: &Store, issue: &str) -> Result<Vec<Campaign>, StoreError> {
    let db = &store.backend();
    on_db!(db, pool => sqlx::query(
        "SELECT id, issue, audience, created_at, finished_at, possible_duplicates, paused_reason
         FROM campaigns WHERE issue = $1 ORDER BY id DESC",
    )
    .bind(issue)
    .fetch_all(pool)
    .await
    .and_then(|rows| rows.iter().map(campaign_from_row).collect()))
    .map_err(|e| db.error("read the send journal", e))
}

/// One line of `--report`: what happened to one recipient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportRow {
    pub email: String,
    pub status: String,
    pub attempts: i64,
    pub code: Option<i64>,
    pub detail: String,
    pub sent_at: String,
    pub message_id: String,
}

/// Writes one CSV line per recipient of the campaign, in send order.
pub async fn write_report(
    store: &Store,
    campaign: i64,
    out: &mut csv::Writer<std::fs::File>,
) -> Result<u64, StoreError> {
    let db = &store.backend();
    use futures_util::TryStreamExt;
    let err = |e| db.error("read the send journal", e);
    let mut n = 0;
    on_db!(db, pool => {
        let mut rows = sqlx::query(
            "SELECT email, status, attempts, last_code, last_error, sent_at, message_id
             FROM deliveries WHERE campaign_id = $1 ORDER BY seq",
        )
        .bind(campaign)
        .fetch(pool);
        while let Some(row) = rows.try_next().await.map_err(err)? {
            let sent_at: Option<i64> = row.try_get("sent_at").map_err(err)?;
            out.serialize(ReportRow {
                email: row.try_get("email").map_err(err)?,
                status: row.try_get("status").map_err(err)?,
                attempts: row.try_get("attempts").map_err(err)?,
                code: row.try_get("last_code").map_err(err)?,
                detail: row.try_get::<Option<String>, _>("last_error").map_err(err)?.unwrap_or_default(),
                sent_at: sent_at.map(format_time).unwrap_or_default(),
                message_id: row.try_get::<Option<String>, _>("message_id").map_err(err)?.unwrap_or_default(),
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
            n += 1;
        }
    });
    Ok(n)
}

fn campaign_from_row<R: Row>(row: &R) -> Result<Campaign, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database>,
{
    Ok(Campaign {
        id: row.try_get("id")?,
        issue: row.try_get("issue")?,
        audience: row.try_get("audience")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        possible_duplicates: row.try_get("possible_duplicates")?,
        paused_reason: row.try_get("paused_reason")?,
    })
}

fn job_from_row<R: Row>(row: &R) -> Result<Job, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let attributes: String = row.try_get("attributes")?;
    let recipient = Recipient {
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
    };
    Ok(Job {
        key: row.try_get("email_key")?,
        seq: row.try_get("seq")?,
        recipient,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
    })
}

fn describe_audience(key: &str) -> String {
    match key.split_once(':') {
        Some(("list", l)) => format!("list `{l}`"),
        Some(("csv", p)) => format!("the recipients in {p}"),
        _ => "all active subscribers".into(),
    }
}

/// `2026-11-26 08:30:00 UTC`
pub fn format_time(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// An issue the journal shows as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentIssue {
    pub slug: String,
    /// When its first message was accepted (Unix ms).
    pub first_sent_ms: i64,
}

/// Sent issues, newest first (by first send time).
pub async fn sent_issues(store: &Store) -> Result<Vec<SentIssue>, StoreError> {
    const SQL: &str = "SELECT c.issue, MIN(d.sent_at) FROM campaigns c \
         JOIN deliveries d ON d.campaign_id = c.id \
         WHERE d.status = 'sent' AND d.sent_at IS NOT NULL \
         GROUP BY c.issue ORDER BY MIN(d.sent_at) DESC, c.issue";
    let db = &store.backend();
    let err = |e| db.error("list the sent issues", e);
    let rows: Vec<(String, i64)> = on_db!(db, pool => {
        sqlx::query_as(SQL).fetch_all(pool).await.map_err(err)?
    });
    Ok(rows
        .into_iter()
        .map(|(slug, first_sent_ms)| SentIssue {
            slug,
            first_sent_ms,
        })
        .collect())
}
