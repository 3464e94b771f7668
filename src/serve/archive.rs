//! `tidings archive`: the server's public pages as static files, for any
//! web host, with links relative to each page (the folder can be put
//! anywhere) and an Atom feed with absolute links from
//! `newsletter.base_url`.
//!
//! ```text
//! index.html                  the list of sent issues, newest first
//! issues/<slug>/index.html    each sent issue, as the server shows it
//! unsubscribe/index.html      where a public copy's Unsubscribe link goes
//! feed.xml                    Atom 1.0
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::issues::{Catalogue, Site};
use super::pages::{Listed, Pages};
use crate::config::Config;
use crate::store::Store;
use crate::{Error, Result};

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct ArchiveReport {
    pub issues: Vec<String>,
    /// Sent issues left out, and why (a missing file, …).
    pub left_out: Vec<String>,
}

/// A static host sends no Content-Security-Policy header: each page
/// carries the server's policy as the first thing in its `<head>`.
fn with_csp(html: &str) -> String {
    let meta = format!(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"{}\">",
        super::CSP_META
    );
    let lower = html.to_ascii_lowercase();
    match lower.find("<head") {
        Some(at) => {
            let end = at + lower[at..].find('>').map_or(5, |i| i + 1);
            format!("{}{meta}{}", &html[..end], &html[end..])
        }
        None => format!("{meta}{html}"),
    }
}

fn write_page(path: &Path, html: &str) -> Result<()> {
    write(path, &with_csp(html))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the archive into `out` (created if missing; other files there
/// are left alone).
pub async fn write_archive(config: &Config, out: &Path) -> Result<ArchiveReport> {
    let store = Store::open(&config.database, &config.base_dir()).await?;
    let pages = Pages::new(&config.newsletter);
    let catalogue = Catalogue::new(Arc::new(config.clone()), Site::Static, Duration::MAX)?;
    let (published, left_out) = catalogue.published(&store).await?;
    let mut report = ArchiveReport {
        left_out,
        ..ArchiveReport::default()
    };
    for p in &published {
        let slug = &p.sent.slug;
        // An issue whose page fails (its file, a template budget) is left
        // out with the reason; the others are written.
        let page = match catalogue.page(&store, slug).await {
            Err(e) if e.is_page_failure() => {
                report.left_out.push(format!("issue `{slug}`: {e}"));
                continue;
            }
            other => other?,
        };
        match page {
            Some((_, html)) => {
                write_page(&issue_path(out, slug), &html)?;
                report.issues.push(slug.clone());
            }
            None => report.left_out.push(format!(
                "issue `{slug}`: its file disappeared while writing"
            )),
        }
    }
    let listed: Vec<Listed<'_>> = published
        .iter()
        .filter(|p| report.issues.contains(&p.sent.slug))
        .map(|p| Listed {
            sent: &p.sent,
            info: &p.info,
            // Explicit index.html: works from a disk and on any host.
            href: format!("issues/{}/index.html", p.sent.slug),
        })
        .collect();
    write_page(&out.join("index.html"), &pages.index(&listed, "feed.xml"))?;
    write(&out.join("feed.xml"), &pages.feed(&listed))?;
    write_page(
        &out.join("unsubscribe/index.html"),
        &pages.unsubscribe_help("../index.html"),
    )?;
    Ok(report)
}

fn issue_path(out: &Path, slug: &str) -> PathBuf {
    out.join("issues").join(slug).join("index.html")
}
