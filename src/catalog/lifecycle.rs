//! What the proxy tier records when a forwarded call changed collections upstream:
//!
//! - grants follow a collection's life: a dropped collection (or database) takes its grants
//!   with it, and a renamed one carries them to its new name, so a new collection with an old
//!   name never inherits old grants;
//! - the alias epoch (`{meta}/root-coord/credstore/alias-epoch`, a counter inside the watched
//!   prefix that Milvus never reads): bumped whenever an alias may point elsewhere, so every
//!   replica drops the alias resolutions it cached.
//!
//! Each write is conditional on what it read (the grantee key unchanged, the epoch as read)
//! and returns its revision, which the caller has every live replica acknowledge.
//!
//! Storage only: which forwarded calls change what is the proxy's knowledge.

use crate::catalog::grants::parse_target;
use crate::catalog::{Catalog, CatalogError, DEFAULT_DB, GrantTarget, MAX_TXN_OPS, grantee_id};
use crate::meta::{Compare, KeyValue, MetaKv, Op, Revision, Txn};

/// How often a conditional write is retried when it raced another writer.
const ATTEMPTS: usize = 8;

/// A stored grantee key: its role, target and grantee id.
struct Grantee {
    kv: KeyValue,
    role: String,
    target: GrantTarget,
}

impl Catalog {
    /// The alias epoch's key.
    pub fn alias_epoch_key(&self) -> String {
        format!("{}root-coord/credstore/alias-epoch", self.meta_root())
    }

    /// Bumps the alias epoch; every replica's watch then drops its alias resolutions.
    pub async fn bump_alias_epoch(&self) -> Result<Revision, CatalogError> {
        let key = self.alias_epoch_key();
        for _ in 0..ATTEMPTS {
            let current = self.kv.get(&key).await?.value;
            let (compare, next) = match &current {
                Some(kv) => {
                    let n: u64 = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    (Compare::ModRevision(key.clone(), kv.mod_revision), n + 1)
                }
                None => (Compare::Absent(key.clone()), 1),
            };
            let txn = Txn::default()
                .when(compare)
                .then(Op::Put(key.clone(), next.to_string().into_bytes()));
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return Ok(outcome.revision);
            }
        }
        Err(CatalogError::BadValue {
            key,
            reason: "kept changing under concurrent writers; retry".into(),
        })
    }

    /// Every grantee key (of any role) on `db`, and on collection `name` when given (every
    /// object of the database otherwise).
    async fn grantees_on(
        &self,
        db: &str,
        name: Option<&str>,
    ) -> Result<Vec<Grantee>, CatalogError> {
        let prefix = format!("{}grantee-privileges/", self.credential_prefix());
        let mut found = Vec::new();
        for kv in self.kv.list(&prefix).await?.value {
            let Some(rest) = kv.key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Some((role, target)) = rest.split_once('/') else {
                continue;
            };
            let Some(target) = parse_target(target) else {
                continue;
            };
            let stored_db = match target.db.as_str() {
                "" => DEFAULT_DB,
                d => d,
            };
            if stored_db == db && name.is_none_or(|n| target.name == n) {
                found.push(Grantee {
                    role: role.to_string(),
                    target,
                    kv,
                });
            }
        }
        Ok(found)
    }

    /// Deletes every grant on collection `name` of `db` (or, with `None`, on anything in
    /// `db`). `None` when there was none.
    pub async fn delete_grants_on(
        &self,
        db: &str,
        name: Option<&str>,
    ) -> Result<Option<Revision>, CatalogError> {
        let mut last = None;
        let grantees = self.grantees_on(db, name).await?;
        // Two ops per grantee key: the key and its grantee-id prefix.
        for batch in grantees.chunks(MAX_TXN_OPS / 2) {
            let mut txn = Txn::default();
            for g in batch {
                let id = String::from_utf8_lossy(&g.kv.value).into_owned();
                txn = txn
                    .when(Compare::ModRevision(g.kv.key.clone(), g.kv.mod_revision))
                    .then(Op::Delete(g.kv.key.clone()))
                    .then(Op::DeletePrefix(self.grantee_id_prefix(&id)));
            }
            let outcome = self.kv.txn(txn).await?;
            if !outcome.succeeded {
                return Err(CatalogError::RoleConflict(batch[0].role.clone()));
            }
            last = Some(outcome.revision);
        }
        Ok(last)
    }

    /// Moves every grant on `from` (db, collection) to `to`, one grantee key per transaction
    /// (its privileges are copied under the new key's grantee id, then the old ones deleted).
    /// Grants already on `to` are kept. `None` when there was nothing to move.
    pub async fn move_grants(
        &self,
        from: (&str, &str),
        to: (&str, &str),
    ) -> Result<Option<Revision>, CatalogError> {
        let mut last = None;
        for g in self.grantees_on(from.0, Some(from.1)).await? {
            let old_id = String::from_utf8_lossy(&g.kv.value).into_owned();
            let old_prefix = self.grantee_id_prefix(&old_id);
            let privileges = self.kv.list(&old_prefix).await?.value;
            let target = GrantTarget {
                object: g.target.object.clone(),
                db: to.0.to_string(),
                name: to.1.to_string(),
            };
            let relative = Self::relative_grantee_key(&g.role, &target);
            let new_key = format!("{}{relative}", self.meta_root());
            let mut txn = Txn::default()
                .when(Compare::ModRevision(g.kv.key.clone(), g.kv.mod_revision))
                .then(Op::Delete(g.kv.key.clone()))
                .then(Op::DeletePrefix(old_prefix.clone()));
            let new_id = match self.kv.get(&new_key).await?.value {
                Some(kv) => {
                    txn = txn.when(Compare::ModRevision(new_key.clone(), kv.mod_revision));
                    String::from_utf8_lossy(&kv.value).into_owned()
                }
                None => {
                    let id = grantee_id(&relative);
                    txn = txn
                        .when(Compare::Absent(new_key.clone()))
                        .then(Op::Put(new_key.clone(), id.clone().into_bytes()));
                    id
                }
            };
            let new_prefix = self.grantee_id_prefix(&new_id);
            for kv in privileges.iter().take(MAX_TXN_OPS - 4) {
                let privilege = kv.key.strip_prefix(old_prefix.as_str()).unwrap_or_default();
                txn = txn.then(Op::Put(
                    format!("{new_prefix}{privilege}"),
                    kv.value.clone(),
                ));
            }
            let outcome = self.kv.txn(txn).await?;
            if !outcome.succeeded {
                return Err(CatalogError::RoleConflict(g.role));
            }
            last = Some(outcome.revision);
        }
        Ok(last)
    }
}
