//! The preview of issue 17 as a reader sees it, in headless Chromium: the
//! email fits a phone (375 px) and a desktop pane (700 px) without sideways
//! scrolling, its headings and pull quotes can be seen, and the gallery page
//! leads to every sample recipient's files. Screenshots are kept under
//! `target/tmp/browser-screenshots/` for a person to look at.
//!
//! Needs Chromium: run through `scripts/test.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use support::chromium::{Chromium, Report};
use support::{
    ISSUE_17_HEADINGS, ISSUE_17_QUOTES, preview_issue_17, sample_addresses, scratch_dir,
};
use tidings::deliver::file::unique_stem;

const WIDTHS: [u32; 2] = [375, 700];

/// The preview, written once for all tests of this file.
fn preview_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("browser-preview");
        preview_issue_17(&dir, &[]);
        dir
    })
}

fn screenshot_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("browser-screenshots"))
}

fn issue_texts() -> Vec<&'static str> {
    ISSUE_17_HEADINGS
        .iter()
        .chain(ISSUE_17_QUOTES)
        .copied()
        .collect()
}

fn assert_layout(report: &Report, width: u32, what: &str) {
    let problems = report.layout_problems(width);
    assert!(
        problems.is_empty(),
        "{what} at {width} px:\n- {}",
        problems.join("\n- ")
    );
}

/// A full-height screenshot, its path printed for whoever runs the test.
fn screenshot(chromium: &Chromium, page: &Path, width: u32, report: &Report, name: &str) {
    let height = (report.content_height as u32).clamp(400, 12_000);
    let png = screenshot_dir().join(format!("{name}-{width}.png"));
    chromium.screenshot(page, width, height, &png);
    println!("screenshot: {}", png.display());
}

#[test]
#[ignore = "needs Chromium: run scripts/test.sh"]
fn email_fits_phone_and_desktop_with_headings_and_quotes_visible() {
    let chromium = Chromium::from_env();
    let texts = issue_texts();
    // One recipient with a name and one without (the greeting falls back).
    for address in ["ana@example.org", "jamie@example.org"] {
        let page = preview_dir().join(format!("{}.html", unique_stem(address)));
        for width in WIDTHS {
            let report = chromium.probe(&page, width, &texts);
            assert_layout(&report, width, &format!("the email to {address}"));
            assert_eq!(report.texts.len(), texts.len());
            if address.starts_with("ana") {
                screenshot(&chromium, &page, width, &report, "email");
            }
        }
    }
}

#[test]
#[ignore = "needs Chromium: run scripts/test.sh"]
fn gallery_links_every_sample_recipient_to_email_text_and_comparison() {
    let chromium = Chromium::from_env();
    let dir = preview_dir();
    let index = dir.join("index.html");
    let report = chromium.probe(&index, 700, &[]);
    assert!(report.error.is_none(), "{:?}", report.error);
    let addresses = sample_addresses();
    assert_eq!(
        addresses.len(),
        10,
        "subscribers/sample.csv changed: update this test"
    );
    for address in &addresses {
        let stem = unique_stem(address);
        for target in [
            format!("{stem}.html"),
            format!("{stem}.txt"),
            format!("{stem}.compare.html"),
        ] {
            let link = report
                .links
                .iter()
                .find(|l| l.href == target)
                .unwrap_or_else(|| panic!("the gallery has no link to {target} (for {address})"));
            assert!(
                link.row.contains(address.as_str()),
                "the link to {target} is not in {address}'s row: {:?}",
                link.row
            );
            let file = dir.join(&target);
            assert!(
                file.is_file(),
                "the gallery links to {target}, which was not written"
            );
        }
    }
    let compare_links = report
        .links
        .iter()
        .filter(|l| l.href.ends_with(".compare.html"))
        .count();
    assert_eq!(compare_links, addresses.len(), "one row per recipient");

    screenshot(&chromium, &index, 700, &report, "gallery");
    let phone = chromium.probe(&index, 375, &[]);
    assert_layout(&phone, 375, "the gallery");
    screenshot(&chromium, &index, 375, &phone, "gallery");
    let compare = dir.join(format!("{}.compare.html", unique_stem(&addresses[0])));
    let wide = chromium.probe(&compare, 1200, &[]);
    screenshot(&chromium, &compare, 1200, &wide, "compare");
}

// The checker itself, on pages made to fail: a check that cannot fail
// proves nothing.

fn selftest_page(name: &str, body: &str) -> PathBuf {
    let dir = scratch_dir(&format!("browser-selftest-{name}"));
    let page = dir.join("page.html");
    std::fs::write(
        &page,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\"></head>\
             <body style=\"margin:0\">{body}</body></html>"
        ),
    )
    .unwrap();
    page
}

#[test]
#[ignore = "needs Chromium: run scripts/test.sh"]
fn checker_catches_a_table_wider_than_the_phone() {
    let chromium = Chromium::from_env();
    let page = selftest_page(
        "wide",
        "<p>Fits.</p><table width=\"900\" class=\"layout\" style=\"width:900px\">\
         <tr><td>Too wide for a phone</td></tr></table>",
    );
    let report = chromium.probe(&page, 375, &["Fits."]);
    assert_eq!(report.inner_width, 375.0, "{report:?}");
    assert_eq!(report.scroll_width, 900.0, "{report:?}");
    let problems = report.layout_problems(375);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("scrolls sideways")
            && problems[0].contains("table.layout (900 px wide"),
        "{problems:?}"
    );
    // The same page fits a 1000 px viewport.
    let report = chromium.probe(&page, 1000, &["Fits."]);
    assert_eq!(report.layout_problems(1000), Vec::<String>::new());
}

#[test]
#[ignore = "needs Chromium: run scripts/test.sh"]
fn checker_catches_hidden_clipped_and_offscreen_text() {
    let chromium = Chromium::from_env();
    let page = selftest_page(
        "hidden",
        "<h2>Shown heading</h2>\
         <h2 style=\"display:none\">Gone heading</h2>\
         <p style=\"visibility:hidden\">Invisible quote.</p>\
         <div style=\"max-height:0;overflow:hidden\"><p>Clipped quote.</p></div>\
         <div style=\"position:absolute;left:500px;top:0;white-space:nowrap\">Off to the right</div>\
         <div style=\"overflow:hidden;width:300px\"><p>Shown <em>quote</em>.</p></div>",
    );
    let texts = [
        "Shown heading",
        "Gone heading",
        "Invisible quote.",
        "Clipped quote.",
        "Off to the right",
        "Shown quote.",
        "Missing text",
    ];
    let report = chromium.probe(&page, 375, &texts);
    let problems = report.layout_problems(375).join("\n");
    let visible: Vec<(&str, bool)> = report
        .texts
        .iter()
        .map(|t| (t.text.as_str(), t.visible))
        .collect();
    assert_eq!(
        visible,
        [
            ("Shown heading", true),
            ("Gone heading", false),
            ("Invisible quote.", false),
            ("Clipped quote.", false),
            ("Off to the right", false),
            ("Shown quote.", true),
            ("Missing text", false),
        ],
        "{problems}"
    );
    for expected in [
        "\"Gone heading\": h2 at 0..0 (0x0): it has no size",
        "\"Invisible quote.\": p at",
        "visibility:hidden",
        "clipped by overflow:hidden on div",
        "outside the viewport horizontally",
        "text not found: \"Missing text\"",
        "the page scrolls sideways",
    ] {
        assert!(
            problems.contains(expected),
            "no {expected:?} in:\n{problems}"
        );
    }
}

/// The Rust side of the checker, without a browser.
#[test]
fn layout_problems_read_from_a_report() {
    let report: Report = serde_json::from_str(
        r#"{"inner_width": 500, "client_width": 485, "scroll_width": 620, "scroll_height": 900,
            "too_wide": [{"element": "table.x", "box": {"left": 0, "right": 620, "width": 620, "height": 10}}],
            "texts": [{"text": "A", "visible": true, "found": []},
                      {"text": "B", "visible": false, "found": []}],
            "links": [], "error": null}"#,
    )
    .unwrap();
    let problems = report.layout_problems(375);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("500 px wide, not 375"));
    assert!(problems[1].contains("scrollbar"));
    assert!(problems[2].contains("table.x (620 px wide, right edge at 620)"));
    assert_eq!(problems[3], "text not found: \"B\"");

    let broken: Report = serde_json::from_str(r#"{"error": "TypeError: x"}"#).unwrap();
    assert_eq!(
        broken.layout_problems(375),
        ["the probe failed: TypeError: x"]
    );
}
