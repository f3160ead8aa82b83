//! Grants and privilege groups in Milvus's etcd layout (relative to the meta root):
//!
//! ```text
//! root-coord/credential/grantee-privileges/{role}/{ObjectType}/{db}.{name} = {grantee id}
//! root-coord/credential/grantee-privileges/{role}/{ObjectType}/{name}      (legacy: db default)
//! root-coord/credential/grantee-id/{grantee id}/{PrivilegeX | PrivilegeGroupX | *} = {grantor}
//! root-coord/privilege-group/{group} = protobuf PrivilegeGroupInfo{1: name, 2: [{1: privilege}]}
//! ```
//!
//! The grantee id of a new grantee key is Milvus's: hex md5 of the relative key, characters
//! 8..24. Every write is a transaction conditioned on what it read (the role still exists, the
//! grantee key and privilege key are as read), so a grant racing `DropRole` or another grant
//! never leaves an orphan or overwrites. Writes that change nothing return `None`.
//!
//! Storage only: privilege names arrive already validated and in metastore spelling; the
//! `rbac` module decides what they mean.

use md5::{Digest, Md5};
use prost::Message;

use crate::catalog::{Catalog, CatalogError, RoleName};
use crate::meta::{Compare, MetaKv, Op, Revision, Txn};

/// Where a grant applies: object type (`Collection`, `Global`, `User`), db and object name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantTarget {
    pub object: String,
    pub db: String,
    pub name: String,
}

/// One stored grant of a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoredGrant {
    pub role: String,
    pub target: GrantTarget,
    /// Metastore spelling: `PrivilegeQuery`, `PrivilegeGroupClusterAdmin`, `*`.
    pub privilege: String,
    pub grantor: String,
}

/// A custom privilege group as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGroup {
    pub name: String,
    /// API spelling (`Query`), in stored order.
    pub privileges: Vec<String>,
}

/// `milvus.PrivilegeGroupInfo`, the stored value of a privilege group.
#[derive(Clone, PartialEq, Message)]
pub(super) struct GroupValue {
    #[prost(string, tag = "1")]
    group_name: String,
    #[prost(message, repeated, tag = "2")]
    pub(super) privileges: Vec<PrivilegeValue>,
}

/// `milvus.PrivilegeEntity`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PrivilegeValue {
    #[prost(string, tag = "1")]
    pub(super) name: String,
}

/// The db a grant with an empty db name is stored under, as in Milvus.
pub const DEFAULT_DB: &str = "default";

/// Milvus's grantee id: hex md5 of the relative grantee key, characters 8..24.
pub fn grantee_id(relative_key: &str) -> String {
    let digest = Md5::digest(relative_key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[8..24].to_string()
}

/// What a changed key under the watched prefixes is, in Milvus's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangedKey<'k> {
    User(&'k str),
    Mapping {
        user: &'k str,
        role: &'k str,
    },
    Role(&'k str),
    Grantee {
        role: &'k str,
    },
    GranteeId,
    PrivilegeGroup,
    /// The alias epoch (`lifecycle.rs`): some alias may point elsewhere now.
    AliasEpoch,
}

impl Catalog {
    /// Classifies a key seen by the watch; `None` for keys credstore does not interpret.
    pub fn classify_key<'k>(&self, key: &'k str) -> Option<ChangedKey<'k>> {
        if let Some(rest) = key.strip_prefix(self.credential_prefix()) {
            let (kind, rest) = rest.split_once('/')?;
            return match kind {
                "users" => Some(ChangedKey::User(rest)),
                "roles" => Some(ChangedKey::Role(rest)),
                "user-role-mapping" => {
                    let (user, role) = rest.split_once('/')?;
                    Some(ChangedKey::Mapping { user, role })
                }
                "grantee-privileges" => Some(ChangedKey::Grantee {
                    role: rest.split('/').next()?,
                }),
                "grantee-id" => Some(ChangedKey::GranteeId),
                _ => None,
            };
        }
        if key == self.alias_epoch_key() {
            return Some(ChangedKey::AliasEpoch);
        }
        key.starts_with(&self.group_prefix())
            .then_some(ChangedKey::PrivilegeGroup)
    }

    /// `{meta}/` — the meta root every relative Milvus key hangs off.
    pub(super) fn meta_root(&self) -> &str {
        self.credential_prefix()
            .strip_suffix("root-coord/credential/")
            .expect("the credential prefix ends with root-coord/credential/")
    }

    pub(super) fn relative_grantee_key(role: &str, target: &GrantTarget) -> String {
        let db = match target.db.as_str() {
            "" => DEFAULT_DB,
            db => db,
        };
        format!(
            "root-coord/credential/grantee-privileges/{role}/{}/{db}.{}",
            target.object, target.name
        )
    }

    fn grantee_prefix(&self, role: &str) -> String {
        format!("{}grantee-privileges/{role}/", self.credential_prefix())
    }

    pub(super) fn grantee_id_prefix(&self, id: &str) -> String {
        format!("{}grantee-id/{id}/", self.credential_prefix())
    }

    pub(super) fn group_prefix(&self) -> String {
        format!("{}root-coord/privilege-group/", self.meta_root())
    }

    /// What the coherence watch follows: `{meta}/root-coord/`, which holds every credential
    /// key and the privilege groups (other keys there are seen and ignored).
    pub fn watch_prefix(&self) -> String {
        format!("{}root-coord/", self.meta_root())
    }

    /// Milvus's default grants of `public` (`proxy.enablePublicPrivilege`), written once:
    /// DescribeCollection and ListAliases on Global `*`, IndexDetail on Collection `*`, db `*`,
    /// grantor root. Existing grants are left as they are; safe when replicas start together.
    pub async fn ensure_public_grants(&self) -> Result<(), CatalogError> {
        let public = RoleName::parse(crate::catalog::PUBLIC_ROLE).expect("a valid role name");
        let grants = [
            ("Global", "PrivilegeDescribeCollection"),
            ("Global", "PrivilegeListAliases"),
            ("Collection", "PrivilegeIndexDetail"),
        ];
        for (object, privilege) in grants {
            let target = GrantTarget {
                object: object.to_string(),
                db: "*".to_string(),
                name: "*".to_string(),
            };
            // Replicas starting together on a fresh etcd all write these grants, and each
            // grant rewrites the role key: a conflict means another replica wrote meanwhile,
            // so read again (the next attempt finds the grant, or writes it).
            let mut attempts = 0;
            loop {
                match self
                    .grant_privilege(&public, &target, privilege, crate::catalog::ROOT_USER)
                    .await
                {
                    Err(CatalogError::RoleConflict(_)) if attempts < 20 => attempts += 1,
                    outcome => {
                        outcome?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Grants `privilege` on `target` to `role` (which must exist, checked in the same
    /// transaction). `None`: it was granted already.
    pub async fn grant_privilege(
        &self,
        role: &RoleName,
        target: &GrantTarget,
        privilege: &str,
        grantor: &str,
    ) -> Result<Option<Revision>, CatalogError> {
        let role_key = self.role_key(role.as_str());
        let Some(role_kv) = self.kv.get(&role_key).await?.value else {
            return Err(CatalogError::RoleNotFound(role.as_str().to_string()));
        };
        let relative = Self::relative_grantee_key(role.as_str(), target);
        let grantee_key = format!("{}{relative}", self.meta_root());
        // Rewriting the role's (unchanged) value moves its mod_revision: a `DropRole` that read
        // the role before this grant fails its compare instead of leaving the grant orphaned.
        let mut txn = Txn::default()
            .when(Compare::ModRevision(role_key.clone(), role_kv.mod_revision))
            .then(Op::Put(role_key, role_kv.value));
        let id = match self.kv.get(&grantee_key).await?.value {
            Some(kv) => {
                txn = txn.when(Compare::ModRevision(grantee_key, kv.mod_revision));
                String::from_utf8_lossy(&kv.value).into_owned()
            }
            None => {
                let id = grantee_id(&relative);
                txn = txn
                    .when(Compare::Absent(grantee_key.clone()))
                    .then(Op::Put(grantee_key, id.clone().into_bytes()));
                id
            }
        };
        let privilege_key = format!("{}{privilege}", self.grantee_id_prefix(&id));
        if self.kv.get(&privilege_key).await?.value.is_some() {
            return Ok(None);
        }
        let txn = txn
            .when(Compare::Absent(privilege_key.clone()))
            .then(Op::Put(privilege_key, grantor.as_bytes().to_vec()));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::RoleConflict(role.as_str().to_string())),
        }
    }

    /// Revokes `privilege` on `target` from `role`. `None`: it was not granted. The grantee
    /// key goes too once its last privilege is revoked.
    pub async fn revoke_privilege(
        &self,
        role: &RoleName,
        target: &GrantTarget,
        privilege: &str,
    ) -> Result<Option<Revision>, CatalogError> {
        let relative = Self::relative_grantee_key(role.as_str(), target);
        let grantee_key = format!("{}{relative}", self.meta_root());
        let Some(grantee) = self.kv.get(&grantee_key).await?.value else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&grantee.value).into_owned();
        let id_prefix = self.grantee_id_prefix(&id);
        let privileges = self.kv.list(&id_prefix).await?.value;
        let privilege_key = format!("{id_prefix}{privilege}");
        let Some(current) = privileges.iter().find(|kv| kv.key == privilege_key) else {
            return Ok(None);
        };
        let mut txn = Txn::default()
            .when(Compare::ModRevision(
                privilege_key.clone(),
                current.mod_revision,
            ))
            .then(Op::Delete(privilege_key));
        if privileges.len() == 1 {
            txn = txn
                .when(Compare::ModRevision(
                    grantee_key.clone(),
                    grantee.mod_revision,
                ))
                .then(Op::Delete(grantee_key));
        }
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::RoleConflict(role.as_str().to_string())),
        }
    }

    /// Every grant of `role`, in every db (legacy keys without a db read as `default`).
    pub async fn role_grants(&self, role: &str) -> Result<Vec<StoredGrant>, CatalogError> {
        let prefix = self.grantee_prefix(role);
        let grantees = self.kv.list(&prefix).await?.value;
        let mut grants = Vec::new();
        for grantee in grantees {
            let Some(rest) = grantee.key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let target = parse_target(rest).ok_or_else(|| CatalogError::BadValue {
                key: grantee.key.clone(),
                reason: "not {ObjectType}/{db}.{name}".into(),
            })?;
            let id = String::from_utf8_lossy(&grantee.value).into_owned();
            let id_prefix = self.grantee_id_prefix(&id);
            for kv in self.kv.list(&id_prefix).await?.value {
                let Some(privilege) = kv.key.strip_prefix(id_prefix.as_str()) else {
                    continue;
                };
                grants.push(StoredGrant {
                    role: role.to_string(),
                    target: target.clone(),
                    privilege: privilege.to_string(),
                    grantor: String::from_utf8_lossy(&kv.value).into_owned(),
                });
            }
        }
        Ok(grants)
    }

    /// Deletes every grant of `role` (for a forced `DropRole`), one grantee key (and the
    /// grantee-id prefix it points to) per transaction.
    pub async fn delete_role_grants(&self, role: &str) -> Result<Option<Revision>, CatalogError> {
        let mut last = None;
        for pair in self.role_grant_deletions(role).await?.chunks(2) {
            let txn = pair.iter().cloned().fold(Txn::default(), Txn::then);
            last = Some(self.kv.txn(txn).await?.revision);
        }
        Ok(last)
    }

    /// The deletes that remove every grant of `role`: per grantee key, the key and then the
    /// grantee-id prefix it points to (so callers can batch under etcd's ops-per-txn limit).
    pub(crate) async fn role_grant_deletions(&self, role: &str) -> Result<Vec<Op>, CatalogError> {
        let prefix = self.grantee_prefix(role);
        let mut ops = Vec::new();
        for grantee in self.kv.list(&prefix).await?.value {
            let id = String::from_utf8_lossy(&grantee.value).into_owned();
            ops.push(Op::Delete(grantee.key));
            ops.push(Op::DeletePrefix(self.grantee_id_prefix(&id)));
        }
        Ok(ops)
    }

    /// Every custom privilege group, in key order.
    pub async fn privilege_groups(&self) -> Result<Vec<StoredGroup>, CatalogError> {
        let prefix = self.group_prefix();
        let mut groups = Vec::new();
        for kv in self.kv.list(&prefix).await?.value {
            let value =
                GroupValue::decode(kv.value.as_slice()).map_err(|e| CatalogError::BadValue {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })?;
            let name = kv.key.strip_prefix(prefix.as_str()).unwrap_or_default();
            groups.push(StoredGroup {
                name: name.to_string(),
                privileges: value.privileges.into_iter().map(|p| p.name).collect(),
            });
        }
        Ok(groups)
    }

    /// Creates an empty custom group; `None` when it exists already.
    pub async fn create_privilege_group(
        &self,
        name: &str,
    ) -> Result<Option<Revision>, CatalogError> {
        let key = format!("{}{name}", self.group_prefix());
        let value = encode_group(name, &[]);
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        Ok(outcome.succeeded.then_some(outcome.revision))
    }

    /// Drops a custom group; `None` when it did not exist.
    pub async fn drop_privilege_group(&self, name: &str) -> Result<Option<Revision>, CatalogError> {
        let key = format!("{}{name}", self.group_prefix());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Ok(None);
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Delete(key));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::GroupConflict(name.to_string())),
        }
    }

    /// Rewrites a custom group's members with `change` applied (compare-and-swap on the
    /// value read). A missing group is `GroupNotFound`; `None`: the members did not change.
    pub async fn alter_privilege_group(
        &self,
        name: &str,
        change: impl FnOnce(&mut Vec<String>),
    ) -> Result<Option<Revision>, CatalogError> {
        let key = format!("{}{name}", self.group_prefix());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Err(CatalogError::GroupNotFound(name.to_string()));
        };
        let stored =
            GroupValue::decode(current.value.as_slice()).map_err(|e| CatalogError::BadValue {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        let before: Vec<String> = stored.privileges.into_iter().map(|p| p.name).collect();
        let mut after = before.clone();
        change(&mut after);
        if after == before {
            return Ok(None);
        }
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Put(key, encode_group(name, &after)));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::GroupConflict(name.to_string())),
        }
    }
}

pub(super) fn encode_group(name: &str, privileges: &[String]) -> Vec<u8> {
    GroupValue {
        group_name: name.to_string(),
        privileges: privileges
            .iter()
            .map(|p| PrivilegeValue { name: p.clone() })
            .collect(),
    }
    .encode_to_vec()
}

/// `{ObjectType}/{db}.{name}` or legacy `{ObjectType}/{name}` (db `default`).
pub(super) fn parse_target(rest: &str) -> Option<GrantTarget> {
    let (object, object_name) = rest.split_once('/')?;
    let (db, name) = object_name
        .split_once('.')
        .unwrap_or((DEFAULT_DB, object_name));
    Some(GrantTarget {
        object: object.to_string(),
        db: db.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantee_ids_are_milvus_md5_slices() {
        let id = grantee_id("root-coord/credential/grantee-privileges/r1/Global/default.*");
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        // md5("") = d41d8cd98f00b204e9800998ecf8427e → characters 8..24.
        assert_eq!(grantee_id(""), "8f00b204e9800998");
    }

    #[test]
    fn targets_parse_with_and_without_db() {
        let t = parse_target("Collection/db1.c1").unwrap();
        assert_eq!(
            (t.object.as_str(), t.db.as_str(), t.name.as_str()),
            ("Collection", "db1", "c1")
        );
        let legacy = parse_target("Global/*").unwrap();
        assert_eq!((legacy.db.as_str(), legacy.name.as_str()), ("default", "*"));
        assert!(parse_target("nothing").is_none());
    }

    #[test]
    fn group_values_are_milvus_protobuf() {
        let bytes = encode_group("g", &["Query".into(), "Search".into()]);
        // field 1 "g", then two field-2 messages each with field 1.
        assert_eq!(&bytes[..3], &[0x0a, 0x01, b'g']);
        let back = GroupValue::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.privileges.len(), 2);
    }
}
