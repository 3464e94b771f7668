//! Property tests over what the outside world hands tidings: issue files
//! (front matter and Markdown), CSV imports and unsubscribe tokens. Each
//! input either parses or is refused with an error; none panics or takes
//! long. (The SMTP reply parser has its own, in `smtp_client.rs`.) Kept
//! small enough for the normal suite.

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tidings::content::Issue;
use tidings::deliver::unsubscribe::{Signer, email_hash};
use tidings::diagnostics::Diagnostics;
use tidings::subscribers::csv::RowReader;

/// Any one input gets this long (debug build, a loaded machine).
const SLOW: Duration = Duration::from_secs(2);

/// Pieces of Markdown and front matter that interact: containers, raw
/// HTML, tables, links, fences, front matter lines.
fn markdown_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("> ".to_string()),
        Just("- ".to_string()),
        Just("1. ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("## ".to_string()),
        Just("<div>".to_string()),
        Just("</div>".to_string()),
        Just("<a href=\"javascript:x\" onclick=\"y\">".to_string()),
        Just("<img src=\"x.png\">".to_string()),
        Just("<!-- ".to_string()),
        Just("|a|b|\n|-|-|\n".to_string()),
        Just("[l](".to_string()),
        Just(")".to_string()),
        Just("![".to_string()),
        Just("]".to_string()),
        Just("```".to_string()),
        Just("*".to_string()),
        Just("[^1]".to_string()),
        Just("---\n".to_string()),
        Just("title: ".to_string()),
        Just("— ".to_string()),
        "[a-zA-Z0-9 ]{0,8}",
        "\\PC{0,4}",
    ]
}

fn markdown() -> impl Strategy<Value = String> {
    proptest::collection::vec(markdown_piece(), 0..120).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_issue_parses_or_is_refused(body in markdown(), front in markdown(), framed in any::<bool>()) {
        let text = if framed {
            format!("---\ntitle: T\n{front}\n---\n{body}")
        } else {
            format!("{front}{body}")
        };
        let start = Instant::now();
        let _ = Issue::parse(&text, "content/p.md", "p", &mut Diagnostics::default());
        prop_assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());
    }

    #[test]
    fn deep_nesting_of_any_kind_is_refused_quickly(
        (open, close) in prop_oneof![
            Just(("> ", "")),
            Just(("- ", "")),
            Just(("<div>", "")),
            Just(("<li><ul>", "")),
            Just(("*a ", "*")),
            Just(("**a ", "**")),
            Just(("![", "](https://x.org/a.png)")),
            Just(("> - *a ", "*")),
        ],
        depth in 101usize..3000,
    ) {
        let text = format!(
            "---\ntitle: T\n---\nx\n\n{}y{}\n",
            open.repeat(depth),
            close.repeat(depth)
        );
        let start = Instant::now();
        let err = Issue::parse(&text, "content/p.md", "p", &mut Diagnostics::default())
            .unwrap_err()
            .to_string();
        prop_assert!(err.contains("at most 100 are allowed"), "{}", err);
        prop_assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());
    }

    #[test]
    fn any_csv_reads_or_is_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        rows in proptest::collection::vec("[a-z@.,;\"\r\n \u{feff}é]{0,30}", 0..20),
    ) {
        for input in [bytes.clone(), format!("email,first_name,lists\n{}", rows.concat()).into_bytes()] {
            let start = Instant::now();
            if let Ok(mut reader) = RowReader::new(Cursor::new(input), Path::new("p.csv")) {
                let mut n = 0;
                while let Ok(Some(_)) = reader.next_row() {
                    n += 1;
                    prop_assert!(n < 10_000);
                }
            }
            prop_assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());
        }
    }

    #[test]
    fn any_token_verifies_or_is_refused(token in "\\PC{0,200}", dotted in "(v[12]\\.)?[a-z0-9-]{0,10}\\.[A-Za-z0-9_-]{0,50}\\.[A-Za-z0-9_-]{0,30}") {
        let s = Signer::new(b"proptest-secret-0123456789", "https://x");
        let _ = s.verify(&token);
        prop_assert!(s.verify(&dotted).is_err());
    }

    #[test]
    fn every_token_made_verifies_to_its_person(slug in "[a-z0-9][a-z0-9-]{0,40}", email in "[a-z0-9.+]{1,20}@[a-z0-9-]{1,20}\\.org") {
        let s = Signer::new(b"proptest-secret-0123456789", "https://x");
        let token = s.token(&slug, &email);
        let claim = s.verify(&token).unwrap();
        prop_assert_eq!(claim.issue, slug);
        prop_assert_eq!(claim.email_hash, email_hash(&email));
        let other = Signer::new(b"another-secret-0123456789", "https://x");
        prop_assert!(other.verify(&token).is_err());
    }
}
