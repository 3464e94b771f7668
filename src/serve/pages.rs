//! The small HTML pages `serve` answers with (and `archive` writes): plain,
//! readable on phones, no JavaScript, no external resources. Written with
//! tera, autoescaped; the newsletter's name is on every page.

use serde::Serialize;
use tera::{Context, Tera};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::issues::IssueInfo;
use crate::config::Newsletter;
use crate::store::journal::SentIssue;

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("message.html", include_str!("templates/message.html")),
    ("index.html", include_str!("templates/index.html")),
    ("feed.xml", include_str!("templates/feed.xml")),
];

const DEFAULT_ACCENT: &str = "#1f6f78";

/// The page templates and the newsletter's identity.
pub struct Pages {
    tera: Tera,
    brand: Brand,
    base_url: String,
}

#[derive(Debug, Clone, Serialize)]
struct Brand {
    name: String,
    website: String,
    website_label: String,
    accent: String,
}

/// A page of a heading, some paragraphs and at most one button.
#[derive(Debug, Clone, Default, Serialize)]
struct Message {
    heading: String,
    paragraphs: Vec<String>,
    form: Option<Form>,
    link: Option<Link>,
}

/// A POST back to the same URL with a hidden `action` field.
#[derive(Debug, Clone, Serialize)]
struct Form {
    intro: String,
    action: &'static str,
    button: String,
    /// The resubscribe form's proof that it came from this page.
    csrf: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Link {
    href: String,
    label: String,
}

/// One line of the list of past issues.
#[derive(Debug, Clone, Serialize)]
struct IndexEntry {
    href: String,
    title: String,
    number: Option<u32>,
    date: String,
}

#[derive(Debug, Clone, Serialize)]
struct FeedEntry {
    title: String,
    url: String,
    published: String,
    summary: String,
}

/// What the list and the feed show of one sent issue.
pub struct Listed<'a> {
    pub sent: &'a SentIssue,
    pub info: &'a IssueInfo,
    /// Where the list links to for this issue.
    pub href: String,
}

impl Pages {
    pub fn new(newsletter: &Newsletter) -> Pages {
        let mut tera = Tera::new();
        tera.autoescape_on([".html", ".xml"]);
        tera.add_raw_templates(TEMPLATES.iter().copied())
            .expect("the built-in page templates parse");
        let accent = if is_hex_colour(&newsletter.accent_color) {
            newsletter.accent_color.clone()
        } else {
            // The colour lands in CSS, where HTML escaping does not help.
            DEFAULT_ACCENT.to_string()
        };
        let website = if newsletter.website.starts_with("https://")
            || newsletter.website.starts_with("http://")
        {
            newsletter.website.clone()
        } else {
            String::new()
        };
        let website_label = website
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        Pages {
            tera,
            brand: Brand {
                name: clean_text(&newsletter.name),
                website,
                website_label,
                accent,
            },
            base_url: newsletter.base_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.brand.name
    }

    fn render(&self, template: &str, robots: &str, extra: impl FnOnce(&mut Context)) -> String {
        let mut ctx = Context::new();
        ctx.insert("brand", &self.brand);
        ctx.insert("robots", robots);
        extra(&mut ctx);
        self.tera
            .render(template, &ctx)
            .expect("the built-in page templates render with their own context")
    }

    fn message(&self, page: Message) -> String {
        self.render("message.html", "noindex", |ctx| ctx.insert("page", &page))
    }

    /// GET /u/<token>: asks before unsubscribing (mail scanners follow
    /// links; only the button's POST changes anything).
    pub fn confirm(&self, issue_title: Option<&str>) -> String {
        let name = self.name();
        let mut paragraphs = vec![format!(
            "Press the button to stop receiving {name} at the address this link was sent to."
        )];
        if let Some(t) = issue_title {
            paragraphs.push(format!("This link came with the issue “{t}”."));
        }
        self.message(Message {
            heading: format!("Unsubscribe from {name}?"),
            paragraphs,
            form: Some(Form {
                intro: String::new(),
                action: "unsubscribe",
                button: "Unsubscribe".into(),
                csrf: None,
            }),
            link: None,
        })
    }

    /// After an unsubscribe (also a repeated one): offers to come back,
    /// with the form's `csrf` field.
    pub fn unsubscribed(&self, csrf: &str) -> String {
        let name = self.name();
        self.message(Message {
            heading: "You are unsubscribed".into(),
            paragraphs: vec![format!("You will not receive {name} any more.")],
            form: Some(Form {
                intro: "Unsubscribed by mistake?".into(),
                action: "resubscribe",
                button: "Subscribe again".into(),
                csrf: Some(csrf.to_string()),
            }),
            link: None,
        })
    }

    pub fn resubscribed(&self) -> String {
        let name = self.name();
        self.message(Message {
            heading: "You are subscribed again".into(),
            paragraphs: vec![format!(
                "Welcome back: you will receive {name} again from the next issue."
            )],
            form: Some(Form {
                intro: "Changed your mind?".into(),
                action: "unsubscribe",
                button: "Unsubscribe".into(),
                csrf: None,
            }),
            link: None,
        })
    }

    /// A resubscribe this page cannot do (the address bounced, or is no
    /// longer on the list).
    pub fn resubscribe_refused(&self) -> String {
        let name = self.name();
        let mut paragraphs = vec![format!(
            "{name} cannot be turned back on for this address from this page."
        )];
        if !self.brand.website.is_empty() {
            paragraphs.push("To receive it again, please sign up on our website.".into());
        }
        self.message(Message {
            heading: "We could not subscribe you again".into(),
            paragraphs,
            form: None,
            link: self.website_link(),
        })
    }

    /// Any defect in a token: the same page, so it tells nothing.
    pub fn invalid_link(&self) -> String {
        self.message(Message {
            heading: "This link does not work".into(),
            paragraphs: vec![
                "The link may be incomplete or changed. Copy the whole link from the email, or use the Unsubscribe link at the bottom of a more recent issue.".into(),
            ],
            form: None,
            link: None,
        })
    }

    pub fn bad_request(&self) -> String {
        self.message(Message {
            heading: "This request was not understood".into(),
            paragraphs: vec![
                "Nothing was changed. Open the link from the email again and use the button on that page.".into(),
            ],
            form: None,
            link: None,
        })
    }

    pub fn unavailable(&self) -> String {
        self.message(Message {
            heading: "Please try again later".into(),
            paragraphs: vec![
                "Something went wrong on our side and your request could not be completed. Please try again in a few minutes.".into(),
            ],
            form: None,
            link: None,
        })
    }

    /// An issue whose page could not be rendered (the error is logged).
    pub fn page_failed(&self, index: &str) -> String {
        self.message(Message {
            heading: "This issue cannot be shown".into(),
            paragraphs: vec![
                "Something in this issue could not be displayed. We have been told; other issues are not affected.".into(),
            ],
            form: None,
            link: Some(Link {
                href: index.into(),
                label: "Past issues".into(),
            }),
        })
    }

    /// A resubscribe that did not come from our page's form.
    pub fn forbidden(&self) -> String {
        self.message(Message {
            heading: "This request was not accepted".into(),
            paragraphs: vec![
                "Nothing was changed. To subscribe again, open the link from the email and use the button on that page.".into(),
            ],
            form: None,
            link: None,
        })
    }

    pub fn too_large(&self) -> String {
        self.message(Message {
            heading: "This request is too large".into(),
            paragraphs: vec!["Nothing was changed.".into()],
            form: None,
            link: None,
        })
    }

    pub fn timed_out(&self) -> String {
        self.message(Message {
            heading: "This took too long".into(),
            paragraphs: vec!["Please try again in a few minutes.".into()],
            form: None,
            link: None,
        })
    }

    /// `index` is where the list of past issues is, from this page.
    pub fn not_found(&self, index: &str) -> String {
        self.message(Message {
            heading: "Page not found".into(),
            paragraphs: vec!["There is no page at this address.".into()],
            form: None,
            link: Some(Link {
                href: index.into(),
                label: "Past issues".into(),
            }),
        })
    }

    /// Where the public copy of an issue sends its Unsubscribe link: that
    /// copy cannot know who is reading, so it explains where the personal
    /// link is.
    pub fn unsubscribe_help(&self, index: &str) -> String {
        let name = self.name();
        self.message(Message {
            heading: "How to unsubscribe".into(),
            paragraphs: vec![
                format!(
                    "Every email from {name} has an Unsubscribe link at the bottom that is personal to you: use the link in your email."
                ),
                "The copy of the newsletter on this site is public, so its link cannot know who you are.".into(),
            ],
            form: None,
            link: Some(Link {
                href: index.into(),
                label: "Past issues".into(),
            }),
        })
    }

    /// The list of past issues, newest first. `feed` is the feed's address
    /// from this page.
    pub fn index(&self, issues: &[Listed<'_>], feed: &str) -> String {
        let entries: Vec<IndexEntry> = issues
            .iter()
            .map(|l| IndexEntry {
                href: l.href.clone(),
                title: clean_text(&l.info.title),
                number: l.info.number,
                date: display_date(l.info.date.as_deref(), l.sent.first_sent_ms),
            })
            .collect();
        self.render("index.html", "index", |ctx| {
            ctx.insert("entries", &entries);
            ctx.insert("feed_href", feed);
        })
    }

    /// An Atom 1.0 feed of the sent issues, with absolute links from
    /// `newsletter.base_url`.
    pub fn feed(&self, issues: &[Listed<'_>]) -> String {
        let base = &self.base_url;
        let entries: Vec<FeedEntry> = issues
            .iter()
            .map(|l| FeedEntry {
                title: clean_text(&l.info.title),
                url: format!("{base}/issues/{}", l.sent.slug),
                published: rfc3339(l.sent.first_sent_ms),
                summary: clean_text(&l.info.preheader),
            })
            .collect();
        let updated = issues
            .iter()
            .map(|l| l.sent.first_sent_ms)
            .max()
            .map_or_else(|| rfc3339(crate::store::journal::now_ms()), rfc3339);
        let mut ctx = Context::new();
        ctx.insert("name", &self.brand.name);
        ctx.insert("base", base);
        ctx.insert("updated", &updated);
        ctx.insert("entries", &entries);
        self.tera
            .render("feed.xml", &ctx)
            .expect("the built-in feed template renders with its own context")
    }

    fn website_link(&self) -> Option<Link> {
        (!self.brand.website.is_empty()).then(|| Link {
            href: self.brand.website.clone(),
            label: self.brand.website_label.clone(),
        })
    }
}

fn is_hex_colour(s: &str) -> bool {
    let Some(hex) = s.strip_prefix('#') else {
        return false;
    };
    matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Text without control characters: XML 1.0 cannot carry most of them
/// at all, and in HTML they are never meant.
fn clean_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// "1 October 2026": the issue's own date when it has one, else the day it
/// was first sent.
fn display_date(front_matter: Option<&str>, first_sent_ms: i64) -> String {
    let long = time::macros::format_description!("[day padding:none] [month repr:long] [year]");
    let iso = time::macros::format_description!("[year]-[month]-[day]");
    if let Some(d) = front_matter.and_then(|d| time::Date::parse(d, iso).ok()) {
        return d.format(long).unwrap_or_default();
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(first_sent_ms) * 1_000_000)
        .map(|t| t.date().format(long).unwrap_or_default())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> Pages {
        let mut n = Newsletter {
            name: "Tom & Jerry <News>".into(),
            website: "https://example.org/".into(),
            ..Newsletter::default()
        };
        n.accent_color = "red; } body { display:none".into();
        Pages::new(&n)
    }

    #[test]
    fn names_are_escaped_and_colours_checked() {
        let html = pages().confirm(Some("<script>x</script>"));
        assert!(html.contains("Tom &amp; Jerry &lt;News&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("--accent: #1f6f78;"), "{html}");
        assert!(html.contains(r#"name="action" value="unsubscribe""#));
        assert!(!html.contains("<script"), "no JavaScript");
    }

    #[test]
    fn feed_escapes_titles_and_drops_control_characters() {
        let p = pages();
        let sent = SentIssue {
            slug: "a-1".into(),
            first_sent_ms: 1_790_000_000_123,
        };
        let info = IssueInfo {
            slug: "a-1".into(),
            title: "Q&A <b>\u{1}".into(),
            number: Some(3),
            date: None,
            preheader: String::new(),
        };
        let xml = p.feed(&[Listed {
            sent: &sent,
            info: &info,
            href: String::new(),
        }]);
        assert!(xml.contains("<title>Q&amp;A &lt;b&gt; </title>"), "{xml}");
        assert!(xml.contains("<published>2026-09-21T"), "{xml}");
        assert!(!xml.contains('\u{1}'));
    }

    #[test]
    fn dates() {
        assert_eq!(display_date(Some("2026-10-01"), 0), "1 October 2026");
        assert_eq!(display_date(None, 0), "1 January 1970");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01Z");
    }
}
