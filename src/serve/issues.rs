//! The issues `serve` and `archive` publish: only those the send journal
//! shows as sent (a campaign with at least one `sent` delivery), rendered
//! once per issue with generic subscriber fields and kept in memory until
//! the issue's file changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::content::{ContentError, Issue};
use crate::diagnostics::Diagnostics;
use crate::render::personalise::{Escape, Fields};
use crate::render::{FieldSet, RenderError, Renderer};
use crate::store::journal::{SentIssue, sent_issues};
use crate::store::{Store, StoreError};

/// Slugs are `[a-z0-9-]`: anything else is refused before a file name is
/// made of it.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where generated pages link to: the live server's paths, or paths
/// relative to the page in a static archive (which may be put anywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Live,
    Static,
}

impl Site {
    /// The unsubscribe help page, as linked from an issue page.
    pub fn help_from_issue(self) -> &'static str {
        match self {
            Site::Live => "/unsubscribe",
            Site::Static => "../../unsubscribe/index.html",
        }
    }
}

/// The public copy's fields: every template default ("Hi friend"), and an
/// Unsubscribe link to the help page rather than a broken personal link.
struct WebFields {
    unsubscribe_url: &'static str,
}

impl Fields for WebFields {
    fn field(&self, field: &str) -> Option<&str> {
        (field == "unsubscribe_url").then_some(self.unsubscribe_url)
    }
}

/// What the list and the feed show of an issue (its front matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueInfo {
    pub slug: String,
    pub title: String,
    pub number: Option<u32>,
    /// `YYYY-MM-DD` from the front matter.
    pub date: Option<String>,
    pub preheader: String,
}

impl IssueInfo {
    fn of(issue: &Issue) -> IssueInfo {
        IssueInfo {
            slug: issue.slug.clone(),
            title: issue.meta.title.clone(),
            number: issue.meta.issue,
            date: issue.meta.date.clone(),
            preheader: issue.meta.preheader.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("rendering was interrupted: {0}")]
    Interrupted(String),
    /// The page failed earlier, and the file has not changed since.
    #[error("{0}")]
    FailedBefore(Arc<str>),
}

impl IssueError {
    /// A problem of the issue's page (its file, templates or a render
    /// budget), not of the service: that page fails alone.
    pub fn is_page_failure(&self) -> bool {
        matches!(
            self,
            IssueError::Content(_)
                | IssueError::Render(_)
                | IssueError::Interrupted(_)
                | IssueError::FailedBefore(_)
        )
    }
}

/// Rendering runs on a thread of its own with this stack (recursive
/// descent in the compilers; the content stage bounds nesting, this is the
/// margin)…
const RENDER_STACK: usize = 32 * 1024 * 1024;
/// …for at most this long (a request has 10 s in all; each template has
/// its own 5 s)…
pub const RENDER_TIMEOUT: Duration = Duration::from_secs(8);
/// …and at most this many at once (2 cores).
const RENDERS_AT_ONCE: usize = 2;

impl From<IssueError> for crate::Error {
    fn from(e: IssueError) -> crate::Error {
        match e {
            IssueError::Store(e) => e.into(),
            IssueError::Content(e) => e.into(),
            IssueError::Render(e) => e.into(),
            IssueError::Interrupted(m) => crate::Error::Serve(m),
            IssueError::FailedBefore(m) => crate::Error::Serve(m.to_string()),
        }
    }
}

#[derive(Clone)]
struct Entry {
    mtime: Option<SystemTime>,
    /// `None` when the file did not parse (see `failed`).
    info: Option<Arc<IssueInfo>>,
    html: Option<Arc<str>>,
    /// Why the page could not be rendered: kept until the file changes,
    /// so a broken issue is not rendered again on every request…
    failed: Option<Arc<str>>,
    /// …or, for a render that ran out of time (perhaps only a busy
    /// machine), until then.
    retry_at: Option<Instant>,
}

/// How long a page that ran out of time stays a 500 before another try.
const RETRY_TIMED_OUT: Duration = Duration::from_secs(60);

/// Sent issues and their pages, cached.
pub struct Catalogue {
    config: Arc<Config>,
    content_dir: PathBuf,
    renderer: Arc<Renderer>,
    site: Site,
    /// How long the list of sent issues is reused before the journal is
    /// asked again (it is a scan of the sent deliveries).
    sent_ttl: Duration,
    sent: Mutex<Option<(Instant, Arc<Vec<SentIssue>>)>>,
    entries: Mutex<HashMap<String, Entry>>,
    renders: Arc<tokio::sync::Semaphore>,
}

/// A sent issue with its front matter, for lists and feeds.
#[derive(Debug, Clone)]
pub struct Published {
    pub sent: SentIssue,
    pub info: Arc<IssueInfo>,
}

impl Catalogue {
    /// Templates are loaded once, from the project's `templates/` (a
    /// restart picks up changed templates).
    pub fn new(
        config: Arc<Config>,
        site: Site,
        sent_ttl: Duration,
    ) -> Result<Catalogue, RenderError> {
        let base = config.base_dir();
        let renderer = Renderer::new(Some(&base.join("templates")))?;
        Ok(Catalogue {
            content_dir: base.join("content"),
            config,
            renderer: Arc::new(renderer),
            site,
            sent_ttl,
            sent: Mutex::new(None),
            entries: Mutex::new(HashMap::new()),
            renders: Arc::new(tokio::sync::Semaphore::new(RENDERS_AT_ONCE)),
        })
    }

    /// The issue file of `slug`: `content/<slug>.md`, or the file whose
    /// name gives that slug (the journal keys sends by the slugified name,
    /// so `Issue_17.md` was sent as `issue-17`).
    fn path(&self, slug: &str) -> PathBuf {
        let direct = self.content_dir.join(format!("{slug}.md"));
        if direct.exists() {
            return direct;
        }
        std::fs::read_dir(&self.content_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "md")
                    && p.file_stem()
                        .and_then(|s| s.to_str())
                        .is_some_and(|s| crate::content::slugify(s) == slug)
            })
            .unwrap_or(direct)
    }

    /// The sent issues, newest first (from the journal, at most
    /// `sent_ttl` old).
    pub async fn sent(&self, store: &Store) -> Result<Arc<Vec<SentIssue>>, IssueError> {
        if let Some((at, list)) = &*self.sent.lock().expect("not poisoned")
            && at.elapsed() < self.sent_ttl
        {
            return Ok(list.clone());
        }
        let list = Arc::new(sent_issues(store).await?);
        *self.sent.lock().expect("not poisoned") = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// When `slug` was first sent, if it was.
    pub async fn first_sent(
        &self,
        store: &Store,
        slug: &str,
    ) -> Result<Option<SentIssue>, IssueError> {
        Ok(self
            .sent(store)
            .await?
            .iter()
            .find(|s| s.slug == slug)
            .cloned())
    }

    fn mtime(&self, slug: &str) -> Option<Option<SystemTime>> {
        let meta = std::fs::metadata(self.path(slug)).ok()?;
        meta.is_file().then(|| meta.modified().ok())
    }

    fn cached(&self, slug: &str, mtime: Option<SystemTime>) -> Option<Entry> {
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .get(slug)
            .filter(|e| e.mtime.is_some() && e.mtime == mtime)
            .filter(|e| e.retry_at.is_none_or(|at| Instant::now() < at))
            .cloned()
    }

    /// The front matter of `content/<slug>.md` (sent or not): `None` when
    /// the slug is not valid or there is no such file.
    pub fn info(&self, slug: &str) -> Result<Option<Arc<IssueInfo>>, IssueError> {
        if !valid_slug(slug) {
            return Ok(None);
        }
        let Some(mtime) = self.mtime(slug) else {
            return Ok(None);
        };
        if let Some(info) = self.cached(slug, mtime).and_then(|e| e.info) {
            return Ok(Some(info));
        }
        let issue = Issue::from_file(&self.path(slug), &mut Diagnostics::default())?;
        let info = Arc::new(IssueInfo::of(&issue));
        self.entries.lock().expect("not poisoned").insert(
            slug.to_string(),
            Entry {
                mtime,
                info: Some(info.clone()),
                html: None,
                failed: None,
                retry_at: None,
            },
        );
        Ok(Some(info))
    }

    /// The sent issues whose files are there, newest first; the second
    /// list says which sent issues were left out and why.
    pub async fn published(
        &self,
        store: &Store,
    ) -> Result<(Vec<Published>, Vec<String>), IssueError> {
        let sent = self.sent(store).await?;
        let mut out = Vec::with_capacity(sent.len());
        let mut left_out = Vec::new();
        for s in sent.iter() {
            match self.info(&s.slug) {
                Ok(Some(info)) => out.push(Published {
                    sent: s.clone(),
                    info,
                }),
                Ok(None) => left_out.push(format!(
                    "issue `{}` was sent but {} is missing",
                    s.slug,
                    self.path(&s.slug).display()
                )),
                Err(e) => left_out.push(format!("issue `{}`: {e}", s.slug)),
            }
        }
        Ok((out, left_out))
    }

    /// The public page of a sent issue: `None` when the slug is not valid,
    /// the issue was never sent, or its file is gone.
    pub async fn page(
        &self,
        store: &Store,
        slug: &str,
    ) -> Result<Option<(SentIssue, Arc<str>)>, IssueError> {
        if !valid_slug(slug) {
            return Ok(None);
        }
        let Some(sent) = self.first_sent(store, slug).await? else {
            return Ok(None);
        };
        let Some(mtime) = self.mtime(slug) else {
            return Ok(None);
        };
        if let Some(e) = self.cached(slug, mtime) {
            if let Some(html) = e.html {
                return Ok(Some((sent, html)));
            }
            if let Some(failed) = e.failed {
                return Err(IssueError::FailedBefore(failed));
            }
        }
        let permit = self
            .renders
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Another request may have rendered it while this one waited.
        if let Some(e) = self.cached(slug, mtime) {
            if let Some(html) = e.html {
                return Ok(Some((sent, html)));
            }
            if let Some(failed) = e.failed {
                return Err(IssueError::FailedBefore(failed));
            }
        }
        // Custom attributes are fields templates may use, as in a send.
        let fields = FieldSet {
            attributes: store.attribute_keys().await?,
        };
        let renderer = self.renderer.clone();
        let config = self.config.clone();
        let path = self.path(slug);
        let help = self.site.help_from_issue();
        // mrml takes milliseconds: off the request threads, on a thread
        // with a known stack, within a time budget.
        let render = move || {
            let mut diags = Diagnostics::default();
            let issue = Issue::from_file(&path, &mut diags)?;
            let rendered = renderer.render(&issue, &config, &fields, &mut diags)?;
            let html: Arc<str> = rendered
                .html
                .render(
                    &WebFields {
                        unsubscribe_url: help,
                    },
                    Escape::Html,
                )
                .into();
            Ok::<_, IssueError>((Arc::new(IssueInfo::of(&issue)), html))
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("render-{slug}"))
            .stack_size(RENDER_STACK)
            .spawn(move || {
                // Held until the render really ends, timed out or not.
                let _permit = permit;
                let _ = tx.send(render());
            })
            .map_err(|e| IssueError::Interrupted(format!("cannot start a render thread: {e}")))?;
        let result = match tokio::time::timeout(RENDER_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(IssueError::Interrupted("the render panicked".into())),
            Err(_) => Err(IssueError::Interrupted(format!(
                "rendering took longer than {} s",
                RENDER_TIMEOUT.as_secs()
            ))),
        };
        let entry = match &result {
            Ok((info, html)) => Entry {
                mtime,
                info: Some(info.clone()),
                html: Some(html.clone()),
                failed: None,
                retry_at: None,
            },
            Err(e) if e.is_page_failure() => Entry {
                mtime,
                info: None,
                html: None,
                failed: Some(format!("issue {slug}: {e}").into()),
                retry_at: matches!(
                    e,
                    IssueError::Interrupted(_) | IssueError::Render(RenderError::Budget { .. })
                )
                .then(|| Instant::now() + RETRY_TIMED_OUT),
            },
            Err(_) => return result.map(|_| None),
        };
        self.entries
            .lock()
            .expect("not poisoned")
            .insert(slug.to_string(), entry);
        let (_, html) = result?;
        Ok(Some((sent, html)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(valid_slug("issue-17"));
        for bad in [
            "",
            "Issue",
            "a/b",
            "..",
            "a.md",
            "a b",
            "ä",
            &"a".repeat(101),
        ] {
            assert!(!valid_slug(bad), "{bad:?}");
        }
    }
}
