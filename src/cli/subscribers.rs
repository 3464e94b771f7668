//! `tidings subscribers …`: the clap types and the command code.
//!
//! Exit status follows the rest of the CLI: 0 done; 1 done but with
//! problems (rows skipped, a person not re-activated); 2 could not run (a
//! database that cannot be opened or is locked, a file that cannot be
//! read).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use futures_util::TryStreamExt;

use crate::config::Config;
use crate::store::{SUPPRESSED_REMOVED, Store, StoreError};
use crate::subscribers::model::{
    AddOutcome, ImportOptions, ListFilter, NewSubscriber, RemoveOutcome, Status, Subscriber,
    UnsubscribeOutcome,
};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct SubscribersArgs {
    #[command(subcommand)]
    pub command: SubscribersCommand,
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Import a CSV file (a header row with an `email` column; other columns become attributes)
    Import(ImportArgs),
    /// Add one subscriber, or update an active subscriber's details
    Add(AddArgs),
    /// Unsubscribe an address: kept in the store, never sent to again
    Unsubscribe {
        /// The address
        email: String,
    },
    /// Erase a person's data, keeping a one-way hash of the address so no import adds them back
    Remove {
        /// The address
        email: String,
    },
    /// List subscribers
    List(ListArgs),
    /// Export subscribers as CSV, in the format `import` reads back
    Export(ExportArgs),
    /// Counts by status and by list
    Stats,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file, e.g. subscribers/members.csv
    pub file: PathBuf,
    /// Also add every imported person to this list (repeatable)
    #[arg(long = "list", value_name = "LIST")]
    pub lists: Vec<String>,
    /// Import nothing if any row is invalid
    #[arg(long)]
    pub strict: bool,
    /// Validate and count without writing anything
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The address
    pub email: String,
    #[arg(long, value_name = "NAME")]
    pub first_name: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub last_name: Option<String>,
    /// An attribute for templates, e.g. --attr city=Portland (repeatable; an empty value removes it)
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
    pub attributes: Vec<(String, String)>,
    /// Add to this list (repeatable)
    #[arg(long = "list", value_name = "LIST")]
    pub lists: Vec<String>,
    /// Re-activate an unsubscribed or bounced address: only when the person asked for it
    #[arg(long)]
    pub resubscribe: bool,
    /// Add back a person who was removed (erased), only at their request;
    /// records who decided it, e.g. --after-removal "Ana: asked by phone 2026-12-01"
    #[arg(long, value_name = "WHO AND WHY", conflicts_with = "resubscribe")]
    pub after_removal: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only subscribers with this status
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// Only members of this list
    #[arg(long, value_name = "LIST")]
    pub list: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output file (`-` for standard output), e.g. members-2026-11.csv
    pub file: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE (e.g. city=Portland)"))?;
    let k = k.trim().to_lowercase();
    crate::subscribers::model::check_attribute_name(&k)?;
    Ok((k, v.trim().to_string()))
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse()
}

impl FilterArgs {
    fn filter(&self) -> ListFilter {
        ListFilter {
            status: self.status,
            list: self.list.clone(),
        }
    }
}

/// Runs one `subscribers` command.
pub fn run(config: &Config, args: SubscribersArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::System(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let store = Store::open(&config.database, &config.base_dir()).await?;
        match args.command {
            SubscribersCommand::Import(a) => import(&store, a).await,
            SubscribersCommand::Add(a) => add(&store, a).await,
            SubscribersCommand::Unsubscribe { email } => unsubscribe(&store, &email).await,
            SubscribersCommand::Remove { email } => remove(&store, &email).await,
            SubscribersCommand::List(a) => list(&store, a).await,
            SubscribersCommand::Export(a) => export(&store, a).await,
            SubscribersCommand::Stats => stats(&store).await,
        }
    })
}

async fn import(store: &Store, args: ImportArgs) -> Result<()> {
    let shown = args.file.display().to_string();
    let options = ImportOptions {
        source: String::new(),
        lists: args.lists,
        strict: args.strict,
        dry_run: args.dry_run,
    };
    let mut stderr = std::io::stderr();
    let report = store
        .import_file(&args.file, options, &mut |s| {
            let _ = writeln!(stderr, "{shown}: {s}");
        })
        .await?;
    let verb = if report.written {
        "imported"
    } else if args.dry_run {
        "dry run, nothing written:"
    } else {
        "not imported (--strict), nothing written:"
    };
    println!("{verb} {shown} into {}: {report}", store.name());
    if report.skipped > 0 {
        let rows = plural(report.skipped, "row");
        return Err(Error::Problems(if args.strict {
            format!(
                "{shown}: {rows} invalid (listed above); with --strict nothing was imported: fix them and import again"
            )
        } else if args.dry_run {
            format!("{shown}: {rows} invalid (listed above)")
        } else {
            format!("{shown}: {rows} skipped (listed above); the other rows were imported")
        }));
    }
    Ok(())
}

async fn add(store: &Store, args: AddArgs) -> Result<()> {
    let email = args.email.trim().to_string();
    let new = NewSubscriber {
        email: email.clone(),
        first_name: args.first_name,
        last_name: args.last_name,
        attributes: args.attributes.into_iter().collect::<BTreeMap<_, _>>(),
        lists: args.lists.iter().map(|l| l.trim().to_string()).collect(),
    };
    let outcome = match &args.after_removal {
        Some(who) => store.add_after_removal(&new, who).await?,
        None => store.add(&new, "add", args.resubscribe).await?,
    };
    let refuse = |m: String| Err(Error::Problems(m));
    match outcome {
        AddOutcome::Added { .. } => println!("added {email}"),
        AddOutcome::Updated { .. } => println!("updated {email}"),
        AddOutcome::Unchanged { .. } => println!("{email} is already subscribed (nothing changed)"),
        AddOutcome::Resubscribed { .. } => println!("resubscribed {email}"),
        AddOutcome::Unsubscribed { since } => {
            return refuse(format!(
                "{email} unsubscribed{}: not subscribed again; if they asked to come back, run it again with --resubscribe",
                since.map(|s| format!(" on {s}")).unwrap_or_default()
            ));
        }
        AddOutcome::Bounced => {
            return refuse(format!(
                "{email} bounced: not re-activated; if the address works again, run it again with --resubscribe"
            ));
        }
        AddOutcome::Suppressed { reason, since } if reason == SUPPRESSED_REMOVED => {
            return refuse(format!(
                "{email} was removed on {since} (their data erased at their request): --resubscribe and imports do not bring them back. If they ask to come back, they sign up again, or you add them with --after-removal \"WHO decided it, and why\" (recorded in their history)"
            ));
        }
        AddOutcome::Suppressed { since, .. } => {
            return refuse(format!(
                "{email} unsubscribed on {since}: not subscribed again; if they asked to come back, run it again with --resubscribe"
            ));
        }
    }
    Ok(())
}

async fn unsubscribe(store: &Store, email: &str) -> Result<()> {
    let email = email.trim();
    match store.unsubscribe(email, "manual").await? {
        UnsubscribeOutcome::Unsubscribed => println!("unsubscribed {email}"),
        UnsubscribeOutcome::AlreadyUnsubscribed => println!("{email} was already unsubscribed"),
        UnsubscribeOutcome::Suppressed => println!(
            "{email} is not a subscriber: recorded as unsubscribed, so no import will add it"
        ),
        UnsubscribeOutcome::AlreadySuppressed => {
            println!("{email} is not a subscriber and was already suppressed")
        }
    }
    Ok(())
}

async fn remove(store: &Store, email: &str) -> Result<()> {
    let email = email.trim();
    match store.remove(email, "remove").await? {
        RemoveOutcome::Removed => println!(
            "removed {email}: data erased; a one-way hash of the address is kept so no import adds it back"
        ),
        RemoveOutcome::NotFound => println!(
            "{email} is not a subscriber: a one-way hash of the address is kept so no import adds it"
        ),
    }
    Ok(())
}

/// Output that ends quietly when the reader goes away (`| head`).
fn stdout_err(e: std::io::Error) -> Option<Error> {
    (e.kind() != std::io::ErrorKind::BrokenPipe).then(|| Error::Write {
        path: PathBuf::from("<stdout>"),
        source: e,
    })
}

async fn list(store: &Store, args: ListArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match args.format {
        Format::Csv => {
            return match store.export(out, args.filter.filter()).await {
                Ok(_) => Ok(()),
                // `tidings subscribers list --format csv | head` is not an error.
                Err(StoreError::Write(e)) => stdout_err(e).map_or(Ok(()), Err),
                Err(e) => Err(e.into()),
            };
        }
        Format::Table => write_table(store, &mut out, args.filter.filter()).await,
        Format::Json => write_json(store, &mut out, args.filter.filter()).await,
    };
    match result.and_then(|()| out.flush().map_err(Listing::Io)) {
        Ok(()) => Ok(()),
        Err(Listing::Store(e)) => Err(e.into()),
        Err(Listing::Io(e)) => stdout_err(e).map_or(Ok(()), Err),
    }
}

enum Listing {
    Store(StoreError),
    Io(std::io::Error),
}

impl From<StoreError> for Listing {
    fn from(e: StoreError) -> Self {
        Listing::Store(e)
    }
}
impl From<std::io::Error> for Listing {
    fn from(e: std::io::Error) -> Self {
        Listing::Io(e)
    }
}

async fn write_table(
    store: &Store,
    out: &mut impl Write,
    filter: ListFilter,
) -> Result<(), Listing> {
    writeln!(
        out,
        "{:>6}  {:<32}  {:<24}  {:<12}  LISTS",
        "ID", "EMAIL", "NAME", "STATUS"
    )?;
    let mut rows = store.list(filter);
    while let Some(s) = rows.try_next().await? {
        writeln!(
            out,
            "{:>6}  {:<32}  {:<24}  {:<12}  {}",
            s.id,
            s.email,
            s.recipient().full_name(),
            s.status,
            s.lists.join(";")
        )?;
    }
    Ok(())
}

async fn write_json(
    store: &Store,
    out: &mut impl Write,
    filter: ListFilter,
) -> Result<(), Listing> {
    // One array, written as it streams.
    write!(out, "[")?;
    let mut rows = store.list(filter);
    let mut first = true;
    while let Some(s) = rows.try_next().await? {
        write!(out, "{}\n  {}", if first { "" } else { "," }, json(&s))?;
        first = false;
    }
    writeln!(out, "{}]", if first { "" } else { "\n" })?;
    Ok(())
}

fn json(s: &Subscriber) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "email": s.email,
        "first_name": s.first_name,
        "last_name": s.last_name,
        "attributes": s.attributes,
        "lists": s.lists,
        "status": s.status.as_str(),
        "source": s.source,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "unsubscribed_at": s.unsubscribed_at,
    })
}

async fn export(store: &Store, args: ExportArgs) -> Result<()> {
    if args.file.as_os_str() == "-" {
        let stdout = std::io::stdout();
        return store
            .export(BufWriter::new(stdout.lock()), args.filter.filter())
            .await
            .map(drop)
            .map_err(Error::from);
    }
    // Written beside the target and renamed: never a half-written export.
    let path = &args.file;
    let write_err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tmp_path(&dir, path);
    let file = std::fs::File::create(&tmp).map_err(write_err)?;
    let n = match store
        .export(BufWriter::new(file), args.filter.filter())
        .await
    {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(e)
    })?;
    println!("exported {} to {}", plural(n, "subscriber"), path.display());
    Ok(())
}

fn tmp_path(dir: &Path, target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export.csv".into());
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

async fn stats(store: &Store) -> Result<()> {
    let s = store.stats().await?;
    println!("database: {}", store.name());
    println!(
        "subscribers: {} ({} active, {} unsubscribed, {} bounced)",
        s.total(),
        s.active,
        s.unsubscribed,
        s.bounced
    );
    if s.suppressed_by.is_empty() {
        println!("suppressed addresses: 0");
    } else {
        let by: Vec<String> = s
            .suppressed_by
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        println!("suppressed addresses: {} ({})", s.suppressed, by.join(", "));
    }
    if s.lists.is_empty() {
        println!("lists: none");
    } else {
        println!("lists:");
        for l in &s.lists {
            println!(
                "  {}: {} active, {} unsubscribed, {} bounced",
                l.list, l.active, l.unsubscribed, l.bounced
            );
        }
    }
    Ok(())
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
