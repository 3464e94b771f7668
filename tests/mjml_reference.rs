//! The MJML that tidings' templates produce for issue 17 is valid for the
//! reference compiler (npm `mjml`, strict validation), and what it makes of
//! it carries the same headings and pull quotes as tidings' own HTML.
//!
//! Needs Node.js and `mjml`: run through `scripts/test.sh`.

mod support;

use std::path::Path;

use support::{ISSUE_17_HEADINGS, ISSUE_17_QUOTES, ReferenceMjml, preview_issue_17, scratch_dir};
use tidings::deliver::file::unique_stem;

#[test]
#[ignore = "needs the reference mjml compiler (Node.js): run scripts/test.sh"]
fn issue_17_mjml_is_valid_for_the_reference_compiler_with_the_same_headings_and_quotes() {
    let mjml = ReferenceMjml::from_env();
    let dir = scratch_dir("mjml-reference");
    preview_issue_17(&dir, &["--emit-mjml", "--subscriber", "ana@example.org"]);
    let source = dir.join("issue-17.mjml");
    let reference = dir.join("issue-17.reference.html");
    if let Err(e) = mjml.compile_strict(&source, &reference) {
        panic!(
            "the reference compiler rejects {} (the MJML tidings' templates produce):\n{e}",
            source.display()
        );
    }
    let reference = read(&reference);
    let ours = read(&dir.join(format!("{}.html", unique_stem("ana@example.org"))));

    for (name, html) in [("reference", &reference), ("tidings", &ours)] {
        let headings = elements_text(html, "h2");
        let quotes = elements_text(html, "blockquote");
        assert_eq!(
            headings, ISSUE_17_HEADINGS,
            "h2 headings in the {name} HTML"
        );
        assert_eq!(quotes, ISSUE_17_QUOTES, "pull quotes in the {name} HTML");
    }
    for tag in ["h1", "h3"] {
        assert_eq!(
            elements_text(&reference, tag),
            elements_text(&ours, tag),
            "<{tag}> texts differ between the reference and tidings"
        );
    }
}

/// The strict check really rejects bad MJML: a test that cannot fail
/// proves nothing.
#[test]
#[ignore = "needs the reference mjml compiler (Node.js): run scripts/test.sh"]
fn reference_compiler_rejects_invalid_mjml() {
    let mjml = ReferenceMjml::from_env();
    let dir = scratch_dir("mjml-reference-invalid");
    let bad = dir.join("bad.mjml");
    std::fs::write(
        &bad,
        "<mjml><mj-body><mj-section><mj-column>\
         <mj-image src=\"a.png\" alt=\"a\" color=\"#fff\" />\
         </mj-column></mj-section></mj-body></mjml>",
    )
    .unwrap();
    let err = mjml
        .compile_strict(&bad, &dir.join("bad.html"))
        .expect_err("an mj-image with a color attribute is invalid MJML");
    assert!(err.contains("illegal"), "{err}");
    assert!(!dir.join("bad.html").exists());
}

/// Personalisation placeholders are plain text to MJML.
#[test]
#[ignore = "needs the reference mjml compiler (Node.js): run scripts/test.sh"]
fn placeholders_are_valid_text_for_the_reference_compiler() {
    let mjml = ReferenceMjml::from_env();
    let dir = scratch_dir("mjml-reference-placeholders");
    let source = dir.join("tokens.mjml");
    std::fs::write(
        &source,
        "<mjml><mj-body><mj-section><mj-column>\
         <mj-text>Hi [[tidings:first_name|friend]],</mj-text>\
         <mj-button href=\"[[tidings:unsubscribe_url]]\">Unsubscribe</mj-button>\
         </mj-column></mj-section></mj-body></mjml>",
    )
    .unwrap();
    let out = dir.join("tokens.html");
    mjml.compile_strict(&source, &out).unwrap();
    let html = read(&out);
    assert!(html.contains("Hi [[tidings:first_name|friend]],"), "{html}");
    assert!(
        html.contains("href=\"[[tidings:unsubscribe_url]]\""),
        "{html}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of every `<tag …>…</tag>` in `html`, in order, inner tags
/// dropped, entities decoded and white space collapsed.
fn elements_text(html: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<h2>` or `<h2 …>`, not `<h2x>`.
        if !after.starts_with(['>', ' ', '\n', '\t']) {
            rest = after;
            continue;
        }
        let Some(start) = after.find('>') else { break };
        let Some(end) = after.find(&close) else { break };
        out.push(text_of(&after[start + 1..end]));
        rest = &after[end..];
    }
    out
}

fn text_of(fragment: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in fragment.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&nbsp;", " ")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").replace(" .", ".").replace(" ,", ",")
}

#[test]
fn elements_text_reads_nested_markup() {
    let html = "<h2 id=\"a\">One <em>two</em></h2><h2x>no</h2x><h2>Caf&amp;\u{e9}</h2>\
                <blockquote style=\"x\"><p>Quote <strong>here</strong>.</p></blockquote>";
    assert_eq!(elements_text(html, "h2"), ["One two", "Caf&\u{e9}"]);
    assert_eq!(elements_text(html, "blockquote"), ["Quote here."]);
    assert!(elements_text(html, "h3").is_empty());
}
