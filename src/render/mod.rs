//! Render: issue -> tera -> MJML -> HTML (mrml), once per issue; plus the
//! plain-text part from the same content. The result keeps placeholder
//! slots that `personalise` fills per recipient.

pub mod checks;
pub mod personalise;
pub mod plain;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tera::{Context, Kwargs, State, Tera, TeraResult, Value};

use crate::config::{Config, Link, Newsletter};
use crate::content::{Author, Block, Issue, Related};
use crate::diagnostics::{Diagnostic, Diagnostics};
use personalise::{Escape, Fields, Personalisable, STANDARD_FIELDS, bare_token_field, token};

/// The built-in templates, compiled into the binary. A file of the same
/// name under the project's `templates/` replaces one.
pub const DEFAULT_TEMPLATES: &[(&str, &str)] = &[
    ("email.mjml", include_str!("../../templates/email.mjml")),
    (
        "partials/head.mjml",
        include_str!("../../templates/partials/head.mjml"),
    ),
    (
        "partials/header.mjml",
        include_str!("../../templates/partials/header.mjml"),
    ),
    (
        "partials/article.mjml",
        include_str!("../../templates/partials/article.mjml"),
    ),
    (
        "partials/block.mjml",
        include_str!("../../templates/partials/block.mjml"),
    ),
    (
        "partials/pull_quote.mjml",
        include_str!("../../templates/partials/pull_quote.mjml"),
    ),
    (
        "partials/author.mjml",
        include_str!("../../templates/partials/author.mjml"),
    ),
    (
        "partials/related.mjml",
        include_str!("../../templates/partials/related.mjml"),
    ),
    (
        "partials/cta.mjml",
        include_str!("../../templates/partials/cta.mjml"),
    ),
    (
        "partials/footer.mjml",
        include_str!("../../templates/partials/footer.mjml"),
    ),
    ("email.txt", include_str!("../../templates/email.txt")),
];

const HTML_TEMPLATE: &str = "email.mjml";
const TEXT_TEMPLATE: &str = "email.txt";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read templates in {path}: {source}")]
    ReadTemplates {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A template that does not parse or fails to render (undefined
    /// variable, bad filter argument…).
    #[error("{location}: {message}{detail}")]
    Template {
        location: String,
        message: String,
        detail: String,
    },
    #[error(
        "MJML produced by the templates does not compile: {message} (run with --emit-mjml to inspect it)"
    )]
    Mjml { message: String },
    /// A template went past [`MAX_TEMPLATE_OUTPUT`] or [`TEMPLATE_TIME`].
    #[error("{origin}: rendering stopped: {why}")]
    Budget { origin: String, why: String },
}

/// The most one template may write: far more than any email (Gmail clips
/// at 102 KB), so only a runaway loop reaches it.
pub const MAX_TEMPLATE_OUTPUT: usize = 2 * 1024 * 1024;
/// How long one template may take to render (checked as it writes).
pub const TEMPLATE_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a template writes: refuses to grow past the output or time
/// budget, which makes tera stop with an I/O error.
struct Budget {
    out: Vec<u8>,
    start: std::time::Instant,
    over: Option<String>,
}

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_TEMPLATE_OUTPUT {
            self.over = Some(format!(
                "more than {} MiB of output (a loop that never ends?); an email must stay under Gmail's 102 KB anyway",
                MAX_TEMPLATE_OUTPUT / (1024 * 1024)
            ));
        } else if self.start.elapsed() > TEMPLATE_TIME {
            self.over = Some(format!(
                "it took more than {} s (a loop that never ends?)",
                TEMPLATE_TIME.as_secs()
            ));
        }
        if self.over.is_some() {
            return Err(std::io::Error::other("template budget exceeded"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Templates loaded once; renders any number of issues.
pub struct Renderer {
    /// Shared with the thread each template renders on.
    tera: Arc<Tera>,
    /// Template name -> (where it came from, its text), for messages.
    origins: Origins,
}

/// Field names besides the standard ones that recipients may carry
/// (custom attributes, e.g. CSV columns), so templates may use them.
#[derive(Debug, Clone, Default)]
pub struct FieldSet {
    pub attributes: Vec<String>,
}

/// An issue rendered once, ready to personalise for any recipient.
#[derive(Debug, Clone)]
pub struct RenderedIssue {
    pub slug: String,
    pub title: String,
    pub subject: Personalisable,
    pub preheader: String,
    /// The MJML the templates produced, tokens included.
    pub mjml: String,
    pub html: Personalisable,
    pub text: Personalisable,
    /// Where `tidings serve` shows this issue.
    pub web_url: String,
}

/// One recipient's message content.
#[derive(Debug, Clone, PartialEq)]
pub struct Personalised {
    pub subject: String,
    pub html: String,
    pub text: String,
}

impl RenderedIssue {
    pub fn personalise(&self, fields: &dyn Fields) -> Personalised {
        Personalised {
            subject: self.subject.render(fields, Escape::Header),
            html: self.html.render(fields, Escape::Html),
            text: self.text.render(fields, Escape::Text),
        }
    }
}

impl Renderer {
    /// The built-in templates, overridden by any in `dir` (when it exists).
    pub fn new(dir: Option<&Path>) -> Result<Renderer, RenderError> {
        let mut templates: BTreeMap<String, (String, String)> = DEFAULT_TEMPLATES
            .iter()
            .map(|(name, text)| {
                (
                    name.to_string(),
                    (text.to_string(), format!("built-in template {name}")),
                )
            })
            .collect();
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            for (name, path) in template_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    RenderError::ReadTemplates {
                        path: path.clone(),
                        source,
                    }
                })?;
                templates.insert(name, (text, path.display().to_string()));
            }
        }
        let mut tera = Tera::new();
        // tera escapes only .html/.htm/.xml by default: a .mjml template
        // would pass `<script>` through untouched.
        tera.autoescape_on([".mjml", ".html"]);
        tera.register_filter("default", personal_default);
        tera.register_filter("wrap", wrap_filter);
        let origins: Origins = templates
            .iter()
            .map(|(name, (text, origin))| (name.clone(), (origin.clone(), text.clone())))
            .collect();
        tera.add_raw_templates(templates.iter().map(|(n, (t, _))| (n.as_str(), t.as_str())))
            .map_err(|e| template_error(&e, &origins))?;
        Ok(Renderer {
            tera: Arc::new(tera),
            origins,
        })
    }

    /// Renders one template within [`MAX_TEMPLATE_OUTPUT`] and
    /// [`TEMPLATE_TIME`].
    /// A loop that writes is stopped by the writer; one that writes
    /// nothing by the wait for its thread (which is left to finish alone:
    /// tera cannot be interrupted).
    fn render_budgeted(&self, name: &str, context: &Context) -> Result<String, RenderError> {
        let origin = || {
            self.origins
                .get(name)
                .map_or(name.to_string(), |(o, _)| o.clone())
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (tera, template, context) = (self.tera.clone(), name.to_string(), context.clone());
        std::thread::Builder::new()
            .name("template".into())
            .spawn(move || {
                let mut budget = Budget {
                    out: Vec::new(),
                    start: std::time::Instant::now(),
                    over: None,
                };
                let result = tera.render_to(&template, &context, &mut budget);
                let _ = tx.send((result, budget));
            })
            .map_err(|e| RenderError::Template {
                location: origin(),
                message: format!("cannot start a thread to render it: {e}"),
                detail: String::new(),
            })?;
        let (result, budget) = match rx.recv_timeout(TEMPLATE_TIME) {
            Ok(done) => done,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(RenderError::Budget {
                    origin: origin(),
                    why: format!(
                        "it took more than {} s (a loop that never ends?)",
                        TEMPLATE_TIME.as_secs()
                    ),
                });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(RenderError::Template {
                    location: origin(),
                    message: "rendering it failed unexpectedly (a panic in the template engine)"
                        .into(),
                    detail: String::new(),
                });
            }
        };
        if let Some(why) = budget.over {
            return Err(RenderError::Budget {
                origin: origin(),
                why,
            });
        }
        result.map_err(|e| template_error(&e, &self.origins))?;
        String::from_utf8(budget.out).map_err(|e| RenderError::Template {
            location: name.to_string(),
            message: format!("the output is not UTF-8: {e}"),
            detail: String::new(),
        })
    }

    /// A subscriber field went through a filter other than `default`, so
    /// its placeholder cannot be filled in: says where, as the user wrote
    /// it (the templates and the issue's subject are searched).
    fn report_filtered_fields(&self, issue: &Issue, diags: &mut Diagnostics) {
        const WHY: &str = "subscriber fields are filled in for each recipient after the issue is rendered, so they take no filter but `default(value=…)`";
        let mut sources: Vec<(&str, &str)> = self
            .origins
            .values()
            .map(|(origin, text)| (origin.as_str(), text.as_str()))
            .collect();
        sources.sort();
        let issue_path = issue.path.display().to_string();
        let mut found = false;
        for (_, expr) in filtered_fields(&issue.meta.subject) {
            found = true;
            diags.push(Diagnostic::error(
                Some(format!("{issue_path}: subject")),
                format!("`{expr}`: {WHY}"),
            ));
        }
        for (origin, text) in sources {
            for (n, line) in text.lines().enumerate() {
                for (column, expr) in filtered_fields(line) {
                    found = true;
                    diags.push(Diagnostic::error(
                        Some(format!("{origin}:{}:{column}", n + 1)),
                        format!("`{expr}`: {WHY}"),
                    ));
                }
            }
        }
        if !found {
            diags.push(Diagnostic::error(
                Some(issue_path),
                format!("a subscriber field is used with a filter: {WHY}"),
            ));
        }
    }

    /// Renders and compiles `issue` once. Content and template findings go
    /// to `diags`; only what stops the render is an `Err`.
    pub fn render(
        &self,
        issue: &Issue,
        config: &Config,
        fields: &FieldSet,
        diags: &mut Diagnostics,
    ) -> Result<RenderedIssue, RenderError> {
        let web_url = format!(
            "{}/issues/{}",
            config.newsletter.base_url.trim_end_matches('/'),
            issue.slug
        );
        let ctx = TemplateContext::new(issue, &config.newsletter, fields, &web_url);
        let context = Context::from_serialize(&ctx).map_err(|e| RenderError::Template {
            location: "template context".into(),
            message: e.to_string(),
            detail: String::new(),
        })?;

        let mjml = self.render_budgeted(HTML_TEMPLATE, &context)?;
        let html = compile_mjml(&mjml, diags)?;
        let text = self.render_budgeted(TEXT_TEMPLATE, &context)?;
        let subject = render_subject(&issue.meta.subject, &context, &issue.path)?;

        let (html, bad_html) = Personalisable::parse(html);
        let (text, bad_text) = Personalisable::parse(text);
        let (subject, bad_subject) = Personalisable::parse(subject);
        if !(bad_html.is_empty() && bad_text.is_empty() && bad_subject.is_empty()) {
            self.report_filtered_fields(issue, diags);
        }
        if subject.source().trim().is_empty() {
            diags.push(Diagnostic::error(
                Some(issue.path.display().to_string()),
                "the subject is empty".into(),
            ));
        }
        // Checked with its tokens in place: the unsubscribe link is found
        // by its token, and values add only a few bytes.
        checks::check_html(html.source(), "rendered HTML", &content_urls(issue), diags);
        if !text.uses("unsubscribe_url") {
            diags.push(Diagnostic::warning(
                Some("plain-text part".into()),
                "has no unsubscribe link: add {{ subscriber.unsubscribe_url }} to email.txt".into(),
            ));
        }
        Ok(RenderedIssue {
            slug: issue.slug.clone(),
            title: issue.meta.title.clone(),
            subject,
            preheader: issue.meta.preheader.clone(),
            mjml,
            html,
            text,
            web_url,
        })
    }
}

/// URLs in the issue's own content: checked (with their line) by the
/// content stage.
fn content_urls(issue: &Issue) -> HashSet<String> {
    let mut urls = HashSet::new();
    for block in issue
        .intro
        .iter()
        .chain(issue.sections.iter().flat_map(|s| s.blocks.iter()))
    {
        match block {
            Block::Html { html, .. } | Block::Quote { html, .. } => {
                urls.extend(checks::urls(html));
            }
            Block::Image { src, .. } => {
                urls.insert(src.clone());
            }
        }
    }
    urls
}

/// `subscriber.FIELD | FILTER` with a filter other than `default`, on one
/// line: (column, the expression as written).
fn filtered_fields(line: &str) -> Vec<(usize, String)> {
    const PREFIX: &str = "subscriber.";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = line[at..].find(PREFIX) {
        let start = at + found;
        let rest = &line[start + PREFIX.len()..];
        let field_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let after = rest[field_len..].trim_start();
        at = start + PREFIX.len() + field_len;
        let Some(filter_part) = after.strip_prefix('|') else {
            continue;
        };
        let filter_part = filter_part.trim_start();
        let filter_len = filter_part
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(filter_part.len());
        let filter = &filter_part[..filter_len];
        if field_len > 0 && !filter.is_empty() && filter != "default" {
            let column = line[..start].chars().count() + 1;
            out.push((
                column,
                format!("subscriber.{} | {filter}", &rest[..field_len]),
            ));
        }
    }
    out
}

/// `name` -> path of every template file under `dir`./// `name` -> path of every template file under `dir`.
fn template_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, RenderError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| RenderError::ReadTemplates {
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("mjml" | "txt" | "html")
            ) {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `default` that also works on subscriber fields: their value is only
/// known per recipient, so the fallback is carried inside the token.
fn personal_default(val: Value, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let fallback = kwargs.must_get::<Value>("value")?;
    if let Some(field) = val.as_str().and_then(bare_token_field) {
        let text = match fallback.as_str() {
            Some(s) => s.to_string(),
            None => fallback.to_string(),
        };
        if text.contains("]]") {
            return Err(tera::Error::message(
                "a subscriber field's default cannot contain `]]`",
            ));
        }
        return Ok(Value::from(personalise::token_with_default(field, &text)));
    }
    let boolean = kwargs.get::<bool>("boolean")?.unwrap_or_default();
    let missing = if boolean {
        !val.is_truthy()
    } else {
        val.is_undefined()
    };
    Ok(if missing { fallback } else { val })
}

/// `{{ text | wrap }}` or `wrap(width=60)`: word-wraps plain text.
fn wrap_filter(val: &str, kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let width = kwargs.get::<usize>("width")?.unwrap_or(plain::WIDTH);
    Ok(plain::wrap(val, width.max(10)))
}

fn render_subject(subject: &str, context: &Context, path: &Path) -> Result<String, RenderError> {
    if !subject.contains("{{") && !subject.contains("{%") {
        return Ok(subject.to_string());
    }
    let mut tera = Tera::new();
    tera.autoescape_on(Vec::<&str>::new());
    tera.register_filter("default", personal_default);
    let name = format!("{} (subject)", path.display());
    let origins = HashMap::from([(name.clone(), (name.clone(), subject.to_string()))]);
    tera.add_raw_template(&name, subject)
        .map_err(|e| template_error(&e, &origins))?;
    tera.render(&name, context)
        .map_err(|e| template_error(&e, &origins))
}

fn compile_mjml(mjml: &str, diags: &mut Diagnostics) -> Result<String, RenderError> {
    let parsed = mrml::parse(mjml).map_err(|e| RenderError::Mjml {
        message: e.to_string(),
    })?;
    for w in &parsed.warnings {
        diags.push(Diagnostic::warning(Some("MJML".into()), format!("{w:?}")));
    }
    let options = mrml::prelude::render::RenderOptions {
        disable_comments: false,
        social_icon_origin: None,
        // The default adds a Google Fonts <link>: a tracking request per
        // open, for fonts the design does not use.
        fonts: HashMap::new(),
    };
    parsed
        .element
        .render(&options)
        .map_err(|e| RenderError::Mjml {
            message: e.to_string(),
        })
}

type Origins = HashMap<String, (String, String)>;

fn template_error(e: &tera::Error, origins: &Origins) -> RenderError {
    use std::error::Error as _;
    match e.kind() {
        tera::ErrorKind::SyntaxError(r) | tera::ErrorKind::RenderingError(r) => {
            let (origin, text) = origins
                .get(r.filename())
                .cloned()
                .unwrap_or_else(|| (r.filename().to_string(), String::new()));
            let origin = origin
                .strip_prefix("built-in template ")
                .map_or(origin.clone(), |n| format!("{n} (built-in template)"));
            let span = r.span();
            let line = span.start_line;
            let source_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
            RenderError::Template {
                location: format!("{origin}:{line}:{}", span.start_col + 1),
                message: r.message().to_string(),
                detail: format!("\n  | {}", source_line.trim_end()),
            }
        }
        _ => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            RenderError::Template {
                location: "templates".into(),
                message,
                detail: String::new(),
            }
        }
    }
}

// ---- The template context: the contract with template authors. ----

#[derive(Serialize)]
struct TemplateContext<'a> {
    newsletter: NewsletterView<'a>,
    issue: IssueView<'a>,
    intro: Vec<BlockView>,
    sections: Vec<SectionView<'a>>,
    /// Placeholder tokens, filled per recipient after the compile.
    subscriber: BTreeMap<String, String>,
    view_url: &'a str,
}

#[derive(Serialize)]
struct NewsletterView<'a> {
    name: &'a str,
    website: &'a str,
    base_url: &'a str,
    logo_url: &'a str,
    logo_alt: &'a str,
    postal_address: &'a str,
    phone: &'a str,
    help_label: &'a str,
    help_url: &'a str,
    join_text: &'a str,
    join_label: &'a str,
    join_url: &'a str,
    quick_links: &'a [Link],
    accent_color: &'a str,
    reply_to: &'a str,
}

#[derive(Serialize)]
struct IssueView<'a> {
    slug: &'a str,
    title: &'a str,
    number: Option<u32>,
    date: Option<&'a str>,
    /// e.g. "November 2026"
    month: String,
    preheader: &'a str,
    authors: &'a [Author],
    related: &'a [Related],
    extra: &'a BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct SectionView<'a> {
    heading: &'a str,
    anchor: &'a str,
    blocks: Vec<BlockView>,
}

/// A block with its plain text made ready for `email.txt`.
#[derive(Serialize)]
struct BlockView {
    kind: &'static str,
    html: String,
    text: String,
    cite: String,
    src: String,
    alt: String,
    title: String,
}

impl BlockView {
    fn new(b: &Block) -> BlockView {
        let empty = String::new;
        match b {
            Block::Html { html, text_html } => BlockView {
                kind: "html",
                html: html.clone(),
                text: plain::html_to_text(text_html),
                cite: empty(),
                src: empty(),
                alt: empty(),
                title: empty(),
            },
            Block::Quote { html, text, cite } => BlockView {
                kind: "quote",
                html: html.clone(),
                text: text.clone(),
                cite: cite.clone(),
                src: empty(),
                alt: empty(),
                title: empty(),
            },
            Block::Image { src, alt, title } => BlockView {
                kind: "image",
                html: empty(),
                text: format!("[{alt}]"),
                cite: empty(),
                src: src.clone(),
                alt: alt.clone(),
                title: title.clone(),
            },
        }
    }
}

impl<'a> TemplateContext<'a> {
    fn new(issue: &'a Issue, n: &'a Newsletter, fields: &FieldSet, web_url: &'a str) -> Self {
        let mut subscriber: BTreeMap<String, String> = fields
            .attributes
            .iter()
            .filter(|a| {
                !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .map(|a| (a.clone(), token(a)))
            .collect();
        for f in STANDARD_FIELDS {
            subscriber.insert(f.to_string(), token(f));
        }
        let month = issue
            .meta
            .date
            .as_deref()
            .and_then(|d| {
                let format = time::macros::format_description!("[year]-[month]-[day]");
                time::Date::parse(d, &format).ok()
            })
            .map(|d| format!("{} {}", d.month(), d.year()))
            .unwrap_or_default();
        TemplateContext {
            newsletter: NewsletterView {
                name: &n.name,
                website: &n.website,
                base_url: &n.base_url,
                logo_url: &n.logo_url,
                logo_alt: if n.logo_alt.is_empty() {
                    &n.name
                } else {
                    &n.logo_alt
                },
                postal_address: &n.postal_address,
                phone: &n.phone,
                help_label: &n.help_label,
                help_url: &n.help_url,
                join_text: &n.join_text,
                join_label: &n.join_label,
                join_url: &n.join_url,
                quick_links: &n.quick_links,
                accent_color: &n.accent_color,
                reply_to: &n.reply_to,
            },
            issue: IssueView {
                slug: &issue.slug,
                title: &issue.meta.title,
                number: issue.meta.issue,
                date: issue.meta.date.as_deref(),
                month,
                preheader: &issue.meta.preheader,
                authors: &issue.meta.authors,
                related: &issue.meta.related,
                extra: &issue.meta.extra,
            },
            intro: issue.intro.iter().map(BlockView::new).collect(),
            sections: issue
                .sections
                .iter()
                .map(|s| SectionView {
                    heading: &s.heading,
                    anchor: &s.anchor,
                    blocks: s.blocks.iter().map(BlockView::new).collect(),
                })
                .collect(),
            subscriber,
            view_url: web_url,
        }
    }
}
