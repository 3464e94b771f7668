//! Sending an issue to its audience as one library call.
//!
//! [`ahead`] says what a send would do without writing anything (continue
//! a campaign, start one for how many, or nothing left), so a caller can
//! ask for confirmation first; [`send`] then fixes the campaign's
//! recipients, joins it (alone, or as one of several PostgreSQL workers),
//! runs the send loop over the journal, closes the campaign and returns a
//! [`Report`]. The caller (the CLI) parses, confirms, prints and maps the
//! report to an exit code; it writes no journal state itself.

use std::sync::Arc;

use tokio::sync::watch;

use super::send::{JournalFailed, Progress, RunStats, SendOptions, Stopped};
use super::{MessageFactory, Transport};
use crate::store::journal::{self, Audience, Counts, Journal};
use crate::store::{Store, StoreError};
use crate::subscribers::Recipient;

/// What one issue's send is: to whom, and how it may join a campaign.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub store: &'a Store,
    /// The issue's slug: a campaign's identity with its audience.
    pub issue: &'a str,
    pub audience: &'a Audience,
    /// Start a new campaign even when the last one is finished.
    pub resend: bool,
    /// The CSV's rows, for an [`Audience::Csv`].
    pub csv: Option<&'a [Recipient]>,
    /// Join as this worker (PostgreSQL); `None` sends alone.
    pub worker: Option<&'a str>,
}

/// What a send would do, decided by reading only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ahead {
    /// The current campaign has nobody left.
    Done(Counts),
    /// The current campaign goes on with this many left.
    Continue { remaining: u64 },
    /// A new campaign, to this many who may be mailed (each address once).
    New { recipients: u64 },
}

/// Reads what [`send`] would do; writes nothing.
pub async fn ahead(plan: &Plan<'_>) -> Result<Ahead, StoreError> {
    match Journal::current(plan.store, plan.issue, plan.audience, plan.resend).await? {
        Some(c) => {
            let counts = journal::counts(plan.store, c.id).await?;
            Ok(match counts.remaining() {
                0 => Ahead::Done(counts),
                remaining => Ahead::Continue { remaining },
            })
        }
        None => {
            let recipients = match (plan.audience, plan.csv) {
                (Audience::Csv(_), Some(rows)) => mailable_in_csv(plan.store, rows).await?,
                (Audience::List(l), _) => plan.store.audience_size(Some(l)).await?,
                _ => plan.store.audience_size(None).await?,
            };
            Ok(Ahead::New { recipients })
        }
    }
}

/// How many of a CSV file's rows a new campaign would mail: each address
/// once, less those the store's rule blocks.
async fn mailable_in_csv(store: &Store, rows: &[Recipient]) -> Result<u64, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<Recipient> = rows
        .iter()
        .filter(|r| seen.insert(r.key()))
        .cloned()
        .collect();
    let blocked = store.blocked(&unique).await?;
    Ok(unique
        .iter()
        .filter(|r| !blocked.contains_key(&r.key()))
        .count() as u64)
}

/// What a send did.
#[derive(Debug)]
pub struct Report {
    pub campaign: journal::Campaign,
    /// This run's numbers.
    pub stats: RunStats,
    /// The campaign's counts after the run.
    pub counts: Counts,
    /// Messages a previous run left on the wire, sent again by this one.
    pub recovered: u64,
}

/// Sends the issue: creates or continues the campaign, runs the send loop
/// until everyone is done, `stop` turns true, or a fatal error, then
/// closes the campaign (finished, or paused with the reason) and records
/// this process's exit. `started` is told how many were recovered from a
/// crashed run and how many are left, and returns the progress display.
pub async fn send<T: Transport + 'static>(
    plan: Plan<'_>,
    transport: T,
    factory: MessageFactory,
    opts: &SendOptions,
    stop: watch::Receiver<bool>,
    started: impl FnOnce(u64, u64) -> Progress,
) -> Result<Report, StoreError> {
    let (campaign, _) =
        Journal::open_or_create(plan.store, plan.issue, plan.audience, plan.resend, plan.csv)
            .await?;
    let (journal, recovered) = match plan.worker {
        Some(w) => Journal::join(plan.store, campaign, w).await?,
        None => Journal::attach(plan.store, campaign).await?,
    };
    let before = journal.counts().await?;
    let progress = started(recovered, before.remaining());
    let journal = Arc::new(journal);
    let stats = super::send::run(journal.clone(), transport, factory, opts, &progress, stop)
        .await
        .map_err(|JournalFailed(e)| e)?;
    let counts = journal.counts().await?;
    let paused = match &stats.stopped {
        Some(Stopped::Paused(why)) => Some(why.clone()),
        Some(Stopped::Fatal(e)) => Some(e.message.clone()),
        _ => None,
    };
    journal
        .close(paused.as_deref(), counts.remaining() == 0)
        .await?;
    journal.leave(&exit_reason(&stats.stopped)).await?;
    Ok(Report {
        campaign: journal.campaign().clone(),
        stats,
        counts,
        recovered,
    })
}

/// How a worker's run ended, for `tidings status`.
fn exit_reason(stopped: &Option<Stopped>) -> String {
    match stopped {
        None => "finished".into(),
        Some(Stopped::Limit) => "--limit reached".into(),
        Some(Stopped::Interrupted) => "interrupted".into(),
        Some(Stopped::Paused(why)) => format!("paused: {why}"),
        Some(Stopped::Fatal(e)) => format!("stopped: {}", e.message),
    }
}
