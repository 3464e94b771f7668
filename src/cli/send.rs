//! `tidings send` and `tidings status`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{RecipientArgs, print_diagnostics, project_dir, render_issue, runtime, summary};
use crate::config::{Config, Rate};
use crate::content::Issue;
use crate::deliver::campaign::{self, Ahead};
use crate::deliver::send::{Progress, Queue, RunStats, SendOptions, Stopped, human_duration};
use crate::deliver::sources::{CsvQueue, ListQueue, StoreQueue};
use crate::deliver::unsubscribe::{Purpose, Signer};
use crate::deliver::{FileTransport, MessageFactory, Transport};
use crate::diagnostics::Diagnostics;
use crate::render::{FieldSet, RenderedIssue};
use crate::store::Store;
use crate::store::journal::{self, Audience, Counts, format_time};
use crate::subscribers::Recipient;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The issue, e.g. content/issue-17.md
    pub issue: PathBuf,
    /// Write one .eml per recipient instead of sending; no network
    #[arg(long)]
    pub dry_run: bool,
    /// Folder for --dry-run [default: out/dry-run/<issue>]
    #[arg(long, value_name = "DIR", requires = "dry_run")]
    pub out: Option<PathBuf>,
    /// Test send: only to these addresses (the journal is not touched)
    #[arg(long, value_name = "EMAIL", num_args = 1.., conflicts_with_all = ["list", "subscribers", "resend"])]
    pub to: Vec<String>,
    /// Only subscribers on this list
    #[arg(long, value_name = "NAME", conflicts_with = "subscribers")]
    pub list: Option<String>,
    #[command(flatten)]
    pub recipients: RecipientArgs,
    /// Messages per unit of time, e.g. 10/s, 300/min, 2000/h, or unlimited [default: send.rate]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,
    /// SMTP connections and messages in flight [default: send.concurrency]
    #[arg(long, value_name = "N", value_parser = parse_concurrency)]
    pub concurrency: Option<usize>,
    /// Send at most N messages in this run; a rerun continues
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Start a new send of this issue: everyone gets it again
    #[arg(long)]
    pub resend: bool,
    /// Write one CSV line per recipient (status, attempts, reply) to FILE
    #[arg(long, value_name = "FILE.csv")]
    pub report: Option<PathBuf>,
    /// No progress output
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Send as one of several workers sharing a PostgreSQL database (use a
    /// different id on each machine, e.g. its hostname)
    #[arg(long, value_name = "ID", conflicts_with_all = ["dry_run", "to"])]
    pub worker_id: Option<String>,
    /// Scheduled send: before this time, exit 0 without sending (for a timer
    /// or cron that runs the command hourly), e.g. "2026-12-05 09:00" (local
    /// time) or "2026-12-05T09:00:00+01:00"
    #[arg(long, value_name = "TIME", value_parser = parse_when, conflicts_with_all = ["dry_run", "to"])]
    pub not_before: Option<time::OffsetDateTime>,
    /// Send a scheduled issue even if it first starts more than
    /// send.stale_after after its --not-before time
    #[arg(long, requires = "not_before")]
    pub stale_ok: bool,
}

/// `--not-before`: RFC 3339, or a local date and time (`YYYY-MM-DD HH:MM`,
/// seconds optional, `T` or a space between).
fn parse_when(s: &str) -> std::result::Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    let t = s.trim();
    if let Ok(at) = time::OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(at);
    }
    let naive = t.replacen('T', " ", 1);
    let formats = [
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]"),
    ];
    let local = formats
        .iter()
        .find_map(|f| time::PrimitiveDateTime::parse(&naive, f).ok())
        .ok_or_else(|| {
            format!("`{s}` is not a time: write \"2026-12-05 09:00\" (local time) or \"2026-12-05T09:00:00+01:00\"")
        })?;
    // Read while the process has one thread (the time crate refuses later).
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    Ok(local.assume_offset(offset))
}

/// `2026-12-05 09:00 +01:00`.
fn show_when(at: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] [offset_hour sign:mandatory]:[offset_minute]"
    );
    at.format(&f).unwrap_or_else(|_| at.to_string())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The issue, e.g. content/issue-17.md
    pub issue: PathBuf,
}

/// Stops the run on Ctrl-C or SIGTERM: in-flight sends finish and are
/// recorded, the rest stays pending for the next run.
fn stop_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        eprintln!("\nstopping: finishing the messages in flight (a rerun resumes)");
        let _ = tx.send(true);
    });
    rx
}

fn options(config: &Config, args: &SendArgs) -> SendOptions {
    let mut o = SendOptions::from_config(&config.send);
    if let Some(r) = args.rate {
        o.rate = Some(r);
    }
    if let Some(c) = args.concurrency {
        o.concurrency = c;
    }
    o.limit = args.limit;
    o
}

/// `--concurrency`: the same bounds as `send.concurrency`.
fn parse_concurrency(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| "must be a whole number between 1 and 100".to_string())?;
    crate::config::check_concurrency(n)
}

/// Renders the issue; any error stops the send before a message is built.
fn render_for_send(
    config: &Config,
    args: &SendArgs,
    fields: &FieldSet,
    diags: &mut Diagnostics,
) -> Result<(Issue, RenderedIssue)> {
    let (issue, rendered) = render_issue(config, &args.issue, fields, diags)?;
    if diags.has_errors() {
        print_diagnostics(diags);
        return Err(Error::Problems(format!(
            "{}: {}; nothing was sent (run `tidings check {}`)",
            args.issue.display(),
            summary(diags),
            args.issue.display()
        )));
    }
    Ok((issue, rendered))
}

pub fn send(config: &Config, args: SendArgs) -> Result<()> {
    runtime()?.block_on(send_async(config, args))
}

async fn send_async(config: &Config, args: SendArgs) -> Result<()> {
    if let Some(at) = args.not_before {
        let now = time::OffsetDateTime::now_utc();
        if now < at {
            println!(
                "not sending yet: {} is scheduled for {} (in {}); nothing was written. Run the same command again after then (a timer or cron can run it hourly)",
                args.issue.display(),
                show_when(at),
                human_duration(std::time::Duration::try_from(at - now).unwrap_or_default())
            );
            return Ok(());
        }
    }
    let store = Store::open(&config.database, &config.base_dir()).await?;
    if args.worker_id.is_some() && !store.supports_workers() {
        return Err(Error::Usage(
            "--worker-id needs PostgreSQL: several senders coordinate through it. SQLite is for one machine; set database = \"postgres://…\" (or TIDINGS_DATABASE_URL)".into(),
        ));
    }
    // Who it goes to decides which fields templates may use.
    let csv = match &args.recipients.subscribers {
        Some(path) => Some(super::read_csv(path)?),
        None => None,
    };
    let fields = match &csv {
        Some(c) => FieldSet {
            attributes: c.attributes.clone(),
        },
        None => FieldSet {
            attributes: store.attribute_keys().await?,
        },
    };
    let mut diags = Diagnostics::default();
    let (_issue, rendered) = render_for_send(config, &args, &fields, &mut diags)?;
    let live = !args.dry_run;
    let purpose = if live { Purpose::Send } else { Purpose::DryRun };
    let signer = Signer::for_purpose(config, purpose, &mut diags).map_err(Error::Usage)?;
    let slug = rendered.slug.clone();
    let title = rendered.title.clone();
    let sender_config;
    let factory = if live {
        MessageFactory::new(config, signer, rendered)?
    } else {
        sender_config = super::with_example_sender(config, &mut diags);
        MessageFactory::new(&sender_config, signer, rendered)?
    };
    print_diagnostics(&diags);
    let opts = options(config, &args);

    if args.dry_run {
        return dry_run(
            config,
            &args,
            store,
            csv.map(|c| c.recipients),
            factory,
            &opts,
        )
        .await;
    }
    if !args.to.is_empty() {
        return test_send(config, &args, &store, factory, &opts).await;
    }

    let audience = match (&args.recipients.subscribers, &args.list) {
        (Some(p), _) => Audience::Csv(p.display().to_string()),
        (None, Some(l)) => Audience::List(l.clone()),
        (None, None) => Audience::All,
    };
    // Nothing is written until the user said yes: first only read what a
    // send would do (continue a campaign, or whom a new one would fix).
    if let Audience::List(l) = &audience {
        known_list(&store, l).await?;
    }
    let plan = campaign::Plan {
        store: &store,
        issue: &slug,
        audience: &audience,
        resend: args.resend,
        csv: csv.as_ref().map(|c| c.recipients.as_slice()),
        worker: args.worker_id.as_deref(),
    };
    let to_send = match campaign::ahead(&plan).await? {
        Ahead::Done(before) => {
            println!(
                "nothing to send: all {} recipient{} of {slug} are done (sent {}, failed {}, skipped {}); `tidings status {}` has the details, --resend sends it again",
                before.total,
                plural(before.total),
                before.sent,
                before.failed,
                before.skipped,
                args.issue.display()
            );
            return Ok(());
        }
        Ahead::Continue { remaining } => remaining,
        Ahead::New { recipients } => {
            // A scheduled send's first start, long after its time.
            if let Some(at) = args.not_before {
                let late = time::OffsetDateTime::now_utc() - at;
                let limit = config.send.stale_after;
                if !args.stale_ok && late > limit.0 {
                    return Err(Error::Usage(format!(
                        "{} was scheduled for {}, {} ago: more than send.stale_after ({limit}), so it is not sent now (a machine that was off must not mail an old announcement). Pass --stale-ok to send it anyway, or raise send.stale_after",
                        args.issue.display(),
                        show_when(at),
                        human_duration(std::time::Duration::try_from(late).unwrap_or_default())
                    )));
                }
            }
            if recipients == 0 {
                return Err(Error::Usage(format!(
                    "nothing to send: {audience} has nobody who may be mailed (active, not unsubscribed, bounced or suppressed); `tidings subscribers stats` shows the counts. Nothing was written"
                )));
            }
            recipients
        }
    };

    let transport = crate::deliver::smtp(config, opts.concurrency)?;
    confirm(
        &args,
        &format!(
            "Send {slug} \"{title}\" to {to_send} recipient{} ({audience}) through {} at {}{}?",
            plural(to_send),
            transport.describe(),
            opts.rate.map_or("full speed".into(), |r| r.to_string()),
            opts.rate
                .filter(|r| !r.is_unlimited())
                .map(|r| format!(
                    ", about {}",
                    human_duration(std::time::Duration::from_secs_f64(
                        to_send as f64 / r.per_second_f64()
                    ))
                ))
                .unwrap_or_default()
        ),
    )?;
    transport.check().await.map_err(Error::Transport)?;

    // Yes: the recipients of a new campaign are fixed now.
    let quiet = args.quiet;
    let report = campaign::send(plan, transport, factory, &opts, stop_signal(), |recovered, left| {
        if recovered > 0 {
            eprintln!(
                "note: a previous run stopped with {recovered} message{} in flight; {} sent again and may arrive twice",
                plural(recovered),
                if recovered == 1 { "it is" } else { "they are" }
            );
        }
        Progress::new(left, quiet)
    })
    .await?;
    if let Some(path) = &args.report {
        write_report(&store, report.campaign.id, path).await?;
    }
    print_report(
        &report.stats,
        &report.counts,
        report.campaign.possible_duplicates,
    );
    outcome(&report.stats, &report.counts, &args)
}

/// An unknown list is an error before anything is written: a typo must not
/// send to nobody and close the issue for that list.
async fn known_list(store: &Store, list: &str) -> Result<()> {
    let names = store.list_names().await?;
    if names.iter().any(|n| n == list) {
        return Ok(());
    }
    let known = if names.is_empty() {
        "there are no lists yet (`tidings subscribers import FILE.csv --list NAME` makes one)"
            .to_string()
    } else {
        format!(
            "the lists are: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let hint = names
        .iter()
        .filter(|n| strsim::jaro_winkler(n, list) > 0.8)
        .max_by(|a, b| strsim::jaro_winkler(a, list).total_cmp(&strsim::jaro_winkler(b, list)))
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    Err(Error::Usage(format!(
        "no list `{list}`{hint}: {known}. Nothing was written"
    )))
}

/// The exit status of a send: 2 on a fatal stop, 1 if anyone failed or is
/// left, 0 when everyone was sent (or skipped for a good reason).
fn outcome(stats: &RunStats, after: &Counts, args: &SendArgs) -> Result<()> {
    let issue = args.issue.display();
    match &stats.stopped {
        Some(Stopped::Fatal(e)) => Err(Error::Transport(crate::deliver::SendError {
            message: format!(
                "the send stopped: {}; fix it and rerun `tidings send {issue}` to continue",
                e.message
            ),
            ..e.clone()
        })),
        Some(Stopped::Paused(why)) => Err(Error::Problems(format!(
            "the send paused: {why}. Check the failures above (or --report), then rerun `tidings send {issue}` to continue"
        ))),
        Some(Stopped::Interrupted) => Err(Error::Problems(format!(
            "interrupted: {} recipient{} left; rerun `tidings send {issue}` to continue",
            after.remaining(),
            plural(after.remaining())
        ))),
        Some(Stopped::Limit) if after.remaining() > 0 => {
            println!(
                "--limit reached: {} recipient{} left; rerun to continue",
                after.remaining(),
                plural(after.remaining())
            );
            Ok(())
        }
        _ if after.failed > 0 => Err(Error::Problems(format!(
            "{} recipient{} failed",
            after.failed,
            plural(after.failed)
        ))),
        _ if after.remaining() > 0 => Err(Error::Problems(format!(
            "{} recipient{} still deferred; rerun `tidings send {issue}` to retry",
            after.remaining(),
            plural(after.remaining())
        ))),
        _ => Ok(()),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn confirm(args: &SendArgs, question: &str) -> Result<()> {
    if args.yes {
        eprintln!("{question} yes (--yes)");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question}\nrefusing to send without confirmation: stdin is not a terminal, pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::System(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("not sent".into()))
    }
}

fn print_report(stats: &RunStats, after: &Counts, possible_duplicates: i64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "this run: sent {}, failed {}, deferred {} in {} ({})",
        stats.sent,
        stats.failed,
        stats.deferred,
        human_duration(stats.elapsed),
        stats.rate_text()
    );
    let _ = writeln!(out, "{}", counts_line(after));
    for (reason, n) in &after.failed_by {
        let _ = writeln!(out, "  failed ({n}): {reason}");
    }
    if possible_duplicates > 0 {
        let _ = writeln!(
            out,
            "  {possible_duplicates} message{} were in flight when an earlier run died and may have arrived twice",
            plural(possible_duplicates as u64)
        );
    }
}

fn counts_line(c: &Counts) -> String {
    let skipped = if c.skipped_by.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            c.skipped_by
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "all runs: {} recipients: sent {}, failed {}, deferred {}, pending {}, skipped {}{skipped}",
        c.total,
        c.sent,
        c.failed,
        c.deferred,
        c.pending + c.sending,
        c.skipped
    )
}

async fn write_report(db: &Store, campaign: i64, path: &PathBuf) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    let mut w = csv::Writer::from_writer(file);
    journal::write_report(db, campaign, &mut w).await?;
    w.flush().map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

async fn dry_run(
    config: &Config,
    args: &SendArgs,
    store: Store,
    csv: Option<Vec<Recipient>>,
    factory: MessageFactory,
    opts: &SendOptions,
) -> Result<()> {
    let rendered = factory.issue();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| project_dir(config).join("out/dry-run").join(&rendered.slug));
    if let (None, true, Some(l)) = (&csv, args.to.is_empty(), &args.list) {
        known_list(&store, l).await?;
    }
    std::fs::create_dir_all(&out).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    let cleared = clear_dry_run(&out)?;
    if cleared > 0 {
        eprintln!(
            "removed {cleared} message{} of an earlier dry run from {}",
            plural(cleared),
            out.display()
        );
    }
    let from_store = csv.is_none() && args.to.is_empty();
    let store_name = store.name().to_string();
    let mut opts = opts.clone();
    opts.rate = None;
    opts.limit = args.limit;
    // Nothing is journaled: read the list in large pages.
    opts.batch = Some(512);
    let transport = FileTransport::new(&out);
    let subject = rendered.subject.source().to_string();
    let slug = rendered.slug.clone();
    let (stats, skipped) = if !args.to.is_empty() {
        let recipients = test_recipients(&store, &args.to).await?;
        (
            run_queue(ListQueue::new(recipients), transport, factory, &opts, args).await?,
            Default::default(),
        )
    } else if let Some(rows) = csv {
        let queue = Arc::new(CsvQueue::new(rows, Some(store.clone())));
        let stats = run_arc(queue.clone(), transport, factory, &opts, args).await?;
        (stats, queue.skipped())
    } else {
        let queue = StoreQueue::new(store, args.list.clone());
        (
            run_queue(queue, transport, factory, &opts, args).await?,
            Default::default(),
        )
    };
    let skipped_text: Vec<String> = skipped.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let summary = format!(
        "issue: {slug}\nsubject: {subject}\nmessages: {}\nfailed: {}\nskipped: {}\nfolder: {}\nelapsed: {}\nrate: {:.0} messages/s\n",
        stats.sent,
        stats.failed,
        if skipped_text.is_empty() {
            "0".into()
        } else {
            skipped_text.join(", ")
        },
        out.display(),
        human_duration(stats.elapsed),
        stats.rate().unwrap_or(0.0)
    );
    let summary_path = out.join("summary.txt");
    std::fs::write(&summary_path, &summary).map_err(|source| Error::Write {
        path: summary_path.clone(),
        source,
    })?;
    for (who, e) in &stats.failures {
        eprintln!("failed: {who}: {}", e.message);
    }
    if from_store && stats.sent + stats.failed == 0 {
        let whom = match &args.list {
            Some(l) => format!("no active subscribers on list `{l}`"),
            None => "no active subscribers".into(),
        };
        return Err(Error::Problems(format!(
            "the subscriber store ({store_name}) has {whom}, so the dry run wrote nothing: import the list with `tidings subscribers import FILE.csv`, or pass --subscribers FILE.csv (`tidings preview` uses subscribers/sample.csv)"
        )));
    }
    println!(
        "dry run: wrote {} message{} to {} ({:.0}/s); nothing was sent",
        stats.sent,
        plural(stats.sent),
        out.display(),
        stats.rate().unwrap_or(0.0)
    );
    if let Some(Stopped::Fatal(e)) = &stats.stopped {
        return Err(Error::Transport(e.clone()));
    }
    if stats.failed > 0 {
        return Err(Error::Problems(format!(
            "{} message{} could not be built",
            stats.failed,
            plural(stats.failed)
        )));
    }
    Ok(())
}

/// Removes what an earlier dry run wrote into `dir` (its `.eml` files and
/// `summary.txt`), so the folder holds exactly this run's messages; other
/// files are left alone. Returns how many messages were removed.
fn clear_dry_run(dir: &std::path::Path) -> Result<u64> {
    let write_err = |source| Error::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(write_err)? {
        let path = entry.map_err(write_err)?.path();
        let is_eml = path.extension().is_some_and(|e| e == "eml");
        if is_eml || path.file_name().is_some_and(|f| f == "summary.txt") {
            std::fs::remove_file(&path).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            n += u64::from(is_eml);
        }
    }
    Ok(n)
}

async fn run_queue<Q: Queue, T: Transport + 'static>(
    queue: Q,
    transport: T,
    factory: MessageFactory,
    opts: &SendOptions,
    args: &SendArgs,
) -> Result<RunStats> {
    run_arc(Arc::new(queue), transport, factory, opts, args).await
}

async fn run_arc<Q: Queue, T: Transport + 'static>(
    queue: Arc<Q>,
    transport: T,
    factory: MessageFactory,
    opts: &SendOptions,
    args: &SendArgs,
) -> Result<RunStats> {
    let progress = Progress::new(0, args.quiet || args.dry_run);
    crate::deliver::send::run(queue, transport, factory, opts, &progress, stop_signal())
        .await
        .map_err(|e| Error::Store(e.0))
}

/// `--to` addresses, with the stored subscriber's data when there is one.
async fn test_recipients(store: &Store, to: &[String]) -> Result<Vec<Recipient>> {
    let mut out = Vec::with_capacity(to.len());
    for address in to {
        let r = match store.get(address).await? {
            Some(s) => s.recipient(),
            None => Recipient::new(address.trim()),
        };
        out.push(r);
    }
    Ok(out)
}

async fn test_send(
    config: &Config,
    args: &SendArgs,
    store: &Store,
    factory: MessageFactory,
    opts: &SendOptions,
) -> Result<()> {
    let recipients = test_recipients(store, &args.to).await?;
    let transport = crate::deliver::smtp(config, opts.concurrency)?;
    transport.check().await.map_err(Error::Transport)?;
    let server = transport.describe();
    let mut opts = opts.clone();
    // Nothing to come back to: a transient failure is reported, not retried.
    opts.max_attempts = 1;
    let stats = run_queue(ListQueue::new(recipients), transport, factory, &opts, args).await?;
    for (who, e) in &stats.failures {
        eprintln!("failed: {who}: {}", e.message);
    }
    println!(
        "test send: {} sent, {} failed through {server} (the send journal is unchanged)",
        stats.sent, stats.failed
    );
    match &stats.stopped {
        Some(Stopped::Fatal(e)) => Err(Error::Transport(e.clone())),
        _ if stats.failed > 0 => Err(Error::Problems(format!("{} failed", stats.failed))),
        _ => Ok(()),
    }
}

pub fn status(config: &Config, args: StatusArgs) -> Result<()> {
    runtime()?.block_on(async {
        let store = Store::open(&config.database, &config.base_dir()).await?;
        let slug = issue_slug(&args.issue)?;
        let campaigns = journal::campaigns(&store, &slug).await?;
        if campaigns.is_empty() {
            println!("{slug}: not sent yet");
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        for c in &campaigns {
            let counts = journal::counts(&store, c.id).await?;
            let state = match (&c.finished_at, &c.paused_reason) {
                (Some(t), _) => format!("finished {}", format_time(*t)),
                (None, Some(why)) => format!("paused: {why}"),
                (None, None) if counts.remaining() == 0 => "done".into(),
                (None, None) => "in progress or stopped; `tidings send` continues it".into(),
            };
            let _ = writeln!(
                out,
                "{} campaign {} to {} (started {}): {state}",
                c.issue,
                c.id,
                describe(&c.audience),
                format_time(c.created_at)
            );
            let _ = writeln!(out, "  {}", counts_line(&counts).trim_start_matches("all runs: "));
            for (reason, n) in &counts.failed_by {
                let _ = writeln!(out, "  failed ({n}): {reason}");
            }
            // What came back after the relay accepted (`tidings bounces`).
            let (bounced, complained) = store.campaign_feedback(c.id).await?;
            if bounced + complained > 0 {
                let _ = writeln!(
                    out,
                    "  after the relay accepted: {bounced} bounced, {complained} complained{}",
                    match (counts.sent, complained) {
                        (0, _) | (_, 0) => String::new(),
                        (sent, n) => format!(" ({:.2}% of sent)", n as f64 * 100.0 / sent as f64),
                    }
                );
            }
            let now = journal::now_ms();
            let workers = journal::worker_stats(&store, c.id).await?;
            // Rows held by a worker that exited or died are not in flight:
            // the others take them back (and may send them twice).
            let mut held_by_gone = 0;
            for w in &workers {
                let live = w.exited.is_none()
                    && now - w.heartbeat_at < journal::WORKER_STALE.as_millis() as i64;
                let state = match &w.exited {
                    Some((t, why)) if why == "finished" => format!("finished {}", format_time(*t)),
                    Some((t, why)) => format!("exited {}: {why}", format_time(*t)),
                    None if live => "sending".into(),
                    None => format!("dead: silent since {}", format_time(w.heartbeat_at)),
                };
                // In flight: messages that may have reached the server
                // (rows claimed but not started go back without harm).
                let in_flight = if live || w.on_wire == 0 {
                    format!("in flight {}", w.on_wire)
                } else {
                    held_by_gone += w.on_wire;
                    format!("left in flight {}", w.on_wire)
                };
                let _ = writeln!(
                    out,
                    "  worker {}: claimed {}, sent {}, failed {}, {in_flight}, {:.1} messages/s ({state})",
                    w.worker, w.claimed, w.sent, w.failed, w.rate
                );
            }
            let in_flight = counts.on_wire.saturating_sub(held_by_gone);
            if in_flight > 0 {
                let _ = writeln!(
                    out,
                    "  {in_flight} in flight: if no send is running, a run died; they will be sent again and may arrive twice",
                );
            }
            if held_by_gone > 0 {
                let _ = writeln!(
                    out,
                    "  {held_by_gone} left in flight by a worker that is gone: the next worker or run sends them again, and they may arrive twice",
                );
            }
            if c.possible_duplicates > 0 {
                let _ = writeln!(
                    out,
                    "  {} message{} in flight when a run died: sent again, may have arrived twice",
                    c.possible_duplicates,
                    plural(c.possible_duplicates as u64)
                );
            }
        }
        Ok(())
    })
}

/// The slug `status` looks up: an issue file's, or the argument itself
/// when it names no file (`tidings status issue-17`).
fn issue_slug(arg: &std::path::Path) -> Result<String> {
    if arg.is_file() {
        let mut diags = Diagnostics::default();
        return Ok(Issue::from_file(arg, &mut diags)?.slug);
    }
    let text = arg.to_string_lossy();
    if !text.is_empty() && crate::content::slugify(&text) == text {
        return Ok(text.into_owned());
    }
    let mut diags = Diagnostics::default();
    Ok(Issue::from_file(arg, &mut diags)?.slug)
}

fn describe(audience: &str) -> String {
    match audience.split_once(':') {
        Some(("list", l)) => format!("list `{l}`"),
        Some(("csv", p)) => p.to_string(),
        _ => "all subscribers".into(),
    }
}
