//! Bounces and complaints (issue 12): fixture reports through the parser
//! and the VERP check, `tidings bounces import` through the binary, and
//! the IMAP fetch against a real Dovecot (run by scripts/test.sh).
//!
//! The fixtures in `tests/fixtures/bounces/` are written from RFC 3464
//! and RFC 5965 and from what Postfix, Exchange, qmail and Gmail send;
//! `postfix-real.eml` is a DSN a real Postfix 3.7 mailed (see
//! `real_postfix_dsn_to_dovecot`). Their VERP tags were made with
//! [`SECRET`] for campaign 7.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidings::bounces::imap::{self, Disposition, Handler, ImapSettings};
use tidings::bounces::{BounceAddress, Kind, Processor, Resolved, Target, Unresolved, Verp};
use tidings::config::Config;

const SECRET: &str = "fixture-secret-0123456789abcdef";

fn fixtures() -> PathBuf {
    support::project_root().join("tests/fixtures/bounces")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn processor() -> Processor {
    Processor::new(
        Some(BounceAddress::parse("bounces@news.example.org").unwrap()),
        Some(Verp::new(SECRET.as_bytes())),
        Some("news.example.org".into()),
    )
}

/// One line per finding: kind, status, who, campaign, how we know.
fn summary(r: &Resolved) -> String {
    let f = &r.finding;
    let how = match &r.target {
        Ok(Target::Delivery { .. }) => "verp".to_string(),
        Ok(Target::Address(_)) => "message-id".to_string(),
        Err(e) => format!("unresolved: {e}"),
    };
    format!(
        "{} {} {} campaign={} {} {}/{}",
        f.kind.word(),
        f.status.as_deref().unwrap_or("-"),
        r.who(),
        r.campaign().map_or("-".into(), |c| c.to_string()),
        how,
        f.source.as_str(),
        f.format
    )
}

fn process(name: &str) -> Vec<Resolved> {
    processor()
        .process(&fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn fixtures_say_what_they_should() {
    let cases: &[(&str, &[&str])] = &[
        (
            "dsn-hard.eml",
            &["hard 5.1.1 ana@example.org campaign=7 verp dsn/rfc3464"],
        ),
        (
            "dsn-soft.eml",
            &["soft 4.2.2 bo@example.net campaign=7 verp dsn/rfc3464"],
        ),
        (
            "dsn-delayed.eml",
            &["ignored 4.4.1 cy@example.com campaign=7 verp dsn/rfc3464"],
        ),
        (
            "arf-complaint.eml",
            &["complaint - dee@example.org campaign=7 verp arf/arf"],
        ),
        (
            "out-of-office.eml",
            &["ignored - key:5157fbbd87c5e25d campaign=7 verp other/auto-reply"],
        ),
        (
            "challenge.eml",
            &["ignored - key:c42f5d0033a838d1 campaign=7 verp other/auto-reply"],
        ),
        (
            "dsn-no-verp-our-message-id.eml",
            &["hard 5.1.1 eli@example.org campaign=- message-id dsn/rfc3464"],
        ),
        (
            "dsn-two-recipients.eml",
            &[
                "hard 5.2.1 gus@example.org campaign=- message-id dsn/rfc3464",
                "ignored 4.4.7 hal@example.org campaign=- message-id dsn/rfc3464",
            ],
        ),
        (
            "exchange.eml",
            &["hard 5.1.1 fay@example.org campaign=7 verp dsn/exchange"],
        ),
        (
            "qmail.eml",
            &["hard 5.1.1 eli@example.org campaign=7 verp dsn/qmail"],
        ),
        (
            "gmail.eml",
            &["hard 5.1.1 ana@example.org campaign=7 verp dsn/gmail"],
        ),
        (
            "gmail-new.eml",
            &["hard 5.1.1 bo@example.net campaign=7 verp dsn/gmail"],
        ),
        (
            "gmail-delayed.eml",
            &["ignored - cy@example.com campaign=7 verp dsn/gmail"],
        ),
        // Mailed by a real Postfix 3.7 (see real_postfix_dsn_to_dovecot).
        (
            "postfix-real.eml",
            &["hard 5.3.0 ana@remote.example campaign=7 verp dsn/rfc3464"],
        ),
        (
            "dsn-forged-tag.eml",
            &[
                "hard 5.1.1 ana@example.org campaign=- unresolved: VERP tag `aedtgsqjb6a346oiwy367xweehwgg` has a wrong signature: forged, or made with another TIDINGS_UNSUBSCRIBE_SECRET dsn/rfc3464",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, want) in cases {
        let got: Vec<String> = process(name).iter().map(summary).collect();
        if got != *want {
            failures.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn details_of_a_dsn() {
    let r = &process("dsn-hard.eml")[0];
    let f = &r.finding;
    assert_eq!(f.kind, Kind::Hard);
    assert_eq!(
        f.diagnostic.as_deref(),
        Some(
            "550 5.1.1 <ana@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
        )
    );
    assert_eq!(f.verp_tag.as_deref(), Some("aed6tfjha6awg3fbnbltjekrnmrg4"));
    assert_eq!(
        f.original_message_id.as_deref(),
        Some("<5f1c0e2ad6b44f0c9c1c2f7d8e9a0b1c@news.example.org>")
    );
    assert_eq!(f.report_id, "<20261202060000.1A2B3C4D5E@relay.example.net>");
    // Reasons of ignored findings say what they are.
    let delayed = &process("dsn-delayed.eml")[0].finding;
    assert_eq!(
        delayed.kind,
        Kind::Ignored("delivery delayed (Action: delayed): still being tried".into())
    );
    let ooo = &process("out-of-office.eml")[0].finding;
    assert_eq!(
        ooo.kind,
        Kind::Ignored("an automatic reply (Auto-Submitted: auto-replied)".into())
    );
    let challenge = &process("challenge.eml")[0].finding;
    assert_eq!(
        challenge.kind,
        Kind::Ignored("a challenge-response request (we never answer those)".into())
    );
    // The complaint's original message is ours.
    let arf = &process("arf-complaint.eml")[0].finding;
    assert_eq!(
        arf.original_message_id.as_deref(),
        Some("<9a8b7c6d5e4f40a1b2c3d4e5f6a7b8c9@news.example.org>")
    );
    assert_eq!(arf.diagnostic.as_deref(), Some("Feedback-Type: abuse"));
    // Plain-text bounces give their reason and quoted Message-ID too.
    let ex = &process("exchange.eml")[0].finding;
    assert_eq!(
        ex.diagnostic.as_deref(),
        Some("Remote Server returned '550 5.1.1 RESOLVER.ADR.RecipNotFound; not found'")
    );
    assert_eq!(
        ex.original_message_id.as_deref(),
        Some("<7d6c5b4a39284716a5b4c3d2e1f0a9b8@news.example.org>")
    );
}

#[test]
fn without_verp_a_report_must_quote_our_message_id() {
    // The same DSN as dsn-no-verp-our-message-id.eml, quoting someone
    // else's message: nobody to act on.
    let raw = String::from_utf8(fixture("dsn-no-verp-our-message-id.eml"))
        .unwrap()
        .replace("@news.example.org>\nDate", "@elsewhere.example>\nDate");
    let r = &processor().process(raw.as_bytes()).unwrap()[0];
    assert_eq!(r.target, Err(Unresolved::NotOurs));
    assert_eq!(
        Unresolved::NotOurs.to_string(),
        "no VERP tag and no Message-ID of ours quoted: cannot tell the report is about our mail"
    );
    // Without the secret a tag cannot be checked: refused, not trusted.
    let blind = Processor::new(
        Some(BounceAddress::parse("bounces@news.example.org").unwrap()),
        None,
        Some("news.example.org".into()),
    );
    let r = &blind.process(&fixture("dsn-hard.eml")).unwrap()[0];
    assert_eq!(
        r.target.as_ref().unwrap_err().to_string(),
        "VERP tag `aed6tfjha6awg3fbnbltjekrnmrg4` cannot be checked without TIDINGS_UNSUBSCRIBE_SECRET (the secret the send used)"
    );
}

#[test]
fn malformed_mime_is_an_error_that_says_what_is_wrong() {
    let p = processor();
    assert_eq!(
        p.process(&fixture("malformed-no-boundary.eml"))
            .unwrap_err()
            .to_string(),
        "malformed message: Content-Type multipart/report has no boundary parameter, so its parts cannot be found"
    );
    assert_eq!(
        p.process(&fixture("malformed-no-dsn-part.eml"))
            .unwrap_err()
            .to_string(),
        "malformed message: multipart/report of type delivery-status without a message/delivery-status part"
    );
    assert_eq!(
        p.process(b"").unwrap_err().to_string(),
        "not an email message: no header found (empty, truncated or binary?)"
    );
}

#[test]
fn no_input_panics() {
    // Every prefix of every fixture, and bytes flipped: errors or
    // findings, never a panic.
    let p = processor();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        for cut in (0..raw.len()).step_by(7) {
            let _ = p.process(&raw[..cut]);
        }
        let mut flipped = raw.clone();
        for i in (0..flipped.len()).step_by(13) {
            flipped[i] ^= 0x55;
        }
        let _ = p.process(&flipped);
    }
}

#[test]
fn the_report_id_makes_reprocessing_recognisable() {
    let a = process("dsn-soft.eml");
    let b = process("dsn-soft.eml");
    assert_eq!(a[0].finding.report_id, b[0].finding.report_id);
    // No Message-ID: a hash of the bytes stands in.
    let raw = String::from_utf8(fixture("gmail-new.eml")).unwrap();
    let without: String = raw
        .lines()
        .filter(|l| !l.starts_with("Message-ID"))
        .map(|l| format!("{l}\n"))
        .collect();
    let id = &processor().process(without.as_bytes()).unwrap()[0]
        .finding
        .report_id;
    assert!(id.starts_with("sha256:") && id.len() == 7 + 32, "{id}");
}

// ------------------------------------------------------------ the binary

fn import(args: &[&str]) -> std::process::Output {
    let mut cmd = support::tidings();
    cmd.args(["bounces", "import"])
        .args(args)
        .env("TIDINGS_UNSUBSCRIBE_SECRET", SECRET)
        .env("TIDINGS_BOUNCES_ADDRESS", "bounces@news.example.org")
        .env(
            "TIDINGS_NEWSLETTER_FROM",
            "Test Letter <news@news.example.org>",
        );
    support::run(&mut cmd, Duration::from_secs(60))
}

#[test]
fn import_dry_run_prints_each_finding_and_reports_unreadable_ones() {
    let dir = fixtures();
    let out = import(&["--dry-run", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Two malformed fixtures: the run goes on, and exits 1.
    assert_eq!(out.status.code(), Some(1), "{}", support::describe(&out));
    let hard = format!(
        "{}: hard 5.1.1 ana@example.org, campaign 7 (VERP tag) [rfc3464]: would mark bounced and suppress",
        dir.join("dsn-hard.eml").display()
    );
    assert!(stdout.lines().any(|l| l == hard), "{stdout}");
    let complaint = format!(
        "{}: complaint dee@example.org, campaign 7 (VERP tag) [arf]: would unsubscribe and suppress (complaint)",
        dir.join("arf-complaint.eml").display()
    );
    assert!(stdout.lines().any(|l| l == complaint), "{stdout}");
    let forged = format!(
        "{}: hard 5.1.1 ana@example.org [rfc3464]: nothing done: VERP tag `aedtgsqjb6a346oiwy367xweehwgg` has a wrong signature: forged, or made with another TIDINGS_UNSUBSCRIBE_SECRET",
        dir.join("dsn-forged-tag.eml").display()
    );
    assert!(stdout.lines().any(|l| l == forged), "{stdout}");
    let malformed = format!(
        "error: {}: malformed message: Content-Type multipart/report has no boundary parameter, so its parts cannot be found; nothing was changed",
        dir.join("malformed-no-boundary.eml").display()
    );
    assert!(stderr.lines().any(|l| l == malformed), "{stderr}");
    assert!(
        stderr.contains(
            "17 messages: 8 hard, 1 soft, 1 complaints, 5 ignored, 1 refused, 2 unreadable in "
        ),
        "{stderr}"
    );
}

/// Without --dry-run the store learns each finding once: the subscriber
/// is bounced, the complainer unsubscribed for good, and the same reports
/// again change nothing.
#[test]
fn import_applies_each_report_once() {
    let project = tempfile::tempdir().unwrap();
    support::copy_fixture("minimal", project.path());
    for who in ["ana@example.org", "dee@example.org"] {
        let out = support::run(
            &mut project_command(project.path(), &["subscribers", "add", who]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}", support::describe(&out));
    }
    let dir = fixtures();
    let reports = [
        dir.join("dsn-hard.eml").display().to_string(),
        dir.join("arf-complaint.eml").display().to_string(),
        dir.join("out-of-office.eml").display().to_string(),
        // Our domain in the quoted Message-ID, but no such delivery: a
        // forged report must not suppress anyone.
        dir.join("dsn-no-verp-our-message-id.eml")
            .display()
            .to_string(),
    ];
    let import = |quiet: bool| {
        let mut args = vec!["bounces", "import"];
        if quiet {
            args.push("--quiet");
        }
        args.extend(reports.iter().map(String::as_str));
        support::run(
            &mut project_command(project.path(), &args),
            Duration::from_secs(60),
        )
    };
    let out = import(false);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let actions: Vec<&str> = stdout
        .lines()
        .map(|l| l.rsplit_once("]: ").unwrap().1)
        .collect();
    assert_eq!(
        actions,
        [
            "marked bounced, suppressed",
            "unsubscribed, suppressed (complaint)",
            "nothing done: an automatic reply (Auto-Submitted: auto-replied)",
            "not a delivery the journal recorded: nothing changed",
        ],
        "{stdout}"
    );
    let again = import(false);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        support::describe(&again)
    );
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        stdout.matches("already processed: nothing changed").count(),
        2,
        "{stdout}"
    );

    let list = |status: &str| {
        let out = support::run(
            &mut project_command(project.path(), &["subscribers", "list", "--status", status]),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(
        list("bounced").contains("ana@example.org"),
        "{}",
        list("bounced")
    );
    assert!(
        list("unsubscribed").contains("dee@example.org"),
        "{}",
        list("unsubscribed")
    );
    let out = support::run(
        &mut project_command(project.path(), &["bounces", "list"]),
        Duration::from_secs(60),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    // newest first: address, kind, status, campaign, source, action
    assert_eq!(
        rows.iter()
            .map(|r| (r[1], r[2], r[5], r[6]))
            .collect::<Vec<_>>(),
        [
            ("dee@example.org", "complaint", "arf", "unsubscribed"),
            ("ana@example.org", "hard", "dsn", "bounced"),
        ],
        "{table}"
    );
}

#[test]
fn import_reads_an_mbox_and_a_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["dsn-hard.eml", "dsn-soft.eml", "arf-complaint.eml"];
    // mbox: each message after a `From ` line; a body line starting with
    // `From ` is escaped as `>From `.
    let mut mbox = Vec::new();
    for n in names {
        mbox.extend_from_slice(b"From MAILER-DAEMON Wed Dec  2 06:00:00 2026\n");
        mbox.extend_from_slice(&fixture(n));
        mbox.extend_from_slice(b"\n");
    }
    let mbox_path = dir.path().join("bounces.mbox");
    std::fs::write(&mbox_path, &mbox).unwrap();
    let maildir = dir.path().join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for (i, n) in names.iter().enumerate() {
        let sub = if i == 0 { "cur" } else { "new" };
        std::fs::write(maildir.join(sub).join(format!("{i}.host:2,")), fixture(n)).unwrap();
    }
    let out = import(&[
        "--dry-run",
        mbox_path.to_str().unwrap(),
        maildir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:1: hard 5.1.1 ana@example.org",
            mbox_path.display()
        )),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "6 messages: 2 hard, 2 soft, 2 complaints, 0 ignored, 0 refused, 0 unreadable"
        ),
        "{}",
        support::describe(&out)
    );
}

#[test]
fn config_errors_name_the_key() {
    let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
    assert_eq!(
        err("[bounces]\naddress = \"bounces\"\n"),
        "t.toml: bounces.address `bounces` is not an address: write e.g. bounces@news.example.org"
    );
    assert_eq!(
        err("[bounces]\nimap_url = \"pop3://mail.example.org\"\n"),
        "t.toml: bounces.imap_url `pop3://mail.example.org` is not an IMAP URL: write imaps://host[:port]/FOLDER (TLS) or imap://host[:port]/FOLDER (STARTTLS)"
    );
    assert_eq!(
        err("[bounces]\nsoft_limit = 0\n"),
        "t.toml: bounces.soft_limit must be at least 1 (soft bounces within the last 5 sends)"
    );
    assert_eq!(
        err("[bounces]\nimap_url = \"imaps://h/INBOX\"\nprocessed_folder = \"INBOX\"\n"),
        "t.toml: bounces.processed_folder `INBOX` is the folder bounces.imap_url reads: use another one, e.g. \"Processed\""
    );
    assert!(
        err("[bounces]\npassword = \"x\"\n").ends_with(
            "; the IMAP password is never read from the file: set TIDINGS_BOUNCES_PASSWORD"
        ),
        "{}",
        err("[bounces]\npassword = \"x\"\n")
    );
    let c = Config::parse_with_env(
        "",
        "t.toml",
        [
            ("TIDINGS_BOUNCES_SOFT_LIMIT".to_string(), "5".to_string()),
            ("TIDINGS_BOUNCES_PASSWORD".to_string(), "pw".to_string()),
        ],
    )
    .unwrap();
    assert_eq!(c.bounces.soft_limit, 5);
    assert_eq!(c.bounces.processed_folder, "Processed");
    assert_eq!(
        format!("{:?}", c.secrets.bounces_password),
        "Some(Secret(***))"
    );
}

// ------------------------------------------------------------------ IMAP

/// Records what it was handed.
#[derive(Default)]
struct Recorder {
    seen: Vec<(String, Vec<Resolved>)>,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&mut self, origin: &str, raw: &[u8]) -> Disposition {
        let found = processor().process(raw).unwrap_or_default();
        self.seen.push((origin.to_string(), found));
        Disposition::Done
    }
}

fn imap_config(url: &str, ca: Option<&Path>, password: &str) -> ImapSettings {
    let mut text = format!(
        "[bounces]\nimap_url = \"{url}\"\nusername = \"{}\"\n",
        support::mail::USER
    );
    if let Some(ca) = ca {
        text.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    let config = Config::parse_with_env(
        &text,
        "t.toml",
        [("TIDINGS_BOUNCES_PASSWORD".to_string(), password.to_string())],
    )
    .unwrap();
    ImapSettings::from_config(&config).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "needs Dovecot and openssl: run scripts/test.sh"]
fn imap_fetch_moves_what_it_processed() {
    let dir = support::scratch_dir("bounces-imap-fetch");
    let server = support::mail::Dovecot::start(&dir, &[]);
    for n in ["dsn-hard.eml", "arf-complaint.eml", "out-of-office.eml"] {
        server.deliver(None, n, &fixture(n));
    }
    let ca = dir.join("ca.crt");
    let settings = imap_config(
        &format!("imaps://127.0.0.1:{}/INBOX", server.imaps_port),
        Some(&ca),
        support::mail::PASSWORD,
    );
    let rt = rt();
    let mut rec = Recorder::default();
    let stats = rt
        .block_on(imap::fetch(&settings, false, &mut rec))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!((stats.unseen, stats.moved), (3, 3), "{stats:?}");
    let kinds: Vec<String> = rec.seen.iter().map(|(_, f)| summary(&f[0])).collect();
    assert!(
        kinds.contains(&"hard 5.1.1 ana@example.org campaign=7 verp dsn/rfc3464".to_string()),
        "{kinds:?}"
    );
    assert!(
        rec.seen[0].0.starts_with("imap:INBOX/uid "),
        "{:?}",
        rec.seen[0].0
    );
    // Moved: the folder was created, INBOX is empty, a second fetch finds nothing.
    assert_eq!(server.count(None), 0);
    assert_eq!(server.count(Some("Processed")), 3);
    let mut again = Recorder::default();
    let stats = rt
        .block_on(imap::fetch(&settings, false, &mut again))
        .unwrap();
    assert_eq!((stats.unseen, again.seen.len()), (0, 0));

    // STARTTLS on the plain port, and a dry run that changes nothing.
    server.deliver(None, "soft.eml", &fixture("dsn-soft.eml"));
    let starttls = imap_config(
        &format!("imap://127.0.0.1:{}/INBOX", server.imap_port),
        Some(&ca),
        support::mail::PASSWORD,
    );
    let mut dry = Recorder::default();
    let stats = rt.block_on(imap::fetch(&starttls, true, &mut dry)).unwrap();
    assert_eq!((stats.unseen, stats.moved, dry.seen.len()), (1, 0, 1));
    // Still unseen (read with BODY.PEEK), so a real fetch takes it.
    let mut real = Recorder::default();
    let stats = rt
        .block_on(imap::fetch(&starttls, false, &mut real))
        .unwrap();
    assert_eq!((stats.unseen, stats.moved), (1, 1));
    assert_eq!(server.count(Some("Processed")), 4);
}

#[test]
#[ignore = "needs Dovecot and openssl: run scripts/test.sh"]
fn without_move_messages_are_flagged_seen() {
    let dir = support::scratch_dir("bounces-imap-no-move");
    // The capabilities Dovecot announces, without MOVE.
    let server = support::mail::Dovecot::start_with(
        &dir,
        &["Processed"],
        "imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE UIDPLUS",
    );
    server.deliver(None, "hard.eml", &fixture("dsn-hard.eml"));
    let settings = imap_config(
        &format!("imaps://127.0.0.1:{}/INBOX", server.imaps_port),
        Some(&dir.join("ca.crt")),
        support::mail::PASSWORD,
    );
    let rt = rt();
    let stats = rt
        .block_on(imap::fetch(&settings, false, &mut Recorder::default()))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!((stats.unseen, stats.moved, stats.flagged), (1, 0, 1));
    assert_eq!(server.count(None), 1);
    let stats = rt
        .block_on(imap::fetch(&settings, false, &mut Recorder::default()))
        .unwrap();
    assert_eq!(stats.unseen, 0);
}

#[test]
#[ignore = "needs Dovecot and openssl: run scripts/test.sh"]
fn imap_errors_say_what_to_fix() {
    let dir = support::scratch_dir("bounces-imap-errors");
    let server = support::mail::Dovecot::start(&dir, &[]);
    let ca = dir.join("ca.crt");
    let url = format!("imaps://127.0.0.1:{}/INBOX", server.imaps_port);
    let rt = rt();
    let fetch = |s: &ImapSettings| {
        rt.block_on(imap::fetch(s, false, &mut Recorder::default()))
            .unwrap_err()
            .to_string()
    };
    let bad_login = fetch(&imap_config(&url, Some(&ca), "wrong"));
    assert!(
        bad_login.starts_with(&format!(
            "127.0.0.1 refused the login of `{}`: ",
            support::mail::USER
        )) && bad_login.ends_with(" — check bounces.username and TIDINGS_BOUNCES_PASSWORD"),
        "{bad_login}"
    );
    assert!(
        !bad_login.contains("wrong"),
        "the password is never shown: {bad_login}"
    );
    let missing = fetch(&imap_config(
        &format!("imaps://127.0.0.1:{}/Bounces", server.imaps_port),
        Some(&ca),
        support::mail::PASSWORD,
    ));
    assert_eq!(
        missing,
        "127.0.0.1 has no folder `Bounces` (it has: INBOX) — check the folder in bounces.imap_url"
    );
    // Without the private CA the certificate is not trusted.
    let untrusted = fetch(&imap_config(&url, None, support::mail::PASSWORD));
    assert!(
        untrusted.starts_with("TLS with 127.0.0.1 failed: ")
            && untrusted.contains("bounces.ca_file for a private CA"),
        "{untrusted}"
    );
}

#[test]
#[ignore = "needs Dovecot and openssl: run scripts/test.sh"]
fn fetch_dry_run_through_the_binary() {
    let dir = support::scratch_dir("bounces-imap-cli");
    let server = support::mail::Dovecot::start(&dir, &["Processed"]);
    server.deliver(None, "hard.eml", &fixture("dsn-hard.eml"));
    let mut cmd = support::tidings();
    cmd.args(["bounces", "fetch", "--dry-run"])
        .env("TIDINGS_UNSUBSCRIBE_SECRET", SECRET)
        .env("TIDINGS_BOUNCES_ADDRESS", "bounces@news.example.org")
        .env(
            "TIDINGS_BOUNCES_IMAP_URL",
            format!("imaps://127.0.0.1:{}/INBOX", server.imaps_port),
        )
        .env("TIDINGS_BOUNCES_USERNAME", support::mail::USER)
        .env("TIDINGS_BOUNCES_CA_FILE", dir.join("ca.crt"))
        .env("TIDINGS_BOUNCES_PASSWORD", support::mail::PASSWORD);
    let out = support::run(&mut cmd, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        support::describe(&out),
        server.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": hard 5.1.1 ana@example.org, campaign 7 (VERP tag) [rfc3464]: would mark bounced and suppress"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 unseen; nothing moved (dry run)"));
    assert_eq!(server.count(None), 1);
}

// ------------------------------------------------------- end to end

fn project_command(project: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    c.current_dir(project);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("TIDINGS_") {
            c.env_remove(var);
        }
    }
    c.env("TIDINGS_UNSUBSCRIBE_SECRET", SECRET)
        .env("TIDINGS_BOUNCES_ADDRESS", "bounces@news.example.org")
        .env(
            "TIDINGS_NEWSLETTER_FROM",
            "Test Letter <news@news.example.org>",
        )
        .args(args);
    c
}

/// The whole way with real servers: tidings sends a campaign through a
/// throwaway Postfix relay, which says 250 to all, then meets a next hop
/// refusing the recipients of remote.example and mails real RFC 3464
/// bounces to the VERP envelope senders; those land in Dovecot's mailbox,
/// and `bounces fetch` reads them over IMAP with TLS and finds exactly the
/// refused recipients, with the campaign. (Marking them in the store waits
/// for the store's side of issue 12; this run is a dry run.)
#[test]
#[ignore = "needs Postfix, smtp-sink, Dovecot and openssl, as root: run scripts/test.sh"]
fn real_postfix_dsn_to_dovecot() {
    let dir = support::scratch_dir("bounces-e2e");
    for d in ["dovecot", "postfix", "project"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let dovecot = support::mail::Dovecot::start(&dir.join("dovecot"), &[]);
    let refuse = support::mail::Sink::start(true);
    let accept = support::mail::Sink::start(false);
    let postfix = support::mail::Postfix::start(
        &dir.join("postfix"),
        &[("remote.example", refuse.port), ("ok.example", accept.port)],
        "bounces@news.example.org",
        &dovecot.maildir,
    );
    let project = dir.join("project");
    support::copy_fixture("minimal", &project);
    std::fs::write(
        project.join("list.csv"),
        "email\nana@remote.example\nbo@remote.example\ncy@ok.example\n",
    )
    .unwrap();
    // The list through the relay (`extra`: more arguments to `send`).
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "content/hello.md",
            "--subscribers",
            "list.csv",
            "--yes",
        ];
        args.extend_from_slice(extra);
        support::run(
            project_command(&project, &args)
                .env("TIDINGS_SMTP_HOST", "127.0.0.1")
                .env("TIDINGS_SMTP_PORT", postfix.port.to_string())
                .env("TIDINGS_SMTP_TLS", "none")
                .env("TIDINGS_SEND_RATE", "unlimited"),
            Duration::from_secs(120),
        )
    };
    let out = send(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        support::describe(&out),
        postfix.log()
    );
    // The relay took all three; two bounces come back.
    let started = std::time::Instant::now();
    while dovecot.count(None) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no bounces after 30 s:\n{}",
            postfix.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dovecot.count(None), 2, "{}", postfix.log());

    // The bounce mailbox over IMAP with TLS (`extra`: `--dry-run`).
    let fetch = |extra: &[&str]| {
        let mut args = vec!["bounces", "fetch"];
        args.extend_from_slice(extra);
        support::run(
            project_command(&project, &args)
                .env(
                    "TIDINGS_BOUNCES_IMAP_URL",
                    format!("imaps://127.0.0.1:{}/INBOX", dovecot.imaps_port),
                )
                .env("TIDINGS_BOUNCES_USERNAME", support::mail::USER)
                .env("TIDINGS_BOUNCES_CA_FILE", dir.join("dovecot/ca.crt"))
                .env("TIDINGS_BOUNCES_PASSWORD", support::mail::PASSWORD),
            Duration::from_secs(60),
        )
    };
    let out = fetch(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<String> = stdout
        .lines()
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "hard 5.3.0 ana@remote.example, campaign 1 (VERP tag) [rfc3464]: would mark bounced and suppress",
            "hard 5.3.0 bo@remote.example, campaign 1 (VERP tag) [rfc3464]: would mark bounced and suppress",
        ],
        "{}",
        support::describe(&out)
    );

    // For real: exactly those two are blocked, the messages move to the
    // processed folder, a second fetch finds nothing, and the next send
    // of the issue skips them.
    let out = fetch(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<String> = stdout
        .lines()
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "hard 5.3.0 ana@remote.example, campaign 1 (VERP tag) [rfc3464]: marked bounced, suppressed",
            "hard 5.3.0 bo@remote.example, campaign 1 (VERP tag) [rfc3464]: marked bounced, suppressed",
        ],
        "{}",
        support::describe(&out)
    );
    let again = fetch(&[]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        support::describe(&again)
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "",
        "{}",
        support::describe(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 unseen"),
        "{}",
        support::describe(&again)
    );
    let out = send(&["--resend"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("to 1 recipient "),
        "{}",
        support::describe(&out)
    );
    let out = support::run(
        &mut project_command(&project, &["status", "content/hello.md"]),
        Duration::from_secs(60),
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("after the relay accepted: 2 bounced, 0 complained"),
        "{status}"
    );
}
