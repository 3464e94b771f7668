//! Scanning raw HTML an author wrote: tags, attributes and entities, for
//! the content stage's checks and the render stage's. A leaf module (no
//! imports from the pipeline), so neither stage depends on the other for it.

/// A tag in raw HTML an author wrote: where it starts (byte offset of its
/// `<`), its lower-case name, whether it closes or closes itself, and its
/// attributes (entities decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawTag {
    pub offset: usize,
    pub name: String,
    pub closing: bool,
    pub self_closing: bool,
    pub attrs: Vec<(String, String)>,
}

/// Start and end tags in document order, outside comments.
pub(crate) fn raw_tags(html: &str) -> Vec<RawTag> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(lt) = html[pos..].find('<') {
        let offset = pos + lt;
        let rest = &html[offset + 1..];
        pos = offset + 1;
        if rest.starts_with("!--") {
            match rest.find("-->") {
                Some(end) => pos += end + 3,
                None => break,
            }
            continue;
        }
        let (closing, rest, skip) = match rest.strip_prefix('/') {
            Some(r) => (true, r, 1),
            None => (false, rest, 0),
        };
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':' || c == '-'))
            .unwrap_or(rest.len());
        if name_len == 0 || !rest.as_bytes()[0].is_ascii_alphabetic() {
            continue;
        }
        let end = tag_end(rest).unwrap_or(rest.len());
        let attrs = &rest[name_len..end];
        out.push(RawTag {
            offset,
            name: rest[..name_len].to_ascii_lowercase(),
            closing,
            self_closing: attrs.trim_end().ends_with('/'),
            attrs: parse_attrs(attrs)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), decode_entities(&v)))
                .collect(),
        });
        pos += skip + end;
    }
    out
}

pub(crate) fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

pub(crate) fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.trim_end_matches('/').chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == '/') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.peek().copied() {
                Some(q @ ('"' | '\'')) => {
                    chars.next();
                    for c in chars.by_ref() {
                        if c == q {
                            break;
                        }
                        value.push(c);
                    }
                }
                _ => {
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() {
                            break;
                        }
                        value.push(c);
                        chars.next();
                    }
                }
            }
        }
        out.push((name, value));
    }
    out
}

pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
