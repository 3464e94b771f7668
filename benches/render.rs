//! Render benchmark (issue 2): what issue 17 costs to render once, and
//! what each recipient costs after that.
//!
//!   cargo bench --bench render            (or bench/render.sh, which also
//!                                          times the reference compiler)
//!
//! Rows:
//! - `mrml compile`: the emitted MJML to HTML by mrml alone: the same input
//!   and work as the reference `mjml` compiler in bench/mjml-bench.js;
//! - `render once`: `Renderer::render`, i.e. tera, the MJML compile, the
//!   plain-text part and the HTML checks, as done once per issue;
//! - `personalise`: `RenderedIssue::personalise` for one recipient of
//!   `subscribers/sample.csv` (subject, HTML and text);
//! - `unsubscribe URL`: signing a recipient's unsubscribe link, the other
//!   per-recipient step of a send.
//!
//! Each row repeats its work for about a second after a warm-up and prints
//! the minimum and the median of the samples. Lines starting with `RESULT`
//! are for bench/render.sh.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use tidings::config::Config;
use tidings::content::Issue;
use tidings::deliver::unsubscribe::Signer;
use tidings::diagnostics::Diagnostics;
use tidings::render::{FieldSet, Renderer};
use tidings::subscribers::RecipientFields;
use tidings::subscribers::csv::read_recipients;

/// Runs `work` (which does `per_call` units) repeatedly for about `budget`
/// and returns (min, median) time per unit.
fn measure(budget: Duration, per_call: u32, mut work: impl FnMut()) -> (Duration, Duration) {
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        work();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 11 {
        let t = Instant::now();
        work();
        samples.push(t.elapsed() / per_call);
    }
    samples.sort();
    (samples[0], samples[samples.len() / 2])
}

fn report(key: &str, label: &str, (min, median): (Duration, Duration)) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{label:<34} median {:>10.2} µs   min {:>10.2} µs",
        us(median),
        us(min)
    );
    println!("RESULT {key} {:.3} {:.3}", us(median), us(min));
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_path = root.join("tidings.toml");
    let text = std::fs::read_to_string(&config_path).expect("tidings.toml");
    // `parse`, not `load`: the numbers do not depend on the shell's variables.
    let config = Config::parse(&text, "tidings.toml").expect("config");
    let list = read_recipients(&root.join("subscribers/sample.csv")).expect("sample list");
    let fields = FieldSet {
        attributes: list.attributes.clone(),
    };
    let mut diags = Diagnostics::default();
    let issue = Issue::from_file(&root.join("content/issue-17.md"), &mut diags).expect("issue");
    let renderer = Renderer::new(Some(&root.join("templates"))).expect("templates");
    let rendered = renderer
        .render(&issue, &config, &fields, &mut diags)
        .expect("render");
    assert!(!diags.has_errors(), "{diags}");

    println!(
        "issue 17: {} lines of MJML, {} bytes of HTML; {} sample recipients",
        rendered.mjml.lines().count(),
        rendered.html.source().len(),
        list.recipients.len()
    );
    let budget = Duration::from_secs(1);

    let options = mrml::prelude::render::RenderOptions {
        disable_comments: false,
        social_icon_origin: None,
        fonts: HashMap::new(),
    };
    report(
        "mrml_compile",
        "mrml compile (MJML -> HTML)",
        measure(budget, 1, || {
            let parsed = mrml::parse(black_box(&rendered.mjml)).expect("parse");
            black_box(parsed.element.render(&options).expect("render"));
        }),
    );
    report(
        "render_once",
        "render once (tera + MJML + text)",
        measure(budget, 1, || {
            let mut d = Diagnostics::default();
            black_box(
                renderer
                    .render(black_box(&issue), &config, &fields, &mut d)
                    .expect("render"),
            );
        }),
    );
    report(
        "templates_load",
        "load templates (once per process)",
        measure(budget / 4, 1, || {
            black_box(Renderer::new(Some(&root.join("templates"))).expect("templates"));
        }),
    );

    let signer = Signer::new(b"bench-secret", &config.newsletter.base_url);
    let urls: Vec<String> = list
        .recipients
        .iter()
        .map(|r| signer.url(&issue.slug, &r.email))
        .collect();
    let n = list.recipients.len() as u32;
    report(
        "personalise",
        "personalise, per recipient",
        measure(budget, n, || {
            for (r, url) in list.recipients.iter().zip(&urls) {
                black_box(rendered.personalise(&RecipientFields::new(black_box(r), url)));
            }
        }),
    );
    report(
        "unsubscribe_url",
        "unsubscribe URL, per recipient",
        measure(budget / 4, n, || {
            for r in &list.recipients {
                black_box(signer.url(&issue.slug, black_box(&r.email)));
            }
        }),
    );
}
