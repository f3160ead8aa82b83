//! `Authenticator`: is this the user's password? The flow — parse the header's name into the
//! canonical [`Username`] once, at the edge; answer from the [`CredentialCache`] when it can;
//! otherwise read the user from the store and verify the hash in the bounded pool, then cache.
//!
//! The name is parsed with [`Username::parse_exact`]: a header name with surrounding white space
//! of any kind (`" alice"`, `"\talice"`, `"alice\n"`, U+00A0, U+3000…) or any other character
//! outside the rules is refused with UNAUTHENTICATED after the same hash work as a wrong
//! password; it is never trimmed. So the name that is verified, cached, coalesced, MAC'ed,
//! put into [`Authenticated`] and invalidated is always the same canonical spelling.
//!
//! Misses for the same user and password are coalesced into one store read and one hash
//! verification; the coalescing key carries the user's invalidation watermark, so a request
//! that arrives after an invalidation never joins a load that may have read the record before
//! it. The cache itself (entries, per-user watermarks, trust deadline) lives in `cache`.
//!
//! A miss is also where lockout applies (`lockout`): a locked (name, peer) or name is refused
//! before it may join a load or hash anything; a load is admitted by the lockout and reports
//! its outcome to it (a failure counts, a verified password resets its pair). A cache hit
//! asks the lockout nothing, so the hot path costs what it did. The peer is the TCP peer's
//! address the layer read from the connection; a load runs its hash in that peer's share of
//! the hash pool.
//!
//! Secrets: the HMAC key schedule and every verifier are wiped when dropped (`zeroize`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use moka::future::Cache;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::auth::apikey::ApiKeys;
use crate::auth::bearer::{self, Bearer, Refusal};
use crate::auth::cache::{CredentialCache, Verified, Verifier};
use crate::auth::lockout::{Lockout, LockoutPolicy};
use crate::auth::pace::FailurePace;
use crate::auth::{AuthError, AuthStats, Authenticated, Oidc, OidcSettings};
use crate::catalog::{Catalog, CatalogError, IdentityChange};
use crate::hash_pool::HashPool;
use crate::meta::Revision;
use crate::password::{HashError, Limits, Password, PasswordHash, Username};

/// What the authenticator needs besides the catalog and the hash pool.
#[derive(Clone, Debug)]
pub struct AuthenticatorConfig {
    pub enabled: bool,
    pub super_users: Vec<String>,
    pub limits: Limits,
    pub cache_capacity: u64,
    pub cache_ttl: Option<Duration>,
    /// `credstore.lockout.*`.
    pub lockout: LockoutPolicy,
}

/// An OIDC identity seen recently, for credstore's own listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenIdentity {
    pub name: String,
    pub roles: Vec<String>,
    pub last_seen: i64,
}

/// Verifies credentials; cheap to clone (shared state).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthenticatorConfig,
    /// Where user records are read on a miss.
    catalog: Catalog,
    /// The only place hashes are verified (bounded, low priority).
    pool: HashPool,
    /// HMAC-SHA256 keyed with 32 random bytes drawn at start; never leaves the process, and
    /// its key schedule is wiped on drop.
    mac: Hmac<Sha256>,
    /// Verified against when the user does not exist, so that costs as much as a wrong password.
    dummy: PasswordHash,
    /// Verified passwords, watermarks and trust (`coherence` holds a clone of its `Trust`).
    cache: CredentialCache,
    /// Only for coalescing: concurrent misses with the same (user, verifier, watermark)
    /// share one load.
    loading: Cache<(Username, Verifier, Revision), Verified>,
    /// API keys (headers without a colon that start `csk_`).
    keys: ApiKeys,
    /// OIDC tokens, when an issuer is configured.
    oidc: Option<Oidc>,
    /// Failed-login counts and locks, asked on every miss.
    lockout: Lockout,
    /// Failed verifications per address and second (with the lockout: off when it is).
    pace: FailurePace,
}

impl Authenticator {
    /// Builds the authenticator. The dummy hash for unknown users is computed here, once.
    pub async fn new(
        config: AuthenticatorConfig,
        catalog: Catalog,
        pool: HashPool,
    ) -> Result<Authenticator, HashError> {
        Authenticator::with_oidc(config, catalog, pool, None).await
    }

    /// [`Authenticator::new`], accepting OIDC tokens from the issuer `oidc` describes.
    pub async fn with_oidc(
        config: AuthenticatorConfig,
        catalog: Catalog,
        pool: HashPool,
        oidc: Option<OidcSettings>,
    ) -> Result<Authenticator, HashError> {
        let hasher = pool.hasher().clone();
        let dummy = tokio::task::spawn_blocking(move || hasher.dummy_hash())
            .await
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice()).map_err(|e| HashError::Hashing(e.to_string()))?;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice())
            .map_err(|e| HashError::Hashing(e.to_string()))?;
        let cache = CredentialCache::new(config.cache_capacity, config.cache_ttl);
        let loading = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(60))
            .build();
        let keys = ApiKeys::new(
            catalog.clone(),
            cache.clone(),
            config.super_users.clone(),
            config.cache_capacity,
        )
        .map_err(|e| HashError::Hashing(e.to_string()))?;
        let oidc = oidc.map(|settings| {
            Oidc::new(
                settings,
                catalog.clone(),
                cache.clone(),
                config.cache_capacity,
            )
        });
        let lockout = Lockout::new(config.lockout.clone(), catalog.clone());
        let rate = match config.lockout.enabled {
            true => config.lockout.peer_failures_per_second,
            false => 0,
        };
        let pace = FailurePace::new(rate, rate.saturating_mul(4));
        let inner = Inner {
            keys,
            oidc,
            config,
            lockout,
            pace,
            catalog,
            pool,
            mac,
            dummy,
            cache,
            loading,
        };
        Ok(Authenticator {
            inner: Arc::new(inner),
        })
    }

    pub fn pool(&self) -> &HashPool {
        &self.inner.pool
    }

    /// The cache handle (entries, invalidation watermarks, trust deadline).
    pub fn cache(&self) -> &CredentialCache {
        &self.inner.cache
    }

    /// The failed-login counts and locks (`coherence` feeds and writes them).
    pub fn lockout(&self) -> &Lockout {
        &self.inner.lockout
    }

    /// Authenticates the `authorization` header of a request that has no peer address (an
    /// in-process caller): its failures count as one peer's.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Authenticated, AuthError> {
        self.authenticate_from(header, || None).await
    }

    /// Authenticates the `authorization` header of a request from `peer` (the TCP peer's
    /// address; forwarded-for headers are never read), which is asked only on a cache miss.
    pub async fn authenticate_from(
        &self,
        header: Option<&[u8]>,
        peer: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        if !self.inner.config.enabled {
            return Ok(Authenticated::unchecked());
        }
        let credentials = match crate::auth::parse_header(header) {
            Ok(credentials) => credentials,
            Err(err @ (AuthError::ApiKey | AuthError::BadToken)) => {
                return Box::pin(self.authenticate_token(header, err, peer)).await;
            }
            Err(err) => return Err(err),
        };
        let Some(user) = credentials.username(&self.inner.config.limits) else {
            return self.refuse_name(credentials.password(), peer()).await;
        };
        self.verify_from(&user, credentials.password(), peer)
            .await?;
        let super_user = self
            .inner
            .config
            .super_users
            .iter()
            .any(|s| s == user.as_str());
        Ok(Authenticated::user(user, super_user))
    }

    /// A header without `user:`: an API key or a JWT (see `bearer`); anything else keeps
    /// `err`, the answer Milvus gives.
    /// An API key or an OIDC token. Their misses are paced per peer address like password
    /// verifications: a miss reads the store (a key) or checks a signature (a token), so an
    /// address sending made-up ones is refused (`Throttled`) once it spent its failures.
    async fn authenticate_token(
        &self,
        header: Option<&[u8]>,
        err: AuthError,
        peer: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        let admit = || self.inner.pace.take(peer());
        match bearer::parse(header) {
            Some(Bearer::ApiKey(token)) => self.inner.keys.authenticate(&token, admit).await,
            Some(Bearer::Jwt(token)) => match &self.inner.oidc {
                Some(oidc) => oidc.authenticate(&token, admit).await,
                None => Err(AuthError::Refused(Refusal::OidcOff)),
            },
            None => Err(err),
        }
    }

    /// The OIDC identities this replica has authenticated recently.
    pub fn oidc_identities(&self) -> Vec<SeenIdentity> {
        self.inner.oidc.as_ref().map(Oidc::seen).unwrap_or_default()
    }

    /// Fetches the OIDC issuer's keys once, if an issuer is configured (at start).
    pub async fn warm_up_oidc(&self) {
        if let Some(oidc) = &self.inner.oidc {
            oidc.warm_up().await;
        }
    }

    /// The API keys (creation, last-use flushing).
    pub fn keys(&self) -> &ApiKeys {
        &self.inner.keys
    }

    /// Applies a change of one of credstore's own identity records (seen by the watch).
    pub fn identity_changed(&self, change: IdentityChange<'_>, _revision: Revision) {
        match change {
            IdentityChange::ApiKey(id) => self.inner.keys.invalidate_key(id),
            IdentityChange::OidcRevocation => {
                if let Some(oidc) = &self.inner.oidc {
                    oidc.invalidate_all();
                }
            }
        }
    }

    /// Whether `password` is `user`'s password, `user` spelled exactly (see the module doc).
    /// Unknown users and non-canonical names cost the same as wrong passwords.
    pub async fn verify(&self, user: &str, password: &[u8]) -> Result<(), AuthError> {
        self.verify_from_peer(user, password, None).await
    }

    /// [`Authenticator::verify`] for a login from `peer`.
    pub async fn verify_from_peer(
        &self,
        user: &str,
        password: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        match Username::parse_exact(user, &self.inner.config.limits) {
            Ok(user) => self.verify_from(&user, password, || peer).await,
            Err(_) => self.refuse_name(password, peer).await.map(|_| ()),
        }
    }

    /// Whether `password` is `user`'s password.
    pub async fn verify_user(&self, user: &Username, password: &[u8]) -> Result<(), AuthError> {
        self.verify_from(user, password, || None).await
    }

    /// Whether `password` is `user`'s password, asked from `peer` (asked for on a miss only).
    async fn verify_from(
        &self,
        user: &Username,
        password: &[u8],
        peer: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<(), AuthError> {
        self.check_trust()?;
        let verifier = self.verifier(user, password);
        if self.inner.cache.is_hit(user, &verifier) {
            return Ok(());
        }
        // Boxed so the hot path's future stays small; the slow path costs milliseconds anyway.
        Box::pin(self.verify_slow(user, password, verifier, peer())).await
    }

    fn check_trust(&self) -> Result<(), AuthError> {
        match self.inner.cache.is_trusted() {
            true => Ok(()),
            false => Err(AuthError::Unavailable(
                "replica is re-syncing with etcd".into(),
            )),
        }
    }

    /// A name that cannot exist: refused after the work of a wrong password (no lockout
    /// count: it names nobody's account).
    async fn refuse_name(
        &self,
        password: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<Authenticated, AuthError> {
        self.check_trust()?;
        self.inner.cache.record_miss();
        let ticket = self.inner.pace.take(peer).ok_or(AuthError::Throttled)?;
        self.deny_unknown(password, peer).await?;
        ticket.failed();
        Err(AuthError::Denied)
    }

    async fn verify_slow(
        &self,
        user: &Username,
        password: &[u8],
        verifier: Verifier,
        peer: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        self.inner.cache.record_miss();
        // Before joining a load another peer started: a locked peer learns nothing from it.
        self.inner.lockout.check(user, peer)?;
        // A peer holding its whole share of the hash pool is refused before any other work.
        self.inner.pool.refuse_full_peer(peer).map_err(hash_error)?;
        let key = (
            user.clone(),
            verifier.clone(),
            self.inner.cache.watermark(user),
        );
        let load = self.load(user, password, verifier, peer);
        let result = self.inner.loading.try_get_with(key.clone(), load).await;
        self.inner.loading.invalidate(&key).await;
        result.map(|_| ()).map_err(|e| (*e).clone())
    }

    fn verifier(&self, user: &Username, password: &[u8]) -> Verifier {
        // Cloning the keyed state skips re-deriving the inner and outer pads per request.
        let mut mac = self.inner.mac.clone();
        mac.update(user.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(password);
        // The tag is wiped when `tag` drops; only the verifier keeps a copy.
        let tag = mac.finalize();
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(tag.as_bytes());
        Verifier::new(*bytes)
    }

    /// The slow path: admitted by the lockout, read the user, verify the hash in `peer`'s
    /// share of the pool, maybe rehash, cache; tell the lockout how it ended. An unknown
    /// name fails and counts exactly like a wrong password.
    async fn load(
        &self,
        user: &Username,
        password: &[u8],
        verifier: Verifier,
        peer: Option<IpAddr>,
    ) -> Result<Verified, AuthError> {
        let attempt = self.inner.lockout.attempt(user, peer)?;
        // The pace counts hashes, not requests: the load takes the token, so the requests that
        // join it (a client's first burst of calls with one password) cost none of their own.
        let ticket = self.inner.pace.take(peer).ok_or(AuthError::Throttled)?;
        // The hash is reserved before the store is read: a peer over its share reads nothing.
        let slot = self.inner.pool.reserve(peer).map_err(hash_error)?;
        let _load = self.inner.cache.begin_load();
        let read = self
            .inner
            .catalog
            .get_user(user)
            .await
            .map_err(store_error)?;
        let Some(stored) = read.value else {
            // Spend the same work as a real verification so timing does not reveal who exists.
            let _ = slot
                .verify(self.inner.dummy.clone(), password.to_vec())
                .await
                .map_err(hash_error)?;
            attempt.failed();
            ticket.failed();
            return Err(AuthError::Denied);
        };
        let matches = slot
            .verify(stored.hash.clone(), password.to_vec())
            .await
            .map_err(hash_error)?;
        if !matches {
            attempt.failed();
            ticket.failed();
            return Err(AuthError::Denied);
        }
        attempt.succeeded();
        if self.inner.pool.hasher().needs_rehash(&stored.hash) {
            self.rehash(user, &stored, password).await;
        }
        let entry = Verified {
            verifier,
            revision: read.revision,
        };
        self.inner.cache.insert_unless_stale(user, entry.clone());
        Ok(entry)
    }

    async fn deny_unknown(&self, password: &[u8], peer: Option<IpAddr>) -> Result<(), AuthError> {
        // Spend the same work as a real verification so timing does not reveal who exists.
        let _ = self
            .inner
            .pool
            .verify_for(peer, self.inner.dummy.clone(), password.to_vec())
            .await
            .map_err(hash_error)?;
        Ok(())
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
                self.inner.cache.record_rehash();
                tracing::info!(user = %name, "rehashed stored password to the configured scheme");
            }
            Err(reason) => tracing::debug!(user = %name, %reason, "rehash skipped"),
        }
    }

    /// Forgets `user`'s verified password because their record changed at `revision`.
    pub fn invalidate_user(&self, user: &str, revision: Revision) {
        self.inner.cache.invalidate_user(user, revision);
        // A deleted owner's keys stop working.
        self.inner.keys.invalidate_owner(user);
    }

    /// Forgets everything (a compacted watch, a re-sync): entries read before `revision` go.
    pub fn invalidate_all(&self, revision: Revision) {
        self.inner.cache.invalidate_all(revision);
        self.inner.keys.invalidate_all();
        if let Some(oidc) = &self.inner.oidc {
            oidc.invalidate_all();
        }
    }

    pub fn is_trusted(&self) -> bool {
        self.inner.cache.is_trusted()
    }

    pub fn stats(&self) -> AuthStats {
        self.inner.cache.stats()
    }

    /// Whether a verified entry for `user` is cached (for tests and status).
    pub fn is_cached(&self, user: &str) -> bool {
        self.inner.cache.is_cached(user)
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
    use crate::hash_pool::HashPoolConfig;
    use crate::meta::{EmbeddedKv, MetaKv, Store};
    use crate::password::{HashScheme, Hasher};

    fn name(raw: &str) -> Username {
        Username::parse_exact(raw, &Limits::default()).unwrap()
    }

    async fn setup_with(dir: &tempfile::TempDir, pool: HashPool) -> (Authenticator, Catalog) {
        setup_with_policy(dir, pool, LockoutPolicy::default()).await
    }

    async fn setup_with_policy(
        dir: &tempfile::TempDir,
        pool: HashPool,
        lockout: LockoutPolicy,
    ) -> (Authenticator, Catalog) {
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let catalog = Catalog::new(store, "t/meta");
        for user in ["alice", "bob"] {
            let password = Password::new(b"password1".to_vec(), &Limits::default()).unwrap();
            let hash = pool.hash(password).await.unwrap();
            catalog.create_user(&name(user), &hash, None).await.unwrap();
        }
        let config = AuthenticatorConfig {
            enabled: true,
            super_users: vec![],
            limits: Limits::default(),
            cache_capacity: 100,
            cache_ttl: None,
            lockout,
        };
        (
            Authenticator::new(config, catalog.clone(), pool)
                .await
                .unwrap(),
            catalog,
        )
    }

    fn weak_pool(concurrent: usize, queued: usize) -> HashPool {
        let scheme = HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        HashPool::new(HashPoolConfig {
            concurrent,
            queued,
            ..HashPoolConfig::new(scheme)
        })
    }

    async fn setup(dir: &tempfile::TempDir) -> (Authenticator, Catalog) {
        setup_with(dir, weak_pool(1, 8)).await
    }

    fn header(raw: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// The race moka alone loses: a load read the user at revision H, the watcher applies an
    /// invalidation at H+1, then the load tries to insert. It must not reinstate the entry.
    #[tokio::test]
    async fn a_load_older_than_an_applied_invalidation_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, catalog) = setup(&dir).await;
        let cache = auth.cache();
        let read_at = catalog.store().get("t/meta").await.unwrap().revision;
        let alice = name("alice");
        let verifier = auth.verifier(&alice, b"password1");
        let load = cache.begin_load();
        auth.invalidate_user("alice", read_at + 1);
        let stale = Verified {
            verifier: verifier.clone(),
            revision: read_at,
        };
        assert!(!cache.insert_unless_stale(&alice, stale));
        assert!(!auth.is_cached("alice"), "a stale load was reinstated");
        // A load that read after the invalidation is cached.
        let fresh = Verified {
            verifier: verifier.clone(),
            revision: read_at + 1,
        };
        assert!(cache.insert_unless_stale(&alice, fresh));
        assert!(auth.is_cached("alice"));
        drop(load);
        // invalidate_all is the global epoch: it refuses every older load.
        let load = cache.begin_load();
        auth.invalidate_all(read_at + 2);
        let bob_stale = Verified {
            verifier: auth.verifier(&name("bob"), b"password1"),
            revision: read_at + 1,
        };
        assert!(!cache.insert_unless_stale(&name("bob"), bob_stale));
        assert!(!auth.is_cached("alice"));
        drop(load);
    }

    /// Issue 9.7: a write to bob while alice's load is in flight does not stop alice's result
    /// from being cached (one global watermark used to refuse it).
    #[tokio::test]
    async fn a_write_to_another_user_during_a_load_does_not_stop_caching() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, catalog) = setup(&dir).await;
        let cache = auth.cache();
        let read_at = catalog.store().get("t/meta").await.unwrap().revision;
        let alice = name("alice");
        let load = cache.begin_load();
        // bob changes after alice's record was read, before her load inserts.
        auth.invalidate_user("bob", read_at + 1);
        let entry = Verified {
            verifier: auth.verifier(&alice, b"password1"),
            revision: read_at,
        };
        assert!(cache.insert_unless_stale(&alice, entry), "alice refused");
        assert!(auth.is_cached("alice"));
        drop(load);
    }

    /// The same, end to end: alice's load has read her record and waits for the (single)
    /// hashing thread when bob's record is rewritten and invalidated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_to_bob_while_alices_load_is_in_flight_still_caches_alice() {
        let dir = tempfile::tempdir().unwrap();
        let pool = HashPool::new(HashPoolConfig {
            queued: 8,
            ..HashPoolConfig::new(HashScheme::Argon2id {
                memory_kib: 8192,
                iterations: 4,
                parallelism: 1,
            })
        });
        let (auth, catalog) = setup_with(&dir, pool.clone()).await;
        // Occupy the one hashing thread (a slow hash: its parameters travel in the string) so
        // alice's verification waits in the queue.
        let slow = Hasher::new(HashScheme::Argon2id {
            memory_kib: 1024,
            iterations: 200,
            parallelism: 1,
        });
        let slow_hash = tokio::task::spawn_blocking(move || {
            slow.hash(&Password::new(b"password1".to_vec(), &Limits::default()).unwrap())
        })
        .await
        .unwrap()
        .unwrap();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.verify(slow_hash, b"password1".to_vec()).await })
        };
        while pool.stats().running == 0 {
            tokio::task::yield_now().await;
        }
        let login = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.verify("alice", b"password1").await })
        };
        // Queued means alice's record has been read.
        while pool.stats().queued == 0 {
            assert!(
                !login.is_finished(),
                "alice's login did not wait for the blocker"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let bob = catalog.get_user(&name("bob")).await.unwrap().value.unwrap();
        let revision = catalog
            .replace_user(&name("bob"), &bob.with_description(Some("x".into())))
            .await
            .unwrap();
        auth.invalidate_user("bob", revision);
        assert_eq!(login.await.unwrap(), Ok(()));
        assert!(blocker.await.unwrap().unwrap());
        assert!(
            auth.is_cached("alice"),
            "a write to bob stopped alice from being cached"
        );
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

    /// Issue 9.1: a header name is canonical or refused. Variants of a cached user's name are
    /// not trimmed to it, cost a hash like a wrong password, and change nothing in the cache.
    #[tokio::test]
    async fn variant_spellings_are_refused_not_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        // Unpaced: twenty failures from one (absent) address would outrun the default burst.
        let unpaced = LockoutPolicy {
            peer_failures_per_second: 0,
            ..LockoutPolicy::default()
        };
        let (auth, _) = setup_with_policy(&dir, weak_pool(1, 8), unpaced).await;
        let ok = auth
            .authenticate(Some(header("alice:password1").as_bytes()))
            .await
            .unwrap();
        assert_eq!(ok.name(), Some("alice"));
        assert_eq!(ok.username(), Some(&name("alice")));
        let before = auth.stats();
        let completed = auth.pool().stats().completed;
        let variants = [
            " alice",
            "alice ",
            "\talice",
            "alice\n",
            "\u{a0}alice",
            "alice\u{3000}",
            "\u{2028}alice",
            "\u{feff}alice",
            "ALICE",
            "alice\0",
        ];
        for variant in variants {
            let got = auth
                .authenticate(Some(header(&format!("{variant}:password1")).as_bytes()))
                .await;
            assert_eq!(got, Err(AuthError::Denied), "{variant:?}");
            assert_eq!(
                auth.verify(variant, b"password1").await,
                Err(AuthError::Denied),
                "{variant:?}"
            );
        }
        let after = auth.stats();
        assert_eq!(after.entries, before.entries);
        assert_eq!(after.hits, before.hits, "no variant hit alice's entry");
        assert_eq!(
            auth.pool().stats().completed - completed,
            2 * variants.len() as u64,
            "each refusal costs one hash, as a wrong password does"
        );
        assert!(auth.is_cached("alice"));
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_password_share_one_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        let before = auth.pool().stats().completed;
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
        assert_eq!(auth.pool().stats().completed - before, 1);
    }

    /// The pace counts hashes: 16 concurrent first calls with one right password from one
    /// address (a client starting up) join one load and spend no token, so the address still
    /// has its whole burst of failures (8 at the default 2 a second) left afterwards.
    #[tokio::test]
    async fn a_clients_first_burst_with_one_password_costs_the_pace_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        let peer: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.verify_from_peer("bob", b"password1", peer).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        let burst = LockoutPolicy::default().peer_failures_per_second * 4;
        // Names nobody has (each its own lockout pair, so no lock answers first).
        for i in 0..burst {
            let result = auth
                .verify_from_peer(&format!("ghost{i}"), b"wrong", peer)
                .await;
            assert_eq!(result, Err(AuthError::Denied), "failure {i}");
        }
        let result = auth.verify_from_peer("ghost", b"wrong", peer).await;
        assert_eq!(result, Err(AuthError::Throttled));
    }

    #[tokio::test]
    async fn an_expired_trust_deadline_refuses_even_cached_users() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = setup(&dir).await;
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        auth.cache()
            .trust()
            .until(Some(tokio::time::Instant::now()));
        assert!(matches!(
            auth.verify("alice", b"password1").await,
            Err(AuthError::Unavailable(_))
        ));
        auth.cache().trust().until(None);
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
    }

    /// Issue 9.10 through the authenticator: 300 wrong-password logins whose callers went away
    /// once their hash was queued (a client resetting each stream) leave nothing in front of
    /// the next real cache-miss login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_wrong_password_logins_leave_no_backlog() {
        let dir = tempfile::tempdir().unwrap();
        // Default-like parameters: a few tens of ms per hash; one thread, the default queue.
        let pool = HashPool::new(HashPoolConfig {
            queued: 256,
            ..HashPoolConfig::new(HashScheme::default())
        });
        // About the hash pool's backlog: with lockout on, alice's pair would lock after 5
        // of these failures and the last login would get the lock answer instead.
        let no_lockout = LockoutPolicy {
            enabled: false,
            ..LockoutPolicy::default()
        };
        let (auth, _) = setup_with_policy(&dir, pool.clone(), no_lockout).await;
        let started = std::time::Instant::now();
        assert_eq!(auth.verify("bob", b"password1").await, Ok(()));
        let one_hash = started.elapsed();
        let mut admitted = 0u64;
        for i in 0..300 {
            let before = pool.stats().admitted;
            let wrong = format!("wrong-{i}");
            let mut login = std::pin::pin!(auth.verify("alice", wrong.as_bytes()));
            loop {
                tokio::select! {
                    biased;
                    _ = &mut login => break,
                    _ = tokio::time::sleep(Duration::from_micros(200)) => {
                        if pool.stats().admitted > before {
                            admitted += 1;
                            break;
                        }
                    }
                }
            }
        }
        let stats = pool.stats();
        assert!(
            stats.running + stats.queued <= 1 + 256,
            "bounded while cancelled: {stats:?}"
        );
        let before = pool.stats();
        let started = std::time::Instant::now();
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        let elapsed = started.elapsed();
        let after = pool.stats();
        eprintln!(
            "one hash {one_hash:?}; 300 cancelled logins ({admitted} admitted); then a valid \
             cache-miss login took {elapsed:?}; pool {after:?}"
        );
        assert_eq!(after.queued, 0, "{after:?}");
        assert_eq!(
            after.skipped + after.completed,
            after.admitted,
            "every admitted job was computed or skipped, none is left: {after:?}"
        );
        assert!(after.skipped > 0, "{after:?}");
        assert!(
            after.completed - before.completed <= 2,
            "the valid login waited for at most the job already running: {before:?} -> {after:?}"
        );
        // Backstop: a couple of hash times (the job running when it arrived, then its own).
        assert!(
            elapsed < one_hash * 6 + Duration::from_secs(1),
            "{elapsed:?} vs one hash {one_hash:?}"
        );
    }
}
