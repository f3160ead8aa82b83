//! `CredentialCache`: the per-replica memory of verified passwords, and everything that decides
//! whether it may be used — the invalidation watermarks and the trust deadline ([`Trust`]).
//! `coherence` invalidates it on watch events (through the authenticator, which also drops
//! the API keys and tokens the event concerns) and holds a clone of its `Trust`, which it
//! moves on keep-alives; `authenticator` reads and fills it; it never reads the store or
//! hashes.
//!
//! An entry is, per canonical [`Username`], an HMAC-SHA256 [`Verifier`] of name and password
//! (keyed by the authenticator, never the password or an unkeyed hash) and the store revision
//! the record was read at.
//!
//! Watermarks: a load read the record at revision R; if an invalidation of *that user* at
//! W > R — or an `invalidate_all` at W > R (the global epoch) — was applied while it ran, the
//! load's result is not cached. Writes to other users do not matter, so a stream of writes to
//! bob never stops alice's logins from being cached. Check-and-insert and invalidate run under
//! one lock, so they cannot interleave. Per-user marks are folded into the epoch when no load
//! is in flight (no insert can then be older than them) or when there are very many, so the map
//! stays small; marks never move backwards, which keeps the coalescing keys built from them
//! (see `authenticator`) from ever matching a load older than an invalidation.
//!
//! Secrets: verifiers are wiped when dropped (`zeroize`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::time::Instant;
use zeroize::Zeroize;

use crate::meta::Revision;
use crate::password::Username;

/// Beyond this many per-user marks with loads in flight, they are folded into the epoch (a
/// few in-flight loads then go uncached; correctness is unaffected).
const MAX_MARKS: usize = 65_536;

/// HMAC-SHA256 of a canonical name and a password. Compared in constant time; wiped on drop.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Verifier([u8; 32]);

impl Verifier {
    pub(crate) fn new(bytes: [u8; 32]) -> Verifier {
        Verifier(bytes)
    }

    /// Constant time: the XOR of the four 64-bit words of each, OR-ed together, compared with
    /// zero by `subtle` (no branch on the data). A bytewise `ct_eq` hid each of the 32 bytes
    /// behind its own barrier: ~500 instructions a cache hit under callgrind (BENCHMARKS.md).
    fn matches(&self, other: &Verifier) -> bool {
        let difference = words(&self.0)
            .zip(words(&other.0))
            .fold(0u64, |acc, (a, b)| acc | (a ^ b));
        bool::from(difference.ct_eq(&0))
    }
}

fn words(bytes: &[u8; 32]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|word| u64::from_ne_bytes(word.try_into().expect("8-byte chunks")))
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

/// A verified password: its verifier and the revision its record was read at.
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    pub(crate) verifier: Verifier,
    pub(crate) revision: Revision,
}

/// Counters for status lines and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub rehashed: u64,
}

/// The cache handle; cheap to clone (shared state).
#[derive(Clone)]
pub struct CredentialCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// Synchronous: a hit is answered without awaiting anything or taking a lock of ours. The
    /// entry is shared (a hit copies and wipes no verifier), and names are hashed with
    /// foldhash, seeded per process: only verified names are ever inserted, so an attacker
    /// cannot fill it with colliding keys, and SipHash cost more than the rest of the lookup.
    verified: moka::sync::Cache<Username, Arc<Verified>, foldhash::fast::RandomState>,
    /// Watermarks and in-flight loads; only the slow path and invalidations take it.
    marks: Mutex<Marks>,
    /// Until when this replica may answer (see [`CredentialCache::trust_until`]).
    trust: Trust,
    hits: AtomicU64,
    misses: AtomicU64,
    rehashed: AtomicU64,
}

#[derive(Default)]
struct Marks {
    /// The newest revision at which each user was invalidated (only while it can matter).
    per_user: HashMap<Username, Revision>,
    /// The newest revision of an `invalidate_all`, and of folded per-user marks.
    epoch: Revision,
    /// Loads between [`CredentialCache::begin_load`] and the drop of its guard.
    loads: usize,
}

impl Marks {
    fn of(&self, user: &Username) -> Revision {
        self.per_user
            .get(user)
            .copied()
            .unwrap_or(self.epoch)
            .max(self.epoch)
    }

    fn fold(&mut self) {
        if let Some(newest) = self.per_user.values().copied().max() {
            self.epoch = self.epoch.max(newest);
        }
        self.per_user.clear();
    }
}

/// Held by a load from before its store read until after its insert attempt.
pub(crate) struct LoadGuard {
    cache: CredentialCache,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut marks = self.cache.marks();
        marks.loads = marks.loads.saturating_sub(1);
        if marks.loads == 0 {
            // No load in flight: every future load reads at or after each mark, so the marks
            // can only ever refuse what they need not. Fold them to keep the map small.
            marks.fold();
        }
    }
}

impl CredentialCache {
    /// At most `capacity` users; entries expire after `ttl` if given. Trusted until told not.
    pub fn new(capacity: u64, ttl: Option<Duration>) -> CredentialCache {
        let mut builder = moka::sync::Cache::builder().max_capacity(capacity);
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(ttl);
        }
        CredentialCache {
            inner: Arc::new(Inner {
                verified: builder.build_with_hasher(foldhash::fast::RandomState::default()),
                marks: Mutex::new(Marks::default()),
                trust: Trust::forever(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                rehashed: AtomicU64::new(0),
            }),
        }
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        // Nothing panics while holding it; a poisoned lock still guards valid marks.
        self.inner
            .marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The hot path: whether `user`'s cached verifier equals `verifier` (constant time).
    pub(crate) fn is_hit(&self, user: &Username, verifier: &Verifier) -> bool {
        let hit = self
            .inner
            .verified
            .get(user)
            .is_some_and(|entry| entry.verifier.matches(verifier));
        if hit {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub(crate) fn record_miss(&self) {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_rehash(&self) {
        self.inner.rehashed.fetch_add(1, Ordering::Relaxed);
    }

    /// The newest invalidation that applies to `user` (per-user mark or global epoch).
    pub(crate) fn watermark(&self, user: &Username) -> Revision {
        self.marks().of(user)
    }

    /// Call before a load reads the store; hold the guard until after `insert_unless_stale`.
    pub(crate) fn begin_load(&self) -> LoadGuard {
        self.marks().loads += 1;
        LoadGuard {
            cache: self.clone(),
        }
    }

    /// Caches `entry` unless an invalidation of `user` (or of everyone) newer than its read
    /// has been applied. Returns whether it was cached.
    pub(crate) fn insert_unless_stale(&self, user: &Username, entry: Verified) -> bool {
        let marks = self.marks();
        if marks.of(user) > entry.revision {
            return false;
        }
        self.inner.verified.insert(user.clone(), Arc::new(entry));
        true
    }

    /// Forgets `user`'s verified password because their record changed at `revision`. `user` is
    /// the name as the store key spells it; a name no login can use has nothing cached.
    pub fn invalidate_user(&self, user: &str, revision: Revision) {
        let Some(user) = key_name(user) else {
            return;
        };
        let mut marks = self.marks();
        let mark = marks.per_user.entry(user.clone()).or_default();
        *mark = (*mark).max(revision);
        if marks.loads == 0 || marks.per_user.len() > MAX_MARKS {
            marks.fold();
        }
        self.inner.verified.invalidate(&user);
    }

    /// Forgets everything (a compacted watch, a re-sync): entries read before `revision` go.
    pub fn invalidate_all(&self, revision: Revision) {
        let mut marks = self.marks();
        marks.epoch = marks.epoch.max(revision);
        self.inner.verified.invalidate_all();
    }

    /// The trust deadline this cache answers under (`coherence` holds a clone and moves it).
    pub fn trust(&self) -> &Trust {
        &self.inner.trust
    }

    pub fn is_trusted(&self) -> bool {
        self.inner.trust.holds()
    }

    pub fn stats(&self) -> AuthStats {
        AuthStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            entries: self.inner.verified.entry_count(),
            rehashed: self.inner.rehashed.load(Ordering::Relaxed),
        }
    }

    /// Whether a verified entry for `user` is cached (for tests and status).
    pub fn is_cached(&self, user: &str) -> bool {
        key_name(user).is_some_and(|user| self.inner.verified.contains_key(&user))
    }
}

/// `raw` as a cache key: names that are not canonical (or too long for any configuration) were
/// never cached, since logins parse with [`Username::parse_exact`] too.
fn key_name(raw: &str) -> Option<Username> {
    let limits = crate::password::Limits {
        max_username_len: usize::MAX,
        ..crate::password::Limits::default()
    };
    Username::parse_exact(raw, &limits).ok()
}

/// Until when this replica may answer from its caches: a cheap handle on one deadline,
/// readable without a lock. The cache (and the API-key and token caches through it) reads it;
/// `coherence`'s trust gate holds a clone and is the only writer.
#[derive(Clone)]
pub struct Trust {
    inner: Arc<Deadline>,
}

/// Milliseconds after `base`, `u64::MAX` for never.
struct Deadline {
    base: Instant,
    until_ms: AtomicU64,
}

impl Trust {
    fn forever() -> Trust {
        Trust {
            inner: Arc::new(Deadline {
                base: Instant::now(),
                until_ms: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Answers only until `deadline` (`None`: indefinitely). `coherence` moves the deadline
    /// forward with every confirmed lease keep-alive, so a replica that was frozen or cut off
    /// refuses (UNAVAILABLE) from the moment its lease may have expired, even before any of
    /// its tasks has run again. The clock is monotonic and keeps running while stopped.
    pub fn until(&self, deadline: Option<Instant>) {
        let ms = match deadline {
            None => u64::MAX,
            Some(at) => at.saturating_duration_since(self.inner.base).as_millis() as u64,
        };
        self.inner.until_ms.store(ms, Ordering::Release);
    }

    /// Whether the deadline is still ahead.
    pub fn holds(&self) -> bool {
        (self.inner.base.elapsed().as_millis() as u64) < self.inner.until_ms.load(Ordering::Acquire)
    }
}
