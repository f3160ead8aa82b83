//! API keys: `csk_<id>_<secret>`, a public id (64 random bits, 16 hex digits) and a secret of
//! 256 random bits (43 base64url characters). The store (`catalog`'s `apikeys/{id}`) holds only
//! `hmac-sha256$<salt>$<mac>`, an HMAC-SHA256 of the id and secret keyed by a per-key random
//! salt: a fast hash is right for a random secret (nothing to brute-force), and a dump of the
//! store does not contain a usable key. Lookups are by id; comparisons in constant time.
//!
//! [`ApiKeys`] verifies a presented key the way passwords are verified: a per-replica cache of
//! verified keys (an HMAC of id and secret under a process key, never the secret), a coalesced
//! load on a miss (the key's record, then its owner's record: a key whose owner is gone does
//! not work), and invalidation by the coherence watch — a key's record changed (revoked), or
//! its owner's record changed (deleted). A load that raced an invalidation is not cached (an
//! epoch read before the store read must still be current at the insert, checked under the
//! lock invalidations take). Expiry is checked on every use, cached or not.
//!
//! A key acts as its owner; with a role list, only with those of the owner's roles that are
//! listed ([`Roles::Within`]). Last use is kept in memory and written to the store by
//! [`ApiKeys::flush_uses`] (the server calls it once a minute), never on the request path.
//! Nothing here logs or keeps a secret.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use moka::future::Cache;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::auth::bearer::Refusal;
use crate::auth::cache::CredentialCache;
use crate::auth::pace::Ticket;
use crate::auth::{AuthError, Authenticated};
use crate::catalog::{Catalog, CatalogError};
use crate::password::Username;

/// What every key starts with.
pub const KEY_PREFIX: &str = "csk_";
/// Random bytes of a key's id (hex-encoded).
const ID_BYTES: usize = 8;
/// Random bytes of a key's secret (base64url-encoded, 43 characters).
const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = 43;
/// The stored hash's scheme.
const SCHEME: &str = "hmac-sha256";
/// Domain separation of the stored hash.
const CONTEXT: &[u8] = b"credstore-apikey-v1\0";

type HmacSha256 = Hmac<Sha256>;

/// A key just made: the whole key (shown once), its id, and the hash to store.
pub struct NewKey {
    pub id: String,
    pub key: Zeroizing<String>,
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Draws a new key from the operating system's random source.
pub fn generate() -> Result<NewKey, AuthError> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    let mut salt = [0u8; 16];
    for buffer in [&mut id[..], &mut secret[..], &mut salt[..]] {
        getrandom::fill(buffer).map_err(|e| AuthError::Unavailable(e.to_string()))?;
    }
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret =
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_slice()));
    let hash = stored_hash(&salt, &id, secret.as_bytes());
    let key = Zeroizing::new(format!("{KEY_PREFIX}{id}_{}", secret.as_str()));
    Ok(NewKey { id, key, hash })
}

/// Splits a presented key into its id and secret; `None` unless it has exactly the shape
/// [`generate`] makes.
pub fn parse(token: &[u8]) -> Option<(&str, &[u8])> {
    let rest = token.strip_prefix(KEY_PREFIX.as_bytes())?;
    if rest.len() != ID_BYTES * 2 + 1 + SECRET_CHARS || rest[ID_BYTES * 2] != b'_' {
        return None;
    }
    let (id, secret) = (&rest[..ID_BYTES * 2], &rest[ID_BYTES * 2 + 1..]);
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let url_safe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    if !id.iter().all(hex) || !secret.iter().all(url_safe) {
        return None;
    }
    Some((std::str::from_utf8(id).ok()?, secret))
}

/// Whether `id` has the shape of a key id.
pub fn is_id(id: &str) -> bool {
    id.len() == ID_BYTES * 2
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn mac_of(salt: &[u8], id: &str, secret: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(salt).expect("HMAC takes any key");
    mac.update(CONTEXT);
    mac.update(id.as_bytes());
    mac.update(&[0]);
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

fn stored_hash(salt: &[u8], id: &str, secret: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{SCHEME}${}${}",
        b64.encode(salt),
        b64.encode(mac_of(salt, id, secret))
    )
}

/// Whether `secret` is the one `stored` was made from (constant time in the secret).
fn matches_stored(stored: &str, id: &str, secret: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(salt), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(mac)) = (b64.decode(salt), b64.decode(mac)) else {
        return false;
    };
    bool::from(mac_of(&salt, id, secret).ct_eq(mac.as_slice()))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A verified key, as cached.
struct Verified {
    /// HMAC-SHA256(process key, id‖0‖secret); wiped on drop.
    verifier: Zeroizing<[u8; 32]>,
    owner: Username,
    roles: Option<Arc<Vec<String>>>,
    expires: Option<i64>,
    super_user: bool,
    /// Seconds since the epoch of the last use seen here; 0 for none.
    last_used: AtomicI64,
    /// The last use written to the store.
    flushed: AtomicI64,
}

/// The API-key half of authentication; cheap to clone (shared state).
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    /// The password cache: only its trust deadline and miss counter are used here.
    cache: CredentialCache,
    super_users: Vec<String>,
    /// Keyed with 32 random bytes drawn at start; never leaves the process.
    mac: HmacSha256,
    verified: moka::sync::Cache<String, Arc<Verified>>,
    /// Concurrent misses for the same (id, verifier, epoch) share one load.
    loading: Cache<(String, [u8; 32], u64), Arc<Verified>>,
    /// Bumped by every invalidation, under the lock inserts take too.
    epoch: Mutex<u64>,
}

impl ApiKeys {
    pub fn new(
        catalog: Catalog,
        cache: CredentialCache,
        super_users: Vec<String>,
        capacity: u64,
    ) -> Result<ApiKeys, AuthError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice()).map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let mac =
            <HmacSha256 as KeyInit>::new_from_slice(key.as_slice()).expect("HMAC takes any key");
        Ok(ApiKeys {
            inner: Arc::new(Inner {
                catalog,
                cache,
                super_users,
                mac,
                verified: moka::sync::Cache::new(capacity),
                loading: Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(Duration::from_secs(60))
                    .build(),
                epoch: Mutex::new(0),
            }),
        })
    }

    fn verifier(&self, id: &str, secret: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = self.inner.mac.clone();
        mac.update(id.as_bytes());
        mac.update(&[0]);
        mac.update(secret);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    fn epoch(&self) -> std::sync::MutexGuard<'_, u64> {
        // Held only for a comparison and an insert or a bump; nothing panics under it.
        self.inner
            .epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Authenticates a presented key (the decoded header).
    /// `admit` is asked on a miss only, before the store is read: a peer that spent its
    /// failures for now (`pace`) is refused without any work, and a refused key spends one.
    pub async fn authenticate<'p>(
        &self,
        token: &[u8],
        admit: impl FnOnce() -> Option<Ticket<'p>>,
    ) -> Result<Authenticated, AuthError> {
        let Some((id, secret)) = parse(token) else {
            return Err(AuthError::Refused(Refusal::KeyMalformed));
        };
        if !self.inner.cache.is_trusted() {
            return Err(AuthError::Unavailable(
                "replica is re-syncing with etcd".into(),
            ));
        }
        let verifier = self.verifier(id, secret);
        let now = now_unix();
        let hit = self
            .inner
            .verified
            .get(id)
            .filter(|entry| bool::from(entry.verifier.ct_eq(&*verifier)));
        let entry = match hit {
            Some(entry) => entry,
            None => {
                let ticket = admit().ok_or(AuthError::Throttled)?;
                let loaded = Box::pin(self.load(id, secret, verifier)).await;
                if matches!(loaded, Err(AuthError::Refused(_))) {
                    ticket.failed();
                }
                loaded?
            }
        };
        if entry.expires.is_some_and(|at| at <= now) {
            return Err(AuthError::Refused(Refusal::KeyExpired));
        }
        entry.last_used.fetch_max(now, Ordering::Relaxed);
        Ok(Authenticated::api_key(
            entry.owner.clone(),
            entry.super_user,
            entry.roles.clone(),
        ))
    }

    async fn load(
        &self,
        id: &str,
        secret: &[u8],
        verifier: Zeroizing<[u8; 32]>,
    ) -> Result<Arc<Verified>, AuthError> {
        self.inner.cache.record_miss();
        let epoch = *self.epoch();
        let key = (id.to_string(), *verifier, epoch);
        let load = async {
            let read = self
                .inner
                .catalog
                .get_api_key(id)
                .await
                .map_err(store_error)?;
            let stored = read.value.ok_or(AuthError::Refused(Refusal::KeyUnknown))?;
            if stored.revoked.is_some() {
                return Err(AuthError::Refused(Refusal::KeyRevoked));
            }
            if !matches_stored(&stored.hash, id, secret) {
                return Err(AuthError::Refused(Refusal::KeyWrongSecret));
            }
            let owner = self
                .inner
                .catalog
                .get_user(&stored.owner)
                .await
                .map_err(store_error)?;
            if owner.value.is_none() {
                return Err(AuthError::Refused(Refusal::KeyOwnerGone));
            }
            let roles = (!stored.roles.is_empty()).then(|| Arc::new(stored.roles.clone()));
            let super_user = roles.is_none()
                && self
                    .inner
                    .super_users
                    .iter()
                    .any(|s| s == stored.owner.as_str());
            let entry = Arc::new(Verified {
                verifier: verifier.clone(),
                owner: stored.owner,
                roles,
                expires: stored.expires,
                super_user,
                last_used: AtomicI64::new(0),
                flushed: AtomicI64::new(0),
            });
            let current = self.epoch();
            if *current == epoch {
                self.inner.verified.insert(id.to_string(), entry.clone());
            }
            Ok(entry)
        };
        let result = self.inner.loading.try_get_with(key.clone(), load).await;
        self.inner.loading.invalidate(&key).await;
        result.map_err(|e| (*e).clone())
    }

    /// Forgets key `id` (its record changed).
    pub fn invalidate_key(&self, id: &str) {
        let mut epoch = self.epoch();
        *epoch += 1;
        self.inner.verified.invalidate(id);
    }

    /// Forgets every key `owner` owns (their record changed, e.g. they were deleted).
    pub fn invalidate_owner(&self, owner: &str) {
        let mut epoch = self.epoch();
        *epoch += 1;
        let owned: Vec<Arc<String>> = self
            .inner
            .verified
            .iter()
            .filter(|(_, entry)| entry.owner.as_str() == owner)
            .map(|(id, _)| id)
            .collect();
        for id in owned {
            self.inner.verified.invalidate(id.as_str());
        }
    }

    /// Forgets every key.
    pub fn invalidate_all(&self) {
        let mut epoch = self.epoch();
        *epoch += 1;
        self.inner.verified.invalidate_all();
    }

    /// Whether key `id` is cached as verified (tests and status).
    pub fn is_cached(&self, id: &str) -> bool {
        self.inner.verified.contains_key(id)
    }

    /// Writes the last use of every key used since the previous flush (best effort).
    pub async fn flush_uses(&self) {
        let used: Vec<(Arc<String>, Arc<Verified>)> = self
            .inner
            .verified
            .iter()
            .filter(|(_, e)| {
                e.last_used.load(Ordering::Relaxed) > e.flushed.load(Ordering::Relaxed)
            })
            .collect();
        for (id, entry) in used {
            let at = entry.last_used.load(Ordering::Relaxed);
            match self.inner.catalog.record_key_use(&id, at).await {
                Ok(()) => {
                    entry.flushed.fetch_max(at, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(id = %id, error = %e, "cannot record an API key's last use");
                    return;
                }
            }
        }
    }
}

fn store_error(err: CatalogError) -> AuthError {
    match err {
        CatalogError::Meta(e) => AuthError::Unavailable(e.to_string()),
        other => {
            tracing::error!(error = %other, "cannot read an API key record");
            AuthError::Refused(Refusal::KeyUnknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_matches_only_its_hash() {
        let new = generate().unwrap();
        assert_eq!(new.key.len(), KEY_PREFIX.len() + 16 + 1 + 43);
        assert!(!new.key.contains(':'));
        let (id, secret) = parse(new.key.as_bytes()).unwrap();
        assert_eq!(id, new.id);
        assert!(is_id(id));
        assert!(matches_stored(&new.hash, id, secret));
        assert!(!new.hash.contains(std::str::from_utf8(secret).unwrap()));
        let mut wrong = secret.to_vec();
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        assert!(!matches_stored(&new.hash, id, &wrong));
        assert!(!matches_stored(&new.hash, "0000000000000000", secret));
        assert_ne!(generate().unwrap().id, new.id);
        assert!(!format!("{new:?}").contains(new.key.as_str()));
    }

    #[tokio::test]
    async fn a_key_works_until_revoked_or_its_owner_is_gone() {
        use crate::catalog::StoredKey;
        use crate::meta::{EmbeddedKv, Store};
        use crate::password::{Limits, PasswordHash};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let catalog = Catalog::new(store, "t/meta");
        let alice = Username::parse("alice", &Limits::default()).unwrap();
        let hash =
            PasswordHash::parse("$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy")
                .unwrap();
        catalog.create_user(&alice, &hash, None).await.unwrap();
        let keys =
            ApiKeys::new(catalog.clone(), CredentialCache::new(10, None), vec![], 10).unwrap();
        let new = generate().unwrap();
        let record = StoredKey {
            id: new.id.clone(),
            owner: alice.clone(),
            hash: new.hash.clone(),
            roles: vec!["reader".into()],
            created: 0,
            expires: None,
            description: String::new(),
            revoked: None,
            mod_revision: 0,
        };
        catalog.create_api_key(&record).await.unwrap().unwrap();
        let refused = |r| Err(AuthError::Refused(r));
        let unpaced = crate::auth::pace::FailurePace::new(0, 1);
        let admit = || unpaced.take(None);
        let who = keys.authenticate(new.key.as_bytes(), admit).await.unwrap();
        assert_eq!(who.name(), Some("alice"));
        assert_eq!(
            *who.roles(),
            crate::auth::Roles::Within(Arc::new(vec!["reader".into()]))
        );
        assert!(keys.is_cached(&new.id));
        let mut wrong = new.key.to_string();
        wrong.pop();
        wrong.push(if new.key.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            keys.authenticate(wrong.as_bytes(), admit).await,
            refused(Refusal::KeyWrongSecret)
        );
        assert_eq!(
            keys.authenticate(
                b"csk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                admit
            )
            .await,
            refused(Refusal::KeyUnknown)
        );
        assert_eq!(
            keys.authenticate(b"csk_nope", admit).await,
            refused(Refusal::KeyMalformed)
        );
        // The owner goes: the watch's invalidation drops the key, and a load refuses it.
        catalog.delete_user(&alice).await.unwrap();
        keys.invalidate_owner("alice");
        assert!(!keys.is_cached(&new.id));
        assert_eq!(
            keys.authenticate(new.key.as_bytes(), admit).await,
            refused(Refusal::KeyOwnerGone)
        );
        // Revoked: a tombstone refuses it with its own reason.
        catalog.create_user(&alice, &hash, None).await.unwrap();
        let stored = catalog.get_api_key(&new.id).await.unwrap().value.unwrap();
        catalog.revoke_api_key(&stored, 1).await.unwrap().unwrap();
        keys.invalidate_key(&new.id);
        assert_eq!(
            keys.authenticate(new.key.as_bytes(), admit).await,
            refused(Refusal::KeyRevoked)
        );

        // Misses are paced per address: two made-up keys spend a burst of two, the third is
        // refused before the store is read; a cached key from the same address still works.
        let other = generate().unwrap();
        let record = StoredKey {
            id: other.id.clone(),
            hash: other.hash.clone(),
            revoked: None,
            ..stored
        };
        catalog.create_api_key(&record).await.unwrap().unwrap();
        let paced = crate::auth::pace::FailurePace::new(1, 2);
        let from = || paced.take(Some(std::net::IpAddr::from([127, 0, 0, 2])));
        keys.authenticate(other.key.as_bytes(), from).await.unwrap();
        let made_up = b"csk_0000000000000001_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for _ in 0..2 {
            let refusal = keys.authenticate(made_up, from).await;
            assert_eq!(refusal, refused(Refusal::KeyUnknown));
        }
        let throttled = keys.authenticate(made_up, from).await;
        assert_eq!(throttled, Err(AuthError::Throttled));
        keys.authenticate(other.key.as_bytes(), from).await.unwrap();
    }

    #[test]
    fn only_the_exact_shape_parses() {
        let secret = "A".repeat(43);
        let good = format!("csk_0123456789abcdef_{secret}");
        assert!(parse(good.as_bytes()).is_some());
        for bad in [
            format!("csk_0123456789ABCDEF_{secret}"),
            format!("csk_0123456789abcde_{secret}A"),
            format!("csk_0123456789abcdef-{secret}"),
            format!("csk_0123456789abcdef_{secret}A"),
            format!("csk_0123456789abcdef_{}", "A".repeat(42)),
            format!("csk_0123456789abcdef_{}=", "A".repeat(42)),
            format!("CSK_0123456789abcdef_{secret}"),
            String::new(),
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        for bad_hash in [
            "",
            "hmac-sha256$$",
            "sha1$a$b",
            "hmac-sha256$!!$a",
            "hmac-sha256$a$b$c",
        ] {
            assert!(!matches_stored(
                bad_hash,
                "0123456789abcdef",
                secret.as_bytes()
            ));
        }
    }
}
