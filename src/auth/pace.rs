//! `FailurePace`: how many failed verifications one peer address may cost this replica per
//! second. Each address has a bucket of `burst` tokens refilled at `rate` a second; a login
//! that needs a hash takes a token first ([`FailurePace::take`]) and gets it back unless it
//! failed (wrong password, unknown or malformed name), so the tokens in flight count too and
//! a burst of concurrent guesses cannot overdraw the bucket. While an address has none, its
//! logins that would need a hash are refused at once (RESOURCE_EXHAUSTED, retry). Addresses
//! that do not fail are never paced, so honest clients never meet it.
//!
//! Why: an argon2id verification's 19 MiB walk costs every other request on the machine its
//! caches, not only a core — an address storming with distinct names (which no lockout
//! counts twice) at the hash pool's full rate cut cached traffic by a third in the benchmark;
//! at the default of 2 a second it costs ~5 % of one core (BENCHMARKS.md). Per replica and in
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

    /// A token of `peer`'s for one verification, or `None` while it has none left. The token
    /// is spent only if the verification fails ([`Ticket::failed`]); otherwise it comes back
    /// when the ticket is dropped.
    pub fn take(&self, peer: Option<IpAddr>) -> Option<Ticket<'_>> {
        if self.rate == 0.0 {
            return Some(Ticket {
                pace: self,
                peer,
                taken: false,
            });
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
        if tokens < 1.0 {
            return None;
        }
        buckets.insert(
            peer,
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        Some(Ticket {
            pace: self,
            peer,
            taken: true,
        })
    }

    fn give_back(&self, peer: Option<IpAddr>) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.get_mut(&peer) {
            bucket.tokens = (self.refilled(*bucket, now) + 1.0).min(self.burst);
            bucket.at = now;
        }
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

/// A token taken for one verification: given back when dropped, unless it failed.
pub struct Ticket<'p> {
    pace: &'p FailurePace,
    peer: Option<IpAddr>,
    /// Still to be given back.
    taken: bool,
}

impl Ticket<'_> {
    /// The verification failed: the token is spent.
    pub fn failed(mut self) {
        self.taken = false;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.taken {
            self.pace.give_back(self.peer);
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
            pace.take(peer(2)).expect("within the burst").failed();
        }
        assert!(pace.take(peer(2)).is_none(), "the burst is spent");
        assert!(pace.take(peer(3)).is_some(), "another address is not paced");
        assert!(pace.take(None).is_some());
        assert_eq!(pace.wait(peer(2)), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        pace.take(peer(2))
            .expect("one more after 1 / rate")
            .failed();
        assert!(pace.take(peer(2)).is_none());
        // Four seconds without failures refill the whole burst.
        tokio::time::advance(Duration::from_secs(4)).await;
        for _ in 0..20 {
            pace.take(peer(2)).expect("refilled").failed();
        }
        assert!(pace.take(peer(2)).is_none());
    }

    /// Tokens in flight count: twenty concurrent guesses take the whole burst before any
    /// fails, and a verification that succeeds (or never ends) gives its token back.
    #[tokio::test(start_paused = true)]
    async fn tokens_in_flight_count_and_only_failures_spend_them() {
        let pace = FailurePace::new(5, 20);
        let in_flight: Vec<Ticket<'_>> = (0..20).map(|_| pace.take(peer(2)).unwrap()).collect();
        assert!(pace.take(peer(2)).is_none(), "the burst is in flight");
        drop(in_flight);
        for _ in 0..100 {
            drop(pace.take(peer(2)).expect("successes spend nothing"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_never_paces() {
        let pace = FailurePace::new(0, 1);
        for _ in 0..100 {
            pace.take(peer(2)).unwrap().failed();
        }
        assert!(pace.take(peer(2)).is_some());
    }
}
