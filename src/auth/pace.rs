//! `FailurePace`: how many failed verifications one peer address may cost this replica per
//! second. Each address has a bucket of `burst` tokens refilled at `rate` a second; a failed
//! verification (wrong password, unknown or malformed name) takes a token, and while an
//! address has none its logins that would need a hash are refused at once (RESOURCE_EXHAUSTED,
//! retry). Addresses that do not fail are never paced, so honest clients never meet it.
//!
//! Why: an argon2id verification's 19 MiB walk costs every other request on the machine its
//! caches, not only a core — an address storming with distinct names (which no lockout
//! counts twice) at the hash pool's full rate cut cached traffic by a third in the benchmark,
//! while a few failures a second cost nothing measurable (BENCHMARKS.md). Per replica and in
//! memory only (at most [`MAX_PEERS`] addresses; full buckets are forgotten first), on the
//! tokio clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

/// Most addresses remembered; beyond it, addresses whose buckets have refilled are forgotten
/// (they are as good as new), then the fullest.
pub const MAX_PEERS: usize = 65_536;

/// The per-address failure budget; `rate` 0 turns pacing off.
pub struct FailurePace {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl FailurePace {
    /// `rate` failures a second per address, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> FailurePace {
        FailurePace {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Whether `peer` may cost a verification now (it has failures left to spend).
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .get(&peer)
            .is_none_or(|b| self.refilled(*b, Instant::now()) >= 1.0)
    }

    /// Spends a token of `peer`'s for a failed verification.
    pub fn failed(&self, peer: Option<IpAddr>) {
        if self.rate == 0.0 {
            return;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_PEERS && !buckets.contains_key(&peer) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            if buckets.len() >= MAX_PEERS {
                // Still full of addresses that are failing: forget the one with most left.
                let fullest = buckets
                    .iter()
                    .max_by(|a, b| {
                        self.refilled(*a.1, now)
                            .total_cmp(&self.refilled(*b.1, now))
                    })
                    .map(|(peer, _)| *peer);
                if let Some(fullest) = fullest {
                    buckets.remove(&fullest);
                }
            }
        }
        let tokens = buckets
            .get(&peer)
            .map_or(self.burst, |b| self.refilled(*b, now));
        buckets.insert(
            peer,
            Bucket {
                tokens: (tokens - 1.0).max(-1.0),
                at: now,
            },
        );
    }

    /// How long until `peer` may fail again.
    #[cfg(test)]
    fn wait(&self, peer: Option<IpAddr>) -> std::time::Duration {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match (buckets.get(&peer), self.rate) {
            (_, 0.0) | (None, _) => std::time::Duration::ZERO,
            (Some(b), rate) => {
                let missing = 1.0 - self.refilled(*b, Instant::now());
                std::time::Duration::from_secs_f64((missing / rate).max(0.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_keeps_failing_is_paced_and_others_are_not() {
        let pace = FailurePace::new(5, 20);
        for _ in 0..20 {
            assert!(pace.allows(peer(2)));
            pace.failed(peer(2));
        }
        assert!(!pace.allows(peer(2)), "the burst is spent");
        assert!(pace.allows(peer(3)), "another address is not paced");
        assert!(pace.allows(None));
        assert_eq!(pace.wait(peer(2)), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(pace.allows(peer(2)), "one more after 1 / rate");
        pace.failed(peer(2));
        assert!(!pace.allows(peer(2)));
        // Four seconds without failures refill the whole burst.
        tokio::time::advance(Duration::from_secs(4)).await;
        for _ in 0..20 {
            assert!(pace.allows(peer(2)));
            pace.failed(peer(2));
        }
        assert!(!pace.allows(peer(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_never_paces() {
        let pace = FailurePace::new(0, 1);
        for _ in 0..100 {
            pace.failed(peer(2));
        }
        assert!(pace.allows(peer(2)));
    }
}
