//! Roles and user-role mappings in Milvus's layout: `root-coord/credential/roles/{role}` holds
//! JSON `{"description": "<d>"}` as Milvus master writes it (an empty value reads as no
//! description); `user-role-mapping/{user}/{role}` is empty. Dropping a role sweeps its
//! memberships conditionally; grants live in `grants.rs`.

use crate::catalog::*;
use crate::meta::{Compare, KeyValue, MetaKv, Op, Revision, Txn};
use crate::password::Username;

/// How often `drop_role` starts over when grants keep racing it before it reports a conflict.
const DROP_ROLE_ATTEMPTS: usize = 8;

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

impl Catalog {
    pub(super) fn role_key(&self, role: &str) -> String {
        format!("{}roles/{role}", self.prefix)
    }

    pub(super) fn mapping_prefix(&self, user: &str) -> String {
        format!("{}user-role-mapping/{user}/", self.prefix)
    }

    pub(super) fn mapping_key(&self, user: &str, role: &str) -> String {
        format!("{}user-role-mapping/{user}/{role}", self.prefix)
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
    pub(super) async fn role_mappings(&self, role: &str) -> Result<Vec<KeyValue>, CatalogError> {
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
    pub(super) async fn sweep_memberships(
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
    pub(super) async fn delete_unchanged(
        &self,
        batch: &[KeyValue],
    ) -> Result<Option<Revision>, CatalogError> {
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

/// A role's value as Milvus master writes it: `{"description":"<d>"}`, the field present even
/// when empty (`model.MarshalRoleModel`).
pub(super) fn role_value(description: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "description": description }))
        .expect("a JSON object serializes")
}

/// The description in a role's value: none for Milvus ≤ 2.6's empty value or anything else
/// that is not Milvus's JSON.
pub(super) fn description_of(value: &[u8]) -> String {
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
}
