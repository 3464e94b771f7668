//! The fault-injecting SMTP server of tests/support/fault_smtp.py (Python's
//! aiosmtpd on loopback), started per test and stopped on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct FaultServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

/// One message the server accepted.
pub struct Received {
    pub rcpt: Vec<String>,
    /// Unix time, seconds.
    pub at: f64,
    /// The client's port: one per SMTP session.
    pub peer: u64,
    /// The message's `To:` header.
    pub to: String,
}

impl FaultServer {
    /// Starts the server, writing its log into `dir`.
    pub fn start(dir: &Path) -> FaultServer {
        FaultServer::start_with(dir, &[])
    }

    /// With more of fault_smtp.py's options (`--smtputf8`, `--cert`, …).
    pub fn start_with(dir: &Path, extra: &[&str]) -> FaultServer {
        let python = std::env::var(super::ENV_PYTHON).unwrap_or_else(|_| "/usr/bin/python3".into());
        let log = dir.join("received.jsonl");
        let mut child = Command::new(&python)
            .arg(super::project_root().join("tests/support/fault_smtp.py"))
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (install python3-aiosmtpd; run scripts/test.sh): {e}")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the fault server did not start ({line:?}): is python3-aiosmtpd installed? run scripts/test.sh"));
        FaultServer { child, port, log }
    }

    /// Every accepted message, in order.
    pub fn messages(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Received {
                    rcpt: v["rcpt"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    at: v["at"].as_f64().unwrap_or_default(),
                    peer: v["peer"].as_u64().unwrap_or_default(),
                    to: v["to"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// Recipient -> number of messages the server accepted for it.
    pub fn received(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in self.messages() {
            for r in m.rcpt {
                *out.entry(r).or_default() += 1;
            }
        }
        out
    }

    /// How many messages it accepted.
    pub fn total(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
