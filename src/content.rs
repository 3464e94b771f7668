//! Content: an issue file (`content/<slug>.md`) is YAML front matter between
//! `---` lines, then CommonMark. This stage parses both and splits the body
//! into what the templates lay out: an intro, `##` sections, pull quotes
//! (blockquotes) and images. It knows nothing of templates or subscribers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pulldown_cmark::{CowStr, Event, HeadingLevel, LinkType, Options, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::html::raw_tags;

/// How deeply lists, quotes, emphasis, links and HTML elements may nest
/// (together). Real issues stay
/// under ten; rendering recurses per level, so a paste gone wrong (1,000
/// levels) must be refused here, before any later stage sees it.
pub const MAX_NESTING: usize = 100;

/// Raw HTML elements refused in an issue (and dropped by the sanitiser).
const FORBIDDEN_ELEMENTS: &[&str] = &[
    "script", "iframe", "frame", "frameset", "object", "embed", "applet", "form", "base", "meta",
    "link",
];

/// HTML elements that have no end tag.
const VOID_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// A parsed issue, ready to render.
#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub slug: String,
    #[serde(skip)]
    pub path: PathBuf,
    pub meta: FrontMatter,
    /// What comes before the first `##` heading.
    pub intro: Vec<Block>,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Author {
    pub name: String,
    #[serde(default)]
    pub bio: String,
    #[serde(default)]
    pub image: String,
    /// Alt text for the photo; the author's name when absent.
    #[serde(default)]
    pub image_alt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Related {
    pub title: String,
    pub url: String,
    #[serde(default)]
    pub summary: String,
}

/// Front matter after validation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrontMatter {
    pub title: String,
    pub issue: Option<u32>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    /// Defaults to the title; may use `{{ subscriber.* }}`.
    pub subject: String,
    pub preheader: String,
    pub authors: Vec<Author>,
    pub related: Vec<Related>,
    /// Every other key, handed to templates as `extra`.
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Front matter as written; checked into `FrontMatter`.
#[derive(Debug, Deserialize)]
struct RawFrontMatter {
    title: Option<String>,
    issue: Option<u32>,
    date: Option<serde_yaml_ng::Value>,
    subject: Option<String>,
    preheader: Option<String>,
    #[serde(default)]
    authors: Vec<Author>,
    #[serde(default)]
    related: Vec<Related>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

const KNOWN_KEYS: &[&str] = &[
    "title",
    "issue",
    "date",
    "subject",
    "preheader",
    "authors",
    "related",
];

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub heading: String,
    /// A URL-safe id derived from the heading.
    pub anchor: String,
    pub blocks: Vec<Block>,
}

/// One piece of body content, as the templates see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Block {
    /// Paragraphs, lists, tables, code, sub-headings: HTML to place as is.
    /// `text_html` is the same with autolinks flattened, for the plain part.
    Html { html: String, text_html: String },
    /// A blockquote: the issue's pull quote. `cite` from a last line
    /// starting with an em dash.
    Quote {
        html: String,
        text: String,
        cite: String,
    },
    /// A paragraph that holds only an image.
    Image {
        src: String,
        alt: String,
        title: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl Issue {
    pub fn from_file(path: &Path, diags: &mut Diagnostics) -> Result<Issue, ContentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContentError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let slug = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("issue")
            .to_string();
        let mut issue = Issue::parse(&text, &path.display().to_string(), &slug, diags)?;
        issue.path = path.to_path_buf();
        Ok(issue)
    }

    /// Parses issue text; `origin` names it in errors, `slug` is its id.
    pub fn parse(
        text: &str,
        origin: &str,
        slug: &str,
        diags: &mut Diagnostics,
    ) -> Result<Issue, ContentError> {
        let slug = slugify(slug);
        let err = |line: usize, column: usize, message: String| ContentError::Invalid {
            path: origin.to_string(),
            line,
            column,
            message,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let split = split_front_matter(text).map_err(|(line, m)| err(line, 1, m))?;
        let meta = parse_front_matter(split.front, split.front_line, origin, diags)?;
        check_nesting(split.body, split.body_line).map_err(|(line, m)| err(line, 1, m))?;
        let (intro, sections) = parse_body(split.body, split.body_line, origin, diags);
        if intro.is_empty() && sections.is_empty() {
            diags.push(Diagnostic::warning(
                Some(format!("{origin}:{}", split.body_line)),
                "the issue has no body text".to_string(),
            ));
        }
        Ok(Issue {
            slug,
            path: PathBuf::from(origin),
            meta,
            intro,
            sections,
        })
    }
}

struct Split<'a> {
    front: &'a str,
    /// 1-based line of the first front matter line.
    front_line: usize,
    body: &'a str,
    body_line: usize,
}

/// Splits `---\nYAML\n---\nbody`. Errors carry a 1-based line.
fn split_front_matter(text: &str) -> Result<Split<'_>, (usize, String)> {
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "---" {
        return Err((
            1,
            "the file must start with front matter: a line `---`, then `title: …`, then a closing `---`".into(),
        ));
    }
    let front_start = first.len();
    let mut offset = front_start;
    let mut line_no = 1;
    for line in lines {
        line_no += 1;
        if line.trim_end() == "---" {
            return Ok(Split {
                front: &text[front_start..offset],
                front_line: 2,
                body: &text[offset + line.len()..],
                body_line: line_no + 1,
            });
        }
        offset += line.len();
    }
    Err((
        1,
        "front matter is not closed: add a line `---` after the last front matter key".into(),
    ))
}

fn parse_front_matter(
    front: &str,
    first_line: usize,
    origin: &str,
    diags: &mut Diagnostics,
) -> Result<FrontMatter, ContentError> {
    let err = |line: usize, column: usize, message: String| ContentError::Invalid {
        path: origin.to_string(),
        line,
        column,
        message,
    };
    // An empty block is valid YAML `null`; treat it as an empty mapping so
    // that the error is the useful "missing title".
    let raw: RawFrontMatter = if front.trim().is_empty() {
        serde_yaml_ng::from_str("{}").expect("empty mapping")
    } else {
        serde_yaml_ng::from_str(front).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() + first_line - 1, l.column()))
                .unwrap_or((first_line, 1));
            // libyaml's marks (" at line N column M") count from the start
            // of the YAML, not the file; the location is said up front.
            let msg = strip_marks(&e.to_string());
            err(line, column, format!("front matter: {msg}"))
        })?
    };
    let key_line = |key: &str| {
        front
            .lines()
            .position(|l| l.starts_with(&format!("{key}:")))
            .map_or(first_line, |i| first_line + i)
    };
    for key in raw.extra.keys() {
        if let Some(known) = KNOWN_KEYS
            .iter()
            .find(|k| strsim::levenshtein(k, key) <= 2 && key.len() > 2)
        {
            diags.push(Diagnostic::warning(
                Some(format!("{origin}:{}", key_line(key))),
                format!("front matter key `{key}` is not known: did you mean `{known}`? (other keys go to templates as `extra.{key}`)"),
            ));
        }
    }
    let title = match raw.title {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        Some(_) => {
            return Err(err(
                key_line("title"),
                1,
                "front matter: `title` is empty: give the issue a title".into(),
            ));
        }
        None => {
            return Err(err(
                first_line,
                1,
                "front matter: missing required field `title`: add a line `title: Your issue title`"
                    .into(),
            ));
        }
    };
    let date = match raw.date {
        None | Some(serde_yaml_ng::Value::Null) => None,
        Some(serde_yaml_ng::Value::String(s)) if valid_date(&s) => Some(s),
        Some(other) => {
            let shown = serde_yaml_ng::to_string(&other).unwrap_or_default();
            return Err(err(
                key_line("date"),
                1,
                format!(
                    "front matter: `date` {:?} is not a date: write it as YYYY-MM-DD, e.g. 2026-11-01",
                    shown.trim()
                ),
            ));
        }
    };
    for (i, a) in raw.authors.iter().enumerate() {
        if a.name.trim().is_empty() {
            return Err(err(
                key_line("authors"),
                1,
                format!("front matter: authors[{i}] has no `name`"),
            ));
        }
    }
    for (i, r) in raw.related.iter().enumerate() {
        if !(r.url.starts_with("https://") || r.url.starts_with("http://")) {
            return Err(err(
                key_line("related"),
                1,
                format!(
                    "front matter: related[{i}].url `{}` must be an absolute http(s) URL",
                    r.url
                ),
            ));
        }
    }
    let subject = raw
        .subject
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| title.clone());
    // A line break would end the Subject header (or fold into another) and
    // breaks every page title: refused, not repaired.
    // The subject is a template for subscriber fields only: tags (loops)
    // would run in every render.
    if subject.contains("{%") {
        return Err(err(
            key_line("subject"),
            1,
            "front matter: `subject` may use subscriber fields ({{ subscriber.first_name }}) but no {% … %} tags".into(),
        ));
    }
    for (key, value) in [("title", &title), ("subject", &subject)] {
        if value.contains(['\r', '\n']) {
            return Err(err(
                key_line(key),
                1,
                format!("front matter: `{key}` contains a line break: write it on one line"),
            ));
        }
    }
    let preheader = raw.preheader.unwrap_or_default().trim().to_string();
    if preheader.is_empty() {
        diags.push(Diagnostic::warning(
            Some(format!("{origin}:{first_line}")),
            "no `preheader`: inboxes will show the first words of the email instead".into(),
        ));
    }
    Ok(FrontMatter {
        title,
        issue: raw.issue,
        date,
        subject,
        preheader,
        authors: raw.authors,
        related: raw.related,
        extra: raw.extra,
    })
}

/// Removes every " at line N column M" from a YAML error message.
fn strip_marks(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let after = &after[digits..];
        let after = match after.strip_prefix(" column ") {
            Some(a) => &a[a.bytes().take_while(u8::is_ascii_digit).count()..],
            None => after,
        };
        rest = after;
    }
    out.push_str(rest);
    out
}

fn valid_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.trim(), &format).is_ok()
}

pub fn slugify(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Refuses a body whose lists, quotes, inline markup and raw HTML elements
/// nest deeper
/// than [`MAX_NESTING`], with the line where it goes past. Iterative:
/// a body of any depth is read without recursion.
fn check_nesting(body: &str, first_line: usize) -> Result<(), (usize, String)> {
    let line_of = |offset: usize| first_line + body[..offset].matches('\n').count();
    let too_deep = |line: usize| {
        Err((
            line,
            format!(
                "lists, quotes, emphasis, links and HTML elements are nested {} levels deep here; at most {MAX_NESTING} are allowed (a paste gone wrong?)",
                MAX_NESTING + 1
            ),
        ))
    };
    let mut blocks = 0usize;
    let mut elements = 0usize;
    for (event, range) in Parser::new_ext(body, markdown_options()).into_offset_iter() {
        match &event {
            // Containers and inline markup nest without bound; items,
            // paragraphs, headings and table parts come one per container.
            Event::Start(
                Tag::List(_)
                | Tag::BlockQuote(_)
                | Tag::FootnoteDefinition(_)
                | Tag::Emphasis
                | Tag::Strong
                | Tag::Strikethrough
                | Tag::Superscript
                | Tag::Subscript
                | Tag::Link { .. }
                | Tag::Image { .. },
            ) => {
                blocks += 1;
            }
            Event::End(
                TagEnd::List(_)
                | TagEnd::BlockQuote(_)
                | TagEnd::FootnoteDefinition
                | TagEnd::Emphasis
                | TagEnd::Strong
                | TagEnd::Strikethrough
                | TagEnd::Superscript
                | TagEnd::Subscript
                | TagEnd::Link
                | TagEnd::Image,
            ) => {
                blocks = blocks.saturating_sub(1);
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                for tag in raw_tags(html) {
                    if tag.closing {
                        elements = elements.saturating_sub(1);
                    } else if !tag.self_closing && !VOID_ELEMENTS.contains(&tag.name.as_str()) {
                        elements += 1;
                        if blocks + elements > MAX_NESTING {
                            return too_deep(
                                line_of(range.start) + html[..tag.offset].matches('\n').count(),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        if blocks + elements > MAX_NESTING {
            return too_deep(line_of(range.start));
        }
    }
    Ok(())
}

/// The same checks as for Markdown links and images, on the tags of raw
/// HTML (`html` starts on `line`), and no scripts, event handlers or frames.
fn check_raw_html(html: &str, line: usize, origin: &str, diags: &mut Diagnostics) {
    for tag in raw_tags(html).into_iter().filter(|t| !t.closing) {
        let at = Some(format!(
            "{origin}:{}",
            line + html[..tag.offset].matches('\n').count()
        ));
        let name = tag.name.as_str();
        let attr = |k: &str| {
            tag.attrs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_string())
        };
        if FORBIDDEN_ELEMENTS.contains(&name) {
            diags.push(Diagnostic::error(
                at.clone(),
                format!("HTML element <{name}> is not allowed: scripts, frames, forms and embedded objects do not work in email and would run in the web archive; remove it"),
            ));
        }
        for (k, _) in tag.attrs.iter().filter(|(k, _)| k.starts_with("on")) {
            diags.push(Diagnostic::error(
                at.clone(),
                format!("HTML attribute `{k}` on <{name}> is not allowed: event handlers are scripts; remove it"),
            ));
        }
        if name == "img" {
            let src = attr("src").unwrap_or_default();
            if attr("alt").is_none_or(|a| a.is_empty()) {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("image `{src}` has no alt text: add alt=\"what the image shows\""),
                ));
            }
            if !(src.starts_with("https://") || src.starts_with("http://")) {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("image `{src}` must be an absolute http(s) URL: mail clients cannot load relative paths"),
                ));
            }
            continue;
        }
        for url in [attr("href"), attr("src")].into_iter().flatten() {
            if !link_allowed(&url) {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("link `{url}` is neither http(s), mailto nor tel: emails need absolute links, e.g. https://example.org/page"),
                ));
            }
        }
    }
}

/// Raw HTML as it may reach an email and the public pages: an allow-list
/// of elements and attributes (no scripts, event handlers, frames or
/// forms), URLs http(s), mailto and tel, or `#fragment`.
fn sanitise(html: &str) -> String {
    let mut b = ammonia::Builder::default();
    b.url_schemes(["http", "https", "mailto", "tel"].into())
        .url_relative(ammonia::UrlRelative::Custom(Box::new(fragment_only)))
        .link_rel(None)
        .add_generic_attributes(["id", "class", "style", "align"]);
    b.clean(html).to_string()
}

fn fragment_only(url: &str) -> Option<std::borrow::Cow<'_, str>> {
    url.starts_with('#')
        .then_some(std::borrow::Cow::Borrowed(url))
}

/// Whether a block must go through [`sanitise`]: it has raw HTML, or a
/// link or image the checks refuse (a `javascript:` link must not reach a
/// page even when nobody ran `check`).
fn needs_sanitising(events: &[Event]) -> bool {
    events.iter().any(|e| match e {
        Event::Html(_) | Event::InlineHtml(_) => true,
        Event::Start(Tag::Link {
            dest_url,
            link_type,
            ..
        }) => *link_type != LinkType::Email && !link_allowed(dest_url),
        Event::Start(Tag::Image { dest_url, .. }) => {
            !(dest_url.starts_with("https://") || dest_url.starts_with("http://"))
        }
        _ => false,
    })
}

fn markdown_options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_SMART_PUNCTUATION
}

/// Splits the body into intro blocks and sections, checking links and
/// images as it goes (with the line each is on).
fn parse_body(
    body: &str,
    first_line: usize,
    origin: &str,
    diags: &mut Diagnostics,
) -> (Vec<Block>, Vec<Section>) {
    let line_of = |offset: usize| first_line + body[..offset].matches('\n').count();
    let mut intro = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    let mut run: Vec<Event> = Vec::new();
    let events: Vec<(Event, std::ops::Range<usize>)> = Parser::new_ext(body, markdown_options())
        .into_offset_iter()
        .collect();

    // Checks on every link and image, wherever they are.
    for (i, (event, range)) in events.iter().enumerate() {
        match event {
            Event::Start(Tag::Link {
                dest_url,
                link_type,
                ..
            }) if !link_allowed(dest_url) && *link_type != LinkType::Email => {
                diags.push(Diagnostic::error(
                    Some(format!("{origin}:{}", line_of(range.start))),
                    format!(
                        "link `{dest_url}` is neither http(s), mailto nor tel: emails need absolute links, e.g. https://example.org/page"
                    ),
                ));
            }
            Event::Start(Tag::Image { dest_url, .. }) => {
                let alt = image_alt(&events[i + 1..]);
                if alt.trim().is_empty() {
                    diags.push(Diagnostic::error(
                        Some(format!("{origin}:{}", line_of(range.start))),
                        format!(
                            "image `{dest_url}` has no alt text: write ![what the image shows]({dest_url})"
                        ),
                    ));
                }
                if !(dest_url.starts_with("https://") || dest_url.starts_with("http://")) {
                    diags.push(Diagnostic::error(
                        Some(format!("{origin}:{}", line_of(range.start))),
                        format!("image `{dest_url}` must be an absolute http(s) URL: mail clients cannot load relative paths"),
                    ));
                }
            }
            Event::InlineHtml(html) => check_raw_html(html, line_of(range.start), origin, diags),
            Event::Start(Tag::HtmlBlock) => {
                // A block's HTML comes a line at a time: checked whole, so
                // a tag spread over lines is seen.
                let html: String = events[i + 1..]
                    .iter()
                    .map_while(|(e, _)| match e {
                        Event::Html(h) => Some(h.as_ref()),
                        _ => None,
                    })
                    .collect();
                check_raw_html(&html, line_of(range.start), origin, diags);
            }
            _ => {}
        }
    }

    let mut depth = 0usize;
    let mut i = 0;
    while i < events.len() {
        let (event, range) = &events[i];
        if depth > 0 {
            depth = track_depth(depth, event);
            run.push(event.clone());
            i += 1;
            continue;
        }
        match event {
            Event::Start(Tag::Heading { level, .. })
                if matches!(level, HeadingLevel::H1 | HeadingLevel::H2) =>
            {
                if *level == HeadingLevel::H1 {
                    diags.push(Diagnostic::warning(
                        Some(format!("{origin}:{}", line_of(range.start))),
                        "`#` heading in the body: the title comes from front matter; `##` starts a section".into(),
                    ));
                }
                flush(&mut run, &mut intro, &mut sections);
                let end = matching_end(&events, i);
                let heading = inline_text(&events[i + 1..end]);
                sections.push(Section {
                    anchor: slugify(&heading),
                    heading,
                    blocks: Vec::new(),
                });
                i = end + 1;
                continue;
            }
            Event::Start(Tag::BlockQuote(_)) => {
                flush(&mut run, &mut intro, &mut sections);
                let end = matching_end(&events, i);
                push_block(&mut intro, &mut sections, quote_block(&events[i + 1..end]));
                i = end + 1;
                continue;
            }
            Event::Start(Tag::Paragraph) => {
                let end = matching_end(&events, i);
                if let Some(img) = lone_image(&events[i + 1..end]) {
                    flush(&mut run, &mut intro, &mut sections);
                    push_block(&mut intro, &mut sections, img);
                    i = end + 1;
                    continue;
                }
                run.push(event.clone());
            }
            _ => run.push(event.clone()),
        }
        depth = track_depth(depth, event);
        i += 1;
    }
    flush(&mut run, &mut intro, &mut sections);
    (intro, sections)
}

fn link_allowed(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["https://", "http://", "mailto:", "tel:"]
        .iter()
        .any(|p| lower.starts_with(p))
}

fn track_depth(depth: usize, event: &Event) -> usize {
    match event {
        Event::Start(_) => depth + 1,
        Event::End(_) => depth.saturating_sub(1),
        _ => depth,
    }
}

fn matching_end(events: &[(Event, std::ops::Range<usize>)], start: usize) -> usize {
    let mut depth = 0;
    for (j, (e, _)) in events.iter().enumerate().skip(start) {
        match e {
            Event::Start(_) => depth += 1,
            Event::End(_) => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    events.len() - 1
}

fn inline_text(events: &[(Event, std::ops::Range<usize>)]) -> String {
    let mut s = String::new();
    for (e, _) in events {
        match e {
            Event::Text(t) | Event::Code(t) => s.push_str(t),
            Event::SoftBreak | Event::HardBreak => s.push(' '),
            _ => {}
        }
    }
    s.trim().to_string()
}

fn image_alt(after_start: &[(Event, std::ops::Range<usize>)]) -> String {
    let mut alt = String::new();
    for (e, _) in after_start {
        match e {
            Event::End(TagEnd::Image) => break,
            Event::Text(t) | Event::Code(t) => alt.push_str(t),
            _ => {}
        }
    }
    alt
}

fn lone_image(inner: &[(Event, std::ops::Range<usize>)]) -> Option<Block> {
    let first = inner.first()?;
    let Event::Start(Tag::Image {
        dest_url, title, ..
    }) = &first.0
    else {
        return None;
    };
    let end = inner
        .iter()
        .position(|(e, _)| matches!(e, Event::End(TagEnd::Image)))?;
    if inner[end + 1..].iter().any(|(e, _)| {
        !matches!(e, Event::SoftBreak) && !matches!(e, Event::Text(t) if t.trim().is_empty())
    }) {
        return None;
    }
    Some(Block::Image {
        src: dest_url.to_string(),
        alt: image_alt(&inner[1..]).trim().to_string(),
        title: title.to_string(),
    })
}

fn quote_block(inner: &[(Event, std::ops::Range<usize>)]) -> Block {
    let events: Vec<Event> = inner.iter().map(|(e, _)| e.clone()).collect();
    // A last paragraph starting with an em dash (or `--`, which smart
    // punctuation turns into an en dash) is the attribution.
    let paragraphs: Vec<(usize, usize)> = paragraph_ranges(&events);
    let mut cite = String::new();
    let mut body_events = events.clone();
    if paragraphs.len() > 1 {
        let (s, e) = *paragraphs.last().unwrap();
        let text: String = events[s..=e]
            .iter()
            .filter_map(|ev| match ev {
                Event::Text(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        let t = text.trim_start();
        if let Some(rest) = t
            .strip_prefix('—')
            .or_else(|| t.strip_prefix('–'))
            .or_else(|| t.strip_prefix("--"))
        {
            cite = rest.trim().to_string();
            body_events.truncate(s);
        }
    }
    let mut html = to_html(&body_events);
    if needs_sanitising(&body_events) {
        html = sanitise(&html);
    }
    let text = inline_text(
        &body_events
            .iter()
            .map(|e| (e.clone(), 0..0))
            .collect::<Vec<_>>(),
    );
    Block::Quote { html, text, cite }
}

fn paragraph_ranges(events: &[Event]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Start(Tag::Paragraph) => start = Some(i),
            Event::End(TagEnd::Paragraph) => {
                if let Some(s) = start.take() {
                    out.push((s, i));
                }
            }
            _ => {}
        }
    }
    out
}

fn push_block(intro: &mut Vec<Block>, sections: &mut [Section], block: Block) {
    match sections.last_mut() {
        Some(s) => s.blocks.push(block),
        None => intro.push(block),
    }
}

fn flush(run: &mut Vec<Event>, intro: &mut Vec<Block>, sections: &mut [Section]) {
    if run.is_empty() {
        return;
    }
    let events = std::mem::take(run);
    let mut html = to_html(&events);
    if html.trim().is_empty() {
        return;
    }
    let mut text_html = to_html(&flatten_autolinks(&events));
    if needs_sanitising(&events) {
        html = sanitise(&html);
        text_html = sanitise(&text_html);
    }
    push_block(intro, sections, Block::Html { html, text_html });
}

fn to_html(events: &[Event]) -> String {
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events.iter().cloned());
    html
}

/// Autolinks (`<https://…>`) show their URL as their text already; in the
/// plain part they would otherwise read "https://x (https://x)".
fn flatten_autolinks<'a>(events: &[Event<'a>]) -> Vec<Event<'a>> {
    let mut out = Vec::with_capacity(events.len());
    let mut in_autolink = 0;
    for e in events {
        match e {
            Event::Start(Tag::Link {
                link_type: LinkType::Autolink | LinkType::Email,
                ..
            }) => in_autolink += 1,
            Event::End(TagEnd::Link) if in_autolink > 0 => in_autolink -= 1,
            Event::Text(t) if in_autolink > 0 => out.push(Event::Text(CowStr::from(t.to_string()))),
            other => out.push(other.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Result<Issue, ContentError>, Diagnostics) {
        let mut d = Diagnostics::default();
        let r = Issue::parse(text, "content/t.md", "t", &mut d);
        (r, d)
    }

    fn err(text: &str) -> String {
        parse(text).0.unwrap_err().to_string()
    }

    #[test]
    fn front_matter_split_cases() {
        assert_eq!(
            err("title: x\n"),
            "content/t.md:1:1: the file must start with front matter: a line `---`, then `title: …`, then a closing `---`"
        );
        assert_eq!(
            err("---\ntitle: x\nbody"),
            "content/t.md:1:1: front matter is not closed: add a line `---` after the last front matter key"
        );
        // No trailing newline, `---` inside the body, CRLF line ends.
        let (issue, _) = parse("---\ntitle: A\n---\nIntro\n\n---\n\nmore");
        assert_eq!(issue.unwrap().meta.title, "A");
        let (issue, _) = parse("---\r\ntitle: A\r\n---\r\nIntro\r\n");
        assert_eq!(issue.unwrap().meta.title, "A");
        let (issue, _) = parse("---\ntitle: A\n---");
        assert!(issue.unwrap().intro.is_empty());
    }

    #[test]
    fn missing_title_names_file_line_and_field() {
        assert_eq!(
            err("---\nissue: 3\n---\nbody\n"),
            "content/t.md:2:1: front matter: missing required field `title`: add a line `title: Your issue title`"
        );
        assert_eq!(
            err("---\n---\nbody\n"),
            "content/t.md:2:1: front matter: missing required field `title`: add a line `title: Your issue title`"
        );
    }

    #[test]
    fn bad_yaml_names_line() {
        assert_eq!(
            err("---\ntitle: A\nsubject: \"unclosed\n---\nbody\n"),
            "content/t.md:4:1: front matter: found unexpected end of stream, while scanning a quoted scalar"
        );
        assert_eq!(
            err("---\ntitle: A\nissue: seventeen\n---\nbody\n"),
            "content/t.md:3:8: front matter: issue: invalid type: string \"seventeen\", expected u32"
        );
    }

    #[test]
    fn bad_date() {
        assert_eq!(
            err("---\ntitle: A\ndate: 1 Nov 2026\n---\nx\n"),
            "content/t.md:3:1: front matter: `date` \"1 Nov 2026\" is not a date: write it as YYYY-MM-DD, e.g. 2026-11-01"
        );
    }

    #[test]
    fn typo_key_warns_and_extra_is_kept() {
        let (issue, d) = parse("---\ntitle: A\npreheadr: x\ntheme: dark\n---\nx\n");
        let issue = issue.unwrap();
        assert_eq!(issue.meta.extra["theme"], "dark");
        let text = d.to_string();
        assert!(
            text.contains("content/t.md:3: warning: front matter key `preheadr` is not known: did you mean `preheader`?"),
            "{text}"
        );
    }

    #[test]
    fn sections_quotes_images() {
        let body = "---\ntitle: T\npreheader: p\n---\nHello *there*.\n\n## One\n\nPara <https://x.org>.\n\n> Trust is all.\n>\n> — A. Person\n\nAfter.\n\n![A tree](https://x.org/t.png)\n\n## Two\n\n- a\n- b\n";
        let (issue, d) = parse(body);
        let issue = issue.unwrap();
        assert!(d.is_empty(), "{d}");
        assert_eq!(issue.intro.len(), 1);
        assert_eq!(issue.sections.len(), 2);
        assert_eq!(issue.sections[0].heading, "One");
        let blocks = &issue.sections[0].blocks;
        assert_eq!(blocks.len(), 4, "{blocks:?}");
        match &blocks[0] {
            Block::Html { html, text_html } => {
                assert!(html.contains("<a href=\"https://x.org\">https://x.org</a>"));
                assert!(!text_html.contains("<a "));
            }
            b => panic!("{b:?}"),
        }
        assert_eq!(
            blocks[1],
            Block::Quote {
                html: "<p>Trust is all.</p>\n".into(),
                text: "Trust is all.".into(),
                cite: "A. Person".into()
            }
        );
        assert_eq!(
            blocks[3],
            Block::Image {
                src: "https://x.org/t.png".into(),
                alt: "A tree".into(),
                title: String::new()
            }
        );
    }

    #[test]
    fn link_and_image_lints_have_lines() {
        let (_, d) = parse(
            "---\ntitle: T\npreheader: p\n---\nSee [here](page.html).\n\n![](https://x.org/a.png)\n\n[ok](mailto:a@b.org) [call](tel:+1555)\n",
        );
        let text = d.to_string();
        assert!(
            text.contains(
                "content/t.md:5: error: link `page.html` is neither http(s), mailto nor tel"
            ),
            "{text}"
        );
        assert!(
            text.contains("content/t.md:7: error: image `https://x.org/a.png` has no alt text"),
            "{text}"
        );
        assert_eq!(d.errors().count(), 2, "{text}");
    }

    #[test]
    fn deep_nesting_is_refused_with_file_and_line() {
        let mut list = String::from("---\ntitle: T\npreheader: p\n---\nIntro.\n\n");
        for i in 0..150 {
            list.push_str(&"  ".repeat(i));
            list.push_str("- x\n");
        }
        assert_eq!(
            err(&list),
            "content/t.md:107:1: lists, quotes, emphasis, links and HTML elements are nested 101 levels deep here; at most 100 are allowed (a paste gone wrong?)"
        );
        let quotes = format!("---\ntitle: T\n---\n{}hi\n", "> ".repeat(5000));
        assert_eq!(
            err(&quotes),
            "content/t.md:4:1: lists, quotes, emphasis, links and HTML elements are nested 101 levels deep here; at most 100 are allowed (a paste gone wrong?)"
        );
        let html = format!("---\ntitle: T\n---\nx\n\n{}\n", "<div>".repeat(200));
        assert_eq!(
            err(&html),
            "content/t.md:6:1: lists, quotes, emphasis, links and HTML elements are nested 101 levels deep here; at most 100 are allowed (a paste gone wrong?)"
        );
        // Inline nesting counts too: emphasis in emphasis in emphasis…
        let emphasis = format!(
            "---\ntitle: T\n---\nx\n\n{}b{}\n",
            "*a ".repeat(5000),
            "*".repeat(5000)
        );
        assert_eq!(
            err(&emphasis),
            "content/t.md:6:1: lists, quotes, emphasis, links and HTML elements are nested 101 levels deep here; at most 100 are allowed (a paste gone wrong?)"
        );
        // 100 levels are fine, and a wide table is not deep.
        let ok = format!("---\ntitle: T\npreheader: p\n---\n{}hi\n", "> ".repeat(100));
        assert!(parse(&ok).0.is_ok());
        let mut wide = String::from("---\ntitle: T\npreheader: p\n---\n");
        for cell in ["x|", "-|", "x|"] {
            wide.push_str(&format!("|{}\n", cell.repeat(10_000)));
        }
        let (issue, _) = parse(&wide);
        let html = serde_json::to_string(&issue.unwrap().intro).unwrap();
        assert!(html.contains("<table>"), "a table");
    }

    #[test]
    fn line_breaks_in_title_and_subject_are_refused() {
        assert_eq!(
            err("---\ntitle: \"A\\r\\nBcc: x@y.org\"\n---\nx\n"),
            "content/t.md:2:1: front matter: `title` contains a line break: write it on one line"
        );
        assert_eq!(
            err("---\ntitle: A\nsubject: |\n  one\n  two\n---\nx\n"),
            "content/t.md:3:1: front matter: `subject` contains a line break: write it on one line"
        );
        assert_eq!(
            err("---\ntitle: A\nsubject: \"{% for i in range(end=9) %}x{% endfor %}\"\n---\nx\n"),
            "content/t.md:3:1: front matter: `subject` may use subscriber fields ({{ subscriber.first_name }}) but no {% … %} tags"
        );
    }

    #[test]
    fn raw_html_gets_the_same_checks() {
        let (issue, d) = parse(concat!(
            "---\ntitle: T\npreheader: p\n---\n",
            "A <a href=\"javascript:alert(1)\">link</a> and <a href=\"page.html\">another</a>.\n\n",
            "<img src=\"https://x.org/a.png\">\n\n",
            "<p>\n<img src=\"b.png\" alt=\"B\" onerror=\"alert(1)\">\n</p>\n\n",
            "<script>alert(1)</script>\n\n",
            "<iframe src=\"https://evil.example\"></iframe>\n\n",
            "<a href=\"https://ok.example\" title=\"fine\">fine</a>\n",
        ));
        let text = d.to_string();
        let expected = [
            "content/t.md:5: error: link `javascript:alert(1)` is neither http(s), mailto nor tel: emails need absolute links, e.g. https://example.org/page",
            "content/t.md:5: error: link `page.html` is neither http(s), mailto nor tel: emails need absolute links, e.g. https://example.org/page",
            "content/t.md:7: error: image `https://x.org/a.png` has no alt text: add alt=\"what the image shows\"",
            "content/t.md:10: error: image `b.png` must be an absolute http(s) URL: mail clients cannot load relative paths",
            "content/t.md:10: error: HTML attribute `onerror` on <img> is not allowed: event handlers are scripts; remove it",
            "content/t.md:13: error: HTML element <script> is not allowed: scripts, frames, forms and embedded objects do not work in email and would run in the web archive; remove it",
            "content/t.md:15: error: HTML element <iframe> is not allowed: scripts, frames, forms and embedded objects do not work in email and would run in the web archive; remove it",
        ];
        for e in expected {
            assert!(text.contains(e), "missing {e:?} in:\n{text}");
        }
        assert_eq!(d.errors().count(), expected.len(), "{text}");
        // Whatever passes on is sanitised: no script, handler or frame.
        let html = serde_json::to_string(&issue.unwrap().intro).unwrap();
        for bad in ["<script", "onerror", "<iframe", "javascript:"] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(html.contains("https://ok.example"), "{html}");
    }

    #[test]
    fn a_markdown_link_that_is_refused_does_not_reach_the_html_either() {
        let (issue, d) = parse(
            "---\ntitle: T\npreheader: p\n---\n[x](javascript:alert(1)) and [ok](https://ok.example) and ![pic](data:image/png;base64,AAAA)\n",
        );
        assert_eq!(d.errors().count(), 2, "{d}");
        let html = serde_json::to_string(&issue.unwrap().intro).unwrap();
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("data:image"), "{html}");
        assert!(html.contains("https://ok.example"), "{html}");
    }
}
