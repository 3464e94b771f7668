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

use super::rule::{self, Who};
use super::{Driver, Kept, Row, Store, StoreError, Tx, Val};
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
    campaign: Campaign,
    /// Marks the rows this process claims: the worker id, or `host:pid`.
    runner: String,
    /// Set when this process is one of several workers (PostgreSQL).
    worker: Option<String>,
    /// The connection `record` keeps between groups: no pool round trip
    /// per commit.
    recorder: tokio::sync::Mutex<Kept>,
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

    fn driver(&self) -> &dyn Driver {
        self.store.driver.as_ref()
    }

    fn new(store: &Store, campaign: Campaign, runner: String, worker: Option<String>) -> Journal {
        Journal {
            store: store.clone(),
            campaign,
            runner,
            worker,
            recorder: tokio::sync::Mutex::new(Kept::default()),
        }
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
        let driver = store.driver.as_ref();
        let now = now_ms();
        let mut tx = Tx::begin(driver, true).await?;
        if driver.shared_sends() {
            tx.exec(
                "SELECT pg_advisory_xact_lock(hashtext('tidings:' || $1))",
                vec![issue.into()],
            )
            .await?;
        }
        let latest = tx
            .one(
                &format!(
                    "SELECT {CAMPAIGN} FROM campaigns WHERE issue = $1 ORDER BY id DESC LIMIT 1"
                ),
                vec![issue.into()],
            )
            .await?
            .map(campaign_from_row);
        let live_workers = match &latest {
            Some(c) => tx.count(LIVE_WORKERS, live_workers_args(c.id, now)).await? as i64,
            None => 0,
        };
        if let Some(c) = continued(issue, audience, resend, latest, live_workers)? {
            tx.commit().await?;
            return Ok((c, false));
        }
        let id = tx
            .one(
                "INSERT INTO campaigns (issue, audience, created_at) VALUES ($1, $2, $3) RETURNING id",
                vec![issue.into(), audience.key().into(), now.into()],
            )
            .await?
            .map_or(0, |r| r.int(0));
        match (audience, csv) {
            (Audience::Csv(_), Some(rows)) => {
                // Many rows per statement: one round trip per chunk, not
                // per recipient (PostgreSQL).
                for (chunk_no, chunk) in rows.chunks(200).enumerate() {
                    let mut sql = String::from(
                        "INSERT INTO deliveries (campaign_id, seq, email_key, email_hash, email, first_name, last_name, attributes) VALUES ",
                    );
                    let mut args = Vec::with_capacity(chunk.len() * 8);
                    for (i, r) in chunk.iter().enumerate() {
                        super::push_tuple(&mut sql, i, 8, 0);
                        args.extend([
                            Val::from(id),
                            Val::from((chunk_no * 200 + i) as i64 + 1),
                            Val::from(r.key()),
                            Val::from(crate::subscribers::email_hash_hex(&r.email)),
                            Val::from(r.email.clone()),
                            Val::from(r.first_name.clone()),
                            Val::from(r.last_name.clone()),
                            Val::from(super::attributes_json(&r.attributes)),
                        ]);
                    }
                    // Only numbered placeholders are interpolated.
                    sql.push_str(" ON CONFLICT (campaign_id, email_key) DO NOTHING");
                    tx.exec(&sql, args).await?;
                }
            }
            _ => {
                let list = match audience {
                    Audience::List(l) => l.clone(),
                    _ => String::new(),
                };
                // Built only from the rule's constant SQL.
                let blocked = rule::blocked_reason(Who::Row("s"));
                tx.exec(
                    &format!(
                        "INSERT INTO deliveries (campaign_id, seq, email_key, email_hash, email, first_name, last_name, attributes, status, last_error)
                         SELECT $1, s.id, s.email_key, s.email_hash, s.email, s.first_name, s.last_name, s.attributes,
                                CASE WHEN {blocked} IS NULL THEN 'pending' ELSE 'skipped' END, {blocked}
                         FROM subscribers s
                         WHERE $2 = '' OR EXISTS (SELECT 1 FROM subscriber_lists l WHERE l.subscriber_id = s.id AND l.list = $2)"
                    ),
                    vec![id.into(), list.into()],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok((
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
        ))
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
        let latest = campaigns(store, issue).await?.into_iter().next();
        let live_workers = match &latest {
            Some(c) => count(store, LIVE_WORKERS, live_workers_args(c.id, now_ms())).await?,
            None => 0,
        };
        continued(issue, audience, resend, latest, live_workers)
    }

    /// Takes the campaign for this process: refuses while another live
    /// runner holds it, then turns rows a dead run left `sending` back to
    /// pending and counts them as possible duplicates.
    pub async fn attach(store: &Store, campaign: Campaign) -> Result<(Journal, u64), StoreError> {
        let driver = store.driver.as_ref();
        let runner = this_process();
        let now = now_ms();
        let live_workers = count(store, LIVE_WORKERS, live_workers_args(campaign.id, now)).await?;
        if live_workers > 0 {
            return Err(StoreError::Conflict(format!(
                "{} is being sent by {live_workers} worker{} (--worker-id): join them with --worker-id, or wait for them to finish",
                campaign.issue,
                if live_workers == 1 { "" } else { "s" }
            )));
        }
        let holder = driver
            .query(
                "SELECT runner, runner_until FROM campaigns WHERE id = $1",
                vec![campaign.id.into()],
            )
            .await?
            .into_iter()
            .next()
            .map(|mut r| (r.opt_text(0), r.opt_int(1)));
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
        let mut tx = Tx::begin(driver, true).await?;
        tx.exec(
            "UPDATE campaigns SET runner = $1, runner_until = $2, paused_reason = NULL WHERE id = $3",
            vec![
                runner.clone().into(),
                (now + RUNNER_LEASE.as_millis() as i64).into(),
                campaign.id.into(),
            ],
        )
        .await?;
        // Only rows on the wire may have reached the server; the rest were
        // claimed but never started.
        let recovered = tx
            .exec(
                "UPDATE deliveries SET status = 'pending', worker = NULL, lease_until = NULL, on_wire = 0
                 WHERE campaign_id = $1 AND status = 'sending' AND on_wire = 1",
                vec![campaign.id.into()],
            )
            .await?;
        tx.exec(
            "UPDATE deliveries SET status = 'pending', worker = NULL, lease_until = NULL
             WHERE campaign_id = $1 AND status = 'sending'",
            vec![campaign.id.into()],
        )
        .await?;
        if recovered > 0 {
            tx.exec(
                "UPDATE campaigns SET possible_duplicates = possible_duplicates + $1 WHERE id = $2",
                vec![(recovered as i64).into(), campaign.id.into()],
            )
            .await?;
        }
        tx.commit().await?;
        let mut campaign = campaign;
        campaign.possible_duplicates += recovered as i64;
        Ok((Journal::new(store, campaign, runner, None), recovered))
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
        let driver = store.driver.as_ref();
        if !driver.shared_sends() {
            return Err(StoreError::Conflict(
                "--worker-id needs PostgreSQL: several senders coordinate through it. SQLite is for one machine; set database = \"postgres://…\" (or TIDINGS_DATABASE_URL)".into(),
            ));
        }
        let process = this_process();
        let now = now_ms();
        let mut tx = Tx::begin(driver, true).await?;
        // One joiner at a time per campaign: the checks below stay true.
        tx.exec(
            "SELECT id FROM campaigns WHERE id = $1 FOR UPDATE",
            vec![campaign.id.into()],
        )
        .await?;
        let holder = tx
            .one(
                "SELECT runner, runner_until FROM campaigns WHERE id = $1",
                vec![campaign.id.into()],
            )
            .await?
            .map(|mut r| (r.opt_text(0), r.opt_int(1)));
        if let Some((Some(other), Some(until))) = holder
            && until > now
            && !runner_is_dead(&other)
        {
            return Err(StoreError::Conflict(format!(
                "{} is being sent by a single sender ({other}) without --worker-id; wait for it to finish",
                campaign.issue
            )));
        }
        let same = tx
            .one(
                "SELECT process, heartbeat_at FROM campaign_workers WHERE campaign_id = $1 AND worker = $2",
                vec![campaign.id.into(), worker.into()],
            )
            .await?
            .map(|mut r| (r.text(0), r.int(1)));
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
        tx.exec(
            "INSERT INTO campaign_workers (campaign_id, worker, process, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (campaign_id, worker) DO UPDATE SET process = $3, started_at = $4, heartbeat_at = $4, exited_at = NULL, exit_reason = NULL",
            vec![campaign.id.into(), worker.into(), process.into(), now.into()],
        )
        .await?;
        tx.commit().await?;
        let mut journal = Journal::new(
            store,
            campaign,
            worker.to_string(),
            Some(worker.to_string()),
        );
        let recovered = journal.reclaim(true).await?;
        journal.campaign.possible_duplicates += recovered as i64;
        Ok((journal, recovered))
    }

    /// Returns to the queue the rows in flight with dead workers (and with
    /// an earlier run of this worker id when `own`), counting them as
    /// possible duplicates.
    async fn reclaim(&self, own: bool) -> Result<u64, StoreError> {
        if !self.driver().shared_sends() {
            return Ok(0);
        }
        let stale = now_ms() - WORKER_STALE.as_millis() as i64;
        let mut tx = Tx::begin(self.driver(), true).await?;
        // Rows on the wire first (counted: they may have reached the
        // server), then the ones claimed but never started.
        let mut n = 0;
        for which in ["on_wire = 1", "on_wire = 0"] {
            // Built only from the two constant conditions above.
            let moved = tx
                .exec(
                    &format!(
                        "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'pending' END, worker = NULL, on_wire = 0
                         WHERE campaign_id = $1 AND status = 'sending' AND {which}
                           AND ((worker = $2 AND $3 = 1)
                                OR worker IN (SELECT worker FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at < $4 AND worker <> $2))",
                    ),
                    vec![
                        self.campaign.id.into(),
                        self.runner.clone().into(),
                        i64::from(own).into(),
                        stale.into(),
                    ],
                )
                .await?;
            if which == "on_wire = 1" {
                n = moved;
            }
        }
        if n > 0 {
            tx.exec(
                "UPDATE campaigns SET possible_duplicates = possible_duplicates + $1 WHERE id = $2",
                vec![(n as i64).into(), self.campaign.id.into()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Reserves `k` consecutive send slots `interval` apart from the
    /// campaign's shared schedule, in the database's clock; returns how
    /// long from now the first one is. Workers pace themselves by these, so
    /// the campaign's total rate is the configured one.
    pub async fn reserve_slots(&self, k: u32, interval: Duration) -> Result<Duration, StoreError> {
        if !self.driver().shared_sends() {
            return Ok(Duration::ZERO);
        }
        let span = (interval.as_micros() as i64) * i64::from(k);
        let row = self
            .driver()
            .query(
                "WITH now AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT AS us)
                 UPDATE campaigns SET next_slot_us = GREATEST(next_slot_us, (SELECT us FROM now)) + $2
                 WHERE id = $1
                 RETURNING next_slot_us - $2, (SELECT us FROM now)",
                vec![self.campaign.id.into(), span.into()],
            )
            .await?
            .into_iter()
            .next();
        let (start, now) = row.map_or((0, 0), |r| (r.int(0), r.int(1)));
        Ok(Duration::from_micros((start - now).max(0) as u64))
    }

    pub fn is_worker(&self) -> bool {
        self.worker.is_some()
    }

    /// Keeps this process's claim (or worker heartbeat) alive; a worker
    /// also takes back what dead workers left in flight.
    pub async fn renew(&self) -> Result<(), StoreError> {
        if let Some(worker) = &self.worker {
            self.driver()
                .run(
                    "UPDATE campaign_workers SET heartbeat_at = $1 WHERE campaign_id = $2 AND worker = $3",
                    vec![now_ms().into(), self.campaign.id.into(), worker.clone().into()],
                )
                .await?;
            self.reclaim(false).await?;
            return Ok(());
        }
        self.driver()
            .run(
                "UPDATE campaigns SET runner_until = $1 WHERE id = $2 AND runner = $3",
                vec![
                    (now_ms() + RUNNER_LEASE.as_millis() as i64).into(),
                    self.campaign.id.into(),
                    self.runner.clone().into(),
                ],
            )
            .await?;
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
        // Several senders on one PostgreSQL never claim the same row (SKIP
        // LOCKED). The candidates go through ARRAY(…), evaluated once: as
        // `IN (SELECT … LIMIT n)` PostgreSQL may rescan the subquery for
        // each row, and rows this statement already updated are skipped on
        // the rescan, so one claim took the whole campaign.
        let shared = self.driver().shared_sends();
        let within = |select: &str| match shared {
            false => format!("email_key IN ({select})"),
            true => format!("email_key = ANY(ARRAY({select} FOR UPDATE SKIP LOCKED))"),
        };
        let candidates = [
            "SELECT email_key FROM deliveries WHERE campaign_id = $1 AND status = 'deferred' AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3",
            "SELECT email_key FROM deliveries WHERE campaign_id = $1 AND status = 'pending' AND $2 >= 0 ORDER BY seq LIMIT $3",
        ];
        let blocked = rule::blocked_reason(Who::Address {
            key: "deliveries.email_key",
            hash: "deliveries.email_hash",
        });
        let mut jobs = Vec::new();
        let mut tx = Tx::begin(self.driver(), true).await?;
        for select in candidates {
            // Skip the blocked among the next candidates, then claim the
            // next candidates that are not blocked; again while either
            // found something, since each statement looks at its own next
            // `want` rows. The rule is in both: no blocked row is handed
            // out, whatever the order of the two.
            loop {
                let want = n - jobs.len();
                if want == 0 {
                    break;
                }
                // Built only from the constant fragments above.
                let skipped = tx
                    .exec(
                        &format!(
                            "UPDATE deliveries SET status = 'skipped', last_error = {blocked}
                             WHERE campaign_id = $1 AND {} AND {blocked} IS NOT NULL",
                            within(select)
                        ),
                        vec![id.into(), now.into(), (want as i64).into()],
                    )
                    .await?;
                let rows = tx
                    .fetch(
                        &format!(
                            "UPDATE deliveries SET status = 'sending', worker = $4, on_wire = 0
                             WHERE campaign_id = $1 AND {} AND {blocked} IS NULL
                             RETURNING seq, email_key, email, first_name, last_name, attributes, attempts",
                            within(select)
                        ),
                        vec![
                            id.into(),
                            now.into(),
                            (want as i64).into(),
                            self.runner.clone().into(),
                        ],
                    )
                    .await?;
                let got = rows.len();
                jobs.extend(rows.into_iter().map(job_from_row));
                if skipped == 0 && got < want {
                    break;
                }
            }
        }
        tx.commit().await?;
        jobs.sort_by_key(|j| j.seq);
        Ok(jobs)
    }

    /// Returns claimed rows that were never started to the queue.
    pub async fn release(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = Tx::begin(self.driver(), true).await?;
        for k in keys {
            tx.exec(
                "UPDATE deliveries SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'pending' END, worker = NULL, on_wire = 0
                 WHERE campaign_id = $1 AND email_key = $2 AND status = 'sending'",
                vec![self.campaign.id.into(), k.clone().into()],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Records, in one transaction, the claimed rows whose messages are
    /// about to reach the server (`on_wire`) and the outcomes of finished
    /// attempts; bounces also mark the subscriber. The send loop lets the
    /// server accept a message only after this commit.
    pub async fn record(&self, on_wire: &[String], outcomes: &[Outcome]) -> Result<(), StoreError> {
        if on_wire.is_empty() && outcomes.is_empty() {
            return Ok(());
        }
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
        let mut kept = self.recorder.lock().await;
        let result = self.record_on(&mut kept, &rows, &others).await;
        if result.is_err() {
            // The next group starts on a fresh connection.
            kept.drop_connection();
        }
        result
    }

    async fn record_on(
        &self,
        kept: &mut Kept,
        rows: &[(&str, i64, i64, Option<&str>)],
        others: &[&Outcome],
    ) -> Result<(), StoreError> {
        const CHUNK: usize = 500;
        let id = self.campaign.id;
        let now = now_ms();
        let batch = |chunk: &[(&str, i64, i64, Option<&str>)]| {
            let mut values = String::new();
            let mut args = vec![Val::from(id), Val::from(now)];
            for (i, (key, sent, attempts, message_id)) in chunk.iter().enumerate() {
                super::push_tuple(&mut values, i, 4, 2);
                args.extend([
                    Val::from(*key),
                    Val::from(*sent),
                    Val::from(*attempts),
                    Val::from(message_id.map(str::to_string)),
                ]);
            }
            // Only numbered placeholders are interpolated. VALUES columns
            // are column1… in both databases.
            let sql = format!(
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
            );
            (sql, args)
        };
        if others.is_empty() && !rows.is_empty() && rows.len() <= CHUNK {
            let (sql, args) = batch(rows);
            self.driver().run_kept(kept, &sql, args).await?;
            return Ok(());
        }
        let conn = self.driver().begin_kept(kept).await?;
        let mut tx = Tx::over(conn, self.driver());
        for chunk in rows.chunks(CHUNK) {
            let (sql, args) = batch(chunk);
            tx.exec(&sql, args).await?;
        }
        // The rare outcomes go through the store's operations, in the same
        // transaction.
        for o in others {
            self.record_failure(&mut tx, o).await?;
        }
        tx.commit().await
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
                    let now = super::stamp();
                    let cause = super::status::Cause {
                        source: &source,
                        campaign: Some(id),
                    };
                    super::status::bounce(tx, &hash, cause, now).await?;
                }
            }
        }
        Ok(())
    }

    /// When the earliest deferred row is due, if any is waiting. A worker
    /// also waits for rows other workers have in flight: they are sent, or
    /// come back when that worker's heartbeat goes stale.
    pub async fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        if self.worker.is_some() {
            self.reclaim(false).await?;
        }
        let due = first_int(
            &self.store,
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE campaign_id = $1 AND status IN ('pending', 'deferred')",
            vec![self.campaign.id.into()],
        )
        .await?;
        if self.worker.is_none() {
            return Ok(due);
        }
        let others = first_int(
            &self.store,
            "SELECT MIN(w.heartbeat_at) FROM deliveries d
             JOIN campaign_workers w ON w.campaign_id = d.campaign_id AND w.worker = d.worker
             WHERE d.campaign_id = $1 AND d.status = 'sending' AND d.worker <> $2",
            vec![self.campaign.id.into(), self.runner.clone().into()],
        )
        .await?;
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
        self.driver()
            .run(
                "UPDATE campaigns SET runner = NULL, runner_until = NULL, paused_reason = $1,
                     finished_at = CASE WHEN $2 = 1 THEN $3 ELSE NULL END
                 WHERE id = $4",
                vec![
                    paused_reason.map(str::to_string).into(),
                    i64::from(finished).into(),
                    now_ms().into(),
                    self.campaign.id.into(),
                ],
            )
            .await?;
        Ok(())
    }

    /// A worker says it exited and why (`finished`, `interrupted`, …), so
    /// `status` can tell it from a dead one.
    pub async fn leave(&self, reason: &str) -> Result<(), StoreError> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        self.driver()
            .run(
                "UPDATE campaign_workers SET exited_at = $1, exit_reason = $2 WHERE campaign_id = $3 AND worker = $4",
                vec![
                    now_ms().into(),
                    reason.into(),
                    self.campaign.id.into(),
                    worker.clone().into(),
                ],
            )
            .await?;
        Ok(())
    }
}

/// Live workers of a campaign ($1: campaign, $2: stale before).
const LIVE_WORKERS: &str = "SELECT COUNT(*) FROM campaign_workers WHERE campaign_id = $1 AND heartbeat_at > $2 AND exited_at IS NULL";

fn live_workers_args(campaign: i64, now: i64) -> Vec<Val> {
    vec![
        campaign.into(),
        (now - WORKER_STALE.as_millis() as i64).into(),
    ]
}

/// The first column of the first row as a number (a count), 0 if none.
async fn count(store: &Store, sql: &str, args: Vec<Val>) -> Result<i64, StoreError> {
    Ok(first_int(store, sql, args).await?.unwrap_or(0))
}

/// The first column of the first row, if it is there and not NULL.
async fn first_int(store: &Store, sql: &str, args: Vec<Val>) -> Result<Option<i64>, StoreError> {
    Ok(store
        .driver
        .query(sql, args)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.opt_int(0)))
}

/// Counts of a campaign's rows by status (and reasons).
pub async fn counts(store: &Store, campaign: i64) -> Result<Counts, StoreError> {
    let rows = store
        .driver
        .query(
            "SELECT status, CASE WHEN status IN ('skipped', 'failed') THEN last_error ELSE NULL END, COUNT(*),
                    CAST(COALESCE(SUM(on_wire), 0) AS BIGINT)
             FROM deliveries WHERE campaign_id = $1 GROUP BY 1, 2",
            vec![campaign.into()],
        )
        .await?;
    let mut c = Counts::default();
    for mut r in rows {
        let (status, reason, n, on_wire) = (r.text(0), r.opt_text(1), r.int(2) as u64, r.int(3));
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
    let workers = store
        .driver
        .query(
            "SELECT worker, heartbeat_at, exited_at, exit_reason FROM campaign_workers WHERE campaign_id = $1 ORDER BY worker",
            vec![campaign.into()],
        )
        .await?;
    // worker, status, count, first and last send time, on the wire
    let rows = store
        .driver
        .query(
            "SELECT worker, status, COUNT(*), MIN(sent_at), MAX(sent_at), CAST(COALESCE(SUM(on_wire), 0) AS BIGINT) FROM deliveries
             WHERE campaign_id = $1 AND worker IS NOT NULL GROUP BY worker, status",
            vec![campaign.into()],
        )
        .await?;
    let mut out: Vec<WorkerStats> = workers
        .into_iter()
        .map(|mut r| WorkerStats {
            worker: r.text(0),
            heartbeat_at: r.int(1),
            exited: r.opt_int(2).map(|t| (t, r.text(3))),
            ..WorkerStats::default()
        })
        .collect();
    for mut r in rows {
        let worker = r.text(0);
        let Some(w) = out.iter_mut().find(|w| w.worker == worker) else {
            continue;
        };
        let n = r.int(2) as u64;
        match r.text(1).as_str() {
            "sent" => {
                w.sent += n;
                if let (Some(a), Some(b)) = (r.opt_int(3), r.opt_int(4))
                    && b > a
                {
                    w.rate = (n.saturating_sub(1)) as f64 / ((b - a) as f64 / 1000.0);
                }
            }
            "failed" => w.failed += n,
            "sending" => {
                w.in_flight += n;
                w.on_wire += r.int(5) as u64;
            }
            _ => continue,
        }
        w.claimed += n;
    }
    Ok(out)
}

/// The columns of a campaign, in [`campaign_from_row`] order.
const CAMPAIGN: &str =
    "id, issue, audience, created_at, finished_at, possible_duplicates, paused_reason";

/// All campaigns of an issue, newest first.
pub async fn campaigns(store: &Store, issue: &str) -> Result<Vec<Campaign>, StoreError> {
    Ok(store
        .driver
        .query(
            &format!("SELECT {CAMPAIGN} FROM campaigns WHERE issue = $1 ORDER BY id DESC"),
            vec![issue.into()],
        )
        .await?
        .into_iter()
        .map(campaign_from_row)
        .collect())
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

/// Writes one CSV line per recipient of the campaign, in send order, a
/// page at a time (memory stays flat at any list size).
pub async fn write_report(
    store: &Store,
    campaign: i64,
    out: &mut csv::Writer<std::fs::File>,
) -> Result<u64, StoreError> {
    const PAGE: i64 = 1000;
    let mut n = 0;
    let mut after = i64::MIN;
    loop {
        let rows = store
            .driver
            .query(
                "SELECT seq, email, status, attempts, last_code, last_error, sent_at, message_id
                 FROM deliveries WHERE campaign_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                vec![campaign.into(), after.into(), PAGE.into()],
            )
            .await?;
        let last_page = (rows.len() as i64) < PAGE;
        for mut r in rows {
            after = r.int(0);
            out.serialize(ReportRow {
                email: r.text(1),
                status: r.text(2),
                attempts: r.int(3),
                code: r.opt_int(4),
                detail: r.opt_text(5).unwrap_or_default(),
                sent_at: r.opt_int(6).map(format_time).unwrap_or_default(),
                message_id: r.opt_text(7).unwrap_or_default(),
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
            n += 1;
        }
        if last_page {
            return Ok(n);
        }
    }
}

fn campaign_from_row(mut r: Row) -> Campaign {
    Campaign {
        id: r.int(0),
        issue: r.text(1),
        audience: r.text(2),
        created_at: r.int(3),
        finished_at: r.opt_int(4),
        possible_duplicates: r.int(5),
        paused_reason: r.opt_text(6),
    }
}

/// seq, email_key, email, first_name, last_name, attributes, attempts
fn job_from_row(mut r: Row) -> Job {
    let recipient = Recipient {
        email: r.text(2),
        first_name: r.text(3),
        last_name: r.text(4),
        attributes: super::parse_attributes(&r.text(5)),
    };
    Job {
        key: r.text(1),
        seq: r.int(0),
        recipient,
        attempts: r.int(6) as u32,
    }
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
    Ok(store
        .driver
        .query(SQL, vec![])
        .await?
        .into_iter()
        .map(|mut r| SentIssue {
            slug: r.text(0),
            first_sent_ms: r.int(1),
        })
        .collect())
}
