//! `tidings bounces …`: what came back after the relay accepted a message.

use clap::{Args, Subcommand};

use super::runtime;
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

pub fn run(config: &Config, args: BouncesArgs) -> Result<()> {
    runtime()?.block_on(async {
        let store = Store::open(&config.database, &config.base_dir()).await?;
        match args.command {
            BouncesCommand::List(a) => list(&store, a.since).await,
        }
    })
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
