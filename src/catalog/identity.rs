//! credstore's own identity records, which Milvus has no keys for: API keys and OIDC token
//! revocations, under `{meta}/root-coord/credstore/auth/` (inside the credential watch's prefix;
//! Milvus reads only its own keys there), plus the
//! best-effort last use of each key under `{meta}/credstore/apikey-used/` (outside the watched
//! prefix: recording a use must not invalidate anything).
//!
//! Layout and values (JSON):
//! - `auth/apikeys/{id}`: `{"owner", "hash", "roles"?, "created", "expires"?, "description"?,
//!   "revoked"?}`; `hash` is a keyed hash of the secret made by `auth` (never the secret);
//!   a revoked key is kept as a tombstone (its hash removed) so a refusal can say why;
//! - `auth/oidc/revoked/jti/{sha256(jti)}`: `{"jti", "at"}`;
//! - `auth/oidc/revoked/subject/{sha256(subject)}`: `{"subject", "before"}`: the subject's
//!   tokens issued before `before` are refused;
//! - `apikey-used/{id}`: `{"at"}`.
//!
//! Times are seconds since the Unix epoch. Every write is conditional (create-if-absent or
//! compare-and-swap). Knows nothing of hashing, caching or gRPC.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, CatalogError};
use crate::meta::{Compare, KeyValue, MetaKv, Op, Read, Revision, Txn};
use crate::password::{Limits, Username};

/// An API key's record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub owner: Username,
    /// The keyed hash of the secret (`auth`'s format); empty once revoked.
    pub hash: String,
    /// Empty: all of the owner's roles.
    pub roles: Vec<String>,
    pub created: i64,
    pub expires: Option<i64>,
    pub description: String,
    pub revoked: Option<i64>,
    /// The revision the record was read at (0 before it is stored).
    pub mod_revision: Revision,
}

#[derive(Serialize, Deserialize)]
struct KeyValueJson {
    owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hash: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<i64>,
}

/// OIDC revocations in force, read at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Revoked token ids, with the time of their revocation.
    pub jtis: Vec<(String, i64)>,
    /// Subjects whose tokens issued before the time are revoked.
    pub subjects: Vec<(String, i64)>,
}

#[derive(Serialize, Deserialize)]
struct JtiJson {
    jti: String,
    at: i64,
}

#[derive(Serialize, Deserialize)]
struct SubjectJson {
    subject: String,
    before: i64,
}

#[derive(Serialize, Deserialize)]
struct UsedJson {
    at: i64,
}

/// What a changed key under [`Catalog::identity_prefix`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityChange<'k> {
    ApiKey(&'k str),
    OidcRevocation,
}

impl Catalog {
    /// `{meta}/root-coord/credstore/auth/`: inside the credential watch's prefix, so every
    /// record here is followed (and acknowledged) like a password change, by the one watch.
    /// Milvus reads only its own `root-coord/` keys and ignores these.
    pub fn identity_prefix(&self) -> String {
        format!("{}credstore/auth/", self.watch_prefix())
    }

    fn api_key_key(&self, id: &str) -> String {
        format!("{}apikeys/{id}", self.identity_prefix())
    }

    fn used_key(&self, id: &str) -> String {
        format!("{}credstore/apikey-used/{id}", self.meta_root())
    }

    fn revoked_prefix(&self) -> String {
        format!("{}oidc/revoked/", self.identity_prefix())
    }

    /// What a key seen by the watch under [`Catalog::identity_prefix`] means.
    pub fn identity_of_key<'k>(&self, key: &'k str) -> Option<IdentityChange<'k>> {
        let rest = key.strip_prefix(self.identity_prefix().as_str())?;
        if let Some(id) = rest.strip_prefix("apikeys/") {
            return Some(IdentityChange::ApiKey(id));
        }
        rest.starts_with("oidc/revoked/")
            .then_some(IdentityChange::OidcRevocation)
    }

    /// Stores a new key; `false` when the id is taken (the caller draws another).
    pub async fn create_api_key(&self, key: &StoredKey) -> Result<Option<Revision>, CatalogError> {
        let path = self.api_key_key(&key.id);
        let txn = Txn::default()
            .when(Compare::Absent(path.clone()))
            .then(Op::Put(path, encode_key(key)));
        let outcome = self.kv.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// The key `id`, read at the returned revision.
    pub async fn get_api_key(&self, id: &str) -> Result<Read<Option<StoredKey>>, CatalogError> {
        let read = self.kv.get(&self.api_key_key(id)).await?;
        let value = read
            .value
            .as_ref()
            .map(|kv| decode_key(id, kv))
            .transpose()?;
        Ok(Read {
            value,
            revision: read.revision,
        })
    }

    /// Every key record (revoked ones included), with the last use recorded for each.
    pub async fn list_api_keys(&self) -> Result<Vec<(StoredKey, Option<i64>)>, CatalogError> {
        let prefix = format!("{}apikeys/", self.identity_prefix());
        let read = self.kv.list(&prefix).await?;
        let used_prefix = self.used_key("");
        let used = self.kv.list(&used_prefix).await?;
        let last_use = |id: &str| {
            let key = format!("{used_prefix}{id}");
            used.value
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| serde_json::from_slice::<UsedJson>(&kv.value).ok())
                .map(|u| u.at)
        };
        let mut keys = Vec::new();
        for kv in &read.value {
            let id = kv.key.strip_prefix(&prefix).unwrap_or_default();
            let key = decode_key(id, kv)?;
            let used = last_use(id);
            keys.push((key, used));
        }
        Ok(keys)
    }

    /// Marks `key` (as read) revoked at `at`, removing its hash. `None` when it changed since
    /// it was read (the caller reads again).
    pub async fn revoke_api_key(
        &self,
        key: &StoredKey,
        at: i64,
    ) -> Result<Option<Revision>, CatalogError> {
        let path = self.api_key_key(&key.id);
        let tombstone = StoredKey {
            hash: String::new(),
            revoked: Some(at),
            ..key.clone()
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(path.clone(), key.mod_revision))
            .then(Op::Put(path, encode_key(&tombstone)));
        let outcome = self.kv.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Records that key `id` was used at `at`, unless a later use is already recorded.
    /// Best effort: a lost race means someone else recorded a use just now.
    pub async fn record_key_use(&self, id: &str, at: i64) -> Result<(), CatalogError> {
        let path = self.used_key(id);
        let current = self.kv.get(&path).await?.value;
        let compare = match &current {
            Some(kv) => {
                let stored = serde_json::from_slice::<UsedJson>(&kv.value).map_or(0, |u| u.at);
                if stored >= at {
                    return Ok(());
                }
                Compare::ModRevision(path.clone(), kv.mod_revision)
            }
            None => Compare::Absent(path.clone()),
        };
        let value = serde_json::to_vec(&UsedJson { at }).expect("JSON serializes");
        self.kv
            .txn(Txn::default().when(compare).then(Op::Put(path, value)))
            .await?;
        Ok(())
    }

    /// Revokes the token `jti` (kept as it was first revoked when already revoked).
    pub async fn revoke_jti(&self, jti: &str, at: i64) -> Result<Option<Revision>, CatalogError> {
        let path = format!("{}jti/{}", self.revoked_prefix(), digest(jti));
        let value = serde_json::to_vec(&JtiJson {
            jti: jti.to_string(),
            at,
        })
        .expect("JSON serializes");
        let txn = Txn::default()
            .when(Compare::Absent(path.clone()))
            .then(Op::Put(path, value));
        let outcome = self.kv.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Revokes every token of `subject` issued before `before` (a later revocation of the same
    /// subject moves the time forward; never back).
    pub async fn revoke_subject(
        &self,
        subject: &str,
        before: i64,
    ) -> Result<Option<Revision>, CatalogError> {
        let path = format!("{}subject/{}", self.revoked_prefix(), digest(subject));
        let value = serde_json::to_vec(&SubjectJson {
            subject: subject.to_string(),
            before,
        })
        .expect("JSON serializes");
        for _ in 0..8 {
            let current = self.kv.get(&path).await?.value;
            let compare = match &current {
                Some(kv) => {
                    let stored =
                        serde_json::from_slice::<SubjectJson>(&kv.value).map_or(0, |s| s.before);
                    if stored >= before {
                        return Ok(None);
                    }
                    Compare::ModRevision(path.clone(), kv.mod_revision)
                }
                None => Compare::Absent(path.clone()),
            };
            let txn = Txn::default()
                .when(compare)
                .then(Op::Put(path.clone(), value.clone()));
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return Ok(Some(outcome.revision));
            }
        }
        Err(CatalogError::BadValue {
            key: path,
            reason: "changed concurrently eight times in a row; retry".into(),
        })
    }

    /// Every OIDC revocation, read at one revision.
    pub async fn oidc_revocations(&self) -> Result<Read<Revocations>, CatalogError> {
        let prefix = self.revoked_prefix();
        let read = self.kv.list(&prefix).await?;
        let mut revocations = Revocations::default();
        for kv in &read.value {
            let rest = kv.key.strip_prefix(&prefix).unwrap_or_default();
            let bad = |reason: String| CatalogError::BadValue {
                key: kv.key.clone(),
                reason,
            };
            if rest.starts_with("jti/") {
                let value: JtiJson =
                    serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
                revocations.jtis.push((value.jti, value.at));
            } else if rest.starts_with("subject/") {
                let value: SubjectJson =
                    serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
                revocations.subjects.push((value.subject, value.before));
            }
        }
        Ok(Read {
            value: revocations,
            revision: read.revision,
        })
    }
}

/// Hex SHA-256 of a client-chosen string: a key segment that is always safe.
fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode_key(key: &StoredKey) -> Vec<u8> {
    let value = KeyValueJson {
        owner: key.owner.as_str().to_string(),
        hash: key.hash.clone(),
        roles: key.roles.clone(),
        created: key.created,
        expires: key.expires,
        description: key.description.clone(),
        revoked: key.revoked,
    };
    serde_json::to_vec(&value).expect("key JSON serializes")
}

fn decode_key(id: &str, kv: &KeyValue) -> Result<StoredKey, CatalogError> {
    let bad = |reason: String| CatalogError::BadValue {
        key: kv.key.clone(),
        reason,
    };
    let value: KeyValueJson = serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
    // Owners are checked at creation under the configured limits; any canonical name reads.
    let limits = Limits {
        max_username_len: usize::MAX,
        ..Limits::default()
    };
    let owner = Username::parse_exact(&value.owner, &limits).map_err(|e| bad(e.to_string()))?;
    Ok(StoredKey {
        id: id.to_string(),
        owner,
        hash: value.hash,
        roles: value.roles,
        created: value.created,
        expires: value.expires,
        description: value.description,
        revoked: value.revoked,
        mod_revision: kv.mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{EmbeddedKv, Store};

    fn catalog(dir: &tempfile::TempDir) -> Catalog {
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        Catalog::new(store, "by-dev/meta")
    }

    fn key(id: &str) -> StoredKey {
        StoredKey {
            id: id.into(),
            owner: Username::parse_exact("alice", &Limits::default()).unwrap(),
            hash: "hmac-sha256$c2FsdA$bWFj".into(),
            roles: vec!["reader".into()],
            created: 100,
            expires: Some(200),
            description: "ci".into(),
            revoked: None,
            mod_revision: 0,
        }
    }

    #[test]
    fn keys_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(&dir);
        let check = |key: &str, expected: Option<IdentityChange<'_>>| {
            assert_eq!(c.identity_of_key(key), expected, "{key}");
        };
        check(
            "by-dev/meta/root-coord/credstore/auth/apikeys/0123abcd",
            Some(IdentityChange::ApiKey("0123abcd")),
        );
        check(
            "by-dev/meta/root-coord/credstore/auth/oidc/revoked/jti/ab",
            Some(IdentityChange::OidcRevocation),
        );
        check("by-dev/meta/credstore/apikey-used/0123abcd", None);
        check("by-dev/meta/credstore/sessions/r1", None);
        check("by-dev/meta/root-coord/credential/users/alice", None);
    }

    #[tokio::test]
    async fn a_key_round_trips_and_is_revoked_by_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(&dir);
        assert!(c.create_api_key(&key("k1")).await.unwrap().is_some());
        assert_eq!(c.create_api_key(&key("k1")).await.unwrap(), None, "taken");
        let read = c.get_api_key("k1").await.unwrap().value.unwrap();
        assert_eq!(
            StoredKey {
                mod_revision: 0,
                ..read.clone()
            },
            key("k1")
        );
        let raw = c
            .store()
            .get("by-dev/meta/root-coord/credstore/auth/apikeys/k1")
            .await
            .unwrap()
            .value
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw.value).contains("secret"));
        c.record_key_use("k1", 150).await.unwrap();
        c.record_key_use("k1", 120).await.unwrap();
        let listed = c.list_api_keys().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1, Some(150), "the later use stays");
        assert!(c.revoke_api_key(&read, 160).await.unwrap().is_some());
        assert_eq!(
            c.revoke_api_key(&read, 170).await.unwrap(),
            None,
            "a stale read does not overwrite"
        );
        let revoked = c.get_api_key("k1").await.unwrap().value.unwrap();
        assert_eq!((revoked.revoked, revoked.hash.as_str()), (Some(160), ""));
    }

    #[tokio::test]
    async fn revocations_read_back_and_subjects_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(&dir);
        assert!(c.revoke_jti("t-1", 10).await.unwrap().is_some());
        assert_eq!(c.revoke_jti("t-1", 11).await.unwrap(), None);
        assert!(c.revoke_subject("alice/x", 20).await.unwrap().is_some());
        assert_eq!(c.revoke_subject("alice/x", 15).await.unwrap(), None);
        assert!(c.revoke_subject("alice/x", 30).await.unwrap().is_some());
        let read = c.oidc_revocations().await.unwrap().value;
        assert_eq!(read.jtis, vec![("t-1".to_string(), 10)]);
        assert_eq!(read.subjects, vec![("alice/x".to_string(), 30)]);
    }
}
