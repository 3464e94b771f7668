//! `tidings serve` and `tidings archive` through the real binary.
//!
//! Each test copies the `minimal` fixture project into a temp folder, adds
//! subscribers with `tidings subscribers add`, and starts
//! `tidings serve --listen 127.0.0.1:0`, reading the real address from its
//! first line of output; requests go over plain HTTP/1.1 sockets
//! (`support/http.rs`). An issue counts as sent only after a real
//! `tidings send` to a small SMTP sink in this file, so the journal rows
//! are the ones the send pipeline writes. The store is checked with
//! `tidings subscribers list --format json` and, for the event trail, the
//! library's `Store::events`.
//!
//! Needs nothing but the binary, except: the feed's XML check (Python),
//! PostgreSQL, and the browser test (Chromium + playwright-core), which are
//! ignored here and run by scripts/test.sh.

#[path = "support/http.rs"]
mod http;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidings::deliver::unsubscribe::Signer;

const SECRET: &str = "serve-test-secret-0123456789";
const BASE_URL: &str = "https://news.example.org";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'; frame-ancestors 'none'";
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

// ------------------------------------------------------------- helpers

/// A copy of the `minimal` fixture project.
struct Project {
    dir: tempfile::TempDir,
    /// `TIDINGS_DATABASE_URL` for every command (PostgreSQL), else the
    /// fixture's SQLite file.
    database: Option<String>,
    smtp_port: Option<u16>,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &support::project_root().join("tests/fixtures/minimal"),
            dir.path(),
        );
        Project {
            dir,
            database: None,
            smtp_port: None,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The binary in the project folder, with only the variables we set.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.current_dir(self.dir.path());
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("TIDINGS_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("TIDINGS_UNSUBSCRIBE_SECRET", SECRET);
        if let Some(url) = &self.database {
            cmd.env("TIDINGS_DATABASE_URL", url);
        }
        if let Some(port) = self.smtp_port {
            cmd.env("TIDINGS_SMTP_PORT", port.to_string())
                .env("TIDINGS_SMTP_TIMEOUT_SECS", "5");
        }
        cmd.args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        support::run(&mut self.command(args), Duration::from_secs(120))
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tidings {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            support::describe(&out)
        );
        out
    }

    fn add(&self, email: &str, first_name: &str) {
        let mut args = vec!["subscribers", "add", email];
        if !first_name.is_empty() {
            args.extend(["--first-name", first_name]);
        }
        self.run_ok(&args);
    }

    /// Address -> status, from `subscribers list --format json`.
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

    /// (event, source) of one address, oldest first, from the store.
    fn events(&self, email: &str) -> Vec<(String, String)> {
        let url = self
            .database
            .clone()
            .unwrap_or_else(|| "sqlite:subscribers/subscribers.db".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = tidings::store::Store::open(&url, self.dir.path())
                .await
                .unwrap();
            store
                .events(email)
                .await
                .unwrap()
                .into_iter()
                .map(|(event, source, _)| (event, source))
                .collect()
        })
    }

    /// The path of a signed unsubscribe link, as `send` makes it.
    fn link(&self, issue: &str, email: &str) -> String {
        let url = Signer::new(SECRET.as_bytes(), BASE_URL).url(issue, email);
        url.strip_prefix(BASE_URL).unwrap().to_string()
    }

    /// A real send of `content/<slug>.md` to everyone, into `sink`.
    fn send(&mut self, slug: &str, sink: &Sink) {
        self.smtp_port = Some(sink.port);
        let issue = format!("content/{slug}.md");
        self.run_ok(&["send", &issue, "--yes", "--quiet", "--rate", "unlimited"]);
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

/// `tidings serve` on a free loopback port; killed on drop if still up.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(p: &Project) -> Server {
        let log = p.path(&format!("serve-{}.log", std::process::id()));
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
                "tidings serve did not say where it listens (first line {line:?}); its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        };
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        Server {
            addr: addr.to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> http::Response {
        http::get(&self.addr, path)
    }

    fn post(&self, path: &str, body: &str) -> http::Response {
        http::post_form(&self.addr, path, body)
    }

    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", self.child.id());
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "tidings serve still runs {limit:?} after SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An SMTP server that accepts every message: enough for `send` to run
/// for real and write `sent` rows into the journal.
struct Sink {
    port: u16,
}

fn start_sink() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = sink_session(conn);
            });
        }
    });
    Sink { port }
}

fn sink_session(conn: TcpStream) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    out.write_all(b"220 sink ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-sink\r\n250 8BITMIME\r\n")?,
            "DATA" => {
                out.write_all(b"354 go on\r\n")?;
                loop {
                    line.clear();
                    if lines.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                out.write_all(b"250 2.0.0 queued\r\n")?;
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"250 ok\r\n")?,
        }
    }
}

fn assert_security_headers(r: &http::Response, what: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("set-cookie"), None, "{what}");
}

/// What `/u/` answers must never be: a redirect, a cookie, a cached copy.
fn assert_private(r: &http::Response, what: &str) {
    assert_security_headers(r, what);
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(r.header("location"), None, "{what}");
    assert!(!(300..400).contains(&r.status), "{what}: {}", r.status);
}

fn added() -> Vec<(String, String)> {
    vec![("added".to_string(), "add".to_string())]
}

// ---------------------------------------------------------------- tests

#[test]
fn serve_needs_the_secret() {
    let p = Project::new();
    let mut cmd = p.command(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env_remove("TIDINGS_UNSUBSCRIBE_SECRET");
    let out = support::run(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TIDINGS_UNSUBSCRIBE_SECRET is not set")
            && stderr.contains("openssl rand -hex 32"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not say it listens");

    let mut cmd = p.command(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.env("TIDINGS_UNSUBSCRIBE_SECRET", "short");
    let out = support::run(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
}

#[test]
fn one_click_unsubscribes_get_does_not_and_a_replay_is_harmless() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    p.add("bob@example.org", "");
    p.add("zoe@example.org", "");
    let server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");

    // A GET (what a mail scanner does) shows a page and changes nothing.
    let page = server.get(&ana);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_private(&page, "GET /u/");
    assert!(
        page.body.contains("Unsubscribe from Test Letter?"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("“Hello Readers”"),
        "the issue's title: {}",
        page.body
    );
    assert!(page.body.contains(r#"<form method="post">"#));
    assert!(page.body.contains(r#"name="action" value="unsubscribe""#));
    assert!(!page.body.contains("<script"), "no JavaScript");
    assert!(!page.body.contains("ana@"), "no address on the page");
    assert_eq!(p.status("ana@example.org"), "active");
    assert_eq!(p.events("ana@example.org"), added());

    // RFC 8058: the provider's POST, urlencoded.
    let r = server.post(&ana, ONE_CLICK);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_private(&r, "one-click POST");
    assert!(r.body.contains("You are unsubscribed"), "{}", r.body);
    let statuses = p.statuses();
    assert_eq!(statuses["ana@example.org"], "unsubscribed");
    assert_eq!(statuses["bob@example.org"], "active");
    let once = vec![
        ("added".to_string(), "add".to_string()),
        ("unsubscribed".to_string(), "one-click".to_string()),
    ];
    assert_eq!(p.events("ana@example.org"), once);

    // A replay (providers retry) answers the same and records nothing.
    for _ in 0..3 {
        let r = server.post(&ana, ONE_CLICK);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("You are unsubscribed"));
    }
    assert_eq!(p.events("ana@example.org"), once);

    // Some providers send multipart/form-data.
    let bob = p.link("hello", "bob@example.org");
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
    let r = http::request(
        &server.addr,
        "POST",
        &bob,
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.status("bob@example.org"), "unsubscribed");
    assert_eq!(p.status("zoe@example.org"), "active");

    // The access log: one structured line per request, the route's
    // template, the issue and the outcome; never the token, the address
    // or its hash.
    let log = server.log();
    let token = ana.strip_prefix("/u/").unwrap();
    let hash = tidings::subscribers::email_hash_hex("ana@example.org");
    for secret in [token, "ana@example.org", "ana%40", &hash, &token[..20]] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("method=GET route=/u/{token} status=200")
                && l.contains("issue=hello outcome=shown")),
        "{log}"
    );
    let unsubscribed = log
        .lines()
        .filter(|l| {
            l.contains("method=POST route=/u/{token} status=200 ")
                && l.contains("issue=hello outcome=unsubscribed")
        })
        .count();
    assert_eq!(unsubscribed, 2, "{log}");
    assert_eq!(log.matches("outcome=already").count(), 3, "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("time=20") && line.contains(" ms="),
            "{line}"
        );
    }
}

/// A link as messages sent before v2 tokens carried it (the plain
/// SHA-256 of the address, MAC'd with the secret itself).
fn v1_link(issue: &str, email: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hash = b64.encode(Sha256::digest(email.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("v1|{issue}|{hash}").as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("/u/v1.{issue}.{hash}.{}", b64.encode(&tag[..16]))
}

#[test]
fn links_in_messages_sent_before_v2_tokens_still_unsubscribe() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let server = Server::start(&p);
    let old = v1_link("hello", "ana@example.org");
    assert_eq!(server.get(&old).status, 200);
    let r = server.post(&old, ONE_CLICK);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    // New links name the same person without the hash.
    let new = p.link("hello", "ana@example.org");
    assert!(new.starts_with("/u/v2.hello."), "{new}");
    assert!(!new.contains(old.split('.').nth(2).unwrap()), "{new}");
    assert_eq!(server.post(&new, ONE_CLICK).status, 200);
    assert!(server.log().contains("outcome=already"), "{}", server.log());
}

#[test]
fn bad_tokens_get_the_same_400_and_change_nothing() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    p.add("bob@example.org", "");
    let server = Server::start(&p);
    let good = p.link("hello", "ana@example.org");
    let token = good.strip_prefix("/u/").unwrap().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let bob_hash = p.link("hello", "bob@example.org");
    let bob_hash = bob_hash.split('.').nth(2).unwrap();
    let other_secret =
        Signer::new(b"another-secret-0123456789", BASE_URL).token("hello", "ana@example.org");
    let bad = [
        String::from_utf8(flipped).unwrap(),
        token[..token.len() - 4].to_string(),
        token[..20].to_string(),
        "not-a-token".to_string(),
        format!("v2.issue-18.{}.{}", parts[2], parts[3]),
        format!("v2.hello.{bob_hash}.{}", parts[3]),
        format!("v1.hello.{}.{}", parts[2], parts[3]),
        other_secret,
        format!("v3.{}", &token[3..]),
        "%FF%FE".to_string(),
        "a".repeat(3000),
        format!("{token}.x"),
    ];
    let mut first_body: Option<String> = None;
    for t in &bad {
        let path = format!("/u/{t}");
        for r in [
            server.get(&path),
            server.post(&path, ONE_CLICK),
            server.post(&path, "action=unsubscribe"),
        ] {
            assert_eq!(r.status, 400, "{t}: {}", r.body);
            assert_private(&r, t);
            assert!(r.body.contains("This link does not work"), "{}", r.body);
            match &first_body {
                Some(b) => assert_eq!(&r.body, b, "every defect gets the same page ({t})"),
                None => first_body = Some(r.body.clone()),
            }
        }
    }
    let statuses = p.statuses();
    assert_eq!(statuses["ana@example.org"], "active");
    assert_eq!(statuses["bob@example.org"], "active");
    assert_eq!(p.events("ana@example.org"), added());
    assert_eq!(p.events("bob@example.org"), added());
    let log = server.log();
    assert_eq!(
        log.matches("outcome=invalid").count(),
        bad.len() * 3,
        "{log}"
    );
    assert!(
        !log.contains("issue=issue-18"),
        "unverified slugs are not logged"
    );
    assert!(!log.contains("not-a-token"), "{log}");

    // The good link still works after all that.
    assert_eq!(server.post(&good, ONE_CLICK).status, 200);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
}

#[test]
fn the_page_buttons_unsubscribe_and_resubscribe() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");

    // Neither field: nothing happens.
    let r = server.post(&ana, "");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Nothing was changed"), "{}", r.body);
    let r = server.post(&ana, "List-Unsubscribe=Maybe&action=delete");
    assert_eq!(r.status, 400);
    assert_eq!(p.status("ana@example.org"), "active");

    let r = server.post(&ana, "action=unsubscribe");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_private(&r, "button POST");
    assert!(r.body.contains("You are unsubscribed"), "{}", r.body);
    // Offers to come back, with a button to the same URL.
    assert!(r.body.contains("Unsubscribed by mistake?"), "{}", r.body);
    assert!(r.body.contains(r#"name="action" value="resubscribe""#));
    assert_eq!(p.status("ana@example.org"), "unsubscribed");

    let again = format!("action=resubscribe&csrf={}", csrf_of(&r.body));
    let r = server.post(&ana, &again);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("You are subscribed again"), "{}", r.body);
    assert!(r.body.contains(r#"name="action" value="unsubscribe""#));
    assert_eq!(p.status("ana@example.org"), "active");
    // Twice is once.
    assert_eq!(server.post(&ana, &again).status, 200);

    let ev = |e: &str, s: &str| (e.to_string(), s.to_string());
    assert_eq!(
        p.events("ana@example.org"),
        vec![
            ev("added", "add"),
            ev("unsubscribed", "link"),
            ev("resubscribed", "link"),
        ]
    );

    // Someone who is not on the list (removed, or never added): a
    // one-click still records the wish; the page cannot resubscribe them.
    let nobody = p.link("hello", "nobody@example.org");
    let r = server.post(&nobody, ONE_CLICK);
    assert_eq!(r.status, 200);
    let r = server.post(
        &nobody,
        &format!("action=resubscribe&csrf={}", csrf_of(&r.body)),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("We could not subscribe you again"),
        "{}",
        r.body
    );
    assert!(!p.statuses().contains_key("nobody@example.org"));
}

/// The `csrf` field of a page's resubscribe form.
fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no csrf field in:\n{page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A forwarded email's link cannot be used to resubscribe someone from a
/// script or another site, and never undoes what an administrator or a
/// bounce decided.
#[test]
fn resubscribing_takes_a_same_origin_form_and_never_undoes_an_administrator() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    p.add("bob@example.org", "Bob");
    let server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");
    let r = server.post(&ana, ONE_CLICK);
    assert_eq!(r.status, 200);
    let csrf = csrf_of(&r.body);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let refused = |r: &http::Response, what: &str| {
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert!(
            r.body.contains("This request was not accepted"),
            "{what}: {}",
            r.body
        );
        assert_private(r, what);
    };
    refused(&server.post(&ana, "action=resubscribe"), "no csrf field");
    refused(
        &server.post(&ana, "action=resubscribe&csrf=1.AAAAAAAAAAAAAAAAAAAAAA"),
        "a forged csrf field",
    );
    let body = format!("action=resubscribe&csrf={csrf}");
    let other = p.link("hello", "bob@example.org");
    refused(&server.post(&other, &body), "another link's csrf field");
    refused(
        &http::request(
            &server.addr,
            "POST",
            &ana,
            &[("Content-Type", "text/plain")],
            body.as_bytes(),
        ),
        "text/plain",
    );
    refused(
        &http::request(
            &server.addr,
            "POST",
            &ana,
            &[form, ("Origin", "https://evil.example")],
            body.as_bytes(),
        ),
        "another origin",
    );
    refused(
        &http::request(
            &server.addr,
            "POST",
            &ana,
            &[form, ("Sec-Fetch-Site", "cross-site")],
            body.as_bytes(),
        ),
        "a cross-site fetch",
    );
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    // The browser's Origin is the public one (behind the proxy) or, when it
    // reached the service directly, the host it asked.
    let direct = format!("http://{}", server.addr);
    let r = http::request(
        &server.addr,
        "POST",
        &ana,
        &[form, ("Origin", &direct), ("Sec-Fetch-Site", "same-origin")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server.post(&ana, ONE_CLICK);
    let body = format!("action=resubscribe&csrf={}", csrf_of(&r.body));
    let r = http::request(
        &server.addr,
        "POST",
        &ana,
        &[
            form,
            ("Origin", BASE_URL),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("You are subscribed again"), "{}", r.body);
    assert_eq!(p.status("ana@example.org"), "active");

    // An administrator's unsubscribe stands, whatever the form says.
    p.run_ok(&["subscribers", "unsubscribe", "bob@example.org"]);
    let r = server.post(&other, "action=unsubscribe");
    assert_eq!(r.status, 200);
    let r = server.post(
        &other,
        &format!("action=resubscribe&csrf={}", csrf_of(&r.body)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("We could not subscribe you again"),
        "{}",
        r.body
    );
    assert_eq!(p.status("bob@example.org"), "unsubscribed");
    assert!(server.log().contains("outcome=refused"), "{}", server.log());
}

#[test]
fn health_headers_and_limits() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let server = Server::start(&p);

    let r = server.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_security_headers(&r, "/healthz");
    assert_eq!(r.header("cache-control"), None, "only /u/ is no-store");

    for path in [
        "/nope",
        "/issues/hello",
        "/issues/Hello",
        "/issues/..%2F..%2Ftidings.toml",
        "/issues/hello.md",
        "/issues/%2e%2e",
        "/u/",
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_security_headers(&r, path);
        assert!(r.body.contains("Page not found"), "{path}");
    }
    let r = server.get("/issues/");
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("No issues have been published yet."),
        "{}",
        r.body
    );
    let r = server.get("/unsubscribe");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("use the link in your email"), "{}", r.body);
    let r = http::request(&server.addr, "PUT", "/u/x", &[], b"");
    assert_eq!(r.status, 405);
    assert_security_headers(&r, "405");

    // A body over the limit is refused before it is read, and changes
    // nothing even with a valid link.
    let ana = p.link("hello", "ana@example.org");
    let mut c = http::Conn::connect(&server.addr).unwrap();
    let head = c.head(
        "POST",
        &ana,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(100_000),
    );
    c.send_raw(head.as_bytes()).unwrap();
    c.send_raw(format!("{ONE_CLICK}&pad={}", "x".repeat(4000)).as_bytes())
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert_private(&r, "413");
    // Without a declared length: refused once the limit is passed.
    let mut c = http::Conn::connect(&server.addr).unwrap();
    let head = c.head(
        "POST",
        &ana,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
    );
    let chunk = format!("{ONE_CLICK}&pad={}", "x".repeat(10_000));
    c.send_raw(format!("{head}{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes())
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(p.status("ana@example.org"), "active");
    // Just under the limit is fine.
    let r = server.post(&ana, &format!("{ONE_CLICK}&pad={}", "x".repeat(8000)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
}

#[test]
fn stalled_requests_time_out() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");
    let start = Instant::now();
    // Headers never finished (a slow-loris client)…
    let mut slow_head = http::Conn::connect(&server.addr).unwrap();
    slow_head
        .send_raw(format!("POST {ana} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .unwrap();
    // …and a body that never comes.
    let mut slow_body = http::Conn::connect(&server.addr).unwrap();
    let head = slow_body.head(
        "POST",
        &ana,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(ONE_CLICK.len()),
    );
    slow_body.send_raw(head.as_bytes()).unwrap();
    slow_body.send_raw(&ONE_CLICK.as_bytes()[..5]).unwrap();

    let r = slow_body.read_response().unwrap();
    assert_eq!(r.status, 408, "{}", r.body);
    assert_private(&r, "408");
    // The connection is closed without an answer, or with a 408.
    match slow_head.read_response() {
        Ok(r) => assert_eq!(r.status, 408),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert_eq!(p.status("ana@example.org"), "active");
    assert!(server.log().contains("status=408"), "{}", server.log());
    // The server is still there.
    assert_eq!(server.get("/healthz").status, 200);
}

/// Adds a second issue (a title that needs escaping) and a draft.
fn add_issues(p: &Project) {
    p.write(
        "content/q-and-a.md",
        "---\ntitle: \"Q&A: <Tags> & \\\"quotes\\\"\"\nissue: 4\ndate: 2026-11-01\npreheader: Answers & more.\n---\nHi there.\n\n## Questions\n\nAsk [us](https://example.org/ask).\n",
    );
    p.write(
        "content/draft.md",
        "---\ntitle: Not Ready Yet\nissue: 5\n---\nSecret plans.\n",
    );
}

#[test]
fn sent_issues_are_shown_generic_newest_first_and_drafts_are_not() {
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    p.add("zoe@example.org", "Zoë");
    add_issues(&p);
    p.send("hello", &sink);
    // First send times differ by at least a millisecond.
    std::thread::sleep(Duration::from_millis(20));
    p.send("q-and-a", &sink);
    let server = Server::start(&p);

    let r = server.get("/issues/hello");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_security_headers(&r, "/issues/hello");
    assert!(r.body.contains("Hello Readers"));
    assert!(r.body.contains("Hi friend,"), "generic greeting");
    assert!(
        r.body
            .contains("You receive this email because you subscribed"),
        "generic footer"
    );
    for personal in ["ana@example.org", "Ana", "zoe@", "Zoë", "/u/v1.", "/u/v2."] {
        assert!(
            !r.body.contains(personal),
            "{personal:?} in the public page"
        );
    }
    // Its Unsubscribe link leads to the help page, which works.
    assert!(r.body.contains(r#"href="/unsubscribe""#), "{}", r.body);
    assert_eq!(server.get("/unsubscribe").status, 200);
    // The same with a trailing slash; the second time from the cache.
    assert_eq!(server.get("/issues/hello/").body, r.body);

    // Not sent: a 404, like any unknown page, though the file exists.
    let r = server.get("/issues/draft");
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("Secret plans"));

    let r = server.get("/issues/");
    assert_eq!(r.status, 200, "{}", r.body);
    let newest = r.body.find("/issues/q-and-a").expect("q-and-a listed");
    let older = r.body.find("/issues/hello").expect("hello listed");
    assert!(newest < older, "newest first:\n{}", r.body);
    assert!(
        r.body
            .contains("Q&amp;A: &lt;Tags&gt; &amp; &quot;quotes&quot;"),
        "{}",
        r.body
    );
    assert!(r.body.contains("Issue 3 · 1 October 2026"), "{}", r.body);
    assert!(r.body.contains("Issue 4 · 1 November 2026"), "{}", r.body);
    assert!(!r.body.contains("draft") && !r.body.contains("Not Ready"));

    let r = server.get("/feed.xml");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/atom+xml; charset=utf-8")
    );
    assert!(
        r.body
            .contains("<id>https://news.example.org/issues/hello</id>")
    );

    // An edited issue is rendered again.
    let text = fs::read_to_string(p.path("content/hello.md")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    p.write(
        "content/hello.md",
        &text.replace("That is all.", "That is really all."),
    );
    let r = server.get("/issues/hello");
    assert!(
        r.body.contains("That is really all."),
        "re-rendered after the edit"
    );
}

/// An issue sent and then edited into something hostile (lists nested
/// 1,000 deep, a 10,000-column table): its page fails or renders, alone;
/// the service answers everything else afterwards.
#[test]
fn a_hostile_issue_page_fails_alone_and_the_service_lives_on() {
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    let hello = fs::read_to_string(p.path("content/hello.md")).unwrap();
    p.write("content/deep.md", &hello);
    p.write("content/wide.md", &hello);
    p.send("deep", &sink);
    p.send("wide", &sink);
    let front = "---\ntitle: Edited\npreheader: p\n---\nIntro.\n\n";
    let mut deep = front.to_string();
    for i in 0..1000 {
        deep.push_str(&"  ".repeat(i));
        deep.push_str("- x\n");
    }
    deep.push_str(&format!(
        "\n{}hi\n\n{}\n\n{}b{}\n",
        "> ".repeat(10_000),
        "<div>".repeat(10_000),
        "*a ".repeat(10_000),
        "*".repeat(10_000)
    ));
    p.write("content/deep.md", &deep);
    let mut wide = front.to_string();
    for cell in ["x|", "-|", "x|"] {
        wide.push_str(&format!("|{}\n", cell.repeat(10_000)));
    }
    p.write("content/wide.md", &wide);
    let server = Server::start(&p);

    for _ in 0..20 {
        let r = server.get("/issues/deep");
        assert_eq!(r.status, 500, "{}", r.body);
        assert_security_headers(&r, "/issues/deep");
        assert!(r.body.contains("This issue cannot be shown"), "{}", r.body);
    }
    for _ in 0..5 {
        let r = server.get("/issues/wide");
        assert!(matches!(r.status, 200 | 500), "{}", r.status);
    }
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/issues/hello").status, 404);
    let ana = p.link("deep", "ana@example.org");
    assert_eq!(server.post(&ana, ONE_CLICK).status, 200);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    let log = server.log();
    assert!(
        log.contains("content/deep.md:") && log.contains("nested 101 levels deep here"),
        "{log}"
    );
    // Rendered once, not once per request: the failure is remembered until
    // the file changes.
    assert_eq!(log.matches("level=error").count(), 1, "{log}");
}

/// A template override that never ends: the page gives up within the
/// request's time and is a 500; everything else keeps answering.
#[test]
fn a_template_that_never_ends_fails_its_page_alone() {
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    p.send("hello", &sink);
    p.write(
        "templates/email.mjml",
        "{% for i in range(end=100000) %}{% for j in range(end=100000) %}{% for k in range(end=100000) %}{% endfor %}{% endfor %}{% endfor %}",
    );
    let server = Server::start(&p);
    let start = Instant::now();
    let page = std::thread::scope(|s| {
        let page = s.spawn(|| server.get("/issues/hello"));
        std::thread::sleep(Duration::from_millis(500));
        // While it spins: health and one-click still answer at once.
        let t = Instant::now();
        assert_eq!(server.get("/healthz").status, 200);
        let ana = p.link("hello", "ana@example.org");
        assert_eq!(server.post(&ana, ONE_CLICK).status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        page.join().unwrap()
    });
    assert_eq!(page.status, 500, "{}", page.body);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        server
            .log()
            .contains("rendering stopped: it took more than 5 s (a loop that never ends?)"),
        "{}",
        server.log()
    );
    // Remembered: the next request does not wait again.
    let t = Instant::now();
    assert_eq!(server.get("/issues/hello").status, 500);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
}

#[test]
fn archive_writes_the_sent_issues_and_a_feed() {
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    add_issues(&p);
    p.send("hello", &sink);
    std::thread::sleep(Duration::from_millis(20));
    p.send("q-and-a", &sink);
    let out = p.run_ok(&["archive", "--out", "site"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote 2 issues to site"),
        "{}",
        support::describe(&out)
    );
    let read =
        |rel: &str| fs::read_to_string(p.path(rel)).unwrap_or_else(|e| panic!("site/{rel}: {e}"));
    let index = read("site/index.html");
    let a = index
        .find(r#"href="issues/q-and-a/index.html""#)
        .expect("q-and-a");
    let b = index
        .find(r#"href="issues/hello/index.html""#)
        .expect("hello");
    assert!(a < b, "newest first:\n{index}");
    assert!(index.contains(r#"href="feed.xml""#));
    let hello = read("site/issues/hello/index.html");
    assert!(hello.contains("Hi friend,") && !hello.contains("ana@example.org"));
    assert!(hello.contains(r#"href="../../unsubscribe/index.html""#));
    assert!(read("site/unsubscribe/index.html").contains("use the link in your email"));
    assert!(!p.path("site/issues/draft").exists(), "drafts stay out");
    // Static hosts send no CSP header: every page carries the server's
    // policy itself (frame-ancestors only works as a header).
    let meta = r#"<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'">"#;
    for page in [
        "site/index.html",
        "site/issues/hello/index.html",
        "site/unsubscribe/index.html",
    ] {
        let html = read(page);
        let at = html
            .find(meta)
            .unwrap_or_else(|| panic!("no CSP in {page}:\n{html}"));
        assert!(at < html.find("</head>").unwrap(), "{page}: CSP in <head>");
    }

    // The same pages as the server's, but for where links point.
    let server = Server::start(&p);
    let live = server.get("/issues/hello").body;
    assert_eq!(
        live.replace(
            r#"href="/unsubscribe""#,
            r#"href="../../unsubscribe/index.html""#
        ),
        hello.replacen(meta, "", 1)
    );

    let feed = read("site/feed.xml");
    assert!(feed.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>"));
    assert!(
        feed.contains("<title>Q&amp;A: &lt;Tags&gt; &amp; &quot;quotes&quot;</title>"),
        "{feed}"
    );
    assert!(feed.contains(
        r#"<link rel="alternate" type="text/html" href="https://news.example.org/issues/hello"/>"#
    ));
    assert!(!feed.contains("draft"));
}

#[test]
fn archive_leaves_out_an_issue_that_cannot_be_rendered_and_writes_the_rest() {
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    let hello = fs::read_to_string(p.path("content/hello.md")).unwrap();
    p.write("content/deep.md", &hello);
    p.send("deep", &sink);
    p.send("hello", &sink);
    p.write(
        "content/deep.md",
        &format!("---\ntitle: Deep\n---\n{}x\n", "> ".repeat(5000)),
    );
    let out = p.run(&["archive", "--out", "site"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "warning: issue `deep`: content/deep.md:4:1: lists, quotes, emphasis, links and HTML elements are nested 101 levels deep here; at most 100 are allowed (a paste gone wrong?)\n"
    );
    assert!(p.path("site/issues/hello/index.html").exists());
    assert!(!p.path("site/issues/deep").exists());
}

#[test]
#[ignore = "needs Python (xml.etree): run scripts/test.sh"]
fn archive_feed_is_well_formed_atom() {
    let python = support::require_env(support::ENV_PYTHON, "Python 3 (for xml.etree)");
    let sink = start_sink();
    let mut p = Project::new();
    p.add("ana@example.org", "Ana");
    add_issues(&p);
    p.send("hello", &sink);
    std::thread::sleep(Duration::from_millis(20));
    p.send("q-and-a", &sink);
    p.run_ok(&["archive", "--out", "site"]);
    let script = r#"
import sys, xml.etree.ElementTree as ET
ns = {"a": "http://www.w3.org/2005/Atom"}
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "{http://www.w3.org/2005/Atom}feed", root.tag
for e in root.findall("a:entry", ns):
    print(e.find("a:title", ns).text, "|", e.find("a:link", ns).get("href"), "|", e.find("a:published", ns).text)
"#;
    let out = support::run(
        Command::new(python)
            .args(["-c", script])
            .arg(p.path("site/feed.xml")),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", support::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0]
            .starts_with("Q&A: <Tags> & \"quotes\" | https://news.example.org/issues/q-and-a | 20"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("Hello Readers | https://news.example.org/issues/hello | 20"));
}

/// The whole path of the task: the message `send` builds carries a
/// List-Unsubscribe URL this server accepts, and the next send skips
/// whoever used it.
#[test]
fn the_link_in_a_sent_message_unsubscribes_and_the_next_send_skips() {
    let p = Project::new();
    for (email, name) in [
        ("ana@example.org", "Ana"),
        ("bob@example.org", ""),
        ("zoe@example.org", "Zoë"),
    ] {
        p.add(email, name);
    }
    p.run_ok(&["send", "content/hello.md", "--dry-run", "--out", "dry1"]);
    let eml = fs::read_to_string(p.path("dry1/ana@example.org.eml")).unwrap();
    // Unfold the header block, then read the two RFC 8058 headers.
    let head = eml
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{head}"))
            .to_string()
    };
    assert_eq!(header("List-Unsubscribe-Post"), ONE_CLICK);
    let url = header("List-Unsubscribe")
        .split(',')
        .map(|u| {
            u.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .find(|u| u.starts_with("https://"))
        .expect("an https link in List-Unsubscribe");
    let path = url.strip_prefix(BASE_URL).expect("on newsletter.base_url");
    assert!(path.starts_with("/u/v2.hello."), "{url}");

    let server = Server::start(&p);
    // The host is the test server's; the path is the message's.
    let r = server.post(path, ONE_CLICK);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");

    p.run_ok(&["send", "content/hello.md", "--dry-run", "--out", "dry2"]);
    let mut sent: Vec<String> = fs::read_dir(p.path("dry2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    sent.sort();
    assert_eq!(sent, ["bob@example.org.eml", "zoe@example.org.eml"]);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let mut server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");
    assert_eq!(server.get("/healthz").status, 200);

    // Half a request: headers and part of the body.
    let mut c = http::Conn::connect(&server.addr).unwrap();
    let head = c.head(
        "POST",
        &ana,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(ONE_CLICK.len()),
    );
    c.send_raw(head.as_bytes()).unwrap();
    c.send_raw(&ONE_CLICK.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.terminate();
    // No new connections once it is stopping…
    let start = Instant::now();
    while TcpStream::connect(&server.addr).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(5), "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    // …but the request in flight is finished and answered.
    c.send_raw(&ONE_CLICK.as_bytes()[10..]).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    let log = server.log();
    assert!(log.contains("outcome=unsubscribed"), "{log}");
    assert!(log.contains("msg=\"stopped\""), "{log}");
}

#[test]
#[ignore = "needs PostgreSQL: run scripts/test.sh"]
fn one_click_on_postgresql() {
    let db = support::fresh_database("tidings_serve_test");
    let mut p = Project::new();
    p.database = Some(db);
    p.add("ana@example.org", "Ana");
    p.add("bob@example.org", "");
    let server = Server::start(&p);
    let ana = p.link("hello", "ana@example.org");
    assert_eq!(server.get(&ana).status, 200);
    assert_eq!(p.status("ana@example.org"), "active");
    assert_eq!(server.post(&ana, ONE_CLICK).status, 200);
    assert_eq!(server.post(&ana, ONE_CLICK).status, 200);
    let mut bad = ana.clone();
    bad.pop();
    assert_eq!(server.post(&bad, ONE_CLICK).status, 400);
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    assert_eq!(p.status("bob@example.org"), "active");
    assert_eq!(
        p.events("ana@example.org"),
        vec![
            ("added".to_string(), "add".to_string()),
            ("unsubscribed".to_string(), "one-click".to_string()),
        ]
    );
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
#[ignore = "needs Chromium and playwright-core: run scripts/test.sh"]
fn browser_click_unsubscribes() {
    let chromium = support::require_env(support::ENV_CHROMIUM, "Chromium");
    let node_dir = PathBuf::from(support::require_env(
        support::ENV_MJML_DIR,
        "Node.js packages in bench/node_modules",
    ));
    let modules = node_dir.join("node_modules");
    assert!(
        modules.join("playwright-core/package.json").is_file(),
        "{} has no playwright-core: run `npm ci` in bench/ (scripts/test.sh does it when bench/node_modules is missing or stale)",
        modules.display()
    );
    let shots = support::scratch_dir("serve-browser");
    let p = Project::new();
    p.add("ana@example.org", "Ana");
    let server = Server::start(&p);
    let url = format!(
        "http://{}{}",
        server.addr,
        p.link("hello", "ana@example.org")
    );

    let mut node = Command::new("node")
        .arg(support::project_root().join("tests/support/click.js"))
        .args([chromium.as_str(), url.as_str()])
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("click.js did not report {what} (see its stderr above)"));
        let json = line
            .strip_prefix(&format!("{what} "))
            .unwrap_or_else(|| panic!("expected {what}, got {line:?}"));
        serde_json::from_str(json).unwrap()
    };

    let opened = next("OPENED");
    assert_eq!(opened["status"], 200);
    assert_eq!(opened["heading"], "Unsubscribe from Test Letter?");
    assert_eq!(opened["button"], "Unsubscribe");
    // Opening the page (as a scanner would) changed nothing.
    assert_eq!(p.status("ana@example.org"), "active");
    assert_eq!(p.events("ana@example.org"), added());

    writeln!(stdin, "click").unwrap();
    let clicked = next("CLICKED");
    let status = node.wait().unwrap();
    assert!(status.success(), "click.js failed");
    assert_eq!(clicked["status"], 200);
    assert_eq!(clicked["heading"], "You are unsubscribed");
    assert!(
        clicked["text"]
            .as_str()
            .unwrap()
            .contains("Unsubscribed by mistake?"),
        "{clicked}"
    );
    assert_eq!(clicked["url"], url.as_str(), "no redirect");
    assert_eq!(p.status("ana@example.org"), "unsubscribed");
    assert_eq!(
        p.events("ana@example.org"),
        vec![
            ("added".to_string(), "add".to_string()),
            ("unsubscribed".to_string(), "link".to_string()),
        ]
    );
    for shot in ["before.png", "after.png"] {
        assert!(shots.join(shot).is_file(), "{shot}");
    }
}
