//! Checks on the compiled HTML: what the content checks cannot see because
//! templates produced it (logo, buttons, footer links).

use std::collections::HashSet;

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::html::{decode_entities, parse_attrs, tag_end};
use crate::render::personalise::{TOKEN_OPEN, token};

/// Gmail clips a message whose HTML is larger than this, and the
/// unsubscribe link at the bottom with it.
pub const GMAIL_CLIP_BYTES: usize = 102 * 1024;

/// Checks one HTML document; `what` says which (e.g. "rendered HTML").
/// Links and images in `checked` were checked already (the content's own,
/// reported with their line) and are not reported again.
pub fn check_html(html: &str, what: &str, checked: &HashSet<String>, diags: &mut Diagnostics) {
    let at = || Some(what.to_string());
    if html.len() > GMAIL_CLIP_BYTES {
        diags.push(Diagnostic::error(
            at(),
            format!(
                "HTML is {} bytes, over Gmail's {} KB clipping limit ({} bytes): Gmail would cut the message and its unsubscribe link; shorten the issue or split it",
                html.len(),
                GMAIL_CLIP_BYTES / 1024,
                GMAIL_CLIP_BYTES
            ),
        ));
    } else if html.len() > GMAIL_CLIP_BYTES * 9 / 10 {
        diags.push(Diagnostic::warning(
            at(),
            format!(
                "HTML is {} bytes, close to Gmail's {} KB clipping limit",
                html.len(),
                GMAIL_CLIP_BYTES / 1024
            ),
        ));
    }
    let ids = attribute_values(html, "id");
    let unsubscribe = token("unsubscribe_url");
    let mut has_unsubscribe = false;
    for tag in tags(html) {
        match tag.name.as_str() {
            "img" => {
                let src = tag.attr("src").unwrap_or_default();
                if checked.contains(&src) {
                    continue;
                }
                match tag.attr("alt") {
                    None => diags.push(Diagnostic::error(
                        at(),
                        format!("image `{src}` has no alt attribute: give it alt text (alt=\"\" only for decoration)"),
                    )),
                    Some(alt) if alt.trim().is_empty() && tag.attr("role") != Some("presentation".into()) => {
                        diags.push(Diagnostic::error(
                            at(),
                            format!("image `{src}` has empty alt text: describe it, so the email reads without images"),
                        ))
                    }
                    _ => {}
                }
            }
            "a" => {
                let Some(href) = tag.attr("href") else {
                    continue;
                };
                if href.contains(&unsubscribe) {
                    has_unsubscribe = true;
                    continue;
                }
                if checked.contains(&href) {
                    continue;
                }
                if let Some(id) = href.strip_prefix('#')
                    && !id.is_empty()
                    && ids.iter().any(|i| i == id)
                {
                    continue;
                }
                if href.starts_with(TOKEN_OPEN) {
                    continue;
                }
                let lower = href.to_ascii_lowercase();
                if !["https://", "http://", "mailto:", "tel:"]
                    .iter()
                    .any(|p| lower.starts_with(p))
                {
                    diags.push(Diagnostic::error(
                        at(),
                        format!("link `{href}` is neither http(s), mailto nor tel: use an absolute URL (check the config's URLs and the templates)"),
                    ));
                }
            }
            _ => {}
        }
    }
    if !has_unsubscribe {
        diags.push(Diagnostic::error(
            at(),
            "there is no unsubscribe link: add <a href=\"{{ subscriber.unsubscribe_url }}\">Unsubscribe</a> to the template (mail providers and the law require it)".into(),
        ));
    }
}

pub(crate) struct Tag<'a> {
    pub name: String,
    attrs: &'a str,
}

impl Tag<'_> {
    /// The attribute's value with the common entities decoded.
    pub fn attr(&self, name: &str) -> Option<String> {
        parse_attrs(self.attrs)
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_entities(&v))
    }
}

/// Every `href` and `src` value in `html`.
pub fn urls(html: &str) -> impl Iterator<Item = String> + '_ {
    tags(html)
        .into_iter()
        .flat_map(|t| [t.attr("href"), t.attr("src")])
        .flatten()
}

/// Start tags in document order, outside comments. Enough for checking
/// HTML we compiled ourselves; not a general HTML parser.
pub(crate) fn tags(html: &str) -> Vec<Tag<'_>> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        if rest.starts_with("!--") {
            // Outlook's conditional comments hold VML, not content.
            match rest.find("-->") {
                Some(end) => rest = &rest[end + 3..],
                None => break,
            }
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            continue;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        let end = tag_end(rest).unwrap_or(rest.len());
        out.push(Tag {
            name,
            attrs: &rest[name_len..end],
        });
        rest = &rest[end..];
    }
    out
}

fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    tags(html).iter().filter_map(|t| t.attr(attr)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(html: &str) -> String {
        let mut d = Diagnostics::default();
        check_html(html, "rendered HTML", &HashSet::new(), &mut d);
        d.to_string()
    }

    const UNSUB: &str = "<a href=\"[[tidings:unsubscribe_url]]\">Unsubscribe</a>";

    #[test]
    fn clean_html_passes() {
        let html = format!(
            "<img src=\"https://x/l.png\" alt=\"Logo\"><a href='https://x.org'>x</a><a href=\"mailto:a@b\">m</a><a href=\"#fn1\">1</a><p id=\"fn1\"></p>{UNSUB}<!--[if mso]><v:rect href=\"bad\"><![endif]-->"
        );
        assert_eq!(check(&html), "");
    }

    #[test]
    fn each_problem_is_named() {
        let out = check(
            "<img src=\"https://x/a.png\"><img src=\"b.png\" alt=\" \"><a href=\"page.html\">p</a><a href=\"javascript:alert(1)\">j</a>",
        );
        assert!(
            out.contains("rendered HTML: error: image `https://x/a.png` has no alt attribute"),
            "{out}"
        );
        assert!(out.contains("image `b.png` has empty alt text"), "{out}");
        assert!(
            out.contains("link `page.html` is neither http(s), mailto nor tel"),
            "{out}"
        );
        assert!(out.contains("link `javascript:alert(1)`"), "{out}");
        assert!(out.contains("there is no unsubscribe link"), "{out}");
    }

    #[test]
    fn already_checked_urls_are_not_reported_twice() {
        let mut d = Diagnostics::default();
        let checked = HashSet::from(["page.html".to_string(), "b.png".to_string()]);
        check_html(
            &format!("<a href=\"page.html\">p</a><img src=\"b.png\">{UNSUB}"),
            "rendered HTML",
            &checked,
            &mut d,
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn oversized_html_is_an_error() {
        let html = format!("{UNSUB}{}", "x".repeat(GMAIL_CLIP_BYTES));
        let out = check(&html);
        assert!(
            out.contains(&format!(
                "rendered HTML: error: HTML is {} bytes, over Gmail's 102 KB clipping limit (104448 bytes)",
                html.len()
            )),
            "{out}"
        );
    }
}
