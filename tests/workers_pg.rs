//! Several `tidings send --worker-id` processes sharing one PostgreSQL and
//! one SMTP server: one is killed midway; nobody is lost, duplicates stay
//! within what the killed worker had in flight, and the workers together
//! never exceed the campaign's rate. Needs PostgreSQL and python3-aiosmtpd: run
//! scripts/test.sh.

mod support;

use support::smtp::FaultServer;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-tA", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn project(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minimal");
    for sub in ["", "content"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy(src.join("tidings.toml"), dir.join("tidings.toml")).unwrap();
    fs::copy(src.join("content/hello.md"), dir.join("content/hello.md")).unwrap();
}

#[test]
#[ignore = "needs PostgreSQL and python3-aiosmtpd: run scripts/test.sh"]
fn three_workers_one_killed() {
    let n = 20_000;
    let rate = 400.0;
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("tidings_workers");
    let server = FaultServer::start(tmp.path());
    project(tmp.path());
    let csv = support::email_csv((0..n).map(|i| format!("r{i:05}@example.org")));
    fs::write(tmp.path().join("list.csv"), csv).unwrap();
    let spawn = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .current_dir(tmp.path())
            .env("TIDINGS_DATABASE_URL", &db)
            .env("TIDINGS_SMTP_HOST", "127.0.0.1")
            .env("TIDINGS_SMTP_PORT", server.port.to_string())
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "workers-secret-0123456789")
            .env_remove("TIDINGS_CONFIG")
            .args([
                "send",
                "content/hello.md",
                "--subscribers",
                "list.csv",
                "--yes",
                "--quiet",
            ])
            .args(["--rate", "400/s", "--concurrency", "4", "--worker-id", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut workers: Vec<(String, Child)> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| (id.to_string(), spawn(id)))
        .collect();

    let started = Instant::now();
    while server.total() < n / 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, mut killed) = workers.remove(1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    // What w2 had in flight when it died, as the journal saw it: the rows
    // on the wire (claimed rows it never started are not possible duplicates).
    let in_flight: usize = psql(
        &db,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'sending' AND on_wire = 1 AND worker = 'w2'",
    )
    .parse()
    .unwrap();

    for (id, child) in workers {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every recipient at least once; duplicates only among w2's in flight.
    let received = server.received();
    assert_eq!(received.len(), n, "every recipient received");
    let duplicates: usize = received.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates, {in_flight} in flight at the kill"
    );

    // The journal is consistent.
    assert_eq!(
        psql(
            &db,
            "SELECT status || ':' || COUNT(*) FROM deliveries GROUP BY status"
        ),
        format!("sent:{n}")
    );
    assert_eq!(
        psql(&db, "SELECT possible_duplicates FROM campaigns"),
        in_flight.to_string()
    );
    assert_eq!(
        psql(&db, "SELECT finished_at IS NOT NULL FROM campaigns"),
        "t"
    );
    let per_worker = psql(
        &db,
        "SELECT string_agg(worker || '=' || n, ',' ORDER BY worker) FROM (SELECT worker, COUNT(*) n FROM deliveries GROUP BY worker) x",
    );
    assert!(
        per_worker.contains("w1=") && per_worker.contains("w2=") && per_worker.contains("w3="),
        "{per_worker}"
    );

    // The total rate: over the send, without the tail of w2's reclaimed
    // rows (sent once its heartbeat went stale). What must always hold is
    // that the workers together never go faster than the configured rate
    // (2% for the journal's timestamps, taken when a group of outcomes is
    // written, up to 200 ms late); how close they come to it depends on the
    // machine's load, so bench/workers.sh measures that, not this test.
    let times: Vec<i64> = psql(&db, "SELECT sent_at FROM deliveries ORDER BY sent_at")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let bulk = &times[..n - in_flight];
    let span = (bulk[bulk.len() - 1] - bulk[0]) as f64 / 1000.0;
    let achieved = (bulk.len() - 1) as f64 / span;
    assert!(
        achieved <= rate * 1.02,
        "achieved {achieved:.1}/s over {span:.1}s, faster than the configured {rate}/s"
    );
    eprintln!(
        "achieved {achieved:.1}/s over {span:.1}s; {in_flight} in flight at the kill, {duplicates} duplicates"
    );
}

#[test]
#[ignore = "needs PostgreSQL and python3-aiosmtpd: run scripts/test.sh"]
fn two_workers_at_a_low_rate_share_the_work() {
    let n = 200;
    let tmp = tempfile::tempdir().unwrap();
    let db = support::fresh_database("tidings_workers_share");
    let server = FaultServer::start(tmp.path());
    project(tmp.path());
    let csv = support::email_csv((0..n).map(|i| format!("s{i:03}@example.org")));
    fs::write(tmp.path().join("list.csv"), csv).unwrap();
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
        c.current_dir(tmp.path())
            .env("TIDINGS_DATABASE_URL", &db)
            .env("TIDINGS_SMTP_HOST", "127.0.0.1")
            .env("TIDINGS_SMTP_PORT", server.port.to_string())
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "workers-secret-0123456789")
            .env_remove("TIDINGS_CONFIG")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let spawn = |id: &str| {
        command(&[
            "send",
            "content/hello.md",
            "--subscribers",
            "list.csv",
            "--yes",
            "--quiet",
            "--rate",
            "20/s",
            "--worker-id",
            id,
        ])
        .spawn()
        .unwrap()
    };
    let first = spawn("a");
    // The second starts once the first is under way.
    let started = Instant::now();
    while server.total() < 5 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = spawn("b");
    for (id, child) in [("a", first), ("b", second)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{id}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let received = server.received();
    assert_eq!(received.len(), n);
    assert!(received.values().all(|&c| c == 1), "nobody twice");
    let per_worker = psql(
        &db,
        "SELECT string_agg(worker || '=' || n, ',' ORDER BY worker) FROM (SELECT worker, COUNT(*) n FROM deliveries WHERE status = 'sent' GROUP BY worker) x",
    );
    assert!(
        per_worker.starts_with("a=") && per_worker.contains(",b="),
        "{per_worker}"
    );
    for part in per_worker.split(',') {
        let (_, sent) = part.split_once('=').unwrap();
        let sent: usize = sent.parse().unwrap();
        assert!(
            sent >= n / 3,
            "each worker sends a fair share: {per_worker}"
        );
    }
    let status = command(&["status", "hello"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let workers: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("worker "))
        .collect();
    assert_eq!(workers.len(), 2, "{text}");
    for w in &workers {
        assert!(
            w.contains(", in flight 0, ") && w.contains("(finished "),
            "{text}"
        );
    }
}

#[test]
fn worker_id_needs_postgresql() {
    let tmp = tempfile::tempdir().unwrap();
    project(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .current_dir(tmp.path())
        .env("TIDINGS_UNSUBSCRIBE_SECRET", "workers-secret-0123456789")
        .env_remove("TIDINGS_DATABASE_URL")
        .env_remove("TIDINGS_CONFIG")
        .args(["send", "content/hello.md", "--yes", "--worker-id", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: --worker-id needs PostgreSQL: several senders coordinate through it. SQLite is for one machine"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
