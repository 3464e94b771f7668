//! `tidings send` against a real SMTP server on loopback (Python's aiosmtpd,
//! with faults injected per recipient; see tests/support/fault_smtp.py).
//! These need `python3-aiosmtpd`: run them with scripts/test.sh.

mod support;

use support::smtp::FaultServer;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const NEEDS: &str = "needs python3-aiosmtpd: run scripts/test.sh";

/// A copy of the `minimal` fixture project pointed at the server.
struct Project {
    dir: tempfile::TempDir,
    port: u16,
}

impl Project {
    fn new(port: u16) -> Project {
        let dir = tempfile::tempdir().unwrap();
        support::copy_fixture("minimal", dir.path());
        Project { dir, port }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        fs::write(self.path(rel), text).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
        c.current_dir(self.dir.path())
            .env("TIDINGS_SMTP_PORT", self.port.to_string())
            .env("TIDINGS_SMTP_HOST", "127.0.0.1")
            .env("TIDINGS_SMTP_TIMEOUT_SECS", "2")
            .env("TIDINGS_SEND_RETRY_BASE_SECS", "0.2")
            .env("TIDINGS_SEND_MAX_ATTEMPTS", "4")
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "test-secret-0123456789")
            .env_remove("TIDINGS_CONFIG")
            .env_remove("TIDINGS_DATABASE_URL")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn report(p: &Project, rel: &str) -> BTreeMap<String, csv::StringRecord> {
    let mut r = csv::Reader::from_path(p.path(rel)).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec)
        })
        .collect()
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn faults_are_retried_recorded_and_nobody_gets_two() {
    let _ = NEEDS;
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let addresses = [
        "ok1@example.org",
        "t421-a@example.org",
        "t451-b@example.org",
        "p550-c@example.org",
        "drop-d@example.org",
        "hang-e@example.org",
        "p554-f@example.org",
        "ok2@example.org",
    ];
    let csv: String = std::iter::once("email,first_name".to_string())
        .chain(addresses.iter().map(|a| format!("{a},Reader")))
        .collect::<Vec<_>>()
        .join("\n");
    p.write("list.csv", &csv);
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
        "--rate",
        "50/s",
        "--concurrency",
        "2",
        "--report",
        "report.csv",
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("error: 2 recipients failed"), "{stderr}");
    assert!(
        stdout
            .contains("all runs: 8 recipients: sent 6, failed 2, deferred 0, pending 0, skipped 0"),
        "{stdout}"
    );

    // The server got every deliverable recipient exactly once.
    let received = server.received();
    let expected: BTreeMap<String, usize> = addresses
        .iter()
        .filter(|a| !a.starts_with("p5"))
        .map(|a| (a.to_string(), 1))
        .collect();
    assert_eq!(received, expected);

    // The journal says what happened to each.
    let rows = report(&p, "report.csv");
    let get = |a: &str, col: usize| rows[a][col].to_string();
    for a in ["ok1@example.org", "ok2@example.org"] {
        assert_eq!((get(a, 1), get(a, 2)), ("sent".into(), "1".into()), "{a}");
    }
    for a in [
        "t421-a@example.org",
        "t451-b@example.org",
        "drop-d@example.org",
        "hang-e@example.org",
    ] {
        assert_eq!(
            (get(a, 1), get(a, 2)),
            ("sent".into(), "2".into()),
            "{a}: retried once, then sent"
        );
    }
    assert_eq!(get("p550-c@example.org", 1), "failed");
    assert_eq!(get("p550-c@example.org", 3), "550");
    assert!(get("p550-c@example.org", 4).contains("User unknown"));
    assert_eq!(get("p554-f@example.org", 1), "failed");
    assert_eq!(get("p554-f@example.org", 3), "554");

    // `status` agrees.
    let out = p.run(&["status", "content/hello.md"]);
    let status = text(&out.stdout);
    assert!(
        status.contains("8 recipients: sent 6, failed 2"),
        "{status}"
    );
    assert!(
        status.contains(
            "failed (1): 550 5.1.1 <p550-c@example.org>: Recipient address rejected: User unknown"
        ),
        "{status}"
    );

    // Rerunning sends nobody again.
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("nothing to send: all 8 recipients of hello are done"));
    assert_eq!(server.received(), expected);

    // The rejected address (550) is suppressed for later sends; 554 is not.
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
        "--resend",
    ]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("skipped 1 (1 suppressed)"), "{stdout}");
    assert_eq!(server.received()["ok1@example.org"], 2);
    assert!(!server.received().contains_key("p550-c@example.org"));
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn killed_send_resumes_and_duplicates_only_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let n = 1500;
    let csv = support::email_csv((0..n).map(|i| format!("reader{i:04}@example.org")));
    p.write("big.csv", &csv);
    let args = [
        "send",
        "content/hello.md",
        "--subscribers",
        "big.csv",
        "--yes",
        "--quiet",
        "--rate",
        "300/s",
        "--concurrency",
        "4",
    ];
    let mut child = p
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.received().values().sum::<usize>() < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the send made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no chance to record what is in flight.
    child.kill().unwrap();
    child.wait().unwrap();
    let before = server.received().values().sum::<usize>();
    assert!(before < n, "killed too late to test anything");

    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    let in_flight: usize = status
        .lines()
        .find_map(|l| l.trim().strip_suffix(" in flight: if no send is running, a run died; they will be sent again and may arrive twice"))
        .map_or(0, |n| n.parse().unwrap());

    let out = p.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let received = server.received();
    assert_eq!(received.len(), n, "every recipient received at least once");
    let duplicates: usize = received.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates but only {in_flight} were in flight at the kill"
    );
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert!(
        status.contains(&format!("{n} recipients: sent {n}, failed 0")),
        "{status}"
    );
    if in_flight > 0 {
        assert!(
            status.contains(&format!("{in_flight} message")),
            "status reports the possible duplicates: {status}"
        );
    }
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn test_send_leaves_the_journal_alone_and_dry_run_needs_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--to",
        "me@example.org",
        "t451-x@example.org",
    ]);
    let stdout = text(&out.stdout);
    // A test send does not retry: the greylisted one is reported.
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("test send: 1 sent, 1 failed"), "{stdout}");
    assert!(
        text(&out.stderr).contains("failed: t451-x@example.org: 451 4.7.1 Greylisted"),
        "{}",
        text(&out.stderr)
    );
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert_eq!(status, "hello: not sent yet\n");
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn a_send_that_fails_too_often_pauses_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let csv = support::email_csv(
        (0..12)
            .map(|i| format!("p554-{i}@example.org"))
            .chain((0..5).map(|i| format!("ok{i}@example.org"))),
    );
    p.write("list.csv", &csv);
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
        "--concurrency",
        "1",
        "--rate",
        "100/s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: the send paused: 10 sends failed in a row (send.pause_after_failures = 10). Check the failures above (or --report), then rerun `tidings send content/hello.md` to continue"),
        "{stderr}"
    );
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert!(
        status.contains("paused: 10 sends failed in a row"),
        "{status}"
    );
    // Rerun: the rest goes out (the two failures left in a row are below the threshold).
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("all runs: 17 recipients: sent 5, failed 12"),
        "{stdout}"
    );
    assert_eq!(server.received().len(), 5);
}

#[test]
fn real_send_needs_confirmation_or_yes() {
    // No server needed: the refusal comes first.
    let p = Project::new(9);
    let out = p
        .command(&[
            "send",
            "content/hello.md",
            "--subscribers",
            "subscribers/sample.csv",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Send hello \"Hello Readers\" to 2 recipients (the recipients in subscribers/sample.csv) through 127.0.0.1:9 (no TLS) at 10/s, about 0.2s?\nrefusing to send without confirmation: stdin is not a terminal, pass --yes"),
        "{stderr}"
    );
}

#[test]
fn unreachable_server_stops_before_sending() {
    let p = Project::new(9);
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "subscribers/sample.csv",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: cannot use the SMTP server 127.0.0.1:9 (no TLS):")
            && stderr.contains("check smtp.host and smtp.port, and that the server runs"),
        "{stderr}"
    );
    // Checked before anything is written: no campaign was made.
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert_eq!(status, "hello: not sent yet\n");
}

#[test]
fn real_send_needs_the_unsubscribe_secret() {
    let p = Project::new(9);
    let out = p
        .command(&["send", "content/hello.md", "--yes"])
        .env_remove("TIDINGS_UNSUBSCRIBE_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "error: TIDINGS_UNSUBSCRIBE_SECRET is not set: unsubscribe links must be signed"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn starttls_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    // A private CA, and the server's certificate signed by it.
    let path = |name: &str| tmp.path().join(name).display().to_string();
    let (ca, ca_key, csr, cert, key, ext) = (
        path("ca.pem"),
        path("ca.key"),
        path("leaf.csr"),
        path("cert.pem"),
        path("key.pem"),
        path("leaf.ext"),
    );
    fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Test CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    ] {
        let made = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "{}", text(&made.stderr));
    }
    let cert = PathBuf::from(cert);
    let key = PathBuf::from(key);
    let ca = PathBuf::from(ca);
    let server = FaultServer::start_with(
        tmp.path(),
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let p = Project::new(server.port);

    // An unknown issuer is refused before anything is sent.
    let out = p
        .command(&["send", "content/hello.md", "--to", "me@example.org"])
        .env("TIDINGS_SMTP_TLS", "starttls")
        .env("TIDINGS_SMTP_HOST", "localhost")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot use the SMTP server localhost:")
            && stderr.contains("TLS error: invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert!(stderr.contains("smtp.ca_file for a private CA"), "{stderr}");
    assert!(server.received().is_empty());

    // Trusting the CA, the message goes through the encrypted session.
    let out = p
        .command(&["send", "content/hello.md", "--to", "me@example.org"])
        .env("TIDINGS_SMTP_TLS", "starttls")
        .env("TIDINGS_SMTP_HOST", "localhost")
        .env("TIDINGS_SMTP_CA_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(server.received()["me@example.org"], 1);
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn ctrl_c_finishes_in_flight_records_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let n = 200;
    let csv = support::email_csv((0..n).map(|i| format!("c{i:03}@example.org")));
    p.write("list.csv", &csv);
    let args = [
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
        "--rate",
        "40/s",
    ];
    let child = p
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.received().len() < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopping: finishing the messages in flight (a rerun resumes)"),
        "{stderr}"
    );
    assert!(stderr.contains("error: interrupted: "), "{stderr}");
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert!(
        !status.contains("in flight"),
        "nothing left in flight: {status}"
    );
    let sent_before = server.received().len();
    assert!(sent_before < n, "interrupted too late");
    assert!(
        status.contains(&format!("sent {sent_before},")),
        "the journal has what the server got: {status}"
    );

    let out = p.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let received = server.received();
    assert_eq!(received.len(), n);
    assert!(
        received.values().all(|&c| c == 1),
        "nobody twice after a Ctrl-C"
    );
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn remove_erases_the_person_from_the_send_journal_too() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    p.write(
        "list.csv",
        "email,first_name\nerase-me@example.org,Eraseme\nkeep@example.org,Keep\n",
    );
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = p.run(&["subscribers", "remove", "erase-me@example.org"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Nothing of the address or the name is left in the database files.
    for file in [
        "subscribers/subscribers.db",
        "subscribers/subscribers.db-wal",
    ] {
        if let Ok(bytes) = fs::read(p.path(file)) {
            for needle in ["erase-me@example.org", "Eraseme"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle} still in {file}"
                );
            }
        }
    }
    // The send's counts are intact, and a new send skips the address.
    let status = text(&p.run(&["status", "content/hello.md"]).stdout);
    assert!(status.contains("2 recipients: sent 2"), "{status}");
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "list.csv",
        "--yes",
        "--resend",
    ]);
    assert!(
        text(&out.stdout).contains("skipped 1 (1 suppressed)"),
        "{}",
        text(&out.stdout)
    );
}

/// What the server logged: (envelope recipients, To header) per message.
fn received_messages(server: &FaultServer) -> Vec<(Vec<String>, String)> {
    server
        .messages()
        .into_iter()
        .map(|m| (m.rcpt, m.to))
        .collect()
}

/// An international domain goes out as its A-label in RCPT TO and To; a
/// non-ASCII local part goes out with SMTPUTF8 where the server offers it,
/// and is a permanent failure (not a bounce), saying why, where it does not.
#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn international_addresses_over_smtp() {
    for smtputf8 in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let server =
            FaultServer::start_with(tmp.path(), if smtputf8 { &["--smtputf8"] } else { &[] });
        let p = Project::new(server.port);
        p.write(
            "list.csv",
            "email,first_name\nuser@bücher.example,Ute\njosé@bücher.example,José\n",
        );
        let out = p.run(&[
            "send",
            "content/hello.md",
            "--subscribers",
            "list.csv",
            "--yes",
            "--report",
            "report.csv",
        ]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let mut got = received_messages(&server);
        got.sort();
        let user = (
            vec!["user@xn--bcher-kva.example".to_string()],
            "Ute <user@xn--bcher-kva.example>".to_string(),
        );
        let rows = report(&p, "report.csv");
        assert_eq!(rows["user@bücher.example"][1].to_string(), "sent");
        let jose = &rows["josé@bücher.example"];
        if smtputf8 {
            assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
            let jose_msg = (
                vec!["josé@xn--bcher-kva.example".to_string()],
                "José <josé@xn--bcher-kva.example>".to_string(),
            );
            // lettre may encode the display name (RFC 2047): compare the address.
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[0].0, jose_msg.0);
            assert!(
                got[0].1.ends_with("<josé@xn--bcher-kva.example>"),
                "{got:?}"
            );
            assert_eq!(got[1], user);
            assert_eq!(jose[1].to_string(), "sent");
        } else {
            assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
            assert_eq!(got, [user]);
            assert_eq!(jose[1].to_string(), "failed");
            assert_eq!(jose[2].to_string(), "1", "permanent: not retried");
            assert_eq!(
                jose[4].to_string(),
                "the address's local part is not ASCII and the server does not offer SMTPUTF8"
            );
            let status = text(&p.run(&["status", "content/hello.md"]).stdout);
            assert!(status.contains("does not offer SMTPUTF8"), "{status}");
            // Not a bounce: a later send to a server with SMTPUTF8 may reach them.
            let out = p.run(&[
                "send",
                "content/hello.md",
                "--subscribers",
                "list.csv",
                "--yes",
                "--resend",
            ]);
            assert!(
                !text(&out.stdout).contains("suppressed"),
                "{}",
                text(&out.stdout)
            );
        }
    }
}
