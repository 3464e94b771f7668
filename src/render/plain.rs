//! The text/plain alternative, made from the content's own HTML (never from
//! the compiled layout, whose tables and hidden preheader read badly as text).

use html2text::render::{TaggedLine, TextDecorator};

/// Line width of the plain part; RFC 5322 recommends under 78.
pub const WIDTH: usize = 72;

/// Content HTML to readable text: headings, paragraphs, lists, quotes, and
/// links as `text (https://…)`.
pub fn html_to_text(html: &str) -> String {
    // html2text would break a long URL in the middle: convert unwrapped,
    // then wrap at word boundaries only.
    let text = html2text::config::with_decorator(Decorator::default())
        .link_footnotes(false)
        .string_from_read(html.as_bytes(), 100_000)
        .unwrap_or_else(|_| html.to_string());
    let text = wrap(&text, WIDTH);
    let trimmed: Vec<&str> = text.lines().map(str::trim_end).collect();
    trimmed.join("\n").trim_matches('\n').to_string()
}

/// Greedy word wrap at `width` columns, keeping existing line breaks; a
/// word longer than the width (a URL) stays whole on its own line. List
/// items continue under their text, quoted lines keep their `> `.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / width);
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let (prefix, rest) = split_prefix(line);
        let continuation = if prefix.trim_start().starts_with('>') {
            prefix.to_string()
        } else {
            " ".repeat(prefix.chars().count())
        };
        out.push_str(prefix);
        let start = prefix.chars().count();
        let mut col = start;
        for word in rest.split_whitespace() {
            let w = word.chars().count();
            if col > start && col + 1 + w > width {
                out.push('\n');
                out.push_str(&continuation);
                col = start;
            } else if col > start {
                out.push(' ');
                col += 1;
            }
            out.push_str(word);
            col += w;
        }
    }
    out
}

/// Leading indentation plus a list marker (`- `, `* `, `12. `) or quote
/// markers (`> `).
fn split_prefix(line: &str) -> (&str, &str) {
    let indent = line.len() - line.trim_start().len();
    let rest = &line[indent..];
    let quote = rest.len() - rest.trim_start_matches(['>', ' ']).len();
    if quote > 0 && rest.starts_with('>') {
        return line.split_at(indent + quote);
    }
    if rest.starts_with("- ") || rest.starts_with("* ") {
        return line.split_at(indent + 2);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && rest[digits..].starts_with(". ") {
        return line.split_at(indent + digits + 2);
    }
    line.split_at(indent)
}

/// Like html2text's plain decorator, but links keep their URL inline in
/// parentheses, where a reader of the plain part can see and copy it.
#[derive(Clone, Debug, Default)]
struct Decorator {
    links: Vec<String>,
}

impl TextDecorator for Decorator {
    type Annotation = ();

    fn decorate_link_start(&mut self, url: &str) -> (String, ()) {
        self.links.push(url.to_string());
        (String::new(), ())
    }
    fn decorate_link_end(&mut self) -> String {
        match self.links.pop() {
            Some(url) if url.starts_with('#') => String::new(),
            Some(url) => {
                let shown = url.strip_prefix("mailto:").unwrap_or(&url);
                format!(" ({shown})")
            }
            None => String::new(),
        }
    }
    fn decorate_em_start(&self) -> (String, ()) {
        ("_".into(), ())
    }
    fn decorate_em_end(&self) -> String {
        "_".into()
    }
    fn decorate_strong_start(&self) -> (String, ()) {
        ("*".into(), ())
    }
    fn decorate_strong_end(&self) -> String {
        "*".into()
    }
    fn decorate_strikeout_start(&self) -> (String, ()) {
        ("~".into(), ())
    }
    fn decorate_strikeout_end(&self) -> String {
        "~".into()
    }
    fn decorate_code_start(&self) -> (String, ()) {
        ("`".into(), ())
    }
    fn decorate_code_end(&self) -> String {
        "`".into()
    }
    fn decorate_preformat_first(&self) {}
    fn decorate_preformat_cont(&self) {}
    fn decorate_image(&mut self, _src: &str, title: &str) -> (String, ()) {
        (format!("[{title}]"), ())
    }
    fn header_prefix(&self, level: usize) -> String {
        "#".repeat(level) + " "
    }
    fn quote_prefix(&self) -> String {
        "> ".into()
    }
    fn unordered_item_prefix(&self) -> String {
        "- ".into()
    }
    fn ordered_item_prefix(&self, i: i64) -> String {
        format!("{i}. ")
    }
    fn make_subblock_decorator(&self) -> Self {
        Decorator::default()
    }
    fn finalise(&mut self, _: Vec<String>) -> Vec<TaggedLine<()>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_lists_and_paragraphs() {
        let text = html_to_text(
            "<p>Read <a href=\"https://example.org/a\">the guide</a> or write to <a href=\"mailto:help@example.org\">us</a>.</p>\n<ul><li>one</li><li>two</li></ul><h3>Next</h3><p>Bye &amp; thanks</p>",
        );
        assert_eq!(
            text,
            "Read the guide (https://example.org/a) or write to us\n(help@example.org).\n- one\n- two\n\n### Next\n\nBye & thanks"
        );
    }

    #[test]
    fn wrap_keeps_breaks_and_long_words() {
        let url = format!("https://example.org/{}", "x".repeat(80));
        assert_eq!(
            wrap(&format!("one two three\nfour {url} five"), 9),
            format!("one two\nthree\nfour\n{url}\nfive")
        );
        assert_eq!(
            wrap(
                "- alpha beta gamma\n12. delta epsilon\n> > zeta eta theta",
                12
            ),
            "- alpha beta\n  gamma\n12. delta\n    epsilon\n> > zeta eta\n> > theta"
        );
    }

    #[test]
    fn wraps_long_paragraphs_but_not_urls() {
        let long = "word ".repeat(40);
        let url = format!("https://example.org/{}", "x".repeat(100));
        let text = html_to_text(&format!("<p>{long}<a href=\"{url}\">link</a></p>"));
        assert!(
            text.lines()
                .filter(|l| !l.contains(&url))
                .all(|l| l.chars().count() <= WIDTH)
        );
        assert!(text.contains(&url), "{text}");
    }
}
