//! Provider webhooks of `tidings serve` through the real binary, with each
//! provider's documented payload shape: a valid signature marks the
//! subscriber (seen with `tidings subscribers list` and `bounces list`),
//! a bad one is a 401 that changes nothing, a repeat changes nothing.
//!
//! SES: a private CA and a signing certificate are made here with
//! openssl; a small rustls server on loopback serves the certificate (and
//! answers the SubscribeURL); SNS messages are signed here exactly as SNS
//! signs them (the string-to-sign rules, SHA1withRSA for SignatureVersion
//! 1, SHA256withRSA for 2). The server trusts that loopback host only
//! through the test-only `webhooks.ses.test_cert_host` and `ca_file`.
//!
//! Needs the binary and `openssl`, nothing else.

#[path = "support/http.rs"]
mod http;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET: &str = "webhook-test-unsubscribe-secret-0123";
const POSTMARK_PASSWORD: &str = "pm-password-0123456789";
const MAILGUN_KEY: &str = "key-mailgun-signing-0123456789";
const GENERIC_SECRET: &str = "generic-webhook-secret-0123456789";
const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-bounces";

// ------------------------------------------------------------- project

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// The `minimal` fixture with `extra` appended to its `tidings.toml`.
    fn new(extra: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &support::project_root().join("tests/fixtures/minimal"),
            dir.path(),
        );
        let config = dir.path().join("tidings.toml");
        let mut text = fs::read_to_string(&config).unwrap();
        text.push('\n');
        text.push_str(extra);
        fs::write(&config, text).unwrap();
        Project { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.current_dir(self.dir.path());
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("TIDINGS_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("TIDINGS_UNSUBSCRIBE_SECRET", SECRET)
            .env("TIDINGS_WEBHOOKS_POSTMARK_PASSWORD", POSTMARK_PASSWORD)
            .env("TIDINGS_WEBHOOKS_MAILGUN_KEY", MAILGUN_KEY)
            .env("TIDINGS_WEBHOOKS_SECRET", GENERIC_SECRET)
            .args(args);
        cmd
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let out = support::run(&mut self.command(args), Duration::from_secs(120));
        assert!(
            out.status.success(),
            "tidings {} failed:\n{}",
            args.join(" "),
            support::describe(&out)
        );
        out
    }

    fn add(&self, emails: &[&str]) {
        for e in emails {
            self.run_ok(&["subscribers", "add", e]);
        }
    }

    /// Address -> status.
    fn statuses(&self) -> BTreeMap<String, String> {
        let out = self.run_ok(&["subscribers", "list", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.iter()
            .map(|r| {
                (
                    r["email"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn status(&self, email: &str) -> String {
        self.statuses()
            .remove(email)
            .unwrap_or_else(|| panic!("{email} is not in the store"))
    }

    fn bounces_list(&self) -> String {
        String::from_utf8(self.run_ok(&["bounces", "list"]).stdout).unwrap()
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&to).unwrap();
            copy_dir(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// `tidings serve` on a free loopback port; killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(p: &Project) -> Server {
        let log = p.path("serve.log");
        let mut child = p
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("tidings serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tidings serve did not start (first line {line:?}); its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            addr: addr.to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> http::Response {
        let mut h = vec![("Content-Type", "application/json")];
        h.extend_from_slice(headers);
        http::request(&self.addr, "POST", path, &h, body.as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `{"received":N,"changed":M}` of a 200.
fn counts(r: &http::Response) -> (u64, u64) {
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    (
        v["received"].as_u64().unwrap(),
        v["changed"].as_u64().unwrap(),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac_hex(key: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(data);
    hex(&mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------ Postmark

fn postmark_bounce(id: u64, kind: &str, email: &str) -> String {
    // Postmark's documented Bounce webhook.
    serde_json::json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": id,
        "Type": kind, "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email, "From": "news@example.org",
        "BouncedAt": "2026-11-05T16:33:54.9070259Z", "DumpAvailable": true,
        "Inactive": true, "CanActivate": true, "Subject": "Test subject"
    })
    .to_string()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[test]
fn postmark_basic_auth_bounces_and_complaints() {
    let p = Project::new("[webhooks.postmark]\nusername = \"postmark\"\n");
    p.add(&["hard@example.com", "spam@example.com", "soft@example.com"]);
    let s = Server::start(&p);
    let good = basic("postmark", POSTMARK_PASSWORD);
    let body = postmark_bounce(42, "HardBounce", "hard@example.com");

    // Wrong password, wrong user, none: 401 and nothing changes.
    for auth in [
        Some(basic("postmark", "wrong")),
        Some(basic("other", POSTMARK_PASSWORD)),
        None,
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let r = s.post("/webhooks/postmark", &headers, &body);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
    }
    assert_eq!(p.status("hard@example.com"), "active");

    let auth = [("Authorization", good.as_str())];
    assert_eq!(counts(&s.post("/webhooks/postmark", &auth, &body)), (1, 1));
    assert_eq!(p.status("hard@example.com"), "bounced");
    // Postmark retries: the same record changes nothing.
    assert_eq!(counts(&s.post("/webhooks/postmark", &auth, &body)), (1, 0));

    let complaint = serde_json::json!({
        "RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": 43,
        "Type": "SpamComplaint", "TypeCode": 512, "Name": "Spam complaint",
        "MessageID": "00000000-0000-0000-0000-000000000000", "ServerID": 1234,
        "Description": "", "Details": "Test spam complaint details",
        "Email": "spam@example.com", "From": "news@example.org",
        "BouncedAt": "2026-11-05T16:33:54.9070259Z", "DumpAvailable": true,
        "Inactive": true, "CanActivate": false, "Subject": "Test subject"
    })
    .to_string();
    assert_eq!(
        counts(&s.post("/webhooks/postmark", &auth, &complaint)),
        (1, 1)
    );
    assert_eq!(p.status("spam@example.com"), "unsubscribed");

    // A soft bounce is counted, not acted on at once.
    let soft = postmark_bounce(44, "SoftBounce", "soft@example.com");
    assert_eq!(counts(&s.post("/webhooks/postmark", &auth, &soft)), (1, 1));
    assert_eq!(p.status("soft@example.com"), "active");

    let r = s.post("/webhooks/postmark", &auth, "{\"RecordType\": ");
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("the body is not JSON"), "{}", r.body);

    let list = p.bounces_list();
    assert!(list.contains("webhook:postmark"), "{list}");
    let log = s.log();
    assert!(log.contains("route=/webhooks/postmark status=200"), "{log}");
    assert!(log.contains("outcome=learned count=1"), "{log}");
    assert!(
        !log.contains("hard@example.com") && !log.contains(POSTMARK_PASSWORD),
        "{log}"
    );
}

// ------------------------------------------------------------- Mailgun

/// Mailgun's documented webhook body: `signature` and `event-data`.
fn mailgun_body(key: &str, ts: u64, token: &str, event: serde_json::Value) -> String {
    serde_json::json!({
        "signature": {
            "timestamp": ts.to_string(), "token": token,
            "signature": hmac_hex(key, format!("{ts}{token}").as_bytes()),
        },
        "event-data": event,
    })
    .to_string()
}

fn mailgun_failed(id: &str, severity: &str, email: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "timestamp": 1521233195.375624, "log-level": "error",
        "event": "failed", "severity": severity, "reason": "bounce",
        "recipient": email, "recipient-domain": "example.com",
        "envelope": {"sender": "bounces@example.org", "transport": "smtp", "targets": email},
        "delivery-status": {"attempt-no": 1, "code": 550,
            "message": "5.1.1 The email account that you tried to reach does not exist",
            "description": "", "session-seconds": 0.1},
        "message": {"headers": {"to": email, "message-id": "20261116.1.abc@example.org",
            "from": "news@example.org", "subject": "Test"}, "attachments": [], "size": 111},
        "flags": {"is-routed": false, "is-authenticated": true, "is-system-test": false, "is-test-mode": false},
        "tags": [], "user-variables": {}
    })
}

#[test]
fn mailgun_signed_fresh_and_once() {
    let p = Project::new("[webhooks.mailgun]\nmax_age = \"5m\"\n");
    p.add(&[
        "hard@example.com",
        "spam@example.com",
        "soft@example.com",
        "x@example.com",
    ]);
    let s = Server::start(&p);
    let now = unix_now();
    let post = |body: &str| s.post("/webhooks/mailgun", &[], body);

    // A bad key, a stale timestamp: 401, nothing changes.
    let r = post(&mailgun_body(
        "wrong",
        now,
        "tok-0",
        mailgun_failed("e0", "permanent", "x@example.com"),
    ));
    assert_eq!(r.status, 401);
    assert_eq!(r.body.trim(), "signature does not match");
    let r = post(&mailgun_body(
        MAILGUN_KEY,
        now - 600,
        "tok-1",
        mailgun_failed("e1", "permanent", "x@example.com"),
    ));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body.trim(),
        "signature.timestamp is too old (or in the future)"
    );
    assert_eq!(p.status("x@example.com"), "active");

    let body = mailgun_body(
        MAILGUN_KEY,
        now,
        "tok-2",
        mailgun_failed("e2", "permanent", "hard@example.com"),
    );
    assert_eq!(counts(&post(&body)), (1, 1));
    assert_eq!(p.status("hard@example.com"), "bounced");
    // The same token again is a replay: refused.
    let r = post(&body);
    assert_eq!(r.status, 401);
    assert_eq!(r.body.trim(), "signature.token was used before (a replay)");
    // Mailgun's retry of the same event (a new token) changes nothing.
    let retry = mailgun_body(
        MAILGUN_KEY,
        now,
        "tok-3",
        mailgun_failed("e2", "permanent", "hard@example.com"),
    );
    assert_eq!(counts(&post(&retry)), (1, 0));

    let soft = mailgun_body(
        MAILGUN_KEY,
        now,
        "tok-4",
        mailgun_failed("e4", "temporary", "soft@example.com"),
    );
    assert_eq!(counts(&post(&soft)), (1, 1));
    assert_eq!(p.status("soft@example.com"), "active");

    let complained = serde_json::json!({
        "id": "e5", "event": "complained", "recipient": "spam@example.com",
        "timestamp": 1521233195.375624, "log-level": "warn",
        "message": {"headers": {"message-id": "20261116.2.abc@example.org"}},
        "tags": [], "user-variables": {}
    });
    assert_eq!(
        counts(&post(&mailgun_body(MAILGUN_KEY, now, "tok-5", complained))),
        (1, 1)
    );
    assert_eq!(p.status("spam@example.com"), "unsubscribed");

    // Other events are received and learn nothing.
    let delivered =
        serde_json::json!({"id": "e6", "event": "delivered", "recipient": "x@example.com"});
    assert_eq!(
        counts(&post(&mailgun_body(MAILGUN_KEY, now, "tok-6", delivered))),
        (0, 0)
    );
    assert_eq!(p.status("x@example.com"), "active");
    assert!(p.bounces_list().contains("webhook:mailgun"));
}

/// An SMTP server on loopback that accepts every message and keeps each
/// one's Message-ID: enough for a real `tidings send` to write its journal.
fn start_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let kept = ids.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let kept = kept.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut out = conn.try_clone()?;
                let mut lines = BufReader::new(conn);
                out.write_all(b"220 sink ESMTP\r\n")?;
                let mut line = String::new();
                let mut data = false;
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if data {
                        if line == ".\r\n" {
                            data = false;
                            out.write_all(b"250 2.0.0 queued\r\n")?;
                        } else if let Some(id) = line.strip_prefix("Message-ID: ") {
                            kept.lock().unwrap().push(id.trim().to_string());
                        }
                        continue;
                    }
                    match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                        "EHLO" => out.write_all(b"250-sink\r\n250 8BITMIME\r\n")?,
                        "DATA" => {
                            data = true;
                            out.write_all(b"354 go on\r\n")?;
                        }
                        "QUIT" => return out.write_all(b"221 bye\r\n"),
                        _ => out.write_all(b"250 ok\r\n")?,
                    }
                }
            });
        }
    });
    (port, ids)
}

#[test]
fn a_report_quoting_our_message_id_names_the_campaign() {
    let p = Project::new("[webhooks.mailgun]\n");
    p.add(&["ana@example.com"]);
    let (port, ids) = start_sink();
    let out = support::run(
        p.command(&[
            "send",
            "content/hello.md",
            "--yes",
            "--quiet",
            "--rate",
            "unlimited",
        ])
        .env("TIDINGS_SMTP_PORT", port.to_string())
        .env("TIDINGS_SMTP_TIMEOUT_SECS", "5"),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", support::describe(&out));
    let id = ids
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("the sink got a message");
    let s = Server::start(&p);
    // Mailgun quotes the Message-ID without its angle brackets.
    let mut event = mailgun_failed("e-1", "permanent", "ana@example.com");
    event["message"]["headers"]["message-id"] =
        id.trim_start_matches('<').trim_end_matches('>').into();
    let body = mailgun_body(MAILGUN_KEY, unix_now(), "tok-1", event);
    assert_eq!(counts(&s.post("/webhooks/mailgun", &[], &body)), (1, 1));
    assert_eq!(p.status("ana@example.com"), "bounced");
    let list = p.bounces_list();
    let row = list
        .lines()
        .find(|l| l.contains("ana@example.com"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("\thello ("), "the campaign is named: {row}");
    assert!(row.contains("\twebhook:mailgun\t"), "{row}");
}

// ------------------------------------------------------------- generic

#[test]
fn generic_hmac_of_the_raw_body() {
    let p = Project::new("[webhooks.generic]\n");
    p.add(&["hard@example.com", "x@example.com"]);
    let s = Server::start(&p);
    let body = r#"{"id": "ev-1", "email": "hard@example.com", "kind": "hard", "status": "5.1.1", "diagnostic": "550 5.1.1 no such user", "message_id": "<abc@example.org>"}"#;
    let sig = format!("sha256={}", hmac_hex(GENERIC_SECRET, body.as_bytes()));

    let forged = format!(
        "sha256={}",
        hmac_hex("another-secret-0123456789", body.as_bytes())
    );
    for headers in [vec![("X-Tidings-Signature", forged.as_str())], vec![]] {
        let r = s.post("/webhooks/generic", &headers, body);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    // The signature of another body.
    let other = body.replace("hard@", "x@");
    let r = s.post(
        "/webhooks/generic",
        &[("X-Tidings-Signature", sig.as_str())],
        &other,
    );
    assert_eq!(r.status, 401);
    assert_eq!(p.status("hard@example.com"), "active");
    assert_eq!(p.status("x@example.com"), "active");

    let h = [("X-Tidings-Signature", sig.as_str())];
    assert_eq!(counts(&s.post("/webhooks/generic", &h, body)), (1, 1));
    assert_eq!(p.status("hard@example.com"), "bounced");
    assert_eq!(counts(&s.post("/webhooks/generic", &h, body)), (1, 0));

    let bad = r#"{"id": "ev-2", "email": "x@example.com", "kind": "bounce"}"#;
    let sig = format!("sha256={}", hmac_hex(GENERIC_SECRET, bad.as_bytes()));
    let r = s.post(
        "/webhooks/generic",
        &[("X-Tidings-Signature", sig.as_str())],
        bad,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.body.trim(), "`kind` must be hard, soft or complaint");
    assert_eq!(p.status("x@example.com"), "active");
    // Larger than the 8 KiB of the rest of `serve`, within the webhooks'
    // 256 KiB; past that, 413 unread.
    let big = format!(
        r#"{{"id": "ev-3", "email": "x@example.com", "kind": "soft", "diagnostic": "{}"}}"#,
        "a".repeat(20_000)
    );
    let sig = format!("sha256={}", hmac_hex(GENERIC_SECRET, big.as_bytes()));
    let r = s.post(
        "/webhooks/generic",
        &[("X-Tidings-Signature", sig.as_str())],
        &big,
    );
    assert_eq!(counts(&r), (1, 1));
    // Only the head is sent: the declared length is refused unread.
    let mut c = http::Conn::connect(&s.addr).unwrap();
    let head = c.head("POST", "/webhooks/generic", &[], Some(300 * 1024));
    c.send_raw(head.as_bytes()).unwrap();
    assert_eq!(c.read_response().unwrap().status, 413);
    let list = p.bounces_list();
    assert!(list.contains("webhook:generic"), "{list}");
}

// ------------------------------------------------- endpoints and config

#[test]
fn unconfigured_endpoints_are_404_and_a_missing_secret_stops_the_start() {
    let p = Project::new("");
    let s = Server::start(&p);
    for path in [
        "/webhooks/ses",
        "/webhooks/postmark",
        "/webhooks/mailgun",
        "/webhooks/generic",
    ] {
        assert_eq!(s.post(path, &[], "{}").status, 404, "{path}");
    }
    drop(s);

    let p = Project::new("[webhooks.postmark]\nusername = \"postmark\"\n");
    let mut cmd = p.command(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env_remove("TIDINGS_WEBHOOKS_POSTMARK_PASSWORD");
    let out = support::run(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "[webhooks.postmark] is configured but TIDINGS_WEBHOOKS_POSTMARK_PASSWORD is not set"
        ),
        "{err}"
    );

    let p = Project::new("[webhooks.postmark]\nusername = \"postmark\"\npassword = \"hunter2\"\n");
    let out = support::run(
        &mut p.command(&["subscribers", "list"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set TIDINGS_WEBHOOKS_POSTMARK_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

// ----------------------------------------------------------------- SES

/// A loopback HTTPS server (certificate from the test CA) that serves the
/// SNS signing certificate at `/cert.pem` and records other GETs (the
/// SubscribeURL).
struct CertServer {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

fn start_cert_server(dir: &Path) -> CertServer {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let signing_cert = fs::read(dir.join("signing.crt")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let body = if path == "/cert.pem" {
                signing_cert.clone()
            } else {
                b"<ConfirmSubscriptionResponse/>".to_vec()
            };
            seen.lock().unwrap().push(path);
            let _ = tls.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = tls.write_all(&body);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    CertServer { port, hits }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("this test needs the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs an SNS message as SNS does: the string to sign of its Type,
/// RSA PKCS#1 v1.5 with SHA1 (version 1) or SHA256 (version 2).
fn sns_sign(dir: &Path, m: &mut serde_json::Value, version: &str) {
    let fields: &[&str] = match m["Type"].as_str().unwrap() {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        _ => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
    };
    let mut text = String::new();
    for f in fields {
        if let Some(v) = m[*f].as_str() {
            text.push_str(&format!("{f}\n{v}\n"));
        }
    }
    let digest = if version == "1" { "-sha1" } else { "-sha256" };
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args(["dgst", digest, "-sign", "signing.key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("this test needs the openssl command");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    m["SignatureVersion"] = version.into();
    m["Signature"] = base64::engine::general_purpose::STANDARD
        .encode(out.stdout)
        .into();
}

fn ses_bounce(feedback_id: &str, bounce_type: &str, email: &str) -> String {
    // SES's documented bounce notification.
    serde_json::json!({
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": feedback_id, "bounceType": bounce_type, "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": email, "action": "failed", "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2026-11-16T00:00:00.000Z", "remoteMtaIp": "127.0.2.0",
            "reportingMTA": "dsn; a27-23.smtp-out.eu-west-1.amazonses.com"
        },
        "mail": {
            "timestamp": "2026-11-16T00:00:00.000Z", "source": "news@example.org",
            "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/example.org",
            "sourceIp": "127.0.3.0", "sendingAccountId": "123456789012",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [email], "headersTruncated": false,
            "headers": [{"name": "Message-ID", "value": "<abc@example.org>"}],
            "commonHeaders": {"from": ["news@example.org"], "to": [email],
                "messageId": "<abc@example.org>", "subject": "Test"}
        }
    })
    .to_string()
}

fn ses_complaint(feedback_id: &str, email: &str) -> String {
    serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse", "arrivalDate": "2026-11-16T00:00:00.000Z",
            "timestamp": "2026-11-16T00:00:00.000Z", "feedbackId": feedback_id
        },
        "mail": {"timestamp": "2026-11-16T00:00:00.000Z", "source": "news@example.org",
            "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
            "destination": [email]}
    })
    .to_string()
}

fn notification(cert_url: &str, id: &str, message: String) -> serde_json::Value {
    serde_json::json!({
        "Type": "Notification", "MessageId": id, "TopicArn": TOPIC,
        "Message": message, "Timestamp": "2026-11-16T00:00:01.000Z",
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"
    })
}

#[test]
fn ses_through_sns_signatures_v1_and_v2() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    support::mail::make_ca(dir);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signing.key",
            "-out",
            "signing.crt",
            "-days",
            "2",
            "-subj",
            "/CN=sns.amazonaws.com",
        ],
    );
    let certs = start_cert_server(dir);
    let host = format!("127.0.0.1:{}", certs.port);
    let p = Project::new(&format!(
        "[webhooks.ses]\ntopic_arns = [\"{TOPIC}\"]\n# TESTS ONLY\ntest_cert_host = \"{host}\"\nca_file = \"{}\"\n",
        dir.join("ca.crt").display()
    ));
    p.add(&["hard@example.com", "spam@example.com", "x@example.com"]);
    let s = Server::start(&p);
    let cert_url = format!("https://{host}/cert.pem");
    let post = |m: &serde_json::Value| s.post("/webhooks/ses", &[], &m.to_string());

    // The subscription is confirmed by a GET of its SubscribeURL.
    let mut confirm = serde_json::json!({
        "Type": "SubscriptionConfirmation", "MessageId": "c-1", "Token": "tok",
        "TopicArn": TOPIC,
        "Message": format!("You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": format!("https://{host}/confirm?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok"),
        "Timestamp": "2026-11-16T00:00:00.000Z", "SigningCertURL": cert_url,
    });
    sns_sign(dir, &mut confirm, "1");
    let r = post(&confirm);
    assert_eq!(r.status, 200, "{}\n{}", r.body, s.log());
    assert!(
        certs
            .hits
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("/confirm?Action=ConfirmSubscription")),
        "{:?}",
        certs.hits.lock().unwrap()
    );

    // Version 1 (SHA1withRSA), a hard bounce.
    let mut bounce = notification(
        &cert_url,
        "n-1",
        ses_bounce("fb-1", "Permanent", "hard@example.com"),
    );
    sns_sign(dir, &mut bounce, "1");
    // Tampered after signing: 401, nothing changes.
    let mut tampered = bounce.clone();
    tampered["Message"] = ses_bounce("fb-1", "Permanent", "x@example.com").into();
    let r = post(&tampered);
    assert_eq!(r.status, 401);
    assert_eq!(r.body.trim(), "signature does not match");
    assert_eq!(p.status("x@example.com"), "active");

    assert_eq!(counts(&post(&bounce)), (1, 1));
    assert_eq!(p.status("hard@example.com"), "bounced");
    // SNS delivers again: nothing changes.
    assert_eq!(counts(&post(&bounce)), (1, 0));

    // Version 2 (SHA256withRSA), a complaint, with a Subject.
    let mut complaint = notification(&cert_url, "n-2", ses_complaint("fb-2", "spam@example.com"));
    complaint["Subject"] = "Amazon SES Email Event Notification".into();
    sns_sign(dir, &mut complaint, "2");
    assert_eq!(counts(&post(&complaint)), (1, 1));
    assert_eq!(p.status("spam@example.com"), "unsubscribed");

    // Signed, but from a topic not configured: 401.
    let mut other = notification(
        &cert_url,
        "n-3",
        ses_bounce("fb-3", "Permanent", "x@example.com"),
    );
    other["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:someone-else".into();
    sns_sign(dir, &mut other, "2");
    assert_eq!(post(&other).status, 401);
    // A certificate URL off the allowed host (even the same server on
    // "localhost"), or over http: 401 without fetching.
    for url in [
        format!("https://localhost:{}/cert.pem", certs.port),
        format!("http://{host}/cert.pem"),
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem".to_string(),
    ] {
        let mut m = notification(
            &url,
            "n-4",
            ses_bounce("fb-4", "Permanent", "x@example.com"),
        );
        sns_sign(dir, &mut m, "2");
        let r = post(&m);
        assert_eq!(r.status, 401, "{url}");
        assert_eq!(
            r.body.trim(),
            "SigningCertURL is not https on an sns.<region>.amazonaws.com host"
        );
    }
    assert_eq!(p.status("x@example.com"), "active");
    // The certificate was fetched once (cached by URL).
    let fetched = certs
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| *h == "/cert.pem")
        .count();
    assert_eq!(fetched, 1);

    let list = p.bounces_list();
    assert!(list.contains("webhook:ses"), "{list}");
    assert!(s.log().contains("test_cert_host is set"), "{}", s.log());
}
