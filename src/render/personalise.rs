//! Per-recipient personalisation, applied to output that was rendered and
//! compiled once per issue.
//!
//! Templates see subscriber fields as placeholder tokens
//! (`[[tidings:first_name|friend]]`); after the MJML compile the output is
//! split once into literal runs and tokens, and each recipient costs one
//! pass of copying with escaped values. Subscriber data therefore never
//! reaches the template engine and cannot run template code.

use std::borrow::Cow;

pub const TOKEN_OPEN: &str = "[[tidings:";
pub const TOKEN_CLOSE: &str = "]]";

/// The fields every recipient has; any other name is a custom attribute.
pub const STANDARD_FIELDS: &[&str] = &[
    "email",
    "first_name",
    "last_name",
    "name",
    "unsubscribe_url",
];

/// A placeholder token for `field`, as templates receive it.
pub fn token(field: &str) -> String {
    format!("{TOKEN_OPEN}{field}{TOKEN_CLOSE}")
}

/// The token of `field` with a fallback for recipients who lack it.
pub fn token_with_default(field: &str, default: &str) -> String {
    format!("{TOKEN_OPEN}{field}|{default}{TOKEN_CLOSE}")
}

/// If `s` is exactly a bare token, its field name.
pub fn bare_token_field(s: &str) -> Option<&str> {
    let inner = s.strip_prefix(TOKEN_OPEN)?.strip_suffix(TOKEN_CLOSE)?;
    (!inner.contains('|') && valid_field_name(inner)).then_some(inner)
}

fn valid_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What a recipient provides to fill tokens in.
pub trait Fields {
    /// The raw (unescaped) value of `field`; `None` or empty falls back to
    /// the template's default.
    fn field(&self, field: &str) -> Option<&str>;
}

/// No recipient: every token takes its default (the web/archive view).
pub struct Generic;

impl Fields for Generic {
    fn field(&self, _: &str) -> Option<&str> {
        None
    }
}

/// How values are made safe for where they land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// HTML text and attribute values.
    Html,
    /// The text/plain part: as given, minus control characters but newlines.
    Text,
    /// A header value: no control characters at all, so no header can be
    /// split or added.
    Header,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Byte range of the whole token in the source.
    start: usize,
    end: usize,
    field: String,
    /// Already in the output's own form (escaped by the template engine
    /// where the template autoescapes).
    default: String,
}

/// A part of a [`Personalisable`]: literal text, or a slot with the
/// default used when the recipient has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Slot { field: &'a str, default: &'a str },
}

/// The value a slot takes for one recipient, escaped for `escape`.
///
/// The default came from the template and is already in the output's form,
/// except that a header must stay one line.
pub fn slot_value(
    fields: &dyn Fields,
    field: &str,
    default: &str,
    escape: Escape,
    out: &mut String,
) {
    match fields.field(field).filter(|v| !v.trim().is_empty()) {
        Some(v) => push_escaped(out, v, escape),
        None if escape == Escape::Header => push_escaped(out, default, escape),
        None => out.push_str(default),
    }
}

/// Output with placeholder slots, split once.
#[derive(Debug, Clone)]
pub struct Personalisable {
    source: String,
    slots: Vec<Slot>,
}

/// A token whose field name was changed (e.g. by a filter) so it can no
/// longer be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadToken(pub String);

impl Personalisable {
    /// Splits `source` at its tokens. Malformed tokens are returned so the
    /// caller can report them; they stay in the text as written.
    pub fn parse(source: String) -> (Personalisable, Vec<BadToken>) {
        let mut slots = Vec::new();
        let mut bad = Vec::new();
        let mut at = 0;
        while let Some(found) = find_ci(&source[at..], TOKEN_OPEN) {
            let start = at + found;
            let body_start = start + TOKEN_OPEN.len();
            let Some(close) = source[body_start..].find(TOKEN_CLOSE) else {
                bad.push(BadToken(source[start..].chars().take(40).collect()));
                break;
            };
            let body = &source[body_start..body_start + close];
            let end = body_start + close + TOKEN_CLOSE.len();
            let (field, default) = body.split_once('|').unwrap_or((body, ""));
            if source[start..body_start] == *TOKEN_OPEN && valid_field_name(field) {
                slots.push(Slot {
                    start,
                    end,
                    field: field.to_string(),
                    default: default.to_string(),
                });
            } else {
                bad.push(BadToken(source[start..end].to_string()));
            }
            at = end;
        }
        (Personalisable { source, slots }, bad)
    }

    /// The text with no substitutions, tokens included.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the fields used, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.slots {
            if !out.contains(&s.field.as_str()) {
                out.push(&s.field);
            }
        }
        out
    }

    /// The literal runs and slots in order, for a consumer that encodes
    /// the literal parts once (see `deliver::mime`).
    pub fn pieces(&self) -> Vec<Piece<'_>> {
        let mut out = Vec::with_capacity(self.slots.len() * 2 + 1);
        let mut at = 0;
        for slot in &self.slots {
            if slot.start > at {
                out.push(Piece::Text(&self.source[at..slot.start]));
            }
            out.push(Piece::Slot {
                field: &slot.field,
                default: &slot.default,
            });
            at = slot.end;
        }
        if at < self.source.len() {
            out.push(Piece::Text(&self.source[at..]));
        }
        out
    }

    pub fn uses(&self, field: &str) -> bool {
        self.slots.iter().any(|s| s.field == field)
    }

    /// Fills every slot for one recipient.
    pub fn render(&self, fields: &dyn Fields, escape: Escape) -> String {
        let mut out = String::with_capacity(self.source.len() + 64 * self.slots.len());
        self.render_into(fields, escape, &mut out);
        out
    }

    pub fn render_into(&self, fields: &dyn Fields, escape: Escape, out: &mut String) {
        let mut at = 0;
        for slot in &self.slots {
            out.push_str(&self.source[at..slot.start]);
            slot_value(fields, &slot.field, &slot.default, escape, out);
            at = slot.end;
        }
        out.push_str(&self.source[at..]);
    }
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let n = needle.as_bytes();
    haystack
        .as_bytes()
        .windows(n.len())
        .position(|w| w.eq_ignore_ascii_case(n))
}

pub fn push_escaped(out: &mut String, value: &str, escape: Escape) {
    match escape {
        Escape::Html => {
            for c in value.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c if c.is_control() => out.push(' '),
                    c => out.push(c),
                }
            }
        }
        Escape::Text => {
            for c in value.chars() {
                match c {
                    '\n' => out.push('\n'),
                    c if c.is_control() => out.push(' '),
                    c => out.push(c),
                }
            }
        }
        Escape::Header => {
            for c in value.chars() {
                // CR, LF, NUL, tabs and the Unicode line separators all
                // become spaces: a header stays a single line.
                if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                    out.push(' ');
                } else {
                    out.push(c);
                }
            }
        }
    }
}

/// A value made safe for a header (see [`Escape::Header`]).
pub fn header_safe(value: &str) -> Cow<'_, str> {
    if value
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        let mut s = String::with_capacity(value.len());
        push_escaped(&mut s, value, Escape::Header);
        Cow::Owned(s)
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Fields for Map {
        fn field(&self, f: &str) -> Option<&str> {
            self.0.get(f).copied()
        }
    }

    #[test]
    fn fills_escapes_and_defaults() {
        let (p, bad) = Personalisable::parse(
            "<p>Hi [[tidings:first_name|friend]]!</p><a href=\"[[tidings:unsubscribe_url]]\">x</a>[[tidings:city|your town]]"
                .to_string(),
        );
        assert!(bad.is_empty());
        assert_eq!(p.fields(), vec!["first_name", "unsubscribe_url", "city"]);
        let r = Map(HashMap::from([
            ("first_name", "<script>alert(1)</script>"),
            ("unsubscribe_url", "https://x.org/u/a?b=1&c=2"),
            ("city", "  "),
        ]));
        assert_eq!(
            p.render(&r, Escape::Html),
            "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;!</p><a href=\"https://x.org/u/a?b=1&amp;c=2\">x</a>your town"
        );
        assert_eq!(
            p.render(&Generic, Escape::Html),
            "<p>Hi friend!</p><a href=\"\">x</a>your town"
        );
    }

    #[test]
    fn template_code_in_data_stays_text() {
        let (p, _) = Personalisable::parse("Hi [[tidings:first_name]]".into());
        let r = Map(HashMap::from([(
            "first_name",
            "{{ config }} [[tidings:email]]",
        )]));
        // One pass: a value is never scanned for tokens again.
        assert_eq!(
            p.render(&r, Escape::Text),
            "Hi {{ config }} [[tidings:email]]"
        );
    }

    #[test]
    fn header_escape_cannot_split() {
        let (p, _) = Personalisable::parse("Issue 17 for [[tidings:first_name|you]]".into());
        let r = Map(HashMap::from([("first_name", "Ann\r\nBcc: all@x.org")]));
        assert_eq!(
            p.render(&r, Escape::Header),
            "Issue 17 for Ann  Bcc: all@x.org"
        );
    }

    #[test]
    fn mangled_tokens_are_reported() {
        let (p, bad) = Personalisable::parse("A [[TIDINGS:FIRST_NAME]] B [[tidings:x".into());
        assert!(p.fields().is_empty());
        assert_eq!(
            bad,
            vec![
                BadToken("[[TIDINGS:FIRST_NAME]]".into()),
                BadToken("[[tidings:x".into())
            ]
        );
    }
}
