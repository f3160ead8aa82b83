//! Failed-login counts in etcd, under credstore's own prefix (never Milvus's `root-coord/`):
//!
//! ```text
//! {meta}/credstore/lockout/pairs/{user}/{peer}  = {"failures":3,"lastFailureMs":…,"lockedUntilMs":0}
//! {meta}/credstore/lockout/accounts/{user}      = the same, counted over every peer
//! ```
//!
//! `{peer}` is the client's IP address as text (`local` for a login with no peer: an
//! in-process call). Times are milliseconds since the Unix epoch, so every replica reads them
//! alike. Writes are conditional on the revision the writer last saw (or on absence), so two
//! replicas counting the same key at once never lose a count: the loser re-reads and retries.
//! What a record means (when it lapses, when it locks) is decided by `auth`; storage only here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, MAX_TXN_OPS};
use crate::meta::{Compare, KeyValue, MetaKv, Op, Read, Revision, Txn, TxnOutcome};
use crate::password::{Limits, Username};

/// Whose failed logins a record counts: one user name from one peer address, or one user
/// name from every address (the account).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockoutSubject {
    Pair(Username, Option<IpAddr>),
    Account(Username),
}

impl LockoutSubject {
    pub fn user(&self) -> &Username {
        match self {
            LockoutSubject::Pair(user, _) | LockoutSubject::Account(user) => user,
        }
    }
}

/// A stored count. The zero value (`Default`) means "nothing counted".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LockoutRecord {
    /// Failures counted since the count last started from zero.
    pub failures: u32,
    /// When the newest counted failure happened (ms since the Unix epoch).
    pub last_failure_ms: u64,
    /// Until when attempts are refused (ms since the Unix epoch); 0: never locked.
    pub locked_until_ms: u64,
}

/// One conditional change of a lockout record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockoutWrite {
    pub subject: LockoutSubject,
    /// The key's mod revision as last seen, or `None` when it was seen absent.
    pub expected: Option<Revision>,
    /// The new record, or `None` to delete it.
    pub value: Option<LockoutRecord>,
}

/// The text of a peer in a key.
const NO_PEER: &str = "local";

impl Catalog {
    /// `{meta}/credstore/lockout/`: every lockout record, and what their watch follows.
    pub fn lockout_prefix(&self) -> String {
        let meta = self
            .credential_prefix()
            .strip_suffix("root-coord/credential/")
            .expect("the credential prefix ends with root-coord/credential/");
        format!("{meta}credstore/lockout/")
    }

    /// The key of `subject`'s record.
    pub fn lockout_key(&self, subject: &LockoutSubject) -> String {
        let prefix = self.lockout_prefix();
        match subject {
            LockoutSubject::Pair(user, peer) => {
                let peer = peer.map_or_else(|| NO_PEER.to_string(), |ip| ip.to_string());
                format!("{prefix}pairs/{user}/{peer}")
            }
            LockoutSubject::Account(user) => format!("{prefix}accounts/{user}"),
        }
    }

    /// Whose record `key` is; `None` for keys that are not lockout records (or name no
    /// canonical user, which no login could have written).
    pub fn lockout_subject(&self, key: &str) -> Option<LockoutSubject> {
        let rest = key.strip_prefix(self.lockout_prefix().as_str())?;
        let any_length = Limits {
            max_username_len: usize::MAX,
            ..Limits::default()
        };
        let name = |raw: &str| Username::parse_exact(raw, &any_length).ok();
        if let Some(user) = rest.strip_prefix("accounts/") {
            return Some(LockoutSubject::Account(name(user)?));
        }
        let (user, peer) = rest.strip_prefix("pairs/")?.split_once('/')?;
        let peer = match peer {
            NO_PEER => None,
            ip => Some(ip.parse().ok()?),
        };
        Some(LockoutSubject::Pair(name(user)?, peer))
    }

    /// Every lockout record, with its mod revision, read at one revision. A value that does
    /// not decode reads as the zero record (so the next write, conditional on its revision,
    /// replaces it).
    pub async fn list_lockouts(
        &self,
    ) -> Result<Read<Vec<(LockoutSubject, LockoutRecord, Revision)>>, CatalogError> {
        let read = self.store().list(&self.lockout_prefix()).await?;
        let records = read
            .value
            .iter()
            .filter_map(|kv| {
                let subject = self.lockout_subject(&kv.key)?;
                Some((subject, decode_lockout(&kv.value), kv.mod_revision))
            })
            .collect();
        Ok(Read {
            value: records,
            revision: read.revision,
        })
    }

    /// `subject`'s record and its mod revision, if it exists, read at the returned revision.
    pub async fn get_lockout(
        &self,
        subject: &LockoutSubject,
    ) -> Result<Read<Option<(LockoutRecord, Revision)>>, CatalogError> {
        let read = self.store().get(&self.lockout_key(subject)).await?;
        Ok(Read {
            value: read
                .value
                .map(|kv: KeyValue| (decode_lockout(&kv.value), kv.mod_revision)),
            revision: read.revision,
        })
    }

    /// Applies `writes` in one transaction, all or nothing: `succeeded` is false when one of
    /// the keys changed since it was seen (nothing is written then). At most
    /// [`MAX_LOCKOUT_WRITES`] writes fit in one transaction.
    pub async fn write_lockouts(
        &self,
        writes: &[LockoutWrite],
    ) -> Result<TxnOutcome, CatalogError> {
        debug_assert!(writes.len() <= MAX_LOCKOUT_WRITES);
        let mut txn = Txn::default();
        for write in writes {
            let key = self.lockout_key(&write.subject);
            txn = txn.when(match write.expected {
                Some(revision) => Compare::ModRevision(key.clone(), revision),
                None => Compare::Absent(key.clone()),
            });
            txn = txn.then(match &write.value {
                Some(record) => Op::Put(key, encode_lockout(record)),
                None => Op::Delete(key),
            });
        }
        Ok(self.store().txn(txn).await?)
    }

    /// Deletes every record of `user` (its account and all its pairs); returns the revision.
    pub async fn clear_lockouts(&self, user: &Username) -> Result<Revision, CatalogError> {
        let prefix = self.lockout_prefix();
        let txn = Txn::default()
            .then(Op::DeletePrefix(format!("{prefix}pairs/{user}/")))
            .then(Op::Delete(format!("{prefix}accounts/{user}")));
        Ok(self.store().txn(txn).await?.revision)
    }
}

/// Most writes in one lockout transaction: each is a compare and an operation, and etcd
/// refuses a transaction of more than [`MAX_TXN_OPS`] of either.
pub const MAX_LOCKOUT_WRITES: usize = MAX_TXN_OPS / 2;

/// The stored value of a record.
pub fn encode_lockout(record: &LockoutRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a lockout record serializes")
}

/// A stored value as a record; one that does not decode reads as the zero record.
pub fn decode_lockout(value: &[u8]) -> LockoutRecord {
    serde_json::from_slice(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{EmbeddedKv, Store};

    fn name(raw: &str) -> Username {
        Username::parse_exact(raw, &Limits::default()).unwrap()
    }

    fn catalog(dir: &tempfile::TempDir) -> Catalog {
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        Catalog::new(store, "by-dev/meta")
    }

    fn check(catalog: &Catalog, subject: LockoutSubject, key: &str) {
        assert_eq!(catalog.lockout_key(&subject), key);
        assert_eq!(catalog.lockout_subject(key), Some(subject), "{key}");
    }

    #[test]
    fn keys_live_under_credstores_own_prefix_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(&dir);
        let v4 = "10.0.0.7".parse().ok();
        let v6 = "2001:db8::1".parse().ok();
        check(
            &c,
            LockoutSubject::Pair(name("alice"), v4),
            "by-dev/meta/credstore/lockout/pairs/alice/10.0.0.7",
        );
        check(
            &c,
            LockoutSubject::Pair(name("alice"), v6),
            "by-dev/meta/credstore/lockout/pairs/alice/2001:db8::1",
        );
        check(
            &c,
            LockoutSubject::Pair(name("alice"), None),
            "by-dev/meta/credstore/lockout/pairs/alice/local",
        );
        check(
            &c,
            LockoutSubject::Account(name("alice")),
            "by-dev/meta/credstore/lockout/accounts/alice",
        );
        for other in [
            "by-dev/meta/root-coord/credential/users/alice",
            "by-dev/meta/credstore/sessions/r1",
            "by-dev/meta/credstore/lockout/pairs/alice",
            "by-dev/meta/credstore/lockout/pairs/alice/not-an-ip",
            "by-dev/meta/credstore/lockout/pairs/ alice/10.0.0.7",
            "by-dev/meta/credstore/lockout/accounts/",
        ] {
            assert_eq!(c.lockout_subject(other), None, "{other}");
        }
    }

    #[test]
    fn values_are_json_and_garbage_reads_as_zero() {
        let record = LockoutRecord {
            failures: 5,
            last_failure_ms: 1_700_000_000_000,
            locked_until_ms: 1_700_000_900_000,
        };
        let text = String::from_utf8(encode_lockout(&record)).unwrap();
        assert_eq!(
            text,
            r#"{"failures":5,"lastFailureMs":1700000000000,"lockedUntilMs":1700000900000}"#
        );
        assert_eq!(decode_lockout(text.as_bytes()), record);
        assert_eq!(decode_lockout(b"not json"), LockoutRecord::default());
    }

    #[tokio::test]
    async fn writes_are_conditional_and_unlock_clears_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(&dir);
        let one = LockoutRecord {
            failures: 1,
            last_failure_ms: 1,
            locked_until_ms: 0,
        };
        let pair = LockoutSubject::Pair(name("alice"), "10.0.0.7".parse().ok());
        let account = LockoutSubject::Account(name("alice"));
        let bobs = LockoutSubject::Account(name("bob"));
        let write = |subject: &LockoutSubject, expected| LockoutWrite {
            subject: subject.clone(),
            expected,
            value: Some(one),
        };
        let first = c
            .write_lockouts(&[
                write(&pair, None),
                write(&account, None),
                write(&bobs, None),
            ])
            .await
            .unwrap();
        assert!(first.succeeded);
        // Seen absent, but it exists now: refused, nothing written.
        let raced = c.write_lockouts(&[write(&pair, None)]).await.unwrap();
        assert!(!raced.succeeded);
        let read = c.get_lockout(&pair).await.unwrap().value.unwrap();
        assert_eq!(read, (one, first.revision));
        let listed = c.list_lockouts().await.unwrap().value;
        assert_eq!(listed.len(), 3);
        c.clear_lockouts(&name("alice")).await.unwrap();
        let listed = c.list_lockouts().await.unwrap().value;
        assert_eq!(listed, vec![(bobs, one, first.revision)]);
    }
}
