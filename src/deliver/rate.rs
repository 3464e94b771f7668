//! One steady send rate across all connections.
//!
//! governor's GCRA with a burst of one hands out a permit every
//! `per / count`: no bursts above the rate (listmonk sleeps a second after
//! each N messages, which sends in bursts; providers ask for a steady flow).

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Rate;

pub struct Limiter {
    inner: Option<DefaultDirectRateLimiter>,
}

impl Limiter {
    /// `None`: unthrottled (dry runs, benchmarks).
    pub fn new(rate: Option<Rate>) -> Limiter {
        let inner = rate
            .filter(|r| !r.is_unlimited())
            .and_then(|r| Quota::with_period(r.interval()))
            .map(|q| RateLimiter::direct(q.allow_burst(NonZeroU32::MIN)));
        Limiter { inner }
    }

    /// Waits for the next permit.
    pub async fn wait(&self) {
        if let Some(l) = &self.inner {
            l.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn permits_are_spaced_not_bursted() {
        let limiter = Limiter::new(Some("50/s".parse().unwrap()));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..11 {
            limiter.wait().await;
            times.push(start.elapsed());
        }
        // The first permit is immediate; each later one 20 ms after the last,
        // never two at once.
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(18), "{times:?}");
        }
        assert!(times[10] >= Duration::from_millis(195), "{times:?}");
    }
}
