//! `Authenticator`: is this the user's password? The answer comes from a per-replica cache of
//! verified passwords when it can, from etcd and a hash verification when it must.
//!
//! The cache keeps, per user, an HMAC-SHA256 (random per-process key) of user and password
//! and the store revision the user was read at — never the password, never an unkeyed hash.
//! A hit is one HMAC and a constant-time comparison. Misses for the same user and password
//! are coalesced into one store read and one hash verification. Watch-driven invalidation
//! (see `coherence`) calls [`Authenticator::invalidate_user`]; a load that read the store
//! before an invalidation it raced with is not inserted (see `insert_unless_stale`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use moka::future::Cache;
use moka::ops::compute::Op;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::{AuthError, Authenticated};
use crate::catalog::{Catalog, CatalogError};
use crate::hash_pool::HashPool;
use crate::meta::Revision;
use crate::password::{HashError, Limits, Password, PasswordHash, Username};

type Verifier = [u8; 32];

/// What the authenticator needs besides the catalog and the hash pool.
#[derive(Clone, Debug)]
pub struct AuthenticatorConfig {
    pub enabled: bool,
    pub super_users: Vec<String>,
    pub limits: Limits,
    pub cache_capacity: u64,
    pub cache_ttl: Option<Duration>,
}

/// Counters for status lines and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub rehashed: u64,
}

#[derive(Clone, Debug)]
struct Verified {
    verifier: Verifier,
    revision: Revision,
}

/// Verifies credentials; cheap to clone (shared state).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthenticatorConfig,
    catalog: Catalog,
    pool: HashPool,
    /// HMAC-SHA256 keyed with 32 random bytes drawn at start; never leaves the process.
    mac: Hmac<Sha256>,
    dummy: PasswordHash,
    /// Synchronous: a hit is answered without awaiting anything.
    verified: moka::sync::Cache<String, Verified>,
    /// Only for coalescing: concurrent misses with the same (user, verifier, watermark)
    /// share one load.
    loading: Cache<(String, Verifier, Revision), Verified>,
    /// The newest revision at which any cached user was invalidated.
    invalidated: AtomicI64,
    /// Until when this replica may answer (see [`Authenticator::trust_until`]).
    trust: Trust,
    hits: AtomicU64,
    misses: AtomicU64,
    rehashed: AtomicU64,
}

impl Authenticator {
    /// Builds the authenticator. The dummy hash for unknown users is computed here, once.
    pub async fn new(
        config: AuthenticatorConfig,
        catalog: Catalog,
        pool: HashPool,
    ) -> Result<Authenticator, HashError> {
        let hasher = pool.hasher().clone();
        let dummy = tokio::task::spawn_blocking(move || hasher.dummy_hash())
            .await
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| HashError::Hashing(e.to_string()))?;
        let mut builder = moka::sync::Cache::builder().max_capacity(config.cache_capacity);
        if let Some(ttl) = config.cache_ttl {
            builder = builder.time_to_live(ttl);
        }
        let verified = builder.build();
        let loading = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(60))
            .build();
        let inner = Inner {
            config,
            catalog,
            pool,
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
                .expect("HMAC takes any key length"),
            dummy,
            verified,
            loading,
            invalidated: AtomicI64::new(0),
            trust: Trust::forever(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rehashed: AtomicU64::new(0),
        };
        Ok(Authenticator {
            inner: Arc::new(inner),
        })
    }

    pub fn pool(&self) -> &HashPool {
        &self.inner.pool
    }

    /// Authenticates the `authorization` header of a request.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Authenticated, AuthError> {
        if !self.inner.config.enabled {
            return Ok(Authenticated::unchecked());
        }
        let credentials = crate::auth::parse_header(header)?;
        let user = credentials.user();
        self.verify(user, credentials.password()).await?;
        let super_user = self.inner.config.super_users.iter().any(|s| s == user);
        Ok(Authenticated::user(user, super_user))
    }

    /// Whether `password` is `user`'s password. Unknown users cost the same as wrong passwords.
    pub async fn verify(&self, user: &str, password: &[u8]) -> Result<(), AuthError> {
        if !self.inner.trust.holds() {
            return Err(AuthError::Unavailable(
                "replica is re-syncing with etcd".into(),
            ));
        }
        let verifier = self.verifier(user, password);
        if self.is_hit(user, &verifier) {
            return Ok(());
        }
        // Boxed so the hot path's future stays small; the slow path costs milliseconds anyway.
        Box::pin(self.verify_slow(user, password, verifier)).await
    }

    /// The hot path: no await, no allocation, one constant-time comparison.
    fn is_hit(&self, user: &str, verifier: &Verifier) -> bool {
        let hit = self
            .inner
            .verified
            .get(user)
            .is_some_and(|entry| bool::from(entry.verifier.ct_eq(verifier)));
        if hit {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    async fn verify_slow(
        &self,
        user: &str,
        password: &[u8],
        verifier: Verifier,
    ) -> Result<(), AuthError> {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        // The invalidation watermark is part of the key: a request that arrives after an
        // invalidation never joins a load that may have read the record before it.
        let seen = self.inner.invalidated.load(Ordering::Acquire);
        let key = (user.to_string(), verifier, seen);
        let load = self.load(user, password, verifier);
        let result = self.inner.loading.try_get_with(key.clone(), load).await;
        self.inner.loading.invalidate(&key).await;
        result.map(|_| ()).map_err(|e| (*e).clone())
    }

    fn verifier(&self, user: &str, password: &[u8]) -> Verifier {
        // Cloning the keyed state skips re-deriving the inner and outer pads per request.
        let mut mac = self.inner.mac.clone();
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// The slow path: read the user, verify the hash (bounded pool), maybe rehash, cache.
    async fn load(
        &self,
        user: &str,
        password: &[u8],
        verifier: Verifier,
    ) -> Result<Verified, AuthError> {
        let Ok(name) = Username::parse(user, &self.inner.config.limits) else {
            return self.deny_unknown(password).await;
        };
        let read = self
            .inner
            .catalog
            .get_user(&name)
            .await
            .map_err(store_error)?;
        let Some(stored) = read.value else {
            return self.deny_unknown(password).await;
        };
        let matches = self
            .inner
            .pool
            .verify(stored.hash.clone(), password.to_vec())
            .await
            .map_err(hash_error)?;
        if !matches {
            return Err(AuthError::Denied);
        }
        if self.inner.pool.hasher().needs_rehash(&stored.hash) {
            self.rehash(&name, &stored, password).await;
        }
        let entry = Verified {
            verifier,
            revision: read.revision,
        };
        self.insert_unless_stale(user, entry.clone());
        Ok(entry)
    }

    async fn deny_unknown(&self, password: &[u8]) -> Result<Verified, AuthError> {
        // Spend the same work as a real verification so timing does not reveal who exists.
        let _ = self
            .inner
            .pool
            .verify(self.inner.dummy.clone(), password.to_vec())
            .await
            .map_err(hash_error)?;
        Err(AuthError::Denied)
    }

    /// Rewrites a legacy or weaker hash in the configured scheme (compare-and-swap on the
    /// revision read, so a concurrent password change wins and is never overwritten).
    async fn rehash(&self, name: &Username, stored: &crate::catalog::StoredUser, password: &[u8]) {
        let Ok(password) = Password::new(
            password.to_vec(),
            &Limits {
                min_password_len: 1,
                ..self.inner.config.limits.clone()
            },
        ) else {
            return;
        };
        let result = match self.inner.pool.hash(password).await {
            Ok(hash) => self
                .inner
                .catalog
                .replace_user(name, &stored.with_hash(hash))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                self.inner.rehashed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(user = %name, "rehashed stored password to the configured scheme");
            }
            Err(reason) => tracing::debug!(user = %name, %reason, "rehash skipped"),
        }
    }

    /// Caches `entry` unless an invalidation newer than its read has been applied. Runs under
    /// moka's per-key lock, as does [`Self::invalidate_user`], so the two cannot interleave.
    fn insert_unless_stale(&self, user: &str, entry: Verified) {
        let invalidated = &self.inner.invalidated;
        self.inner
            .verified
            .entry(user.to_string())
            .and_compute_with(
                |_| match invalidated.load(Ordering::Acquire) > entry.revision {
                    true => Op::Nop,
                    false => Op::Put(entry),
                },
            );
    }

    /// Forgets `user`'s verified password because their record changed at `revision`.
    pub fn invalidate_user(&self, user: &str, revision: Revision) {
        let invalidated = &self.inner.invalidated;
        self.inner
            .verified
            .entry(user.to_string())
            .and_compute_with(|_| {
                invalidated.fetch_max(revision, Ordering::AcqRel);
                Op::<Verified>::Remove
            });
    }

    /// Forgets everything (a compacted watch, a re-sync): entries read before `revision` go.
    pub fn invalidate_all(&self, revision: Revision) {
        self.inner.invalidated.fetch_max(revision, Ordering::AcqRel);
        self.inner.verified.invalidate_all();
    }

    /// Answers only until `deadline` (`None`: indefinitely). `coherence` moves the deadline
    /// forward with every confirmed lease keep-alive, so a replica that was frozen or cut off
    /// refuses (UNAVAILABLE) from the moment its lease may have expired, even before any of
    /// its tasks has run again. The clock is monotonic and keeps running while stopped.
    pub fn trust_until(&self, deadline: Option<Instant>) {
        self.inner.trust.set(deadline);
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
        self.inner.verified.get(user).is_some()
    }
}

/// A deadline readable without a lock: milliseconds after `base`, `u64::MAX` for never.
struct Trust {
    base: Instant,
    until_ms: AtomicU64,
}

impl Trust {
    fn forever() -> Trust {
        Trust {
            base: Instant::now(),
            until_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn set(&self, deadline: Option<Instant>) {
        let ms = match deadline {
            None => u64::MAX,
            Some(at) => at.saturating_duration_since(self.base).as_millis() as u64,
        };
        self.until_ms.store(ms, Ordering::Release);
    }

    fn holds(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }
}

fn store_error(err: CatalogError) -> AuthError {
    match err {
        CatalogError::Meta(e) => AuthError::Unavailable(e.to_string()),
        other => {
            tracing::error!(error = %other, "cannot read a user record");
            AuthError::Denied
        }
    }
}

fn hash_error(err: HashError) -> AuthError {
    match err {
        HashError::Busy => AuthError::Busy,
        other => {
            tracing::error!(error = %other, "password verification failed");
            AuthError::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{EmbeddedKv, MetaKv, Store};
    use crate::password::{HashScheme, Hasher};

    async fn setup(dir: &tempfile::TempDir) -> (Authenticator, Catalog) {
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let catalog = Catalog::new(store, "t/meta");
        let scheme = HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let pool = HashPool::new(Hasher::new(scheme), 1, 8, 0);
        let password = Password::new(b"password1".to_vec(), &Limits::default()).unwrap();
        let hash = pool.hash(password).await.unwrap();
        let name = Username::parse("alice", &Limits::default()).unwrap();
        catalog.create_user(&name, &hash, None).await.unwrap();
        let config = AuthenticatorConfig {
            enabled: true,
            super_users: vec![],
            limits: Limits::default(),
            cache_capacity: 100,
            cache_ttl: None,
        };
        (
            Authenticator::new(config, catalog.clone(), pool)
                .await
                .unwrap(),
            catalog,
        )
    }

    /// The race moka alone loses: a load read the user at revision H, the watcher applies an
    /// invalidation at H+1, then the load tries to insert. It must not reinstate the entry.
    #[tokio::test]
    async fn a_load_older_than_an_applied_invalidation_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, catalog) = setup(&dir).await;
        let read_at = catalog.store().get("t/meta").await.unwrap().revision;
        let verifier = auth.verifier("alice", b"password1");
        auth.invalidate_user("alice", read_at + 1);
        auth.insert_unless_stale(
            "alice",
            Verified {
                verifier,
                revision: read_at,
            },
        );
        assert!(!auth.is_cached("alice"), "a stale load was reinstated");
        // A load that read after the invalidation is cached.
        auth.insert_unless_stale(
            "alice",
            Verified {
                verifier,
                revision: read_at + 1,
            },
        );
        assert!(auth.is_cached("alice"));
    }

    #[tokio::test]
    async fn hits_misses_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        assert_eq!(
            auth.verify("alice", b"wrong-pass").await,
            Err(AuthError::Denied)
        );
        assert!(!auth.is_cached("alice"), "a failure is never cached");
        assert_eq!(
            auth.verify("nobody", b"password1").await,
            Err(AuthError::Denied)
        );
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        assert_eq!(
            auth.verify("alice", b"password2").await,
            Err(AuthError::Denied),
            "a cached user with another password"
        );
        let stats = auth.stats();
        assert_eq!((stats.hits, stats.misses), (1, 4));
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_password_share_one_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.verify("alice", b"password1").await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        // One hash pool slot, 8 queued: without coalescing most of the 16 would be refused.
        assert_eq!(auth.pool().peak_running(), 1);
    }

    #[tokio::test]
    async fn an_expired_trust_deadline_refuses_even_cached_users() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        auth.trust_until(Some(Instant::now()));
        assert!(matches!(
            auth.verify("alice", b"password1").await,
            Err(AuthError::Unavailable(_))
        ));
        auth.trust_until(None);
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
    }
}
