//! Load client for `tidings serve` (bench/serve.sh starts the server and
//! checks the store afterwards): RFC 8058 one-click POSTs, each with its
//! own valid token, from concurrent clients on kept-alive connections.
//!
//! ```text
//! SERVE_LOAD_ADDR=127.0.0.1:PORT SERVE_LOAD_SECRET=… \
//!   [SERVE_LOAD_REQUESTS=10000] [SERVE_LOAD_CLIENTS=50] [SERVE_LOAD_ISSUE=issue-17] \
//!   cargo bench --bench serve_load
//! ```
//!
//! Subscriber i is `reader{i:07}@example.org`. Prints requests/s and
//! latency percentiles; exits 1 if any answer was not a 200.

#[path = "../tests/support/http.rs"]
mod http;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings::deliver::unsubscribe::Signer;

fn var(name: &str, default: Option<&str>) -> String {
    match (std::env::var(name), default) {
        (Ok(v), _) => v,
        (Err(_), Some(d)) => d.to_string(),
        (Err(_), None) => {
            eprintln!("serve_load: {name} is not set (bench/serve.sh sets it)");
            std::process::exit(2);
        }
    }
}

fn main() {
    let addr = var("SERVE_LOAD_ADDR", None);
    let secret = var("SERVE_LOAD_SECRET", None);
    let issue = var("SERVE_LOAD_ISSUE", Some("issue-17"));
    let requests: usize = var("SERVE_LOAD_REQUESTS", Some("10000")).parse().unwrap();
    let clients: usize = var("SERVE_LOAD_CLIENTS", Some("50")).parse().unwrap();

    let signer = Signer::new(secret.as_bytes(), "http://unused");
    let paths: Arc<Vec<String>> = Arc::new(
        (0..requests)
            .map(|i| {
                format!(
                    "/u/{}",
                    signer.token(&issue, &format!("reader{i:07}@example.org"))
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (paths, next, failures, addr) =
                (paths.clone(), next.clone(), failures.clone(), addr.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(paths.len() / clients + 1);
                let mut conn: Option<http::Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let t = Instant::now();
                    let result = match conn.as_mut() {
                        Some(c) => Ok(c),
                        None => http::Conn::connect(&addr).map(|c| conn.insert(c)),
                    }
                    .and_then(|c| {
                        c.request(
                            "POST",
                            path,
                            &[("Content-Type", "application/x-www-form-urlencoded")],
                            b"List-Unsubscribe=One-Click",
                        )
                    });
                    latencies.push(t.elapsed());
                    match result {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("request {i}: status {}", r.status)),
                        Err(e) => {
                            conn = None;
                            failures.lock().unwrap().push(format!("request {i}: {e}"));
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a client thread panicked"))
        .collect();
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let failures = failures.lock().unwrap();
    println!(
        "{} one-click POSTs from {clients} clients in {:.2}s: {:.0} requests/s; latency ms p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}; errors {}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        failures.len()
    );
    for f in failures.iter().take(10) {
        eprintln!("serve_load: {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
