//! Per-recipient cost of building the full RFC 5322 message for issue 17:
//! personalisation, headers, MIME encoding. `cargo bench --bench build`.

use std::time::Instant;

use tidings::config::Config;
use tidings::content::Issue;
use tidings::deliver::MessageFactory;
use tidings::deliver::unsubscribe::Signer;
use tidings::diagnostics::Diagnostics;
use tidings::render::{FieldSet, Renderer};
use tidings::subscribers::{Recipient, RecipientFields};

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::parse(
        &std::fs::read_to_string(root.join("tidings.toml")).unwrap(),
        "tidings.toml",
    )
    .unwrap();
    let mut d = Diagnostics::default();
    let issue = Issue::from_file(&root.join("content/issue-17.md"), &mut d).unwrap();
    let renderer = Renderer::new(Some(&root.join("templates"))).unwrap();
    let fields = FieldSet {
        attributes: vec!["city".into()],
    };
    let rendered = renderer.render(&issue, &config, &fields, &mut d).unwrap();
    let signer = Signer::new(
        b"0123456789abcdef0123456789abcdef",
        &config.newsletter.base_url,
    );
    let factory = MessageFactory::new(&config, signer.clone(), rendered.clone()).unwrap();
    let recipients: Vec<Recipient> = (0..1000)
        .map(|i| {
            let mut r = Recipient::new(format!("reader{i}@example.org"));
            r.first_name = format!("Reader{i}");
            r.last_name = "Ørsted".into();
            r
        })
        .collect();

    let n = 20_000;
    let t = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let r = &recipients[i % recipients.len()];
        let url = signer.url(&rendered.slug, &r.email);
        bytes += rendered
            .personalise(&RecipientFields::new(r, &url))
            .html
            .len();
    }
    let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!(
        "personalise (incl. signed URL): {per:.2} µs/recipient ({} bytes HTML)",
        bytes / n
    );

    let t = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let m = factory.build(&recipients[i % recipients.len()]).unwrap();
        bytes += m.bytes.len();
    }
    let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!("build message: {per:.2} µs/recipient ({} bytes)", bytes / n);
}
