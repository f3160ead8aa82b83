//! The rootcoord role: users and roles in Milvus's etcd key layout, on top of `MetaKv`.
//!
//! Keys live under `{etcd.rootPath}/{etcd.metaSubPath}/root-coord/credential/`: `users/{name}`
//! holds JSON `{"encrypted_password": "<hash>"}` (plus `description`, and any field Milvus
//! wrote, kept as it was); `roles/{role}` and `user-role-mapping/{user}/{role}` are empty.
//! Every write is a transaction with a condition, so racing writers never overwrite each other.
//! Knows nothing of gRPC, caches or hashing algorithms.

mod grants;

use serde::{Deserialize, Serialize};

use crate::meta::{Compare, KeyValue, MetaError, MetaKv, Op, Read, Revision, Store, Txn};
use crate::password::{PasswordHash, Username};

pub use grants::{ChangedKey, DEFAULT_DB, GrantTarget, StoredGrant, StoredGroup, grantee_id};

/// The roles every deployment has; they cannot be dropped.
pub const DEFAULT_ROLES: [&str; 2] = ["admin", "public"];
/// The user created at first start, who can never be deleted.
pub const ROOT_USER: &str = "root";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("user already exists: {0}")]
    UserExists(String),
    #[error("user not found: {0}")]
    UserNotFound(String),
    #[error("user {0} was changed concurrently; retry")]
    Conflict(String),
    #[error("role [{0}] already exists")]
    RoleExists(String),
    #[error("role [{0}] not found")]
    RoleNotFound(String),
    #[error("the role[{0}] is a default role, which can't be dropped")]
    DefaultRole(String),
    #[error("there is no privilege group name [{0}] defined in system to operate")]
    GroupNotFound(String),
    #[error("stored value at {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
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
            false => Err(CatalogError::Conflict(name.to_string())),
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
            false => Err(CatalogError::Conflict(name.to_string())),
        }
    }

    /// Every username, from the keys (values are not decoded).
    pub async fn list_users(&self) -> Result<Vec<String>, CatalogError> {
        let prefix = self.users_prefix();
        let read = self.kv.list_keys(&prefix).await?;
        Ok(read
            .value
            .iter()
            .filter_map(|key| key.strip_prefix(prefix.as_str()).map(str::to_string))
            .collect())
    }

    /// Creates `root` with `hash()` if it does not exist; an existing root is never touched.
    /// Returns whether this call created it.
    pub async fn ensure_root(
        &self,
        hash: impl AsyncFnOnce() -> PasswordHash,
    ) -> Result<bool, CatalogError> {
        let key = self.user_key(ROOT_USER);
        if self.kv.get(&key).await?.value.is_some() {
            return Ok(false);
        }
        let hash = hash().await;
        let value = encode_user(&hash, None, serde_json::Map::new());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        Ok(self.kv.txn(txn).await?.succeeded)
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
        let read = self.kv.list(&prefix).await?;
        Ok(read
            .value
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_str()).map(str::to_string))
            .collect())
    }

    /// Every role name.
    pub async fn list_roles(&self) -> Result<Vec<String>, CatalogError> {
        let prefix = format!("{}roles/", self.prefix);
        let read = self.kv.list(&prefix).await?;
        Ok(read
            .value
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_str()).map(str::to_string))
            .collect())
    }

    pub async fn role_exists(&self, role: &RoleName) -> Result<bool, CatalogError> {
        Ok(self
            .kv
            .get(&self.role_key(role.as_str()))
            .await?
            .value
            .is_some())
    }

    /// The users holding `role`.
    pub async fn role_users(&self, role: &str) -> Result<Vec<String>, CatalogError> {
        let prefix = format!("{}user-role-mapping/", self.prefix);
        let read = self.kv.list(&prefix).await?;
        let holds = |kv: &KeyValue| {
            let (user, held) = kv.key.strip_prefix(prefix.as_str())?.rsplit_once('/')?;
            (held == role).then(|| user.to_string())
        };
        Ok(read.value.iter().filter_map(holds).collect())
    }

    pub async fn create_role(&self, role: &RoleName) -> Result<Revision, CatalogError> {
        let key = self.role_key(role.as_str());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, Vec::new()));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::RoleExists(role.as_str().to_string())),
        }
    }

    /// Drops the role and every user's membership of it.
    pub async fn drop_role(&self, role: &RoleName) -> Result<Revision, CatalogError> {
        if DEFAULT_ROLES.contains(&role.as_str()) {
            return Err(CatalogError::DefaultRole(role.as_str().to_string()));
        }
        let key = self.role_key(role.as_str());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        };
        let mut txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Delete(key));
        for op in self.role_grant_deletions(role.as_str()).await? {
            txn = txn.then(op);
        }
        for user in self.role_users(role.as_str()).await? {
            txn = txn.then(Op::Delete(format!(
                "{}{}",
                self.mapping_prefix(&user),
                role.as_str()
            )));
        }
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::Conflict(role.as_str().to_string())),
        }
    }

    /// Grants `role` to `user`; both must exist (checked in the same transaction).
    pub async fn add_user_to_role(
        &self,
        user: &Username,
        role: &RoleName,
    ) -> Result<Revision, CatalogError> {
        let user_key = self.user_key(user.as_str());
        let role_key = self.role_key(role.as_str());
        let Some(user_kv) = self.kv.get(&user_key).await?.value else {
            return Err(CatalogError::UserNotFound(user.to_string()));
        };
        let Some(role_kv) = self.kv.get(&role_key).await?.value else {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        };
        let mapping = format!("{}{}", self.mapping_prefix(user.as_str()), role.as_str());
        let txn = Txn::default()
            .when(Compare::ModRevision(user_key, user_kv.mod_revision))
            .when(Compare::ModRevision(role_key, role_kv.mod_revision))
            .then(Op::Put(mapping, Vec::new()));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::Conflict(user.to_string())),
        }
    }

    pub async fn remove_user_from_role(
        &self,
        user: &Username,
        role: &RoleName,
    ) -> Result<Revision, CatalogError> {
        let mapping = format!("{}{}", self.mapping_prefix(user.as_str()), role.as_str());
        let outcome = self
            .kv
            .txn(Txn::default().then(Op::Delete(mapping)))
            .await?;
        Ok(outcome.revision)
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
    let corrupt = |reason: String| CatalogError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let value: UserValue = serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    let hash =
        PasswordHash::parse(&value.encrypted_password).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredUser {
        hash,
        description: value.description,
        mod_revision: kv.mod_revision,
        extra: value.extra,
    })
}
