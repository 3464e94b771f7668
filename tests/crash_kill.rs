//! SIGKILL at random moments, again and again, over one campaign: after
//! the last rerun every recipient has the issue, and no kill made more
//! duplicates than there are SMTP connections (`--concurrency`).
//!
//! The SMTP server is tests/support/fault_smtp.py, which logs every message
//! it accepts with the time. A kill's duplicates are counted from the
//! journal and that log: the rows the killed process left unrecorded
//! (`sending`) whose message the server accepted while that process ran.
//! The next run sends exactly those again. Needs python3-aiosmtpd (and
//! PostgreSQL for its variants): run with scripts/test.sh.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::smtp::FaultServer;

const CONCURRENCY: usize = 4;
const KILLS: usize = 20;

/// Where the journal is.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    /// Rows of `sql`, fields joined by `|`.
    fn query(&self, sql: &str) -> Vec<String> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `query`, or the error (a process killed early may have made no
    /// tables yet).
    fn try_query(&self, sql: &str) -> Result<Vec<String>, String> {
        let out = match self {
            Db::Sqlite(path) => {
                let python = std::env::var(support::ENV_PYTHON)
                    .unwrap_or_else(|_| "/usr/bin/python3".into());
                Command::new(python)
                    .args([
                        "-c",
                        "import sqlite3, sys\n\
                         c = sqlite3.connect(sys.argv[1])\n\
                         for row in c.execute(sys.argv[2]):\n    print('|'.join(str(v) for v in row))",
                    ])
                    .arg(path)
                    .arg(sql)
                    .output()
                    .unwrap()
            }
            Db::Postgres(url) => Command::new("psql")
                .arg(url)
                .args(["-tA", "-c", sql])
                .output()
                .unwrap(),
        };
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A small xorshift: random kill times without a dependency; the seed is
/// printed so a failure can be replayed (TIDINGS_TEST_SEED).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("TIDINGS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("seed {seed} (TIDINGS_TEST_SEED={seed} replays it)");
        Rng(seed)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

struct Variant {
    name: &'static str,
    /// Its PostgreSQL database (variants run in parallel).
    database: &'static str,
    n: usize,
    rate: &'static str,
    postgres: bool,
    /// Send as these workers (`--worker-id`), all at once; one of them is
    /// killed each time.
    workers: &'static [&'static str],
}

/// A sender process and when it started.
struct Running {
    child: Child,
    since: f64,
    worker: Option<&'static str>,
}

fn run_variant(v: Variant) {
    let tmp = tempfile::tempdir().unwrap();
    let server = FaultServer::start(tmp.path());
    let dir = tmp.path().join("project");
    support::copy_fixture("minimal", &dir);
    let csv = support::email_csv((0..v.n).map(|i| format!("r{i:05}@example.org")));
    fs::write(dir.join("list.csv"), csv).unwrap();
    let db = if v.postgres {
        Db::Postgres(support::fresh_database(v.database))
    } else {
        Db::Sqlite(dir.join("subscribers/subscribers.db"))
    };
    let spawn = |worker: Option<&'static str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidings"));
        c.current_dir(&dir)
            .env("TIDINGS_SMTP_HOST", "127.0.0.1")
            .env("TIDINGS_SMTP_PORT", server.port.to_string())
            .env("TIDINGS_UNSUBSCRIBE_SECRET", "crash-secret-0123456789")
            .env_remove("TIDINGS_CONFIG")
            .env_remove("TIDINGS_DATABASE_URL")
            .args(["send", "content/hello.md", "--subscribers", "list.csv"])
            .args(["--yes", "--quiet", "--rate", v.rate])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Db::Postgres(url) = &db {
            c.env("TIDINGS_DATABASE_URL", url);
        }
        if let Some(w) = worker {
            c.args(["--worker-id", w]);
        }
        let since = unix_now();
        Running {
            child: c.spawn().unwrap(),
            since,
            worker,
        }
    };
    let ids: Vec<Option<&'static str>> = if v.workers.is_empty() {
        vec![None]
    } else {
        v.workers.iter().map(|w| Some(*w)).collect()
    };
    let mut running: Vec<Running> = ids.iter().map(|w| spawn(*w)).collect();

    let mut rng = Rng::new();
    let started = Instant::now();
    // Per kill: the duplicates it made, and what the journal counted.
    let mut per_kill: Vec<usize> = Vec::new();
    let mut kills = 0;
    while kills < KILLS {
        let i = rng.between(0, running.len() as u64 - 1) as usize;
        let mut victim = running.swap_remove(i);
        // Kill while it sends, not while it starts (a busy machine can take
        // longer to start than any fixed pause): once the server has taken
        // a message since the victim started, at a random moment after.
        let waiting = Instant::now();
        while !server.messages().iter().any(|m| m.at >= victim.since)
            && waiting.elapsed() < Duration::from_secs(20)
            && victim.child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.between(0, 250)));
        if let Some(status) = victim.child.try_wait().unwrap() {
            let out = victim.child.wait_with_output().unwrap();
            panic!(
                "{}: the send ended ({status}) after {kills} kills: too few recipients, or it failed: {}",
                v.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        kills += 1;
        // The rows it left unrecorded, and which of them the server took
        // while it ran: exactly what the next run sends a second time.
        let unrecorded: BTreeSet<String> = db
            .try_query(&match victim.worker {
                Some(w) => format!(
                    "SELECT email FROM deliveries WHERE status = 'sending' AND worker = '{w}'"
                ),
                None => "SELECT email FROM deliveries WHERE status = 'sending'".into(),
            })
            .unwrap_or_default()
            .into_iter()
            .collect();
        let duplicates = server
            .messages()
            .iter()
            .filter(|m| m.at >= victim.since && m.rcpt.iter().any(|r| unrecorded.contains(r)))
            .count();
        per_kill.push(duplicates);
        running.push(spawn(victim.worker));
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}: too slow",
            v.name
        );
    }
    // The last runs go to the end.
    for r in running {
        let out = r.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: the final run failed: {}",
            v.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let received: BTreeMap<String, usize> = server.received();
    let missing = v.n - received.len();
    let duplicates: usize = received.values().map(|c| c - 1).sum();
    let worst = per_kill.iter().copied().max().unwrap_or(0);
    let counted: i64 = db.query("SELECT possible_duplicates FROM campaigns")[0]
        .parse()
        .unwrap();
    eprintln!(
        "{}: {} recipients, {kills} kills in {:.1}s: {duplicates} duplicates in all, at most {worst} from one kill ({per_kill:?}); the journal counted {counted} possible",
        v.name,
        v.n,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(missing, 0, "{}: nobody is lost", v.name);
    assert!(
        worst <= CONCURRENCY,
        "{}: a kill made {worst} duplicates with {CONCURRENCY} connections: {per_kill:?}",
        v.name
    );
    // What must always hold in all: no more than a connection's worth per
    // kill. (Tracing each duplicate to its kill, above, is exact only when
    // nothing else moves the rows between a kill and its query; on a busy
    // machine a worker can, so the trace is reported, the bound asserted.)
    assert!(
        duplicates <= kills * CONCURRENCY,
        "{}: {duplicates} duplicates after {kills} kills with {CONCURRENCY} connections",
        v.name
    );
    assert!(
        counted >= duplicates as i64,
        "{}: the journal counted {counted} possible duplicates, {duplicates} arrived",
        v.name
    );
    assert_eq!(
        db.query("SELECT status, COUNT(*) FROM deliveries GROUP BY status"),
        vec![format!("sent|{}", v.n)],
        "{}: the journal has every recipient sent",
        v.name
    );
}

fn needs_postgres() {
    support::require_env(support::ENV_POSTGRES_URL, "PostgreSQL");
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn sqlite_unthrottled_killed_at_random() {
    run_variant(Variant {
        name: "sqlite unthrottled",
        database: "-",
        n: 4000,
        rate: "unlimited",
        postgres: false,
        workers: &[],
    });
}

#[test]
#[ignore = "needs python3-aiosmtpd: run scripts/test.sh"]
fn sqlite_at_a_rate_killed_at_random() {
    run_variant(Variant {
        name: "sqlite 300/s",
        database: "-",
        n: 2000,
        rate: "300/s",
        postgres: false,
        workers: &[],
    });
}

#[test]
#[ignore = "needs PostgreSQL and python3-aiosmtpd: run scripts/test.sh"]
fn postgres_unthrottled_killed_at_random() {
    needs_postgres();
    run_variant(Variant {
        name: "postgres unthrottled",
        database: "tidings_crash_unthrottled",
        n: 4000,
        rate: "unlimited",
        postgres: true,
        workers: &[],
    });
}

#[test]
#[ignore = "needs PostgreSQL and python3-aiosmtpd: run scripts/test.sh"]
fn postgres_at_a_rate_killed_at_random() {
    needs_postgres();
    run_variant(Variant {
        name: "postgres 300/s",
        database: "tidings_crash_rate",
        n: 2000,
        rate: "300/s",
        postgres: true,
        workers: &[],
    });
}

#[test]
#[ignore = "needs PostgreSQL and python3-aiosmtpd: run scripts/test.sh"]
fn postgres_workers_killed_at_random() {
    needs_postgres();
    run_variant(Variant {
        name: "postgres 2 workers",
        database: "tidings_crash_workers",
        n: 6000,
        rate: "unlimited",
        postgres: true,
        workers: &["w1", "w2"],
    });
}
