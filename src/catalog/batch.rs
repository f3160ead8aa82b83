//! Another Milvus keyspace's entries read and written in batches, for `credstore admin
//! import`: the prefix of each kind of entry, decoding what Milvus 2.2–2.6 wrote there (the
//! same readers the catalog uses for its own keys), and conditional writes of many entries at
//! once, each transaction under etcd's [`MAX_TXN_OPS`] operations and compares.
//!
//! Every write is conditioned on what was read just before it (absent, or unchanged), so a
//! concurrent change is reported and never overwritten. A grant rewrites its role's value,
//! as [`Catalog::grant_privilege`] does, so a racing `DropRole` cannot orphan it. Writes
//! only add or (users, roles and groups, when asked) replace: nothing here deletes.
//!
//! Storage only: which entries to copy, and what a conflict means, is `import`'s business.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::catalog::grants::{GroupValue, encode_group, parse_target};
use crate::catalog::roles::{description_of, role_value};
use crate::catalog::{
    Catalog, CatalogError, GrantTarget, MAX_TXN_OPS, RoleName, StoredGrant, StoredGroup,
    StoredUser, grantee_id,
};
use crate::meta::{Compare, KeyValue, MetaKv, Op, Revision, Txn};
use crate::password::Username;

/// The kinds of entries an import copies, in the order it copies them: what a later kind
/// refers to (a binding's user and role, a grant's role and group) is there by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Roles,
    Users,
    Groups,
    Bindings,
    Grantees,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Roles,
        Kind::Users,
        Kind::Groups,
        Kind::Bindings,
        Kind::Grantees,
    ];
}

/// Whether a batch is written, or only compared with what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Write,
}

/// What to do with an entry stored with other content than the one being copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Leave it and report it as a conflict.
    Keep,
    /// Replace it (compare-and-swap on the value read).
    Replace,
}

/// What one batch did (`Mode::Write`) or would do (`Mode::Check`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Entries written (new, or replaced).
    pub written: usize,
    /// Entries stored already with the same content.
    pub present: usize,
    /// Entries left out because what they refer to (user, role) is not stored.
    pub orphans: usize,
    /// Names stored with other content and kept (`Existing::Keep`); nothing of theirs is written.
    pub conflicts: Vec<String>,
    /// The revision of the last write.
    pub revision: Option<Revision>,
}

impl BatchOutcome {
    fn wrote(&mut self, revision: Revision) {
        self.revision = Some(self.revision.map_or(revision, |r| r.max(revision)));
    }

    /// Adds `other`'s counts to this one.
    pub fn add(&mut self, other: BatchOutcome) {
        self.written += other.written;
        self.present += other.present;
        self.orphans += other.orphans;
        self.conflicts.extend(other.conflicts);
        if let Some(revision) = other.revision {
            self.wrote(revision);
        }
    }
}

/// One grantee key of a keyspace: a role's grants on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grantee {
    pub role: String,
    /// Legacy keys without a db read as db `default`.
    pub target: GrantTarget,
    /// The key's value: where its privileges hang (`grantee-id/{id}/…`).
    pub id: String,
    /// Milvus master's `dbID:{n}.colID:{n}` keys, written next to name keys: they name a
    /// collection by id, which only that Milvus's collection catalog can resolve.
    pub by_collection_id: bool,
}

/// The field an imported user's record carries: a fingerprint of the record it was copied
/// from (SHA-256 of the source's hash and description), so a later import still knows it as
/// the same user after credstore rehashed its password (at login) or it changed it through
/// credstore, both of which keep the record's other fields.
pub const IMPORTED_FIELD: &str = "imported_from";

/// One value to store at `key` unless an equal one is there.
struct Wanted {
    name: String,
    key: String,
    value: Vec<u8>,
}

impl Catalog {
    /// Where this keyspace keeps `kind`.
    pub fn prefix_of(&self, kind: Kind) -> String {
        match kind {
            Kind::Roles => format!("{}roles/", self.credential_prefix()),
            Kind::Users => self.users_prefix(),
            Kind::Groups => self.group_prefix(),
            Kind::Bindings => format!("{}user-role-mapping/", self.credential_prefix()),
            Kind::Grantees => format!("{}grantee-privileges/", self.credential_prefix()),
        }
    }

    /// The prefix of a grantee id's privilege keys (`grantee-id/{id}/`).
    pub fn privileges_prefix(&self, id: &str) -> String {
        self.grantee_id_prefix(id)
    }

    /// The role a `roles/{name}` key holds, with its description; a name Milvus could not
    /// have written is unreadable.
    pub fn decode_role(&self, kv: &KeyValue) -> Result<(RoleName, String), CatalogError> {
        let raw = self.last_segment(kv, Kind::Roles)?;
        match RoleName::parse(raw) {
            Ok(role) if role.as_str() == raw => Ok((role, description_of(&kv.value))),
            Ok(_) => Err(bad(kv, "the role name has surrounding white space".into())),
            Err(reason) => Err(bad(kv, reason)),
        }
    }

    /// The user name of a `users/{name}` key (checked by the caller, who knows the limits)
    /// and the stored record.
    pub fn decode_user<'k>(&self, kv: &'k KeyValue) -> Result<(&'k str, StoredUser), CatalogError> {
        let name = self.last_segment(kv, Kind::Users)?;
        Ok((name, StoredUser::decode(kv)?))
    }

    /// The custom privilege group a `privilege-group/{name}` key holds.
    pub fn decode_group(&self, kv: &KeyValue) -> Result<StoredGroup, CatalogError> {
        let name = self.last_segment(kv, Kind::Groups)?;
        let value = GroupValue::decode(kv.value.as_slice()).map_err(|e| bad(kv, e.to_string()))?;
        Ok(StoredGroup {
            name: name.to_string(),
            privileges: value.privileges.into_iter().map(|p| p.name).collect(),
        })
    }

    /// The (user, role) of a `user-role-mapping/{user}/{role}` key.
    pub fn decode_binding(&self, kv: &KeyValue) -> Result<(String, String), CatalogError> {
        let prefix = self.prefix_of(Kind::Bindings);
        kv.key
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.split_once('/'))
            .filter(|(user, role)| !user.is_empty() && !role.is_empty() && !role.contains('/'))
            .map(|(user, role)| (user.to_string(), role.to_string()))
            .ok_or_else(|| bad(kv, "not user-role-mapping/{user}/{role}".into()))
    }

    /// A `grantee-privileges/{role}/{ObjectType}/{db}.{name}` key (or a legacy one without
    /// the db), read as [`Catalog::role_grants`] reads it.
    pub fn decode_grantee(&self, kv: &KeyValue) -> Result<Grantee, CatalogError> {
        let prefix = self.prefix_of(Kind::Grantees);
        let (role, rest) = kv
            .key
            .strip_prefix(prefix.as_str())
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| bad(kv, "not grantee-privileges/{role}/…".into()))?;
        let target = parse_target(rest)
            .filter(|t| !t.object.is_empty() && !t.name.is_empty())
            .ok_or_else(|| bad(kv, "not {ObjectType}/{db}.{name}".into()))?;
        let id = String::from_utf8(kv.value.clone())
            .ok()
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| bad(kv, "the grantee id is not a name".into()))?;
        Ok(Grantee {
            role: role.to_string(),
            by_collection_id: target.db.starts_with("dbID:"),
            target,
            id,
        })
    }

    /// The grants of `grantee`, given the keys under its [`Catalog::privileges_prefix`].
    pub fn grants_of(&self, grantee: &Grantee, privileges: &[KeyValue]) -> Vec<StoredGrant> {
        let prefix = self.grantee_id_prefix(&grantee.id);
        privileges
            .iter()
            .filter_map(|kv| {
                let privilege = kv.key.strip_prefix(prefix.as_str())?;
                (!privilege.is_empty() && !privilege.contains('/')).then(|| StoredGrant {
                    role: grantee.role.clone(),
                    target: grantee.target.clone(),
                    privilege: privilege.to_string(),
                    grantor: String::from_utf8_lossy(&kv.value).into_owned(),
                })
            })
            .collect()
    }

    /// Stores `roles` (name and description) that are not stored with that description.
    pub async fn import_roles(
        &self,
        roles: &[(RoleName, String)],
        existing: Existing,
        mode: Mode,
    ) -> Result<BatchOutcome, CatalogError> {
        let wanted = roles
            .iter()
            .map(|(role, description)| Wanted {
                name: role.as_str().to_string(),
                key: self.role_key(role.as_str()),
                value: role_value(description),
            })
            .collect();
        let same = |stored: &[u8], wanted: &[u8]| description_of(stored) == description_of(wanted);
        self.import_values(wanted, same, existing, mode, CatalogError::RoleConflict)
            .await
    }

    /// Stores `users` (their records as they are: hashes are copied, never recomputed) that
    /// are not stored with the same hash and description.
    pub async fn import_users(
        &self,
        users: &[(Username, StoredUser)],
        existing: Existing,
        mode: Mode,
    ) -> Result<BatchOutcome, CatalogError> {
        let wanted = users
            .iter()
            .map(|(name, user)| {
                let mut copy = user.clone();
                copy.extra
                    .insert(IMPORTED_FIELD.into(), fingerprint(user).into());
                Wanted {
                    name: name.to_string(),
                    key: self.user_key(name.as_str()),
                    value: copy.encode(),
                }
            })
            .collect();
        // The same hash and description, or copied from this very record before.
        let same = |stored: &[u8], wanted: &[u8]| {
            let read = |value: &[u8]| {
                let kv = KeyValue {
                    key: String::new(),
                    value: value.to_vec(),
                    create_revision: 0,
                    mod_revision: 0,
                };
                StoredUser::decode(&kv).ok()
            };
            match (read(stored), read(wanted)) {
                (Some(a), Some(b)) => {
                    (a.hash == b.hash && a.description == b.description)
                        || a.extra
                            .get(IMPORTED_FIELD)
                            .is_some_and(|f| Some(f) == b.extra.get(IMPORTED_FIELD))
                }
                _ => false,
            }
        };
        self.import_values(wanted, same, existing, mode, CatalogError::UserConflict)
            .await
    }

    /// Stores custom privilege `groups` that are not stored with the same privileges.
    pub async fn import_groups(
        &self,
        groups: &[StoredGroup],
        existing: Existing,
        mode: Mode,
    ) -> Result<BatchOutcome, CatalogError> {
        let wanted = groups
            .iter()
            .map(|group| Wanted {
                name: group.name.clone(),
                key: format!("{}{}", self.group_prefix(), group.name),
                value: encode_group(&group.name, &group.privileges),
            })
            .collect();
        let same = |stored: &[u8], wanted: &[u8]| {
            let read = |value: &[u8]| GroupValue::decode(value).ok().map(|g| g.privileges);
            read(stored).is_some_and(|privileges| Some(privileges) == read(wanted))
        };
        self.import_values(wanted, same, existing, mode, CatalogError::GroupConflict)
            .await
    }

    /// The common part of the three above: per batch, read every key, then write the new
    /// (and, with `Existing::Replace`, the different) values in one conditional transaction.
    async fn import_values(
        &self,
        wanted: Vec<Wanted>,
        same: impl Fn(&[u8], &[u8]) -> bool,
        existing: Existing,
        mode: Mode,
        raced: fn(String) -> CatalogError,
    ) -> Result<BatchOutcome, CatalogError> {
        let mut outcome = BatchOutcome::default();
        for batch in wanted.chunks(MAX_TXN_OPS) {
            let keys: Vec<String> = batch.iter().map(|w| w.key.clone()).collect();
            let stored = self.kv.get_many(&keys).await?.value;
            let mut txn = Txn::default();
            let mut writes = 0;
            for (wanted, stored) in batch.iter().zip(stored) {
                let compare = match (stored, existing) {
                    (None, _) => Compare::Absent(wanted.key.clone()),
                    (Some(kv), _) if same(&kv.value, &wanted.value) => {
                        outcome.present += 1;
                        continue;
                    }
                    (Some(_), Existing::Keep) => {
                        outcome.conflicts.push(wanted.name.clone());
                        continue;
                    }
                    (Some(kv), Existing::Replace) => Compare::ModRevision(kv.key, kv.mod_revision),
                };
                txn = txn
                    .when(compare)
                    .then(Op::Put(wanted.key.clone(), wanted.value.clone()));
                writes += 1;
            }
            if writes == 0 || mode == Mode::Check {
                outcome.written += writes;
                continue;
            }
            let done = self.kv.txn(txn).await?;
            if !done.succeeded {
                return Err(raced(batch[0].name.clone()));
            }
            outcome.written += writes;
            outcome.wrote(done.revision);
        }
        Ok(outcome)
    }

    /// Stores the `bindings` (user, role) that are not stored; one whose user or role is
    /// not stored is left out (an orphan). Each write also compares the user and role keys,
    /// so a binding racing `DeleteCredential` or `DropRole` fails instead of orphaning.
    pub async fn import_bindings(
        &self,
        bindings: &[(String, String)],
    ) -> Result<BatchOutcome, CatalogError> {
        let mut outcome = BatchOutcome::default();
        // A binding costs up to three compares (its key, its user, its role).
        for batch in bindings.chunks(MAX_TXN_OPS / 3) {
            let users: BTreeSet<&str> = batch.iter().map(|(u, _)| u.as_str()).collect();
            let roles: BTreeSet<&str> = batch.iter().map(|(_, r)| r.as_str()).collect();
            let mut keys: Vec<String> = users.iter().map(|u| self.user_key(u)).collect();
            keys.extend(roles.iter().map(|r| self.role_key(r)));
            keys.extend(batch.iter().map(|(u, r)| self.mapping_key(u, r)));
            let read = self.stored(&keys).await?;
            let mut txn = Txn::default();
            let mut compared = BTreeSet::new();
            let mut writes = 0;
            for (user, role) in batch {
                let mapping = self.mapping_key(user, role);
                let (user_key, role_key) = (self.user_key(user), self.role_key(role));
                if read.contains_key(&mapping) || !compared.insert(mapping.clone()) {
                    outcome.present += 1;
                    continue;
                }
                let (Some(user_rev), Some(role_rev)) = (read.get(&user_key), read.get(&role_key))
                else {
                    outcome.orphans += 1;
                    continue;
                };
                for (key, revision) in [(user_key, *user_rev), (role_key, *role_rev)] {
                    if compared.insert(key.clone()) {
                        txn = txn.when(Compare::ModRevision(key, revision));
                    }
                }
                txn = txn
                    .when(Compare::Absent(mapping.clone()))
                    .then(Op::Put(mapping, Vec::new()));
                writes += 1;
            }
            if writes == 0 {
                continue;
            }
            let done = self.kv.txn(txn).await?;
            if !done.succeeded {
                return Err(CatalogError::UserConflict(batch[0].0.clone()));
            }
            outcome.written += writes;
            outcome.wrote(done.revision);
        }
        Ok(outcome)
    }

    /// Stores the `grants` that are not stored (whoever granted the stored one), under this
    /// keyspace's grantee keys and ids: a new grantee key gets Milvus's md5 id of its own
    /// relative key, an existing one keeps its id. A grant whose role is not stored is left
    /// out (an orphan).
    pub async fn import_grants(
        &self,
        grants: &[StoredGrant],
    ) -> Result<BatchOutcome, CatalogError> {
        let mut outcome = BatchOutcome::default();
        // A grant costs up to three compares and three puts (grantee, privilege, role keys).
        for batch in grants.chunks(MAX_TXN_OPS / 3) {
            let grantee_key = |g: &StoredGrant| {
                format!(
                    "{}{}",
                    self.meta_root(),
                    Self::relative_grantee_key(&g.role, &g.target)
                )
            };
            let roles: BTreeSet<&str> = batch.iter().map(|g| g.role.as_str()).collect();
            let mut keys: Vec<String> = roles.iter().map(|r| self.role_key(r)).collect();
            keys.extend(batch.iter().map(grantee_key));
            keys.sort();
            keys.dedup();
            let stored = self.read_values(&keys).await?;
            // Each grant's grantee id: the stored one, or Milvus's for a new key.
            let ids: Vec<String> = batch
                .iter()
                .map(|g| match stored.get(&grantee_key(g)) {
                    Some(kv) => String::from_utf8_lossy(&kv.value).into_owned(),
                    None => grantee_id(&Self::relative_grantee_key(&g.role, &g.target)),
                })
                .collect();
            let privilege_keys: Vec<String> = batch
                .iter()
                .zip(&ids)
                .map(|(g, id)| format!("{}{}", self.grantee_id_prefix(id), g.privilege))
                .collect();
            let granted = self.stored(&privilege_keys).await?;
            let mut txn = Txn::default();
            let mut touched = BTreeSet::new();
            let mut writes = 0;
            for ((grant, id), privilege_key) in batch.iter().zip(&ids).zip(privilege_keys) {
                if granted.contains_key(&privilege_key) || touched.contains(&privilege_key) {
                    outcome.present += 1;
                    continue;
                }
                let role_key = self.role_key(&grant.role);
                let Some(role) = stored.get(&role_key) else {
                    outcome.orphans += 1;
                    continue;
                };
                // Rewriting the role's (unchanged) value moves its mod_revision, as a grant
                // through the API does: a `DropRole` that read the role before fails.
                if touched.insert(role_key.clone()) {
                    txn = txn
                        .when(Compare::ModRevision(role_key.clone(), role.mod_revision))
                        .then(Op::Put(role_key, role.value.clone()));
                }
                let grantee = grantee_key(grant);
                if touched.insert(grantee.clone()) {
                    txn = match stored.get(&grantee) {
                        Some(kv) => txn.when(Compare::ModRevision(grantee, kv.mod_revision)),
                        None => txn
                            .when(Compare::Absent(grantee.clone()))
                            .then(Op::Put(grantee, id.clone().into_bytes())),
                    };
                }
                touched.insert(privilege_key.clone());
                txn = txn
                    .when(Compare::Absent(privilege_key.clone()))
                    .then(Op::Put(privilege_key, grant.grantor.clone().into_bytes()));
                writes += 1;
            }
            if writes == 0 {
                continue;
            }
            let done = self.kv.txn(txn).await?;
            if !done.succeeded {
                return Err(CatalogError::RoleConflict(batch[0].role.clone()));
            }
            outcome.written += writes;
            outcome.wrote(done.revision);
        }
        Ok(outcome)
    }

    /// The stored keys among `keys` (any number), with their mod revisions.
    async fn stored(&self, keys: &[String]) -> Result<BTreeMap<String, Revision>, CatalogError> {
        Ok(self
            .read_values(keys)
            .await?
            .into_iter()
            .map(|(key, kv)| (key, kv.mod_revision))
            .collect())
    }

    /// The stored keys among `keys` (any number), with their values.
    async fn read_values(
        &self,
        keys: &[String],
    ) -> Result<BTreeMap<String, KeyValue>, CatalogError> {
        let mut found = BTreeMap::new();
        for batch in keys.chunks(MAX_TXN_OPS) {
            for kv in self.kv.get_many(batch).await?.value.into_iter().flatten() {
                found.insert(kv.key.clone(), kv);
            }
        }
        Ok(found)
    }

    /// The part of `kv`'s key after `kind`'s prefix: one non-empty segment.
    fn last_segment<'k>(&self, kv: &'k KeyValue, kind: Kind) -> Result<&'k str, CatalogError> {
        let prefix = self.prefix_of(kind);
        kv.key
            .strip_prefix(prefix.as_str())
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| bad(kv, format!("not {prefix}{{name}}")))
    }
}

/// Hex SHA-256 of a record's hash and description: names the record, reveals nothing a
/// password guess could be checked against (the hash's salt is not in it).
fn fingerprint(user: &StoredUser) -> String {
    let mut digest = Sha256::new();
    digest.update(user.hash.as_str().as_bytes());
    digest.update([0]);
    digest.update(user.description.as_deref().unwrap_or_default().as_bytes());
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bad(kv: &KeyValue, reason: String) -> CatalogError {
    CatalogError::BadValue {
        key: kv.key.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{EmbeddedKv, Store};

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(&dir.path().join("s.redb")).unwrap();
        (dir, Catalog::new(Store::Embedded(kv), "by-dev/meta"))
    }

    fn kv(key: &str, value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
        }
    }

    const C: &str = "by-dev/meta/root-coord/credential/";

    #[test]
    fn keys_of_every_layout_decode_and_bad_ones_name_the_key() {
        let (_dir, catalog) = catalog();
        let grantee = |rest: &str, id: &str| {
            catalog.decode_grantee(&kv(&format!("{C}grantee-privileges/{rest}"), id.as_bytes()))
        };
        let with_db = grantee("r1/Collection/db1.c1", "abc").unwrap();
        assert_eq!(
            (with_db.target.db.as_str(), with_db.target.name.as_str()),
            ("db1", "c1")
        );
        assert!(!with_db.by_collection_id);
        let legacy = grantee("r1/Global/*", "abc").unwrap();
        assert_eq!(
            (legacy.target.db.as_str(), legacy.target.name.as_str()),
            ("default", "*")
        );
        assert!(
            grantee("r1/Collection/dbID:1.colID:2", "abc")
                .unwrap()
                .by_collection_id
        );
        for (rest, id) in [("r1", "abc"), ("r1/Global/*", ""), ("r1/Global/*", "a/b")] {
            let err = grantee(rest, id).unwrap_err().to_string();
            assert!(err.contains("grantee-privileges/r1"), "{err}");
        }
        let binding =
            |rest: &str| catalog.decode_binding(&kv(&format!("{C}user-role-mapping/{rest}"), b""));
        assert_eq!(binding("alice/r1").unwrap(), ("alice".into(), "r1".into()));
        assert!(binding("alice").is_err() && binding("alice/").is_err());
        let role = |name: &str| catalog.decode_role(&kv(&format!("{C}roles/{name}"), b""));
        assert_eq!(role("r1").unwrap().0.as_str(), "r1");
        assert!(role(" r1").is_err() && role("1r").is_err() && role("a/b").is_err());
        let group = kv(
            "by-dev/meta/root-coord/privilege-group/g1",
            &encode_group("g1", &["Query".into()]),
        );
        assert_eq!(catalog.decode_group(&group).unwrap().privileges, ["Query"]);
        assert!(
            catalog
                .decode_group(&kv("by-dev/meta/root-coord/privilege-group/g1", b"\xff"))
                .is_err()
        );
    }
}
