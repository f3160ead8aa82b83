//! The rootcoord role: users and roles in Milvus's etcd key layout, on top of `MetaKv`.
//! This file holds the `Catalog` handle, its error and the shared constants; the records
//! live beside it: `users.rs`, `roles.rs` (and mappings), `grants.rs` (grants, privilege
//! groups), `identity.rs`, `lockout.rs`, `lifecycle.rs`, `batch.rs`.
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
mod roles;
mod users;

use crate::meta::{MetaError, MetaKv, Store};
use crate::password::HashError;

pub use batch::{BatchOutcome, Existing, Grantee, IMPORTED_FIELD, Kind, Mode};
pub use grants::{ChangedKey, DEFAULT_DB, GrantTarget, StoredGrant, StoredGroup, grantee_id};
pub use identity::{IdentityChange, Revocations, StoredKey};
pub use lockout::{
    LockoutRecord, LockoutSubject, LockoutWrite, MAX_LOCKOUT_WRITES, decode_lockout, encode_lockout,
};
pub use roles::RoleName;
pub use users::StoredUser;

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

    /// The last path segment of every key under `prefix` (values are not read).
    async fn names_under(&self, prefix: &str) -> Result<Vec<String>, CatalogError> {
        let read = self.kv.list_keys(prefix).await?;
        Ok(read
            .value
            .iter()
            .filter_map(|key| key.strip_prefix(prefix).map(str::to_string))
            .collect())
    }
}
