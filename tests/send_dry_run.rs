//! `tidings send --dry-run`: the exact messages, as files, with no network.
//! The .eml files are checked with Python's own `email` package.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

fn tidings(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .current_dir(dir)
        .env("TIDINGS_UNSUBSCRIBE_SECRET", "dry-run-secret-0123456789")
        .env_remove("TIDINGS_CONFIG")
        .env_remove("TIDINGS_DATABASE_URL")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn dry_run_writes_valid_mime_without_injected_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    support::copy_fixture("minimal", dir);
    // Subscribers in the store. Import and add refuse line breaks in names,
    // so the hostile one is written by another program (Python's sqlite3):
    // the message must stay safe whatever the database holds.
    for (email, first, last) in [
        ("eve@example.org", "Eve", "X"),
        ("zoe@example.org", "Zoë", "Ørsted"),
        ("plain@example.org", "", ""),
    ] {
        let mut args = vec!["subscribers", "add", email];
        if !first.is_empty() {
            args.extend(["--first-name", first, "--last-name", last]);
        }
        let out = tidings(dir, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute(\"UPDATE subscribers SET first_name = ?, last_name = ? WHERE email_key = 'eve@example.org'\",\n\
             ('Eve\\r\\nBcc: all@evil.example', 'X\\nSubject: spam'))\n\
             c.commit()",
        )
        .arg(dir.join("subscribers/subscribers.db"))
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let out = tidings(
        dir,
        &["send", "content/hello.md", "--dry-run", "--out", "dr"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split(" (")
            .next()
            .unwrap(),
        "dry run: wrote 3 messages to dr",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = fs::read_to_string(dir.join("dr/summary.txt")).unwrap();
    assert!(
        summary.starts_with("issue: hello\nsubject: Hello Readers\nmessages: 3\nfailed: 0\n"),
        "{summary}"
    );

    let files: Vec<String> = ["eve@example.org", "zoe@example.org", "plain@example.org"]
        .iter()
        .map(|a| dir.join(format!("dr/{a}.eml")).display().to_string())
        .collect();
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_eml.py"))
        .args(&files)
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    for f in &files {
        let m = &parsed[f];
        assert_eq!(m["defects"], serde_json::json!([]), "{f}");
        assert_eq!(m["content_type"], "multipart/alternative");
        assert_eq!(m["parts"], serde_json::json!(["text/plain", "text/html"]));
        for h in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "reply-to",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-id",
            "mime-version",
            "content-type",
        ] {
            assert!(
                m["headers"].as_array().unwrap().iter().any(|x| x == h),
                "{f}: no {h}"
            );
        }
        assert_eq!(
            m["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| *x == "subject")
                .count(),
            1
        );
        assert!(
            !m["headers"].as_array().unwrap().iter().any(|x| x == "bcc"),
            "{f}: injected Bcc"
        );
        assert_eq!(m["subject"], "Hello Readers");
        assert_eq!(m["list_unsubscribe_post"], "List-Unsubscribe=One-Click");
        let lu = m["list_unsubscribe"].as_str().unwrap();
        assert!(lu.starts_with("<mailto:unsubscribe@example.org?subject=unsubscribe>, <https://news.example.org/u/v2.hello."), "{lu}");
        assert!(m["message_id"].as_str().unwrap().ends_with("@example.org>"));
        assert!(m["html"].as_str().unwrap().contains("Small steps add up."));
    }
    let eve = &parsed[&files[0]];
    assert_eq!(eve["to_address"], "eve@example.org");
    assert_eq!(eve["to_name"], "Eve Bcc: all@evil.example X Subject: spam");
    assert!(
        eve["html"]
            .as_str()
            .unwrap()
            .contains("Hi Eve  Bcc: all@evil.example,")
    );
    let zoe = &parsed[&files[1]];
    assert_eq!(zoe["to_name"], "Zoë Ørsted");
    let plain = &parsed[&files[2]];
    assert_eq!(plain["to"], "plain@example.org");
    assert!(plain["text"].as_str().unwrap().contains("Hi friend,"));

    // Nothing was sent, so nothing is in the journal.
    let out = tidings(dir, &["status", "content/hello.md"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello: not sent yet\n"
    );
}

/// Parses .eml files with tests/support/check_eml.py.
fn check_eml(files: &[String]) -> serde_json::Value {
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_eml.py"))
        .args(files)
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    serde_json::from_slice(&py.stdout).unwrap()
}

/// An international domain travels as its A-label (headers and envelope
/// alike); a non-ASCII local part still gets its file, as an RFC 6532
/// message with the address in UTF-8.
#[test]
fn international_addresses_in_a_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    support::copy_fixture("minimal", dir);
    let config = fs::read_to_string(dir.join("tidings.toml"))
        .unwrap()
        .replace("news@example.org", "news@bücher.example");
    fs::write(dir.join("tidings.toml"), config).unwrap();
    fs::write(
        dir.join("list.csv"),
        "email,first_name\nuser@bücher.example,Ute\njosé@bücher.example,José\n",
    )
    .unwrap();
    let out = tidings(dir, &["subscribers", "import", "list.csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tidings(
        dir,
        &["send", "content/hello.md", "--dry-run", "--out", "dr"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = fs::read_dir(dir.join("dr"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".eml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let parsed = check_eml(&files);
    let (jose, user) = (&parsed[&files[0]], &parsed[&files[1]]);
    assert_eq!(user["to_address"], "user@xn--bcher-kva.example");
    assert_eq!(user["to"], "Ute <user@xn--bcher-kva.example>");
    assert_eq!(user["from_address"], "news@xn--bcher-kva.example");
    assert!(
        user["message_id"]
            .as_str()
            .unwrap()
            .ends_with("@xn--bcher-kva.example>")
    );
    assert_eq!(user["defects"], serde_json::json!([]));
    assert_eq!(user["header_defects"], serde_json::json!([]));
    let raw = fs::read(&files[1]).unwrap();
    let head = &raw[..raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap()];
    assert!(head.is_ascii(), "{}", String::from_utf8_lossy(head));

    // RFC 6532: the UTF-8 address as it is. Python's parser predates that
    // RFC and flags it in the header alone, but reads the address right.
    assert_eq!(jose["to_address"], "josé@xn--bcher-kva.example");
    assert_eq!(jose["defects"], serde_json::json!([]));
    for d in jose["header_defects"].as_array().unwrap() {
        assert!(
            d.as_str().unwrap().starts_with("To: "),
            "{}",
            jose["header_defects"]
        );
    }
    let raw = String::from_utf8(fs::read(&files[0]).unwrap()).unwrap();
    assert!(
        raw.contains("\r\nTo: =?utf-8?b?Sm9zw6k=?= <josé@xn--bcher-kva.example>\r\n")
            || raw.contains("\r\nTo: José <josé@xn--bcher-kva.example>\r\n"),
        "{raw}"
    );
}

#[test]
fn concurrency_flag_is_bounded_like_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    support::copy_fixture("minimal", dir);
    for n in ["0", "100000"] {
        let out = tidings(
            dir,
            &["send", "content/hello.md", "--dry-run", "--concurrency", n],
        );
        assert_eq!(out.status.code(), Some(2), "--concurrency {n}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "invalid value '{n}' for '--concurrency <N>': must be between 1 and 100"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_weak_unsubscribe_secret_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    support::copy_fixture("minimal", dir);
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .current_dir(dir)
        .env("TIDINGS_UNSUBSCRIBE_SECRET", "a".repeat(16))
        .env_remove("TIDINGS_CONFIG")
        .env_remove("TIDINGS_DATABASE_URL")
        .args(["send", "content/hello.md", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: TIDINGS_UNSUBSCRIBE_SECRET is too weak: its 16 characters are only 1 different one; use at least 16 random characters, e.g. `openssl rand -hex 32`"
    );
}
