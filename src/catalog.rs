//! The rootcoord role: users and roles in Milvus's etcd key layout, on top of `MetaKv`.
//!
//! Keys live under `{etcd.rootPath}/{etcd.metaSubPath}/root-coord/credential/`: `users/{name}`
//! holds JSON `{"encrypted_password": "<hash>"}` (plus `description`, and any field Milvus
//! wrote, kept as it was; an imported user also `imported_from`, see `batch.rs`);
//! `roles/{role}` holds JSON `{"description": "<d>"}` as Milvus master
//! writes it (an empty value, as Milvus ≤ 2.6 and the built-in roles have, reads as no
//! description); `user-role-mapping/{user}/{role}` is empty.
//! Every write is a transaction with a condition, so racing writers never overwrite each other.
//! Besides Milvus's keys, credstore's own failed-login records live under
//! `{meta}/credstore/lockout/` (`lockout.rs`). Knows nothing of gRPC, caches or hashing
//! algorithms.

mod batch;
mod grants;
mod identity;
mod lifecycle;
mod lockout;

use serde::{Deserialize, Serialize};

use crate::meta::{Compare, KeyValue, MetaError, MetaKv, Op, Read, Revision, Store, Txn};
use crate::password::{HashError, PasswordHash, Username};

pub use batch::{BatchOutcome, Existing, Grantee, IMPORTED_FIELD, Kind, Mode};
pub use grants::{ChangedKey, DEFAULT_DB, GrantTarget, StoredGrant, StoredGroup, grantee_id};
pub use identity::{IdentityChange, Revocations, StoredKey};
pub use lockout::{
    LockoutRecord, LockoutSubject, LockoutWrite, MAX_LOCKOUT_WRITES, decode_lockout, encode_lockout,
};

/// The built-in role whose members manage users and roles.
pub const ADMIN_ROLE: &str = "admin";
/// The built-in role every user implicitly holds.
pub const PUBLIC_ROLE: &str = "public";
/// The roles every deployment has; they cannot be dropped.
pub const DEFAULT_ROLES: [&str; 2] = [ADMIN_ROLE, PUBLIC_ROLE];
/// The user created at first start, who can never be deleted.
pub const ROOT_USER: &str = "root";

/// etcd refuses a transaction with more than this many compares or operations
/// (`--max-txn-ops`, default 128); a role's memberships are deleted in batches of at most it.
pub const MAX_TXN_OPS: usize = crate::meta::MAX_TXN_OPS;
/// How often `drop_role` starts over when grants keep racing it before it reports a conflict.
const DROP_ROLE_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("user already exists: {0}")]
    UserExists(String),
    #[error("user not found: {0}")]
    UserNotFound(String),
    #[error("user {0} was changed concurrently; retry")]
    UserConflict(String),
    #[error("role {0} was changed concurrently; retry")]
    RoleConflict(String),
    #[error("role [{0}] already exists")]
    RoleExists(String),
    #[error("role [{0}] not found")]
    RoleNotFound(String),
    #[error("the role[{0}] is a default role, which can't be dropped")]
    DefaultRole(String),
    #[error("there is no privilege group name [{0}] defined in system to operate")]
    GroupNotFound(String),
    #[error("privilege group {0} was changed concurrently; retry")]
    GroupConflict(String),
    #[error("stored value at {key} is unreadable: {reason}")]
    BadValue { key: String, reason: String },
    #[error("stored value at {key} is not a user record: {source}")]
    BadJson {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("stored value at {key} holds no valid hash: {source}")]
    BadHash {
        key: String,
        #[source]
        source: HashError,
    },
}

/// A user as stored, with the revision it was read at (for compare-and-swap).
#[derive(Clone, Debug)]
pub struct StoredUser {
    pub hash: PasswordHash,
    pub description: Option<String>,
    pub mod_revision: Revision,
    /// Fields Milvus may have written (e.g. `time_tick`), carried over on rewrite.
    extra: serde_json::Map<String, serde_json::Value>,
}

impl StoredUser {
    /// The same user with another hash (keeps description and foreign fields).
    pub fn with_hash(&self, hash: PasswordHash) -> StoredUser {
        StoredUser {
            hash,
            ..self.clone()
        }
    }

    pub fn with_description(&self, description: Option<String>) -> StoredUser {
        StoredUser {
            description,
            ..self.clone()
        }
    }

    /// Reads a `users/{name}` value as Milvus writes it.
    pub fn decode(kv: &KeyValue) -> Result<StoredUser, CatalogError> {
        decode_user(kv)
    }

    /// The JSON value stored at `users/{name}`.
    pub fn encode(&self) -> Vec<u8> {
        encode_user(&self.hash, self.description.clone(), self.extra.clone())
    }
}

#[derive(Serialize, Deserialize)]
struct UserValue {
    encrypted_password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A valid role name (Milvus's `validateName`): 1..=255 bytes, `_` or a letter first, then
/// letters, digits, `_` or `$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str) -> Result<RoleName, String> {
        let name = raw.trim();
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
        let rest_ok = name
            .chars()
            .all(|c| c == '_' || c == '$' || c.is_ascii_alphanumeric());
        match (name.is_empty(), name.len() > 255, first_ok && rest_ok) {
            (true, _, _) => Err("role name should not be empty".to_string()),
            (_, true, _) => Err(format!(
                "the length of role name {name} must be not greater than 255"
            )),
            (_, _, false) => Err(format!(
                "role name {name} must start with '_' or a letter and contain only letters, numbers, '_' or '$'"
            )),
            _ => Ok(RoleName(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Users and roles in etcd.
#[derive(Clone)]
pub struct Catalog {
    kv: Store,
    /// `{rootPath}/{metaSubPath}/root-coord/credential/`
    prefix: String,
}

impl Catalog {
    /// `meta_root` is `{etcd.rootPath}/{etcd.metaSubPath}`.
    pub fn new(kv: Store, meta_root: &str) -> Catalog {
        Catalog {
            kv,
            prefix: format!("{}/root-coord/credential/", meta_root.trim_end_matches('/')),
        }
    }

    pub fn store(&self) -> &Store {
        &self.kv
    }

    /// Every credential key starts with this; watching it sees every user and role change.
    pub fn credential_prefix(&self) -> &str {
        &self.prefix
    }

    fn users_prefix(&self) -> String {
        format!("{}users/", self.prefix)
    }

    fn user_key(&self, name: &str) -> String {
        format!("{}users/{name}", self.prefix)
    }

    fn role_key(&self, role: &str) -> String {
        format!("{}roles/{role}", self.prefix)
    }

    fn mapping_prefix(&self, user: &str) -> String {
        format!("{}user-role-mapping/{user}/", self.prefix)
    }

    fn mapping_key(&self, user: &str, role: &str) -> String {
        format!("{}user-role-mapping/{user}/{role}", self.prefix)
    }

    /// Which user a changed key concerns: `users/{name}` or `user-role-mapping/{name}/…`.
    pub fn user_of_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(name) = rest.strip_prefix("users/") {
            return Some(name);
        }
        rest.strip_prefix("user-role-mapping/")?.split('/').next()
    }

    /// The user's stored record, read at the returned revision.
    pub async fn get_user(
        &self,
        name: &Username,
    ) -> Result<Read<Option<StoredUser>>, CatalogError> {
        let read = self.kv.get(&self.user_key(name.as_str())).await?;
        let user = read.value.map(|kv| decode_user(&kv)).transpose()?;
        Ok(Read {
            value: user,
            revision: read.revision,
        })
    }

    /// Creates the user; exactly one of several racing creators wins.
    pub async fn create_user(
        &self,
        name: &Username,
        hash: &PasswordHash,
        description: Option<String>,
    ) -> Result<Revision, CatalogError> {
        let key = self.user_key(name.as_str());
        let value = encode_user(hash, description, serde_json::Map::new());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::UserExists(name.to_string())),
        }
    }

    /// Replaces the user's record if it is still at `user.mod_revision`; a concurrent change
    /// or delete is reported, never overwritten.
    pub async fn replace_user(
        &self,
        name: &Username,
        user: &StoredUser,
    ) -> Result<Revision, CatalogError> {
        let key = self.user_key(name.as_str());
        let value = encode_user(&user.hash, user.description.clone(), user.extra.clone());
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), user.mod_revision))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::UserConflict(name.to_string())),
        }
    }

    /// Deletes the user and their role mappings in one transaction; `None` if absent.
    pub async fn delete_user(&self, name: &Username) -> Result<Option<Revision>, CatalogError> {
        let key = self.user_key(name.as_str());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Ok(None);
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Delete(key))
            .then(Op::DeletePrefix(self.mapping_prefix(name.as_str())));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::UserConflict(name.to_string())),
        }
    }

    /// Every username, from the keys (values are not decoded).
    pub async fn list_users(&self) -> Result<Vec<String>, CatalogError> {
        let prefix = self.users_prefix();
        self.names_under(&prefix).await
    }

    /// The last path segment of every key under `prefix` (values are not read).
    async fn names_under(&self, prefix: &str) -> Result<Vec<String>, CatalogError> {
        let read = self.kv.list_keys(prefix).await?;
        Ok(read
            .value
            .iter()
            .filter_map(|key| key.strip_prefix(prefix).map(str::to_string))
            .collect())
    }

    /// Creates `root` with the hash `hash()` computes if root does not exist; an existing root
    /// is never touched (and no hash is computed). Returns whether this call created it; a
    /// hashing failure is returned as it is.
    pub async fn ensure_root<E: From<CatalogError>>(
        &self,
        hash: impl AsyncFnOnce() -> Result<PasswordHash, E>,
    ) -> Result<bool, E> {
        let key = self.user_key(ROOT_USER);
        let existing = self.kv.get(&key).await.map_err(CatalogError::from)?;
        if existing.value.is_some() {
            return Ok(false);
        }
        let value = encode_user(&hash().await?, None, serde_json::Map::new());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await.map_err(CatalogError::from)?;
        Ok(outcome.succeeded)
    }

    /// Creates the built-in roles if absent.
    pub async fn ensure_default_roles(&self) -> Result<(), CatalogError> {
        for role in DEFAULT_ROLES {
            let key = self.role_key(role);
            let txn = Txn::default()
                .when(Compare::Absent(key.clone()))
                .then(Op::Put(key, Vec::new()));
            self.kv.txn(txn).await?;
        }
        Ok(())
    }

    /// The roles granted to `user`.
    pub async fn user_roles(&self, user: &str) -> Result<Vec<String>, CatalogError> {
        let prefix = self.mapping_prefix(user);
        self.names_under(&prefix).await
    }

    /// Every role name.
    pub async fn list_roles(&self) -> Result<Vec<String>, CatalogError> {
        let prefix = format!("{}roles/", self.prefix);
        self.names_under(&prefix).await
    }

    pub async fn role_exists(&self, role: &RoleName) -> Result<bool, CatalogError> {
        Ok(self
            .kv
            .get(&self.role_key(role.as_str()))
            .await?
            .value
            .is_some())
    }

    /// `role`'s description (`None`: no such role). A legacy empty value, or one that is not
    /// Milvus's JSON, has none.
    pub async fn role_description(&self, role: &str) -> Result<Option<String>, CatalogError> {
        let read = self.kv.get(&self.role_key(role)).await?;
        Ok(read.value.map(|kv| description_of(&kv.value)))
    }

    /// `AlterRole`: replaces the description of an existing role, keeping any other field a
    /// newer Milvus wrote in the value.
    pub async fn alter_role(
        &self,
        role: &RoleName,
        description: &str,
    ) -> Result<Revision, CatalogError> {
        let key = self.role_key(role.as_str());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        };
        let value = match serde_json::from_slice::<serde_json::Value>(&current.value) {
            Ok(serde_json::Value::Object(mut fields)) => {
                fields.insert("description".into(), description.into());
                serde_json::to_vec(&fields).expect("a JSON object serializes")
            }
            _ => role_value(description),
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::RoleConflict(role.as_str().to_string())),
        }
    }

    /// The users holding `role`.
    pub async fn role_users(&self, role: &str) -> Result<Vec<String>, CatalogError> {
        let prefix = format!("{}user-role-mapping/", self.prefix);
        let read = self.kv.list_keys(&prefix).await?;
        let holds = |key: &String| {
            let (user, held) = key.strip_prefix(prefix.as_str())?.rsplit_once('/')?;
            (held == role).then(|| user.to_string())
        };
        Ok(read.value.iter().filter_map(holds).collect())
    }

    /// The mapping keys of `role`'s members, with their revisions. Milvus's layout puts the
    /// user first (`user-role-mapping/{user}/{role}`), so this reads every mapping.
    async fn role_mappings(&self, role: &str) -> Result<Vec<KeyValue>, CatalogError> {
        let prefix = format!("{}user-role-mapping/", self.prefix);
        let read = self.kv.list(&prefix).await?;
        let holds = |kv: &KeyValue| {
            kv.key
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.rsplit_once('/'))
                .is_some_and(|(_, held)| held == role)
        };
        Ok(read.value.into_iter().filter(holds).collect())
    }

    pub async fn create_role(&self, role: &RoleName) -> Result<Revision, CatalogError> {
        self.create_role_described(role, "").await
    }

    /// Creates `role` with `description`, stored as Milvus master does.
    pub async fn create_role_described(
        &self,
        role: &RoleName,
        description: &str,
    ) -> Result<Revision, CatalogError> {
        let key = self.role_key(role.as_str());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, role_value(description)));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::RoleExists(role.as_str().to_string())),
        }
    }

    /// Drops the role and every user's membership of it; returns the revision of the last
    /// write, which covers them all.
    ///
    /// etcd takes at most [`MAX_TXN_OPS`] operations per transaction, so a role with many
    /// members is dropped in steps: memberships are deleted in batches (each batch only if
    /// none of its keys changed), then the role key goes together with the last memberships,
    /// on condition that the role key is unchanged. A grant compares the role key too, so no
    /// grant can succeed after the role key is gone; a grant that raced the last step (read
    /// the role before it went, wrote before it went, but after the memberships were listed)
    /// is swept up afterwards: every membership older than the role's deletion is deleted.
    /// If a step fails, some members may have lost the role while it still exists — the safe
    /// direction; retrying the drop finishes it.
    pub async fn drop_role(&self, role: &RoleName) -> Result<Revision, CatalogError> {
        if DEFAULT_ROLES.contains(&role.as_str()) {
            return Err(CatalogError::DefaultRole(role.as_str().to_string()));
        }
        let key = self.role_key(role.as_str());
        for _ in 0..DROP_ROLE_ATTEMPTS {
            let Some(current) = self.kv.get(&key).await?.value else {
                return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
            };
            // Grants first: a grant written after `current` was read rewrites the role key,
            // so the final compare fails and the next attempt deletes that grant too.
            for batch in self
                .role_grant_deletions(role.as_str())
                .await?
                .chunks(MAX_TXN_OPS)
            {
                let txn = batch.iter().cloned().fold(Txn::default(), Txn::then);
                self.kv.txn(txn).await?;
            }
            let mut mappings = self.role_mappings(role.as_str()).await?;
            // The last step holds one compare and one delete for the role key itself.
            let last = mappings.len().min(MAX_TXN_OPS - 1);
            let rest = mappings.split_off(mappings.len() - last);
            for batch in mappings.chunks(MAX_TXN_OPS) {
                self.delete_unchanged(batch).await?;
            }
            let mut txn = Txn::default()
                .when(Compare::ModRevision(key.clone(), current.mod_revision))
                .then(Op::Delete(key.clone()));
            for kv in &rest {
                txn = txn
                    .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                    .then(Op::Delete(kv.key.clone()));
            }
            let outcome = self.kv.txn(txn).await?;
            if outcome.succeeded {
                return self.sweep_memberships(role, outcome.revision).await;
            }
        }
        Err(CatalogError::RoleConflict(role.as_str().to_string()))
    }

    /// Deletes every membership of `role` written before `dropped_at` (the revision that
    /// deleted the role key); later ones belong to a role of the same name created since.
    /// Returns the revision of the last deletion, or `dropped_at` if there was nothing left.
    async fn sweep_memberships(
        &self,
        role: &RoleName,
        dropped_at: Revision,
    ) -> Result<Revision, CatalogError> {
        let mut revision = dropped_at;
        for _ in 0..DROP_ROLE_ATTEMPTS {
            let stale: Vec<KeyValue> = self
                .role_mappings(role.as_str())
                .await?
                .into_iter()
                .filter(|kv| kv.mod_revision < dropped_at)
                .collect();
            if stale.is_empty() {
                return Ok(revision);
            }
            for batch in stale.chunks(MAX_TXN_OPS) {
                if let Some(deleted) = self.delete_unchanged(batch).await? {
                    revision = revision.max(deleted);
                }
            }
        }
        Err(CatalogError::RoleConflict(role.as_str().to_string()))
    }

    /// Deletes `batch` (at most [`MAX_TXN_OPS`] keys) if none of them changed since it was
    /// read; `None` if one did (the caller reads again).
    async fn delete_unchanged(&self, batch: &[KeyValue]) -> Result<Option<Revision>, CatalogError> {
        let mut txn = Txn::default();
        for kv in batch {
            txn = txn
                .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                .then(Op::Delete(kv.key.clone()));
        }
        let outcome = self.kv.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Grants `role` to `user`; both must exist, and still be as read when the grant is
    /// written (so a grant racing `drop_role` or `delete_user` fails instead of leaving an
    /// orphan membership). `None` when the user already holds the role: nothing changed.
    pub async fn add_user_to_role(
        &self,
        user: &Username,
        role: &RoleName,
    ) -> Result<Option<Revision>, CatalogError> {
        let user_key = self.user_key(user.as_str());
        let role_key = self.role_key(role.as_str());
        let mapping = self.mapping_key(user.as_str(), role.as_str());
        let Some(user_kv) = self.kv.get(&user_key).await?.value else {
            return Err(CatalogError::UserNotFound(user.to_string()));
        };
        let Some(role_kv) = self.kv.get(&role_key).await?.value else {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        };
        if self.kv.get(&mapping).await?.value.is_some() {
            return Ok(None);
        }
        let txn = Txn::default()
            .when(Compare::ModRevision(user_key, user_kv.mod_revision))
            .when(Compare::ModRevision(role_key, role_kv.mod_revision))
            .when(Compare::Absent(mapping.clone()))
            .then(Op::Put(mapping, Vec::new()));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::UserConflict(user.to_string())),
        }
    }

    /// Takes `role` from `user`; the role must exist. `None` when the user did not hold it:
    /// nothing changed, so there is nothing for the replicas to acknowledge.
    pub async fn remove_user_from_role(
        &self,
        user: &Username,
        role: &RoleName,
    ) -> Result<Option<Revision>, CatalogError> {
        if !self.role_exists(role).await? {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        }
        let mapping = self.mapping_key(user.as_str(), role.as_str());
        let Some(current) = self.kv.get(&mapping).await?.value else {
            return Ok(None);
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(mapping.clone(), current.mod_revision))
            .then(Op::Delete(mapping));
        let outcome = self.kv.txn(txn).await?;
        // A failed compare means someone else removed (or re-granted) it meanwhile: either way
        // this call changed nothing.
        Ok(outcome.succeeded.then_some(outcome.revision))
    }
}

fn encode_user(
    hash: &PasswordHash,
    description: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    let value = UserValue {
        encrypted_password: hash.as_str().to_string(),
        description,
        extra,
    };
    // Serializing strings and a JSON map into a Vec cannot fail.
    serde_json::to_vec(&value).expect("user JSON serializes")
}

fn decode_user(kv: &KeyValue) -> Result<StoredUser, CatalogError> {
    let value: UserValue =
        serde_json::from_slice(&kv.value).map_err(|source| CatalogError::BadJson {
            key: kv.key.clone(),
            source,
        })?;
    let hash =
        PasswordHash::parse(&value.encrypted_password).map_err(|source| CatalogError::BadHash {
            key: kv.key.clone(),
            source,
        })?;
    Ok(StoredUser {
        hash,
        description: value.description,
        mod_revision: kv.mod_revision,
        extra: value.extra,
    })
}

/// A role's value as Milvus master writes it: `{"description":"<d>"}`, the field present even
/// when empty (`model.MarshalRoleModel`).
fn role_value(description: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "description": description }))
        .expect("a JSON object serializes")
}

/// The description in a role's value: none for Milvus ≤ 2.6's empty value or anything else
/// that is not Milvus's JSON.
fn description_of(value: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v.get("description")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_values_are_milvus_master_json_and_legacy_reads() {
        assert_eq!(super::role_value(""), br#"{"description":""}"#);
        assert_eq!(
            super::description_of(&super::role_value("a \"b\"")),
            "a \"b\""
        );
        assert_eq!(super::description_of(b""), "");
        assert_eq!(super::description_of(b"not json"), "");
        assert_eq!(super::description_of(br#"{"description":7}"#), "");
    }

    use proptest::prelude::*;

    use super::*;

    fn kv(value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: "by-dev/meta/root-coord/credential/users/alice".into(),
            value,
            create_revision: 1,
            mod_revision: 2,
        }
    }

    /// A bcrypt hash as Milvus writes it (cost 10), for the fixture below.
    const MILVUS_BCRYPT: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    #[test]
    fn a_value_milvus_wrote_decodes_and_keeps_its_fields() {
        let written =
            format!(r#"{{"encrypted_password":"{MILVUS_BCRYPT}","time_tick":451234567890123}}"#);
        let user = StoredUser::decode(&kv(written.into_bytes())).unwrap();
        assert_eq!(user.hash.as_str(), MILVUS_BCRYPT);
        assert_eq!(user.description, None);
        let again: serde_json::Value = serde_json::from_slice(&user.encode()).unwrap();
        assert_eq!(again["time_tick"], 451234567890123u64);
        assert!(again.get("description").is_none());
    }

    #[test]
    fn unreadable_values_name_the_key() {
        let key = "by-dev/meta/root-coord/credential/users/alice";
        for (value, expected) in [
            (&b"not json"[..], "is not a user record"),
            (br#"{"description":"x"}"#, "is not a user record"),
            (br#"{"encrypted_password":"plain"}"#, "holds no valid hash"),
            (br#"{"encrypted_password":7}"#, "is not a user record"),
        ] {
            let err = StoredUser::decode(&kv(value.to_vec()))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("stored value at {key} ")) && err.contains(expected),
                "{err}"
            );
        }
    }

    /// JSON values shaped like stored users, with arbitrary contents.
    fn user_json() -> impl Strategy<Value = serde_json::Value> {
        let hash = prop_oneof![
            "\\PC{0,40}",
            Just(MILVUS_BCRYPT.to_string()),
            "\\$2[abxy]\\$[0-9]{2}\\$[./A-Za-z0-9]{0,60}",
            "\\$argon2id\\$v=19\\$m=[0-9]{1,6},t=[0-9],p=[0-9]\\$[A-Za-z0-9+/]{0,30}\\$[A-Za-z0-9+/]{0,50}",
        ];
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        let extra = proptest::collection::btree_map("[a-z_]{1,12}", leaf.clone(), 0..4);
        (
            prop::option::of(hash.prop_map(serde_json::Value::from)),
            prop::option::of(leaf),
            extra,
        )
            .prop_map(|(hash, description, extra)| {
                let mut map: serde_json::Map<_, _> = extra.into_iter().collect();
                if let Some(hash) = hash {
                    map.insert("encrypted_password".into(), hash);
                }
                if let Some(description) = description {
                    map.insert("description".into(), description);
                }
                serde_json::Value::Object(map)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StoredUser::decode(&kv(bytes));
        }

        #[test]
        fn user_shaped_values_never_panic_and_round_trip(value in user_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(user) = StoredUser::decode(&kv(bytes)) {
                // What decodes re-encodes to the same record, foreign fields included.
                let again = StoredUser::decode(&kv(user.encode())).unwrap();
                prop_assert_eq!(&again.hash, &user.hash);
                prop_assert_eq!(&again.description, &user.description);
                prop_assert_eq!(&again.extra, &user.extra);
                prop_assert_eq!(again.extra.get("encrypted_password"), None);
            }
        }
    }
}
