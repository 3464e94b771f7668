//! Helpers shared by the integration tests that need real services
//! (Chromium, the reference `mjml` in Node, PostgreSQL, an SMTP sink).
//!
//! `scripts/test.sh` installs and starts those services and exports where
//! they are as `TIDINGS_TEST_*` variables. A test that needs one is
//! `#[ignore = "needs …: run scripts/test.sh"]`, so plain `cargo test` skips
//! it; run with `--include-ignored` and without the variable, it fails and
//! says how to get the service: it never passes without having checked.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod chromium;
pub mod mail;
pub mod smtp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const ENV_CHROMIUM: &str = "TIDINGS_TEST_CHROMIUM";
pub const ENV_MJML_DIR: &str = "TIDINGS_TEST_MJML_DIR";
pub const ENV_POSTGRES_URL: &str = "TIDINGS_TEST_POSTGRES_URL";
pub const ENV_SMTP_SINK: &str = "TIDINGS_TEST_SMTP_SINK";
pub const ENV_SMTP_SOURCE: &str = "TIDINGS_TEST_SMTP_SOURCE";
/// A Python that has aiosmtpd (Debian's; one earlier in PATH may not).
pub const ENV_PYTHON: &str = "TIDINGS_TEST_PYTHON";

/// The value of a service variable set by `scripts/test.sh`; panics with
/// what to do when it is missing, so the test fails instead of passing
/// without having run.
pub fn require_env(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "this test needs {service}, found through ${var}, which is not set: \
             run the whole suite with scripts/test.sh (it installs and starts the \
             services, then runs cargo test -- --include-ignored)"
        ),
    }
}

/// The project folder (where `Cargo.toml`, `content/` and `tidings.toml` are).
pub fn project_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch folder under `target/tmp/<name>`, emptied first. It is kept
/// after the run, so screenshots and outputs can be looked at.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The real `tidings` binary, run from the project folder with the
/// bundled `tidings.toml`. The harness' own `TIDINGS_TEST_*` variables and
/// any secrets of the developer's shell are not passed on.
pub fn tidings() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.current_dir(project_root());
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("TIDINGS_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// `tidings preview content/issue-17.md --out <out>` plus `extra`; panics
/// with its output unless it succeeds.
pub fn preview_issue_17(out: &Path, extra: &[&str]) {
    let mut cmd = tidings();
    cmd.args(["preview", "content/issue-17.md", "--out"])
        .arg(out)
        .args(extra);
    let output = run(&mut cmd, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "tidings preview failed ({}):\n{}",
        output.status,
        describe(&output)
    );
}

/// Runs `cmd` to completion, killing it after `limit`. Output goes through
/// files, so a chatty child cannot fill a pipe and stall.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let logs = tempfile::tempdir().expect("temp dir");
    let out_path = logs.path().join("stdout");
    let err_path = logs.path().join("stderr");
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let start = Instant::now();
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} did not finish within {limit:?}; its stderr:\n{}",
                tail(&read_lossy(&err_path), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: read_bytes(&out_path),
        stderr: read_bytes(&err_path),
    }
}

fn read_bytes(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&read_bytes(path)).into_owned()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// stdout and stderr of a finished command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        tail(&String::from_utf8_lossy(&output.stdout), 40),
        tail(&String::from_utf8_lossy(&output.stderr), 40)
    )
}

/// The section headings and pull quotes of `content/issue-17.md`: what a
/// reader must be able to see in every rendering of it.
pub const ISSUE_17_HEADINGS: &[&str] = &[
    "Why Intimacy is Difficult for Couples in Recovery",
    "Why Intimacy is Not Just Sex",
    "Why Self-recovery Increases Intimacy",
];
pub const ISSUE_17_QUOTES: &[&str] = &[
    "Allowing vulnerability is the essence of intimacy.",
    "The foundation of healthy intimacy is trust.",
];

/// The recipients' addresses in `subscribers/sample.csv`.
pub fn sample_addresses() -> Vec<String> {
    let path = project_root().join("subscribers/sample.csv");
    let mut reader = csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "email")
        .expect("an email column");
    reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect()
}

/// Node.js with the reference MJML compiler (`mjml` in
/// `$TIDINGS_TEST_MJML_DIR/node_modules`, installed by `scripts/test.sh`).
pub struct ReferenceMjml {
    dir: PathBuf,
}

impl ReferenceMjml {
    pub fn from_env() -> ReferenceMjml {
        let dir = PathBuf::from(require_env(
            ENV_MJML_DIR,
            "the reference MJML compiler (npm package mjml)",
        ));
        assert!(
            dir.join("node_modules/mjml/package.json").is_file(),
            "${ENV_MJML_DIR} is {}, which has no node_modules/mjml: run scripts/test.sh",
            dir.display()
        );
        ReferenceMjml { dir }
    }

    /// Compiles `mjml` strictly with `bench/mjml-check.js`, writing the
    /// HTML to `html_out`. `Err` carries the compiler's complaint.
    pub fn compile_strict(&self, mjml: &Path, html_out: &Path) -> Result<(), String> {
        let mut cmd = Command::new("node");
        cmd.arg(project_root().join("bench/mjml-check.js"))
            .arg(mjml)
            .arg(html_out)
            .env("MJML_DIR", &self.dir);
        let output = run(&mut cmd, Duration::from_secs(120));
        if output.status.success() {
            Ok(())
        } else {
            Err(describe(&output))
        }
    }
}

/// Copies the fixture project `tests/fixtures/<name>` into `dst`.
pub fn copy_fixture(name: &str, dst: &Path) {
    copy_dir(&project_root().join("tests/fixtures").join(name), dst);
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
    }
}

/// A subscriber CSV with only the `email` column.
pub fn email_csv(addresses: impl IntoIterator<Item = String>) -> String {
    std::iter::once("email".to_string())
        .chain(addresses)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fresh, empty database named `name` on the test PostgreSQL; its URL.
pub fn fresh_database(name: &str) -> String {
    let admin = require_env(ENV_POSTGRES_URL, "PostgreSQL");
    let out = Command::new("psql")
        .arg(&admin)
        .args([
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {name}"),
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("unexpected URL {admin}"),
    }
}
