//! `tidings bounces fetch`, `import PATH…` and `list`: what came back
//! after the relay accepted a message.
//!
//! `fetch` and `import` read reports, print one line per finding (where it was read, the
//! kind, status, address, campaign, how we know, what was done) and a
//! total. A report that cannot be read is an error on that report only:
//! the run goes on and exits 1 at the end.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use super::runtime;
use crate::bounces::imap::{self, Disposition, Handler, ImapSettings};
use crate::bounces::{BounceSink, DryRun, Processor, Resolved, StoreSink, Tally, Target, source};
use crate::config::{Config, Span};
use crate::store::Store;
use crate::store::journal::{format_time, now_ms};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct BouncesArgs {
    #[command(subcommand)]
    pub command: BouncesCommand,
}

#[derive(Debug, Subcommand)]
pub enum BouncesCommand {
    /// Read bounces and complaints from .eml files, Maildirs or mboxes
    Import(ImportArgs),
    /// Read new messages of the bounce mailbox over IMAP (bounces.imap_url), then move them to bounces.processed_folder
    Fetch(FetchArgs),
    /// What was learned: address, kind (hard, soft, complaint), campaign, time, action taken
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only what was learned within this time, e.g. 30d, 48h
    #[arg(long, default_value = "30d", value_parser = parse_span)]
    pub since: Span,
}

fn parse_span(s: &str) -> std::result::Result<Span, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// .eml files, Maildir folders (cur/ and new/), folders of message files, or mbox files
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print what each report says and what would be done; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print only the total
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Read without marking or moving anything on the server; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print only the total
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(config: &Config, args: BouncesArgs) -> Result<()> {
    runtime()?.block_on(async {
        match args.command {
            BouncesCommand::Import(a) if a.dry_run => {
                import(config, &a.paths, &DryRun, a.quiet).await
            }
            BouncesCommand::Import(a) => {
                let sink = StoreSink::open(config).await?;
                import(config, &a.paths, &sink, a.quiet).await
            }
            BouncesCommand::Fetch(a) if a.dry_run => fetch(config, &DryRun, true, a.quiet).await,
            BouncesCommand::Fetch(a) => {
                let sink = StoreSink::open(config).await?;
                fetch(config, &sink, false, a.quiet).await
            }
            BouncesCommand::List(a) => {
                let store = Store::open(&config.database, &config.base_dir()).await?;
                list(&store, a.since).await
            }
        }
    })
}

/// Reads every report under `paths` and applies it with `sink`.
pub async fn import(
    config: &Config,
    paths: &[PathBuf],
    sink: &dyn BounceSink,
    quiet: bool,
) -> Result<()> {
    let mut run = Run::new(config, sink, quiet);
    for path in paths {
        let messages = match source::messages(path) {
            Ok(m) => m,
            Err(e) => {
                run.error(&e.to_string());
                continue;
            }
        };
        for m in messages {
            match m {
                Ok(m) => {
                    run.handle(&m.origin, &m.bytes).await;
                }
                Err(e) => run.error(&e.to_string()),
            }
        }
    }
    run.finish(None)
}

/// Fetches the bounce mailbox and applies each report with `sink`.
pub async fn fetch(
    config: &Config,
    sink: &dyn BounceSink,
    dry_run: bool,
    quiet: bool,
) -> Result<()> {
    let settings = ImapSettings::from_config(config).map_err(|e| Error::Usage(e.to_string()))?;
    let mut run = Run::new(config, sink, quiet);
    let stats = imap::fetch(&settings, dry_run, &mut run)
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    let note = if dry_run {
        format!("{} unseen; nothing moved (dry run)", stats.unseen)
    } else {
        format!(
            "{} unseen: {} moved to `{}`, {} flagged seen, {} left for the next fetch",
            stats.unseen, stats.moved, settings.processed_folder, stats.flagged, stats.kept
        )
    };
    run.finish(Some(note))
}

struct Run<'a> {
    processor: Processor,
    sink: &'a dyn BounceSink,
    tally: Tally,
    quiet: bool,
    started: Instant,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl<'a> Run<'a> {
    fn new(config: &Config, sink: &'a dyn BounceSink, quiet: bool) -> Run<'a> {
        if let Err(problem) = crate::deliver::unsubscribe::Signer::for_purpose(
            config,
            crate::deliver::unsubscribe::Purpose::Serve,
            &mut Default::default(),
        ) {
            eprintln!(
                "warning: VERP tags cannot be checked, so tagged reports are refused: {problem}"
            );
        }
        Run {
            processor: Processor::from_config(config),
            sink,
            tally: Tally::default(),
            quiet,
            started: Instant::now(),
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        }
    }

    fn error(&mut self, message: &str) {
        self.tally.errors += 1;
        let _ = self.out.flush();
        eprintln!("error: {message}");
    }

    fn finish(mut self, note: Option<String>) -> Result<()> {
        let _ = self.out.flush();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.tally.messages as f64 / secs.max(1e-9);
        eprintln!("{} in {secs:.2} s ({rate:.0} messages/s)", self.tally);
        if let Some(n) = note {
            eprintln!("{n}");
        }
        if self.tally.errors > 0 {
            return Err(Error::Problems(format!(
                "{} report(s) could not be read (see above): nothing was changed for them",
                self.tally.errors
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Handler for Run<'_> {
    async fn handle(&mut self, origin: &str, raw: &[u8]) -> Disposition {
        self.tally.messages += 1;
        let found = match self.processor.process(raw) {
            Ok(f) => f,
            Err(e) => {
                self.error(&format!("{origin}: {e}; nothing was changed"));
                return Disposition::Done;
            }
        };
        for r in &found {
            self.tally.count(r);
            match self.sink.apply(r, origin).await {
                Ok(applied) => {
                    if !self.quiet {
                        let _ = writeln!(self.out, "{}", line(origin, r, &applied.to_string()));
                    }
                }
                Err(e) => {
                    self.error(&format!("{origin}: {e}; left for the next run"));
                    return Disposition::Keep;
                }
            }
        }
        Disposition::Done
    }
}

/// `origin: kind status address, campaign N (how we know) [format]: action`
pub fn line(origin: &str, r: &Resolved, action: &str) -> String {
    let f = &r.finding;
    let mut s = format!("{origin}: {}", f.kind.word());
    if let Some(st) = &f.status {
        s.push(' ');
        s.push_str(st);
    }
    s.push(' ');
    s.push_str(&r.who());
    if let Some(c) = r.campaign() {
        s.push_str(&format!(", campaign {c}"));
    }
    match &r.target {
        Ok(Target::Delivery { .. }) => s.push_str(" (VERP tag)"),
        Ok(Target::Address(_)) => s.push_str(" (our Message-ID)"),
        Err(_) => {}
    }
    s.push_str(&format!(" [{}]: {action}", f.format));
    s
}

async fn list(store: &Store, since: Span) -> Result<()> {
    let since_ms = now_ms() - i64::try_from(since.0.as_millis()).unwrap_or(i64::MAX);
    let rows = store.bounces(since_ms).await?;
    if rows.is_empty() {
        println!("no bounces or complaints in the last {since}");
        return Ok(());
    }
    let mut out = csv::WriterBuilder::new()
        .delimiter(b'\t')
        .from_writer(std::io::stdout().lock());
    let write_err = |e: csv::Error| Error::System(format!("cannot write the list: {e}"));
    out.write_record([
        "time",
        "address",
        "kind",
        "status",
        "campaign",
        "source",
        "action",
        "diagnostic",
    ])
    .map_err(write_err)?;
    for r in &rows {
        let campaign = match (&r.issue, r.campaign) {
            (Some(issue), Some(id)) => format!("{issue} ({id})"),
            (None, Some(id)) => id.to_string(),
            _ => String::new(),
        };
        out.write_record([
            format_time(r.at).as_str(),
            if r.email.is_empty() {
                "(erased)"
            } else {
                &r.email
            },
            r.kind.as_str(),
            &r.status,
            &campaign,
            &r.source,
            &r.action,
            &r.diagnostic,
        ])
        .map_err(write_err)?;
    }
    out.flush()
        .map_err(|e| Error::System(format!("cannot write the list: {e}")))?;
    Ok(())
}
