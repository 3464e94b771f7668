//! The command line: parse arguments, ask for confirmation, print, and
//! map the outcome to an exit code in one place. The work itself is the
//! stages' (`deliver::campaign::send`, `store`, `render`, `serve`): no SQL
//! and no journal state here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

pub mod bounces;
mod init;
mod send;
mod serve;
pub mod subscribers;

use crate::config::Config;
use crate::content::Issue;
use crate::deliver::preview::GalleryInfo;
use crate::deliver::send::Stopped;
use crate::deliver::unsubscribe::{Purpose, Signer};
use crate::deliver::{MessageFactory, PreviewTransport};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::render::{FieldSet, RenderedIssue, Renderer};
use crate::subscribers::Recipient;
use crate::{Error, Result};

/// `tidings --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version = VERSION,
    about = "Newsletter publishing: a Markdown issue becomes a responsive email, previewed as files or sent through SMTP.",
    after_help = "Exit status: 0 success, 1 the job ran but found problems (check errors, failed recipients), 2 it could not run (bad config, input or database)."
)]
pub struct Cli {
    /// Config file [default: ./tidings.toml, or $TIDINGS_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render an issue for sample recipients as HTML, text and .eml files, with a gallery page
    Preview(PreviewArgs),
    /// Check an issue without writing anything: exit 1 on errors, 0 with warnings
    Check(CheckArgs),
    /// Send an issue: --dry-run writes .eml files, --to sends a test, otherwise every subscriber
    Send(send::SendArgs),
    /// What was sent, failed, deferred and skipped for an issue
    Status(send::StatusArgs),
    /// Manage the subscriber list: import, add, unsubscribe, remove, list, export, stats
    Subscribers(crate::cli::subscribers::SubscribersArgs),
    /// Bounces and complaints that came back after the relay accepted: fetch the bounce mailbox over IMAP, import files, list what was learned
    Bounces(crate::cli::bounces::BouncesArgs),
    /// Run the web service for unsubscribe links (RFC 8058 one-click) and the issues in the browser
    Serve(serve::ServeArgs),
    /// Write the sent issues as static HTML pages with an Atom feed
    Archive(serve::ArchiveArgs),
    /// Start a new newsletter project: tidings.toml, a first issue, a sample list
    Init(init::InitArgs),
    /// Start the next issue: content/issue-N.md with today's date
    New(init::NewArgs),
    /// Print shell completions, e.g. tidings completions bash > /etc/bash_completion.d/tidings
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. tidings man > tidings.1
    Man,
}

#[derive(Debug, Args)]
pub struct RecipientArgs {
    /// Recipients from this CSV file (header row with an `email` column)
    #[arg(long, value_name = "FILE.csv")]
    pub subscribers: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The issue, e.g. content/issue-17.md
    pub issue: PathBuf,
    #[command(flatten)]
    pub recipients: RecipientArgs,
    /// Only this recipient (by address)
    #[arg(long, value_name = "EMAIL")]
    pub subscriber: Option<String>,
    /// Output folder [default: out/preview/<issue>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also write the intermediate MJML (<issue>.mjml) into the output folder
    #[arg(long)]
    pub emit_mjml: bool,
    /// Serve the preview on a local web server and rebuild it on every save of
    /// the issue, its templates or the config; the page reloads by itself
    #[arg(long)]
    pub watch: bool,
    /// Where --watch serves (loopback by default; port 0 picks a free one)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1111", requires = "watch", value_parser = serve::parse_listen)]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The issue, e.g. content/issue-17.md
    pub issue: PathBuf,
    #[command(flatten)]
    pub recipients: RecipientArgs,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints an error with its chain of causes.
fn print_error(e: &Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !e.to_string().contains(&text) {
            let _ = writeln!(stderr, "  caused by: {text}");
        }
        source = s.source();
    }
}

pub fn run(cli: Cli) -> Result<()> {
    // These need no project.
    match cli.command {
        Command::Init(args) => return init::init(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "tidings", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            use clap::CommandFactory;
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|source| Error::Write {
                    path: "standard output".into(),
                    source,
                });
        }
        _ => {}
    }
    if let Command::Preview(args) = cli.command {
        if args.watch {
            return preview_watch(cli.config, args);
        }
        let config = Config::load(cli.config.as_deref())?;
        return preview(&config, args);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Preview(_) => unreachable!("handled above"),
        Command::Check(args) => check(&config, args),
        Command::Send(args) => send::send(&config, args),
        Command::Status(args) => send::status(&config, args),
        Command::Subscribers(args) => crate::cli::subscribers::run(&config, args),
        Command::Bounces(args) => crate::cli::bounces::run(&config, args),
        Command::Serve(args) => serve::serve(config, args),
        Command::Archive(args) => serve::archive(&config, args),
        Command::New(args) => init::new(&config, args),
        Command::Init(_) | Command::Completions { .. } | Command::Man => {
            unreachable!("handled above")
        }
    }
}

/// The project folder: where the config lives (or the current folder).
fn project_dir(config: &Config) -> PathBuf {
    config.base_dir()
}

/// Reads a recipient CSV, printing the rows it had to leave out.
fn read_csv(path: &Path) -> Result<crate::subscribers::csv::CsvRecipients> {
    let read = crate::subscribers::csv::read_recipients(path)?;
    for s in &read.skipped {
        eprintln!(
            "warning: {}:{}: row skipped: {}",
            path.display(),
            s.line,
            s.reason
        );
    }
    Ok(read)
}

/// How many subscribers a preview from the store shows by default.
const PREVIEW_FROM_STORE: usize = 10;

/// Recipients for a preview or check: `--subscribers FILE.csv`, else the
/// subscriber store (when it exists and has active subscribers: the first
/// few, or exactly `one`), else the sample list `subscribers/sample.csv`.
fn load_recipients(
    config: &Config,
    args: &RecipientArgs,
    one: Option<&str>,
    previewing: bool,
) -> Result<(Vec<Recipient>, FieldSet)> {
    if let Some(path) = &args.subscribers {
        let read = read_csv(path)?;
        return Ok((
            read.recipients,
            FieldSet {
                attributes: read.attributes,
            },
        ));
    }
    if let Some(found) = runtime()?.block_on(store_recipients(config, one, previewing))? {
        return Ok(found);
    }
    let read = read_csv(&project_dir(config).join("subscribers/sample.csv"))?;
    Ok((
        read.recipients,
        FieldSet {
            attributes: read.attributes,
        },
    ))
}

/// The store's subscribers for a preview, or `None` when there is no
/// store yet (a SQLite file that does not exist is not created for this).
async fn store_recipients(
    config: &Config,
    one: Option<&str>,
    previewing: bool,
) -> Result<Option<(Vec<Recipient>, FieldSet)>> {
    if let Some(path) = config.database.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        if !project_dir(config).join(path).exists() {
            return Ok(None);
        }
    }
    let store = crate::store::Store::open(&config.database, &config.base_dir()).await?;
    let recipients = match one {
        Some(email) => match store.get(email).await? {
            Some(s) => vec![s.recipient()],
            None => return Ok(None),
        },
        None => {
            use futures_util::TryStreamExt;
            let mut rows = store.recipients(None);
            let mut out = Vec::new();
            while out.len() < PREVIEW_FROM_STORE {
                match rows.try_next().await? {
                    Some((_, r)) => out.push(r),
                    None => break,
                }
            }
            out
        }
    };
    if recipients.is_empty() {
        return Ok(None);
    }
    if one.is_none() && previewing {
        let whom = match recipients.len() {
            1 => "the one active subscriber".to_string(),
            n => format!("the first {n} active subscribers"),
        };
        eprintln!(
            "previewing {whom} in {}; --subscriber EMAIL picks one",
            store.name()
        );
    }
    let fields = FieldSet {
        attributes: store.attribute_keys().await?,
    };
    Ok(Some((recipients, fields)))
}

/// Content, then templates: everything up to the once-per-issue render.
fn render_issue(
    config: &Config,
    issue_path: &Path,
    fields: &FieldSet,
    diags: &mut Diagnostics,
) -> Result<(Issue, RenderedIssue)> {
    let issue = Issue::from_file(issue_path, diags)?;
    let renderer = Renderer::new(Some(&project_dir(config).join("templates")))?;
    let rendered = renderer.render(&issue, config, fields, diags)?;
    Ok((issue, rendered))
}

fn print_diagnostics(diags: &Diagnostics) {
    let mut stderr = std::io::stderr().lock();
    for d in diags.iter() {
        let _ = writeln!(stderr, "{d}");
    }
}

fn summary(diags: &Diagnostics) -> String {
    let errors = diags.errors().count();
    let warnings = diags.warnings().count();
    format!(
        "{errors} error{}, {warnings} warning{}",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    )
}

fn check(config: &Config, args: CheckArgs) -> Result<()> {
    let (_, fields) = load_recipients(config, &args.recipients, None, false)?;
    let mut diags = Diagnostics::default();
    render_issue(config, &args.issue, &fields, &mut diags)?;
    check_dkim(config, &mut diags);
    print_diagnostics(&diags);
    if diags.has_errors() {
        return Err(Error::Problems(format!(
            "{}: {}",
            args.issue.display(),
            summary(&diags)
        )));
    }
    println!("{}: ok ({})", args.issue.display(), summary(&diags));
    Ok(())
}

/// Previews and dry runs work before the sender is configured: without
/// `newsletter.from` they use an example address and say so (a real send
/// still requires it).
fn with_example_sender<'a>(
    config: &'a Config,
    diags: &mut Diagnostics,
) -> std::borrow::Cow<'a, Config> {
    if !config.newsletter.from.trim().is_empty() {
        return std::borrow::Cow::Borrowed(config);
    }
    let mut c = config.clone();
    c.newsletter.from = format!("{} <{EXAMPLE_SENDER}>", c.newsletter.name);
    diags.push(Diagnostic::warning(
        None,
        format!("newsletter.from is not set: this uses {} as the sender; set it in tidings.toml before a real send", c.newsletter.from),
    ));
    std::borrow::Cow::Owned(c)
}

/// The sender of previews and dry runs when none is configured.
const EXAMPLE_SENDER: &str = "newsletter@example.org";

/// With DKIM on: the key must load; prints the DNS record to publish for
/// it, and whether the signing domain aligns with the sender's for DMARC.
fn check_dkim(config: &Config, diags: &mut Diagnostics) {
    use crate::deliver::dkim::{Alignment, DkimSetup, alignment, from_domain};
    let setup = match DkimSetup::from_config(config) {
        Ok(Some(setup)) => setup,
        Ok(None) => return,
        Err(e) => {
            diags.push(Diagnostic::error(None, e.to_string()));
            return;
        }
    };
    println!(
        "DKIM: publish this TXT record ({} key) where the domain's DNS is managed:",
        setup.key.key_type().tag()
    );
    println!("  name:  {}", setup.record_name());
    println!("  value: {}", setup.key.record_value());
    let Some(from) = from_domain(config) else {
        return;
    };
    let d = &setup.domain;
    match alignment(d, &from) {
        Alignment::Same => println!(
            "DKIM: aligned: the signing domain is newsletter.from's domain ({from})"
        ),
        Alignment::Subdomain => println!(
            "DKIM: aligned (relaxed): the signing domain {d} and newsletter.from's domain {from} are one organisation's"
        ),
        Alignment::SharedParent(parent) => diags.push(Diagnostic::warning(
            None,
            format!(
                "DKIM: the signing domain {d} and newsletter.from's domain {from} align (relaxed) only if {parent} is the registered domain; to be sure, set dkim.domain = \"{from}\""
            ),
        )),
        Alignment::None => diags.push(Diagnostic::warning(
            None,
            format!(
                "DKIM: the signing domain {d} does not align with newsletter.from's domain {from}: DMARC will not count the signature; set dkim.domain = \"{from}\" (or a parent domain of it) and publish its record"
            ),
        )),
    }
}

/// Writes the preview gallery; the findings and the index page's path.
fn preview_build(config: &Config, args: &PreviewArgs) -> Result<(Diagnostics, PathBuf, usize)> {
    let (mut recipients, fields) =
        load_recipients(config, &args.recipients, args.subscriber.as_deref(), true)?;
    if let Some(one) = &args.subscriber {
        let key = crate::subscribers::normalise_email(one);
        recipients.retain(|r| r.key() == key);
        if recipients.is_empty() {
            return Err(Error::Usage(format!(
                "no subscriber `{one}` in the recipient list: check the address, or pass --subscribers FILE.csv"
            )));
        }
    }
    let mut diags = Diagnostics::default();
    let (issue, rendered) = render_issue(config, &args.issue, &fields, &mut diags)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out/preview").join(&issue.slug));
    std::fs::create_dir_all(&out).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    if args.emit_mjml {
        let path = out.join(format!("{}.mjml", issue.slug));
        std::fs::write(&path, &rendered.mjml).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    let info = GalleryInfo {
        title: rendered.title.clone(),
        preheader: rendered.preheader.clone(),
        web_url: rendered.web_url.clone(),
        findings: Vec::new(),
    };
    let config = &with_example_sender(config, &mut diags);
    let factory = MessageFactory::new(
        config,
        Signer::for_purpose(config, Purpose::Preview, &mut diags).map_err(Error::Usage)?,
        rendered,
    )?;
    // The send loop, one at a time (the gallery keeps the list's order),
    // into preview files: the same path every message of a send takes.
    let transport = Arc::new(PreviewTransport::new(&out));
    let stats = runtime()?.block_on(crate::deliver::send::preview(
        recipients,
        transport.clone(),
        factory,
    ))?;
    for (who, e) in &stats.failures {
        diags.push(Diagnostic::error(Some(who.clone()), e.message.clone()));
    }
    if let Some(Stopped::Fatal(e)) = stats.stopped {
        return Err(Error::Transport(e));
    }
    diags.extend(transport.take_findings());
    let info = GalleryInfo {
        findings: diags.iter().map(ToString::to_string).collect(),
        ..info
    };
    let index = transport.finish(&info).map_err(Error::Transport)?;
    Ok((diags, index, transport.entries().len()))
}

fn preview(config: &Config, args: PreviewArgs) -> Result<()> {
    let (diags, index, n) = preview_build(config, &args)?;
    print_diagnostics(&diags);
    println!(
        "wrote {n} preview{} to {}",
        if n == 1 { "" } else { "s" },
        index.display()
    );
    if diags.has_errors() {
        return Err(Error::Problems(format!(
            "{}: {}",
            args.issue.display(),
            summary(&diags)
        )));
    }
    Ok(())
}

/// `preview --watch`: the gallery on a local server, rebuilt on each save.
fn preview_watch(config_path: Option<PathBuf>, args: PreviewArgs) -> Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let project = project_dir(&config);
    let slug = crate::content::slugify(
        &args
            .issue
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out/preview").join(&slug));
    std::fs::create_dir_all(&out).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    // The issue's folder and the templates, with their subfolders, and
    // the config file.
    let folders = vec![
        args.issue
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(PathBuf::from("."), Path::to_path_buf),
        project.join("templates"),
    ];
    let files: Vec<PathBuf> = config.origin.iter().cloned().collect();
    let last_findings = std::sync::Mutex::new(String::new());
    let listen = args.listen;
    let build = move || -> std::result::Result<(), String> {
        let config = Config::load(config_path.as_deref()).map_err(|e| format!("error: {e}"))?;
        match preview_build(&config, &args) {
            Ok((diags, _, _)) if diags.has_errors() => Err(diags.to_string()),
            Ok((diags, _, _)) => {
                // Warnings once, not at every save.
                let text = diags.to_string();
                let mut last = last_findings.lock().unwrap();
                if *last != text {
                    eprint!("{text}");
                    *last = text;
                }
                Ok(())
            }
            Err(e) => Err(format!("error: {e}")),
        }
    };
    crate::serve::watch::run(Box::new(build), folders, files, out, listen)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::System(format!("cannot start the async runtime: {e}")))
}
