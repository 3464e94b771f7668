//! The send loop: claim recipients, build each message, hand it to the
//! transport at a steady rate with a bounded number in flight, and record
//! every outcome. The same loop serves the dry run (files), the test send
//! and the real send; only the queue and the transport differ.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::rate::Limiter;
use super::{FailureKind, MessageFactory, SendError, Transport};
use crate::config::Rate;
use crate::store::StoreError;
use crate::store::journal::{Job, Journal, Outcome, now_ms};

/// Where recipients come from and where outcomes go. Only `claim` is
/// required: a queue without a journal records nothing and retries nothing.
pub trait Queue: Send + Sync + 'static {
    /// Up to `n` recipients due now, marked as in flight.
    fn claim(&self, n: usize) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;
    /// Claimed recipients that were not started go back.
    fn release(&self, _keys: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Records, in one transaction, claimed rows now on the wire and
    /// outcomes (see `Journal::record`).
    fn record(
        &self,
        _on_wire: &[String],
        _outcomes: &[Outcome],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// When the next deferred recipient is due (Unix ms), if any.
    fn next_retry_at(&self) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// Called every few seconds during a run.
    fn keep_alive(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// True when several processes send this queue and share its rate.
    fn shares_rate(&self) -> bool {
        false
    }
    /// The campaign being sent, named in VERP envelope senders (issue 12);
    /// `None` outside a journal (`--to`, a list in memory).
    fn campaign_id(&self) -> Option<i64> {
        None
    }
    /// Reserves `k` send slots `interval` apart from the shared schedule;
    /// returns how long until the first (see `Journal::reserve_slots`).
    fn reserve_slots(
        &self,
        _k: u32,
        _interval: Duration,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send {
        async { Ok(Duration::ZERO) }
    }
}

impl Queue for Journal {
    fn campaign_id(&self) -> Option<i64> {
        Some(self.campaign().id)
    }
    async fn claim(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        Journal::claim(self, n).await
    }
    async fn release(&self, keys: &[String]) -> Result<(), StoreError> {
        Journal::release(self, keys).await
    }
    async fn record(&self, on_wire: &[String], outcomes: &[Outcome]) -> Result<(), StoreError> {
        Journal::record(self, on_wire, outcomes).await
    }
    async fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        Journal::next_retry_at(self).await
    }
    async fn keep_alive(&self) -> Result<(), StoreError> {
        self.renew().await
    }
    fn shares_rate(&self) -> bool {
        self.is_worker()
    }
    async fn reserve_slots(&self, k: u32, interval: Duration) -> Result<Duration, StoreError> {
        Journal::reserve_slots(self, k, interval).await
    }
}

/// When to stop a run that fails too often.
#[derive(Debug, Clone, Copy)]
pub struct PausePolicy {
    /// Failures in a row.
    pub consecutive: u32,
    /// Share of failed attempts…
    pub ratio: f64,
    /// …once this many attempts were made.
    pub min_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub concurrency: usize,
    /// `None`: unthrottled.
    pub rate: Option<Rate>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub pause: PausePolicy,
    /// Start at most this many sends in this run.
    pub limit: Option<u64>,
    /// Wait for deferred recipients to come due before returning.
    pub wait_for_retries: bool,
    /// Recipients to claim at a time; by default a few seconds' worth at
    /// the rate (a claimed row counts as in flight after a crash only once
    /// its send started).
    pub batch: Option<usize>,
}

impl SendOptions {
    pub fn from_config(c: &crate::config::SendSettings) -> SendOptions {
        SendOptions {
            concurrency: c.concurrency,
            rate: Some(c.rate),
            max_attempts: c.max_attempts,
            retry_base: Duration::from_secs_f64(c.retry_base_secs.max(0.0)),
            pause: PausePolicy {
                consecutive: c.pause_after_failures,
                ratio: c.pause_failure_ratio,
                min_attempts: c.pause_min_attempts,
            },
            limit: None,
            wait_for_retries: true,
            batch: None,
        }
    }
}

/// Why a run ended before its queue was empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// Ctrl-C or SIGTERM: in-flight sends were finished and recorded.
    Interrupted,
    /// Too many failures: the message says which threshold.
    Paused(String),
    /// `--limit` reached.
    Limit,
    /// Authentication, TLS, an unwritable folder: nothing more can go out.
    Fatal(SendError),
}

#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub sent: u64,
    pub failed: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub attempts: u64,
    pub elapsed: Duration,
    pub stopped: Option<Stopped>,
    /// Failures in this run, by reply.
    pub failures: Vec<(String, SendError)>,
    /// Sends started (their turn came), and when the first and the last did.
    pub started: u64,
    pub first_start: Option<Instant>,
    pub last_start: Option<Instant>,
    /// The run kept a set rate.
    pub paced: bool,
}

impl RunStats {
    /// Messages per second. A paced run is measured between the first and
    /// the last send's turn (n messages take n-1 intervals), so the figure
    /// is the rate that was kept and never above the set one; an unpaced
    /// run, over its whole time. `None` when one message or none went out.
    pub fn rate(&self) -> Option<f64> {
        if self.paced {
            let span = match (self.first_start, self.last_start) {
                (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
                _ => 0.0,
            };
            return (self.started >= 2 && span > 0.0).then(|| (self.started - 1) as f64 / span);
        }
        let secs = self.elapsed.as_secs_f64();
        (self.sent >= 2 && secs > 0.0).then(|| self.sent as f64 / secs)
    }

    /// The rate for people: one decimal, rounded down (a paced run's
    /// figure never shows above its set rate by rounding).
    pub fn rate_text(&self) -> String {
        match self.rate() {
            Some(r) => format!("{:.1} messages/s", (r * 10.0).floor() / 10.0),
            None if self.sent == 1 => "1 message".into(),
            None => "no messages".into(),
        }
    }

    fn started_at(&mut self, at: Instant) {
        self.started += 1;
        self.first_start = Some(self.first_start.map_or(at, |f| f.min(at)));
        self.last_start = Some(self.last_start.map_or(at, |l| l.max(at)));
    }
}

/// Progress on a terminal (a bar) or in a log (a line every few seconds).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    every: Duration,
    last_line: std::sync::Mutex<Instant>,
    started: Instant,
    total: u64,
    stopping: std::sync::atomic::AtomicBool,
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} {msg} {per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            quiet,
            every: Duration::from_secs(5),
            last_line: std::sync::Mutex::new(Instant::now()),
            started: Instant::now(),
            total,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// After a stop, lines say so and give no ETA.
    fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                    .expect("valid template"),
            );
        }
    }

    fn update(&self, s: &RunStats) {
        let done = s.sent + s.failed;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!(
                "sent {} failed {} deferred {}",
                s.sent, s.failed, s.deferred
            ));
            return;
        }
        if self.quiet {
            return;
        }
        let mut last = self.last_line.lock().unwrap();
        if last.elapsed() >= self.every {
            *last = Instant::now();
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                eprintln!(
                    "progress: {done}/{} done, sent {}, failed {}, deferred {}; stopping",
                    self.total, s.sent, s.failed, s.deferred
                );
                return;
            }
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = s.sent as f64 / secs;
            let left = self.total.saturating_sub(done);
            let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
            eprintln!(
                "progress: {done}/{} done, sent {}, failed {}, deferred {}, {rate:.1}/s, eta {}",
                self.total,
                s.sent,
                s.failed,
                s.deferred,
                human_duration(Duration::from_secs_f64(eta))
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// What one spawned send returns.
struct Attempt {
    job: Job,
    /// `None`: stopped while waiting for its turn; it never went out.
    result: Option<Result<String, SendError>>,
    /// When its turn came.
    started: Option<Instant>,
}

/// Resolves once `stop` turns true (never, if its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How sends are paced.
enum Pace {
    /// This process alone: a local steady limiter.
    Local(Limiter),
    /// One of several workers: slots reserved from the campaign's shared
    /// schedule in the database, a few at a time.
    Shared {
        interval: Duration,
        per_reservation: u32,
        slots: tokio::sync::Mutex<VecDeque<tokio::time::Instant>>,
    },
}

impl Pace {
    async fn wait<Q: Queue>(&self, queue: &Q) -> Result<(), StoreError> {
        match self {
            Pace::Local(l) => {
                l.wait().await;
                Ok(())
            }
            Pace::Shared {
                interval,
                per_reservation,
                slots,
            } => {
                let slot = {
                    let mut slots = slots.lock().await;
                    if slots.is_empty() {
                        let delay = queue.reserve_slots(*per_reservation, *interval).await?;
                        let first = tokio::time::Instant::now() + delay;
                        slots.extend((0..*per_reservation).map(|i| first + *interval * i));
                    }
                    slots.pop_front().expect("just filled")
                };
                tokio::time::sleep_until(slot).await;
                Ok(())
            }
        }
    }
}

/// Group commit of the journal: send tasks hand in rows going on the wire
/// and outcomes, each gets a ticket, and one writer records everything
/// handed in so far in one transaction, again and again. A message waits
/// for its ticket before the server may accept it (see `Gate`), so
/// whatever a crash leaves unrecorded is at most one message per
/// connection, while the commit overlaps with sending the message's data.
struct Committer {
    state: std::sync::Mutex<Handed>,
    wake: tokio::sync::Notify,
    /// The highest ticket recorded, or why recording stopped.
    recorded: watch::Sender<Result<u64, String>>,
}

/// How long an outcome no one waits for may stay unrecorded.
const IDLE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Handed {
    last: u64,
    on_wire: Vec<String>,
    outcomes: Vec<Outcome>,
    /// Someone waits, or a row goes on the wire: record now.
    urgent: bool,
    closed: bool,
}

impl Handed {
    fn is_empty(&self) -> bool {
        self.on_wire.is_empty() && self.outcomes.is_empty()
    }
}

impl Committer {
    fn new() -> Committer {
        Committer {
            state: std::sync::Mutex::new(Handed::default()),
            wake: tokio::sync::Notify::new(),
            recorded: watch::Sender::new(Ok(0)),
        }
    }

    fn hand_in(&self, urgent: bool, f: impl FnOnce(&mut Handed)) -> u64 {
        let ticket = {
            let mut h = self.state.lock().unwrap();
            f(&mut h);
            h.urgent |= urgent;
            h.last += 1;
            h.last
        };
        if urgent {
            self.wake.notify_one();
        }
        ticket
    }

    /// A row goes on the wire: recording starts now (with whatever else
    /// was handed in), while its message is built and sent.
    fn on_wire(&self, key: String) -> u64 {
        self.hand_in(true, |h| h.on_wire.push(key))
    }

    /// An outcome: recorded with the next row going on the wire (usually
    /// the next message on the same connection, a moment later: one
    /// commit for both), when someone waits for it, or within `IDLE`.
    fn outcome(&self, outcome: Outcome) -> u64 {
        self.hand_in(false, |h| h.outcomes.push(outcome))
    }

    /// Waits until `ticket` is recorded.
    async fn recorded(&self, ticket: u64) -> Result<(), SendError> {
        let mut rx = self.recorded.subscribe();
        if rx.borrow().as_ref().is_ok_and(|t| *t < ticket) {
            self.state.lock().unwrap().urgent = true;
            self.wake.notify_one();
        }
        let seen = rx
            .wait_for(|r| r.as_ref().map_or(true, |t| *t >= ticket))
            .await
            .map(|r| r.clone());
        match seen {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SendError::new(
                FailureKind::Fatal,
                None,
                format!("held back: the send journal cannot record: {e}"),
            )),
            Err(_) => Err(SendError::new(
                FailureKind::Fatal,
                None,
                "held back: the send journal stopped",
            )),
        }
    }

    /// Waits until everything handed in so far is recorded.
    async fn flush(&self) -> Result<(), SendError> {
        let last = self.state.lock().unwrap().last;
        self.recorded(last).await
    }

    /// The writer: runs until closed and drained, or a write fails.
    async fn run<Q: Queue>(self: Arc<Self>, queue: Arc<Q>) -> Result<(), StoreError> {
        let mut timed_out = false;
        loop {
            let taken = {
                let mut h = self.state.lock().unwrap();
                if h.is_empty() && h.closed {
                    return Ok(());
                }
                if !h.is_empty() && (h.urgent || h.closed || timed_out) {
                    h.urgent = false;
                    Some((
                        std::mem::take(&mut h.on_wire),
                        std::mem::take(&mut h.outcomes),
                        h.last,
                    ))
                } else {
                    None
                }
            };
            let Some((on_wire, outcomes, upto)) = taken else {
                timed_out = tokio::time::timeout(IDLE, self.wake.notified())
                    .await
                    .is_err();
                continue;
            };
            timed_out = false;
            if let Err(e) = queue.record(&on_wire, &outcomes).await {
                self.recorded.send_modify(|r| *r = Err(e.to_string()));
                return Err(e);
            }
            self.recorded.send_modify(|r| *r = Ok(upto));
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.wake.notify_one();
    }
}

/// Retries, as `judge` and the gate need them.
#[derive(Debug, Clone, Copy)]
struct Retry {
    max_attempts: u32,
    base: Duration,
}

/// One message's gate: its row was handed in as on the wire (`wire`);
/// its outcome is handed in once.
struct JobGate<'a> {
    committer: &'a Committer,
    wire: u64,
    job: &'a Job,
    message_id: &'a str,
    retry: Retry,
    ticket: std::sync::OnceLock<u64>,
}

impl super::Gate for JobGate<'_> {
    fn ready(
        &self,
        after: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        Box::pin(self.committer.recorded(self.wire.max(after)))
    }

    fn done(&self, result: &Result<(), SendError>) -> u64 {
        *self.ticket.get_or_init(|| {
            let result = result.clone().map(|()| self.message_id.to_string());
            self.committer
                .outcome(outcome_of(self.job, &result, self.retry))
        })
    }
}

/// Everything a send task needs, shared by all of them.
struct TaskKit<T> {
    transport: T,
    factory: MessageFactory,
    pace: Pace,
    committer: Arc<Committer>,
    retry: Retry,
}

/// A send that cannot record its outcomes must stop: the journal is what
/// prevents double sends.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalFailed(#[from] pub StoreError);

/// Runs the loop until the queue is empty or it is stopped. `stop` turns
/// true on Ctrl-C: in-flight sends finish and are recorded.
pub async fn run<Q: Queue, T: Transport + 'static>(
    queue: Arc<Q>,
    transport: T,
    factory: MessageFactory,
    opts: &SendOptions,
    progress: &Progress,
    mut stop: watch::Receiver<bool>,
) -> Result<RunStats, JournalFailed> {
    let started = Instant::now();
    let pace = match opts.rate {
        Some(r) if !r.is_unlimited() && queue.shares_rate() => Pace::Shared {
            interval: r.interval(),
            // A fifth of a second's worth: a worker that dies wastes at
            // most that much of the campaign's rate.
            per_reservation: ((r.per_second_f64() / 5.0) as u32).max(1),
            slots: tokio::sync::Mutex::new(VecDeque::new()),
        },
        rate => Pace::Local(Limiter::new(rate)),
    };
    let committer = Arc::new(Committer::new());
    let mut writer = tokio::spawn(committer.clone().run(queue.clone()));
    let shared = Arc::new(TaskKit {
        transport,
        factory,
        pace,
        committer: committer.clone(),
        retry: Retry {
            max_attempts: opts.max_attempts,
            base: opts.retry_base,
        },
    });
    let concurrency = opts.concurrency.max(1);
    // Claim a little ahead of sending: a few seconds' worth at the rate.
    // Claimed rows that were not started go back to the queue after a
    // crash without counting as possible duplicates. Unthrottled, a few
    // dozen milliseconds' worth: a claim is a transaction of four
    // statements, which SQLite prepares anew each time (their LIMIT is a
    // bound value), so per message it cost more than the message's own
    // journal write when it came every 4 messages per connection.
    let batch = match (opts.batch, opts.rate) {
        (Some(b), _) => b,
        (None, Some(r)) if !r.is_unlimited() => {
            ((r.per_second_f64() * 2.0) as usize).clamp(concurrency, concurrency * 4)
        }
        _ => (concurrency * 32).clamp(64, 512),
    }
    .max(1);
    let mut buffer: VecDeque<Job> = VecDeque::new();
    let mut tasks: JoinSet<Attempt> = JoinSet::new();
    let mut stats = RunStats::default();
    let mut consecutive_failures = 0u32;
    let mut started_sends = 0u64;
    let mut last_keep_alive = Instant::now();
    let mut released: Vec<String> = Vec::new();
    let mut waiting_noted = false;
    stats.paced = opts.rate.is_some_and(|r| !r.is_unlimited());
    let campaign = queue.campaign_id();

    loop {
        if writer.is_finished() {
            // Recording failed: nothing more may go out.
            tasks.shutdown().await;
            return Err(match (&mut writer).await {
                Ok(Err(e)) => JournalFailed(e),
                Ok(Ok(())) => JournalFailed(StoreError::Io("the journal writer stopped".into())),
                Err(e) => JournalFailed(StoreError::Io(format!("the journal writer failed: {e}"))),
            });
        }
        if *stop.borrow() && stats.stopped.is_none() {
            stats.stopped = Some(Stopped::Interrupted);
            progress.stopping();
        }
        while stats.stopped.is_none() && tasks.len() < concurrency {
            if opts.limit.is_some_and(|l| started_sends >= l) {
                stats.stopped = Some(Stopped::Limit);
                break;
            }
            if buffer.is_empty() {
                buffer.extend(queue.claim(batch).await?);
                if buffer.is_empty() {
                    break;
                }
            }
            let job = buffer.pop_front().expect("not empty");
            started_sends += 1;
            waiting_noted = false;
            let shared = shared.clone();
            let queue = queue.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                // A stop releases sends still waiting for their turn; only
                // those already on the wire finish.
                let turn = tokio::select! {
                    biased;
                    _ = stopped(stop) => None,
                    turn = shared.pace.wait(&*queue) => Some(turn),
                };
                match turn {
                    None => {
                        return Attempt {
                            job,
                            result: None,
                            started: None,
                        };
                    }
                    Some(Err(e)) => {
                        let error = Err(SendError::new(FailureKind::Fatal, None, e.to_string()));
                        shared
                            .committer
                            .outcome(outcome_of(&job, &error, shared.retry));
                        return Attempt {
                            job,
                            result: Some(error),
                            started: None,
                        };
                    }
                    Some(Ok(())) => {}
                }
                let started = Instant::now();
                // On the wire from now: recorded while the message is built
                // and its data goes out; the server gets the end of DATA
                // only once this is recorded.
                let wire = shared.committer.on_wire(job.key.clone());
                let result = match shared.factory.build_for(&job.recipient, campaign) {
                    Ok(message) => {
                        let gate = JobGate {
                            committer: &shared.committer,
                            wire,
                            job: &job,
                            message_id: &message.message_id,
                            retry: shared.retry,
                            ticket: std::sync::OnceLock::new(),
                        };
                        let sent = shared.transport.send_gated(&message, &gate).await;
                        // If the transport did not (a timeout dropped it).
                        super::Gate::done(&gate, &sent);
                        sent.map(|()| message.message_id.clone())
                    }
                    Err(e) => {
                        let error =
                            Err(SendError::new(FailureKind::Permanent, None, e.to_string()));
                        shared
                            .committer
                            .outcome(outcome_of(&job, &error, shared.retry));
                        error
                    }
                };
                Attempt {
                    job,
                    result: Some(result),
                    started: Some(started),
                }
            });
        }

        if tasks.is_empty() {
            // Outcomes recorded before the queue is asked what is left.
            if committer.flush().await.is_err() {
                continue;
            }
            if stats.stopped.is_some() {
                break;
            }
            // Nothing due now: wait for deferred recipients, if any.
            let Some(due) = queue.next_retry_at().await? else {
                break;
            };
            if !opts.wait_for_retries {
                break;
            }
            let wait = Duration::from_millis((due - now_ms()).max(0) as u64);
            if !progress.quiet && !waiting_noted && wait > Duration::from_millis(500) {
                waiting_noted = true;
                eprintln!(
                    "waiting up to {} for deferred recipients, or for other workers' messages in flight (Ctrl-C stops; a rerun resumes)",
                    human_duration(wait)
                );
            }
            // A second at a time, then look again: another worker may
            // finish its messages (or exit) well before the worst case.
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                _ = stop.changed() => {}
            }
            if last_keep_alive.elapsed() >= Duration::from_secs(5) {
                queue.keep_alive().await?;
                last_keep_alive = Instant::now();
            }
            continue;
        }

        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { continue };
                let attempt = match joined {
                    Ok(a) => a,
                    // A send task panicked: a bug, but its recipient is not
                    // lost; the row stays claimed and the next run resends it.
                    Err(e) => {
                        eprintln!("error: a send task failed: {e}");
                        continue;
                    }
                };
                if attempt.result.is_none() {
                    released.push(attempt.job.key);
                    continue;
                }
                if let Some(at) = attempt.started {
                    stats.started_at(at);
                }
                judge(attempt, opts, &mut stats, &mut consecutive_failures);
                progress.update(&stats);
            }
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }

        if last_keep_alive.elapsed() >= Duration::from_secs(5) {
            queue.keep_alive().await?;
            last_keep_alive = Instant::now();
        }
    }
    committer.close();
    match writer.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(JournalFailed(StoreError::Io(format!(
                "the journal writer failed: {e}"
            ))));
        }
    }
    released.extend(buffer.drain(..).map(|j| j.key));
    queue.release(&released).await?;
    shared.transport.close().await;
    progress.finish();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// Sends `recipients` through `transport` one at a time, no retries, no
/// pause, nothing recorded: `preview`'s run of the send loop.
pub async fn preview<T: Transport + 'static>(
    recipients: Vec<crate::subscribers::Recipient>,
    transport: T,
    factory: MessageFactory,
) -> Result<RunStats, StoreError> {
    let opts = SendOptions {
        concurrency: 1,
        rate: None,
        max_attempts: 1,
        retry_base: Duration::ZERO,
        pause: PausePolicy {
            consecutive: 0,
            ratio: 1.0,
            min_attempts: u32::MAX,
        },
        limit: None,
        wait_for_retries: false,
        batch: None,
    };
    // Kept alive: a closed channel would read as a stop request.
    let (_keep, stop) = watch::channel(false);
    let queue = Arc::new(super::sources::ListQueue::new(recipients));
    run(
        queue,
        transport,
        factory,
        &opts,
        &Progress::new(0, true),
        stop,
    )
    .await
    .map_err(|JournalFailed(e)| e)
}

/// What one attempt's result means for its row.
fn outcome_of(job: &Job, result: &Result<String, SendError>, retry: Retry) -> Outcome {
    let attempts = job.attempts + 1;
    let key = job.key.clone();
    let error = match result {
        Ok(message_id) => {
            return Outcome::Sent {
                key,
                message_id: message_id.clone(),
                attempts,
            };
        }
        Err(e) => e.clone(),
    };
    match error.kind {
        // Not the recipient's fault: put it back as it was.
        FailureKind::Fatal => Outcome::Deferred {
            key,
            attempts: job.attempts,
            retry_at: now_ms(),
            error: error.into(),
        },
        FailureKind::Transient if attempts < retry.max_attempts => {
            let delay = retry.base.as_secs_f64() * 2f64.powi(job.attempts as i32);
            // A little jitter so deferred recipients do not all return at once.
            let jitter = 1.0 + (fastrand_u16(&job.key) as f64 / u16::MAX as f64) * 0.2;
            Outcome::Deferred {
                key,
                attempts,
                retry_at: now_ms() + (delay * jitter * 1000.0) as i64,
                error: error.into(),
            }
        }
        FailureKind::Transient => {
            let mut error = error;
            error.message = format!("gave up after {attempts} attempts: {}", error.message);
            Outcome::Failed {
                key,
                attempts,
                error: error.into(),
                bounced: false,
            }
        }
        kind => Outcome::Failed {
            key,
            attempts,
            error: error.into(),
            bounced: kind == FailureKind::Rejected,
        },
    }
}

/// Counts one finished attempt (its outcome was handed to the journal by
/// the task) and applies the pause policy.
fn judge(
    attempt: Attempt,
    opts: &SendOptions,
    stats: &mut RunStats,
    consecutive_failures: &mut u32,
) {
    let Attempt { job, result, .. } = attempt;
    let attempts = job.attempts + 1;
    let error = match result.expect("released attempts are not judged") {
        Ok(_) => {
            stats.attempts += 1;
            stats.sent += 1;
            *consecutive_failures = 0;
            return;
        }
        Err(e) => e,
    };
    if error.kind == FailureKind::Fatal {
        // Not the recipient's fault: it goes back as it was; stop.
        if stats.stopped.is_none() || stats.stopped == Some(Stopped::Interrupted) {
            stats.stopped = Some(Stopped::Fatal(error.clone()));
        }
        return;
    }
    stats.attempts += 1;
    *consecutive_failures += 1;
    match error.kind {
        FailureKind::Transient if attempts < opts.max_attempts => stats.deferred += 1,
        FailureKind::Transient => stats.failed += 1,
        kind => {
            stats.failed += 1;
            if kind == FailureKind::Rejected {
                stats.bounced += 1;
            }
        }
    }
    stats.failures.push((job.recipient.email.clone(), error));
    let p = opts.pause;
    let failures = stats.failed + stats.deferred;
    if stats.stopped.is_none() {
        if p.consecutive > 0 && *consecutive_failures >= p.consecutive {
            stats.stopped = Some(Stopped::Paused(format!(
                "{} sends failed in a row (send.pause_after_failures = {})",
                consecutive_failures, p.consecutive
            )));
        } else if stats.attempts >= p.min_attempts as u64
            && failures as f64 > p.ratio * stats.attempts as f64
        {
            stats.stopped = Some(Stopped::Paused(format!(
                "{failures} of {} attempts failed, over {:.0}% (send.pause_failure_ratio)",
                stats.attempts,
                p.ratio * 100.0
            )));
        }
    }
}

/// A cheap, stable pseudo-random number from a key (for retry jitter).
fn fastrand_u16(key: &str) -> u16 {
    key.bytes().fold(0x9e37u16, |h, b| {
        h.rotate_left(5) ^ u16::from(b).wrapping_mul(31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::content::Issue;
    use crate::deliver::MemoryTransport;
    use crate::deliver::unsubscribe::Signer;
    use crate::diagnostics::Diagnostics;
    use crate::render::{FieldSet, Renderer};
    use crate::store::journal::{Audience, Journal};
    use crate::subscribers::Recipient;

    struct Setup {
        _dir: tempfile::TempDir,
        db: crate::store::Store,
        config: Config,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Store::open("sqlite:t.db", dir.path())
            .await
            .unwrap();
        let config = Config::parse(
            "[newsletter]\nfrom = \"T <news@example.org>\"\n[send]\nretry_base_secs = 0\nmax_attempts = 3\n",
            "t.toml",
        )
        .unwrap();
        Setup {
            _dir: dir,
            db,
            config,
        }
    }

    fn factory(config: &Config) -> MessageFactory {
        let mut d = Diagnostics::default();
        let issue = Issue::parse(
            "---\ntitle: T\npreheader: p\n---\nHello.\n",
            "t.md",
            "t",
            &mut d,
        )
        .unwrap();
        let rendered = Renderer::new(None)
            .unwrap()
            .render(&issue, config, &FieldSet::default(), &mut d)
            .unwrap();
        MessageFactory::new(config, Signer::new(b"k", "https://x.org"), rendered).unwrap()
    }

    async fn journal(s: &Setup, n: usize) -> Arc<Journal> {
        let rs: Vec<Recipient> = (0..n)
            .map(|i| Recipient::new(format!("r{i}@example.org")))
            .collect();
        let (c, _) =
            Journal::open_or_create(&s.db, "t", &Audience::Csv("x.csv".into()), false, Some(&rs))
                .await
                .unwrap();
        Arc::new(Journal::attach(&s.db, c).await.unwrap().0)
    }

    fn quiet() -> Progress {
        Progress::new(0, true)
    }

    fn never() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    fn err(kind: FailureKind, code: u16) -> SendError {
        SendError::new(kind, Some(code), format!("{code} scripted"))
    }

    /// One run of the loop over `j` with the test transport, not stopped.
    async fn send_all(
        s: &Setup,
        j: &Arc<Journal>,
        t: &Arc<MemoryTransport>,
        opts: &SendOptions,
    ) -> RunStats {
        run(
            j.clone(),
            t.clone(),
            factory(&s.config),
            opts,
            &quiet(),
            never(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_sent() {
        let s = setup().await;
        let j = journal(&s, 3).await;
        let t = Arc::new(MemoryTransport::new());
        t.fail_next("r1@example.org", err(FailureKind::Transient, 451));
        t.fail_next("r1@example.org", err(FailureKind::Transient, 421));
        let opts = SendOptions::from_config(&s.config.send);
        let stats = send_all(&s, &j, &t, &opts).await;
        assert_eq!((stats.sent, stats.deferred, stats.failed), (3, 2, 0));
        let c = j.counts().await.unwrap();
        assert_eq!((c.sent, c.remaining()), (3, 0));
        let sent: Vec<String> = t.messages().iter().map(|m| m.to.clone()).collect();
        assert_eq!(sent.iter().filter(|a| *a == "r1@example.org").count(), 1);
    }

    #[tokio::test]
    async fn transient_failures_give_up_after_max_attempts() {
        let s = setup().await;
        let j = journal(&s, 1).await;
        let t = Arc::new(MemoryTransport::new());
        for _ in 0..3 {
            t.fail_next("r0@example.org", err(FailureKind::Transient, 451));
        }
        let opts = SendOptions::from_config(&s.config.send);
        let stats = send_all(&s, &j, &t, &opts).await;
        assert_eq!((stats.sent, stats.failed), (0, 1));
        let c = j.counts().await.unwrap();
        assert_eq!(
            c.failed_by.keys().next().unwrap(),
            "gave up after 3 attempts: 451 scripted"
        );
    }

    #[tokio::test]
    async fn a_rejected_address_is_suppressed_and_skipped_next_time() {
        let s = setup().await;
        let j = journal(&s, 2).await;
        let t = Arc::new(MemoryTransport::new());
        t.fail_next("r0@example.org", err(FailureKind::Rejected, 550));
        let opts = SendOptions::from_config(&s.config.send);
        let stats = send_all(&s, &j, &t, &opts).await;
        assert_eq!((stats.sent, stats.failed, stats.bounced), (1, 1, 1));
        // A new campaign of the same audience skips the suppressed address.
        let rs = vec![
            Recipient::new("r0@example.org"),
            Recipient::new("r1@example.org"),
        ];
        let (c, _) = Journal::open_or_create(
            &s.db,
            "t2",
            &Audience::Csv("x.csv".into()),
            false,
            Some(&rs),
        )
        .await
        .unwrap();
        let j2 = Arc::new(Journal::attach(&s.db, c).await.unwrap().0);
        let stats = send_all(&s, &j2, &t, &opts).await;
        assert_eq!(stats.sent, 1);
        let c = j2.counts().await.unwrap();
        assert_eq!(c.skipped_by.get("suppressed"), Some(&1));
    }

    #[tokio::test]
    async fn a_fatal_error_stops_and_loses_nobody() {
        let s = setup().await;
        let j = journal(&s, 5).await;
        let t = Arc::new(MemoryTransport::new());
        t.fail_next("r2@example.org", err(FailureKind::Fatal, 535));
        let mut opts = SendOptions::from_config(&s.config.send);
        opts.concurrency = 1;
        let stats = send_all(&s, &j, &t, &opts).await;
        assert!(matches!(stats.stopped, Some(Stopped::Fatal(ref e)) if e.code == Some(535)));
        let c = j.counts().await.unwrap();
        assert_eq!((c.sent, c.failed, c.sending), (2, 0, 0));
        assert_eq!(
            c.pending + c.deferred,
            3,
            "r2 and the rest are still to send"
        );
    }

    #[tokio::test]
    async fn rows_in_flight_at_a_crash_are_resent_and_counted() {
        let s = setup().await;
        let j = journal(&s, 10).await;
        // A run that claimed 4 rows, started 2 (on the wire) and died
        // before recording their outcomes: only those 2 may have reached
        // the server; the other 2 go back without counting.
        let claimed = j.claim(4).await.unwrap();
        assert_eq!(claimed.len(), 4);
        let started: Vec<String> = claimed[..2].iter().map(|c| c.key.clone()).collect();
        j.record(&started, &[]).await.unwrap();
        let c = j.counts().await.unwrap();
        assert_eq!((c.sending, c.on_wire), (4, 2));
        let campaign = j.campaign().clone();
        drop(j);
        let (j, recovered) = Journal::attach(&s.db, campaign).await.unwrap();
        assert_eq!(recovered, 2);
        assert_eq!(j.campaign().possible_duplicates, 2);
        let c = j.counts().await.unwrap();
        assert_eq!((c.pending, c.sending, c.on_wire), (10, 0, 0));
    }

    #[tokio::test]
    async fn limit_and_interrupt_leave_the_rest_pending() {
        let s = setup().await;
        let j = journal(&s, 10).await;
        let t = Arc::new(MemoryTransport::new());
        let mut opts = SendOptions::from_config(&s.config.send);
        opts.limit = Some(4);
        opts.rate = None;
        let stats = send_all(&s, &j, &t, &opts).await;
        assert_eq!(
            (stats.sent, stats.stopped.clone()),
            (4, Some(Stopped::Limit))
        );
        let c = j.counts().await.unwrap();
        assert_eq!(
            (c.sent, c.pending, c.sending),
            (4, 6, 0),
            "unstarted claims released"
        );
        let (tx, rx) = watch::channel(true);
        opts.limit = None;
        let stats = run(j.clone(), t, factory(&s.config), &opts, &quiet(), rx)
            .await
            .unwrap();
        drop(tx);
        assert_eq!((stats.sent, stats.stopped), (0, Some(Stopped::Interrupted)));
        assert_eq!(j.counts().await.unwrap().pending, 6);
    }
}
