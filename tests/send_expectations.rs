//! A send does what the person at the keyboard expects: nothing is fixed
//! before "yes", a typo sends nothing, a stop stops, the printed rate is the
//! kept one, a dry run mirrors the send. Through the binary, against a real
//! SMTP server on loopback (python3-aiosmtpd): run scripts/test.sh.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::smtp::FaultServer;

const NEEDS: &str = "needs python3-aiosmtpd: run scripts/test.sh";

/// A copy of the `minimal` fixture project, sending to `port`.
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

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
        c.current_dir(self.dir.path())
            .env("TIDINGS_SMTP_PORT", self.port.to_string())
            .env("TIDINGS_SMTP_HOST", "127.0.0.1")
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "test-secret-0123456789")
            .env_remove("TIDINGS_CONFIG")
            .env_remove("TIDINGS_DATABASE_URL")
            .stdin(Stdio::null())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        support::run(&mut self.command(args), Duration::from_secs(120))
    }

    /// Imports `addresses` into the project's SQLite store, on `list`.
    fn import(&self, addresses: &[&str], list: &str) {
        fs::write(
            self.path("import.csv"),
            support::email_csv(addresses.iter().map(|a| a.to_string())),
        )
        .unwrap();
        let out = self.run(&["subscribers", "import", "import.csv", "--list", list]);
        assert!(out.status.success(), "{}", support::describe(&out));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn addresses(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:02}@example.org")).collect()
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn a_declined_send_fixes_nobody() {
    let _ = NEEDS;
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    p.import(
        &["a@example.org", "b@example.org", "c@example.org"],
        "monthly",
    );

    // No terminal and no --yes: refused, and nothing is written.
    let out = p.run(&["send", "content/hello.md"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert!(
        stderr(&out).contains(
            "Send hello \"Hello Readers\" to 3 recipients (all active subscribers) through 127.0.0.1:"
        ) && stderr(&out)
            .contains("refusing to send without confirmation: stdin is not a terminal, pass --yes"),
        "{}",
        stderr(&out)
    );
    let status = p.run(&["status", "content/hello.md"]);
    assert_eq!(stdout(&status), "hello: not sent yet\n");

    // At a terminal (util-linux's `script` gives it one), answering `n`.
    let mut tty = Command::new("script")
        .args([
            "-qec",
            &format!("{} send content/hello.md", env!("CARGO_BIN_EXE_tidings")),
            "/dev/null",
        ])
        .current_dir(p.dir.path())
        .env("TIDINGS_SMTP_PORT", p.port.to_string())
        .env("TIDINGS_SMTP_HOST", "127.0.0.1")
        .env("TIDINGS_UNSUBSCRIBE_SECRET", "test-secret-0123456789")
        .env_remove("TIDINGS_CONFIG")
        .env_remove("TIDINGS_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script");
    // Answer once the question is on the terminal.
    std::thread::sleep(Duration::from_millis(1500));
    {
        use std::io::Write;
        let mut stdin = tty.stdin.take().unwrap();
        stdin.write_all(b"n\n").unwrap();
    }
    let out = tty.wait_with_output().unwrap();
    let screen = stdout(&out);
    assert!(
        screen.contains("to 3 recipients (all active subscribers)")
            && screen.contains("[y/N] ")
            && screen.contains("error: not sent"),
        "{screen}"
    );
    let status = p.run(&["status", "content/hello.md"]);
    assert_eq!(stdout(&status), "hello: not sent yet\n");
    assert_eq!(server.total(), 0);

    // Someone who joins before the real send is in it.
    let add = p.run(&["subscribers", "add", "d@example.org", "--list", "monthly"]);
    assert!(add.status.success(), "{}", support::describe(&add));
    let out = p.run(&["send", "content/hello.md", "--list", "monthly", "--yes"]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(
        stderr(&out).contains("to 4 recipients (list `monthly`)"),
        "{}",
        stderr(&out)
    );
    let got: Vec<String> = server.received().into_keys().collect();
    assert_eq!(
        got,
        [
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org"
        ]
    );
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn an_unknown_list_or_an_empty_audience_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    p.import(&["a@example.org"], "monthly");
    p.import(&["b@example.org"], "weekly");

    let out = p.run(&["send", "content/hello.md", "--list", "montly", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert_eq!(
        stderr(&out),
        "error: no list `montly` (did you mean `monthly`?): the lists are: `monthly`, `weekly`. Nothing was written\n"
    );
    // The dry run says the same.
    let out = p.run(&["send", "content/hello.md", "--list", "montly", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert!(
        stderr(&out).ends_with(
            "error: no list `montly` (did you mean `monthly`?): the lists are: `monthly`, `weekly`. Nothing was written\n"
        ),
        "{}",
        stderr(&out)
    );

    // A list whose only member unsubscribed is an empty audience.
    let un = p.run(&["subscribers", "unsubscribe", "b@example.org"]);
    assert!(un.status.success(), "{}", support::describe(&un));
    let out = p.run(&["send", "content/hello.md", "--list", "weekly", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert!(
        stderr(&out).ends_with(
            "error: nothing to send: list `weekly` has nobody who may be mailed (active, not unsubscribed, bounced or suppressed); `tidings subscribers stats` shows the counts. Nothing was written\n"
        ),
        "{}",
        stderr(&out)
    );
    let status = p.run(&["status", "hello"]);
    assert_eq!(stdout(&status), "hello: not sent yet\n");

    // The right list still works afterwards.
    let out = p.run(&["send", "content/hello.md", "--list", "monthly", "--yes"]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert_eq!(server.total(), 1);
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn a_stop_sends_nothing_that_was_still_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let all = addresses(20);
    p.import(&all.iter().map(String::as_str).collect::<Vec<_>>(), "m");
    let mut child = p
        .command(&["send", "content/hello.md", "--yes", "--rate", "1/s"])
        .stdout(fs::File::create(p.path("send.out")).unwrap())
        .stderr(fs::File::create(p.path("send.err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while server.total() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at_signal = server.total();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let err = fs::read_to_string(p.path("send.err")).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    // At 1/s a message is on the wire for milliseconds: after the signal,
    // at most the one that had already started may still arrive.
    let after: Vec<f64> = server
        .messages()
        .iter()
        .map(|m| m.at)
        .filter(|&t| t > signalled + 0.05)
        .collect();
    assert!(
        after.is_empty() && server.total() <= at_signal + 1,
        "{} sent after SIGTERM ({} at the signal, {} in all)\n{err}",
        after.len(),
        at_signal,
        server.total()
    );
    let stopping = err.find("stopping").expect("says it is stopping");
    assert!(!err[stopping..].contains("eta"), "{err}");
    let sent = server.total();
    assert!(
        err.contains(&format!(
            "interrupted: {} recipients left; rerun `tidings send content/hello.md` to continue",
            20 - sent
        )),
        "{err}"
    );

    // The rerun sends the rest, and nobody twice.
    let out = p.run(&["send", "content/hello.md", "--yes", "--rate", "unlimited"]);
    assert!(out.status.success(), "{}", support::describe(&out));
    let received = server.received();
    assert_eq!(received.len(), 20);
    assert!(received.values().all(|&n| n == 1), "{received:?}");
}

/// "this run: … (R messages/s)": R.
fn printed_rate(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("this run: "))
        .unwrap_or_else(|| panic!("no report line in {out}"));
    let inner = &line[line.rfind('(').unwrap() + 1..line.len() - 1];
    inner
        .strip_suffix(" messages/s")
        .unwrap_or_else(|| panic!("no rate in {line}"))
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn the_printed_rate_never_exceeds_the_set_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    for (n, rate, set) in [(3, "5/s", 5.0), (12, "10/s", 10.0), (30, "40/s", 40.0)] {
        let p = Project::new(server.port);
        fs::write(p.path("list.csv"), support::email_csv(addresses(n))).unwrap();
        let out = p.run(&[
            "send",
            "content/hello.md",
            "--subscribers",
            "list.csv",
            "--yes",
            "--rate",
            rate,
        ]);
        assert!(out.status.success(), "{}", support::describe(&out));
        let printed = printed_rate(&stdout(&out));
        assert!(
            printed <= set && printed > set * 0.5,
            "{rate}: printed {printed}\n{}",
            stdout(&out)
        );
    }
    // One message has no rate to speak of.
    let p = Project::new(server.port);
    fs::write(p.path("one.csv"), "email\none@example.org\n").unwrap();
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--subscribers",
        "one.csv",
        "--yes",
    ]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(
        stdout(&out).starts_with("this run: sent 1, failed 0, deferred 0 in ")
            && stdout(&out).contains(" (1 message)\n"),
        "{}",
        stdout(&out)
    );
}

fn eml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_dry_run_mirrors_the_send() {
    let p = Project::new(1);
    // An empty store: nothing to write is a problem, with the way out.
    let add = p.run(&["subscribers", "add", "gone@example.org"]);
    assert!(add.status.success(), "{}", support::describe(&add));
    let un = p.run(&["subscribers", "unsubscribe", "gone@example.org"]);
    assert!(un.status.success(), "{}", support::describe(&un));
    let out = p.run(&["send", "content/hello.md", "--dry-run", "--out", "dry"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::describe(&out));
    assert!(
        stderr(&out).ends_with(
            "error: the subscriber store (subscribers/subscribers.db) has no active subscribers, so the dry run wrote nothing: import the list with `tidings subscribers import FILE.csv`, or pass --subscribers FILE.csv (`tidings preview` uses subscribers/sample.csv)\n"
        ),
        "{}",
        stderr(&out)
    );

    // A reused folder holds exactly the new run's messages.
    fs::write(
        p.path("three.csv"),
        "email\na@example.org\nb@example.org\nc@example.org\n",
    )
    .unwrap();
    fs::write(p.path("two.csv"), "email\nx@example.org\ny@example.org\n").unwrap();
    let dry = p.path("dry");
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--dry-run",
        "--out",
        "dry",
        "--subscribers",
        "three.csv",
    ]);
    assert!(out.status.success(), "{}", support::describe(&out));
    fs::write(dry.join("notes.txt"), "mine").unwrap();
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--dry-run",
        "--out",
        "dry",
        "--subscribers",
        "two.csv",
    ]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "removed 3 messages of an earlier dry run from {}",
            "dry"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(eml_files(&dry), ["x@example.org.eml", "y@example.org.eml"]);
    let summary = fs::read_to_string(dry.join("summary.txt")).unwrap();
    assert!(summary.contains("\nmessages: 2\n"), "{summary}");
    assert_eq!(fs::read_to_string(dry.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn messages_a_person_can_act_on() {
    let p = Project::new(1);
    // A bad number from the environment names the variable.
    let out = support::run(
        p.command(&["check", "content/hello.md"])
            .env("TIDINGS_SMTP_PORT", "abc"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: environment variable TIDINGS_SMTP_PORT: expected a whole number, found `abc`\n"
    );

    // `check` reads the store's fields but offers no option it lacks.
    p.import(&["a@example.org"], "m");
    let out = p.run(&["check", "content/hello.md"]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(!stderr(&out).contains("--subscriber"), "{}", stderr(&out));
    // One row is one row.
    fs::write(p.path("one.csv"), "email\nsolo@example.org\n").unwrap();
    let out = p.run(&["subscribers", "import", "one.csv"]);
    assert!(
        stdout(&out).contains(": 1 row: 1 new, "),
        "{}",
        support::describe(&out)
    );
}

#[test]
fn a_project_without_a_config_file_previews() {
    let dir = tempfile::tempdir().unwrap();
    support::copy_fixture("minimal", dir.path());
    fs::remove_file(dir.path().join("tidings.toml")).unwrap();
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
        c.current_dir(dir.path())
            .env_remove("TIDINGS_CONFIG")
            .env_remove("TIDINGS_DATABASE_URL")
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "test-secret-0123456789")
            .args(args);
        support::run(&mut c, Duration::from_secs(60))
    };
    let out = run(&["preview", "content/hello.md", "--out", "prev"]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(
        stderr(&out).contains("warning: newsletter.from is not set: this uses Newsletter <newsletter@example.org> as the sender; set it in tidings.toml before a real send\n"),
        "{}",
        stderr(&out)
    );
    let eml = fs::read_dir(dir.path().join("prev"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .expect("an .eml in the preview");
    let text = fs::read_to_string(eml).unwrap();
    assert!(
        text.contains("From: Newsletter <newsletter@example.org>\r\n"),
        "{text}"
    );
    // A real send still needs it.
    let out = run(&[
        "send",
        "content/hello.md",
        "--to",
        "me@example.org",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert_eq!(
        stderr(&out),
        "error: tidings.toml: newsletter.from is not set: add e.g. from = \"Newsletter <news@your-domain.org>\"\n"
    );
}

#[test]
fn serve_listens_on_a_host_name() {
    use std::io::{BufRead, BufReader};
    let p = Project::new(1);
    let mut child = p
        .command(&["serve", "--listen", "localhost:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("listening on http://127.0.0.1:")
            || line.starts_with("listening on http://[::1]:"),
        "{line}"
    );
}

/// `n` CSV recipients, unthrottled, `--concurrency 16` while the config
/// says 4: the pool must follow what was asked for.
fn send_unthrottled_at_16(p: &Project, n: usize) -> Output {
    fs::write(
        p.path("list.csv"),
        support::email_csv((0..n).map(|i| format!("c{i:05}@example.org"))),
    )
    .unwrap();
    support::run(
        p.command(&[
            "send",
            "content/hello.md",
            "--subscribers",
            "list.csv",
            "--yes",
            "--quiet",
            "--rate",
            "unlimited",
            "--concurrency",
            "16",
        ])
        .env("TIDINGS_SEND_CONCURRENCY", "4"),
        Duration::from_secs(600),
    )
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn the_connection_pool_follows_the_concurrency_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    let out = send_unthrottled_at_16(&p, 2000);
    assert!(out.status.success(), "{}", support::describe(&out));
    let messages = server.messages();
    assert_eq!(messages.len(), 2000);
    let sessions: std::collections::BTreeSet<u64> = messages.iter().map(|m| m.peer).collect();
    assert!(
        sessions.len() <= 16,
        "{} SMTP sessions for 2000 messages at --concurrency 16",
        sessions.len()
    );
}

/// The same against Postfix's smtp-sink, which counts the sessions it saw
/// end (`sess=N`), at the size where a per-message session shows: 20,000.
#[test]
#[ignore = "needs Postfix's smtp-sink: run scripts/test.sh"]
fn twenty_thousand_messages_at_concurrency_16_open_at_most_16_sessions() {
    let sink = support::require_env(support::ENV_SMTP_SINK, "Postfix's smtp-sink");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(&sink);
    cmd.arg("-c");
    // smtp-sink refuses to keep root's privileges.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        cmd.args(["-u", "nobody"]);
    }
    let mut server = cmd
        .arg(format!("127.0.0.1:{port}"))
        .arg("1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read as it comes: a counter line per event fills a pipe in ~2,600
    // messages, and a full pipe stops smtp-sink.
    let mut stdout = server.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut counters = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut counters);
        counters
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = Project::new(port);
    let out = send_unthrottled_at_16(&p, 20_000);
    // The probe above was one session; let the last QUITs be counted.
    std::thread::sleep(Duration::from_millis(500));
    let _ = server.kill();
    let _ = server.wait();
    let counters = reader.join().unwrap();
    assert!(out.status.success(), "{}", support::describe(&out));
    let last = counters
        .split('\r')
        .rfind(|l| l.starts_with("sess="))
        .unwrap_or_default();
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in smtp-sink's counters: {last:?}"))
    };
    assert_eq!(field("mesg="), 20_000, "{last}");
    // 16 for the send, 1 for the probe, 1 for the server check before it.
    assert!(
        field("sess=") <= 18,
        "{} SMTP sessions for 20,000 messages at --concurrency 16: {last}",
        field("sess=")
    );
}

#[test]
fn a_scheduled_send_waits_for_its_time_and_refuses_a_stale_one() {
    let p = Project::new(1);
    p.import(&["a@example.org"], "m");
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--yes",
        "--not-before",
        "2099-01-01T09:00:00+00:00",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::describe(&out));
    assert!(
        stdout(&out).starts_with(
            "not sending yet: content/hello.md is scheduled for 2099-01-01 09:00 +00:00 (in "
        ) && stdout(&out).ends_with(
            "); nothing was written. Run the same command again after then (a timer or cron can run it hourly)\n"
        ),
        "{}",
        stdout(&out)
    );
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--yes",
        "--not-before",
        "2020-01-01 09:00",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", support::describe(&out));
    assert!(
        stderr(&out).contains("ago: more than send.stale_after (48h), so it is not sent now (a machine that was off must not mail an old announcement). Pass --stale-ok to send it anyway, or raise send.stale_after\n"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&p.run(&["status", "hello"])),
        "hello: not sent yet\n"
    );
    let out = p.run(&["send", "content/hello.md", "--not-before", "tomorrow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`tomorrow` is not a time: write \"2026-12-05 09:00\" (local time) or \"2026-12-05T09:00:00+01:00\""),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn a_scheduled_send_goes_out_once_its_time_has_come() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let p = Project::new(server.port);
    p.import(&["a@example.org", "b@example.org"], "m");
    let long_ago = "2020-01-01 09:00";
    // Long past, but asked for explicitly.
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--yes",
        "--not-before",
        long_ago,
        "--stale-ok",
    ]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert_eq!(server.total(), 2);
    // The next hourly run finds it done, stale or not.
    let out = p.run(&[
        "send",
        "content/hello.md",
        "--yes",
        "--not-before",
        long_ago,
    ]);
    assert!(out.status.success(), "{}", support::describe(&out));
    assert!(
        stdout(&out).starts_with("nothing to send: all 2 recipients of hello are done"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.total(), 2);
}
