//! `tidings init` (a new project) and `tidings new` (the next issue).
//!
//! Both only write new files: an existing file is never overwritten.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::{Error, Result};

const CONFIG: &str = include_str!("scaffold/tidings.toml");
const ISSUE: &str = include_str!("scaffold/issue.md");
const SAMPLE: &str = include_str!("scaffold/sample.csv");

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder for the new project [default: the current folder]
    pub dir: Option<PathBuf>,
    /// The newsletter's name, e.g. "Recovery Voices"
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The sender, e.g. "Recovery Voices <news@example.org>"
    #[arg(long, value_name = "NAME <ADDRESS>")]
    pub from: Option<String>,
    /// The organisation's postal address, shown in every footer
    #[arg(long, value_name = "ADDRESS")]
    pub postal_address: Option<String>,
    /// The organisation's website, e.g. https://example.org
    #[arg(long, value_name = "URL")]
    pub site_url: Option<String>,
    /// Where `tidings serve` will answer, e.g. https://news.example.org
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The SMTP server to send through
    #[arg(long, value_name = "HOST")]
    pub smtp_host: Option<String>,
    /// Also copy the built-in templates into templates/, to edit
    #[arg(long)]
    pub templates: bool,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The title, e.g. "Getting Through the Holidays"
    pub title: String,
    /// The issue number [default: one more than the highest in content/]
    #[arg(long, value_name = "N")]
    pub number: Option<u32>,
}

/// One question of `init`: its flag's value, the question, the example.
struct Answer {
    key: &'static str,
    question: &'static str,
    example: String,
    given: Option<String>,
}

pub fn init(args: InitArgs) -> Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mut answers = [
        Answer {
            key: "newsletter.name",
            question: "Newsletter name",
            example: "Example Newsletter".into(),
            given: args.name.clone(),
        },
        Answer {
            key: "newsletter.from",
            question: "Sender (Name <address>)",
            example: String::new(),
            given: args.from.clone(),
        },
        Answer {
            key: "newsletter.postal_address",
            question: "Postal address (shown in the footer)",
            example: "1 Example Street, Example Town".into(),
            given: args.postal_address.clone(),
        },
        Answer {
            key: "newsletter.website",
            question: "Website",
            example: "https://example.org".into(),
            given: args.site_url.clone(),
        },
        Answer {
            key: "newsletter.base_url",
            question: "Where `tidings serve` will answer (unsubscribe links)",
            example: "https://news.example.org".into(),
            given: args.base_url.clone(),
        },
        Answer {
            key: "smtp.host",
            question: "SMTP server",
            example: "smtp.example.org".into(),
            given: args.smtp_host.clone(),
        },
    ];
    let mut values: Vec<String> = Vec::new();
    let mut to_fill: Vec<&'static str> = Vec::new();
    for (i, a) in answers.iter_mut().enumerate() {
        if i == 1 {
            // The sender's example follows the name.
            a.example = format!("{} <newsletter@example.org>", values[0]);
        }
        let value = match (&a.given, interactive) {
            (Some(v), _) => v.trim().to_string(),
            (None, true) => ask(a.question, &a.example)?,
            (None, false) => {
                to_fill.push(a.key);
                a.example.clone()
            }
        };
        values.push(value);
    }
    let [name, from, postal, website, base_url, smtp_host] = values
        .try_into()
        .unwrap_or_else(|_| unreachable!("six answers"));
    if !from.contains('@') {
        return Err(Error::Usage(format!(
            "--from `{from}` has no address: write it as \"Name <news@your-domain.org>\""
        )));
    }
    for (flag, url) in [("--site-url", &website), ("--base-url", &base_url)] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(Error::Usage(format!(
                "{flag} `{url}` must be an http(s) URL, e.g. https://example.org"
            )));
        }
    }

    let fill_in = if to_fill.is_empty() {
        String::new()
    } else {
        format!(
            "#\n# EXAMPLE VALUES: replace these before a real send:\n#   {}\n",
            to_fill.join(", ")
        )
    };
    let config = CONFIG
        .replace("{fill_in}", &fill_in)
        .replace("{name}", &toml_string(&name))
        .replace("{from}", &toml_string(&from))
        .replace("{postal_address}", &toml_string(&postal))
        .replace("{website}", &toml_string(&website))
        .replace("{base_url}", &toml_string(&base_url))
        .replace("{smtp_host}", &toml_string(&smtp_host));
    let issue = issue_file(
        &format!("Welcome to {name}"),
        1,
        "The first issue: who we are and what to expect.",
        &format!(
            "Welcome to the first issue of {name}. Write the introduction here: everything before the first heading.\n\n\
             ## What to expect\n\n\
             Each `##` heading starts a section. A blockquote becomes a pull quote:\n\n\
             > Small steps add up.\n\n\
             ## Stay in touch\n\n\
             Links must be absolute: [our website]({website}).\n"
        ),
    );

    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("tidings.toml"), config),
        (dir.join("content/issue-1.md"), issue),
        (dir.join("subscribers/sample.csv"), SAMPLE.to_string()),
        (
            dir.join(".gitignore"),
            "out/\nsubscribers/*.db\nsubscribers/*.db-*\n".to_string(),
        ),
    ];
    if args.templates {
        for (name, text) in crate::render::DEFAULT_TEMPLATES {
            files.push((dir.join("templates").join(name), text.to_string()));
        }
    }
    // Nothing is written when any file exists: no half-made project.
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(Error::Usage(format!(
            "{} already exist{}: `tidings init` never overwrites; choose an empty folder (tidings init DIR)",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        )));
    }
    for (path, text) in &files {
        write_new(path, text)?;
    }
    let shown = dir.display();
    println!("created a tidings project in {shown}:");
    for (path, _) in &files {
        println!("  {}", path.strip_prefix(&dir).unwrap_or(path).display());
    }
    if !to_fill.is_empty() {
        println!(
            "example values (on example.org) were used for: {}; edit tidings.toml before a real send",
            to_fill.join(", ")
        );
    }
    println!("next:");
    if dir != Path::new(".") {
        println!("  cd {shown}");
    }
    println!("  tidings preview content/issue-1.md --watch      # the email, live as you edit");
    println!("  tidings send content/issue-1.md --dry-run --subscribers subscribers/sample.csv");
    println!("  tidings subscribers import members.csv          # your list");
    println!("  tidings send content/issue-1.md --to you@your-domain.org   # a test to yourself");
    Ok(())
}

pub fn new(config: &crate::config::Config, args: NewArgs) -> Result<()> {
    let title = args.title.trim();
    if title.is_empty() || title.contains(['\n', '\r']) {
        return Err(Error::Usage(
            "the title must be one line of text, e.g. tidings new \"Getting Through the Holidays\""
                .into(),
        ));
    }
    let content = config.base_dir().join("content");
    let number = match args.number {
        Some(n) => n,
        None => highest_issue(&content)? + 1,
    };
    let path = content.join(format!("issue-{number}.md"));
    if path.exists() {
        return Err(Error::Usage(format!(
            "{} already exists: pick another number with --number N",
            path.display()
        )));
    }
    let text = issue_file(
        title,
        number,
        "One line that appears after the subject in the inbox.",
        "Write the introduction here: everything before the first heading.\n\n\
         ## First section\n\n\
         Each `##` heading starts a section.\n\n\
         > A blockquote becomes a pull quote.\n",
    );
    write_new(&path, &text)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The highest `issue:` number among the issues in `content` (or in their
/// file names, `issue-N.md`, for a file that does not parse); 0 if none.
fn highest_issue(content: &Path) -> Result<u32> {
    let entries = match std::fs::read_dir(content) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(Error::Write {
                path: content.to_path_buf(),
                source,
            });
        }
    };
    let mut highest = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let mut diags = crate::diagnostics::Diagnostics::default();
        let from_meta = crate::content::Issue::from_file(&path, &mut diags)
            .ok()
            .and_then(|i| i.meta.issue);
        let from_name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("issue-"))
            .and_then(|n| n.parse().ok());
        highest = highest.max(from_meta.or(from_name).unwrap_or(0));
    }
    Ok(highest)
}

fn issue_file(title: &str, number: u32, preheader: &str, body: &str) -> String {
    let today = time::OffsetDateTime::now_utc().date();
    ISSUE
        .replace("{title_plain}", &title.replace(['"', '\\'], ""))
        .replace("{title}", &yaml_string(title))
        .replace("{number}", &number.to_string())
        .replace(
            "{date}",
            &format!(
                "{:04}-{:02}-{:02}",
                today.year(),
                u8::from(today.month()),
                today.day()
            ),
        )
        .replace("{preheader}", &yaml_string(preheader))
        .replace("{body}", body)
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    // create_new: a file that appeared meanwhile is not overwritten.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)
}

/// Asks on the terminal; an empty answer takes the example.
fn ask(question: &str, example: &str) -> Result<String> {
    eprint!("{question} [{example}]: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::System(format!("cannot read the answer: {e}")))?;
    let line = line.trim();
    Ok(if line.is_empty() {
        example.to_string()
    } else {
        line.to_string()
    })
}
