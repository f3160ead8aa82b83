//! `BackupRBAC` and `RestoreRBAC`: the whole authorization state as Milvus's `RBACMeta`
//! (users but root, with their stored hashes, never a plaintext; roles but admin and public;
//! their grants in every db; custom privilege groups), and back. Restore checks everything
//! before writing anything, with Milvus's texts, and — unlike Milvus — refuses a password
//! field that is not a hash credstore can verify.

use std::collections::HashSet;

use crate::catalog::{DEFAULT_DB, DEFAULT_ROLES, GrantTarget, ROOT_USER, RoleName};
use crate::meta::Revision;
use crate::password::PasswordHash;
use crate::proto::milvus::{
    GrantEntity, GrantorEntity, ObjectEntity, PrivilegeEntity, PrivilegeGroupInfo, RbacMeta,
    RoleEntity, UserEntity, UserInfo,
};
use crate::rbac::privileges::{self, ObjectType};
use crate::rbac::validate::Refusal;
use crate::service::status::ServiceError;
use crate::service::{Api, Caller};

impl Api {
    /// `BackupRBAC`.
    pub(super) async fn backup_rbac(&self, caller: &Caller) -> Result<RbacMeta, ServiceError> {
        self.require(caller, "BackupRBAC", "*").await?;
        let mut meta = RbacMeta::default();
        for name in self.catalog.list_users().await? {
            if name == ROOT_USER {
                continue;
            }
            let user = self.username(&name)?;
            // A user deleted since the listing is left out.
            let Some(stored) = self.catalog.get_user(&user).await?.value else {
                continue;
            };
            let roles = self.catalog.user_roles(&name).await?;
            meta.users.push(UserInfo {
                user: name,
                password: stored.hash.as_str().to_string(),
                roles: roles.into_iter().map(role_entity).collect(),
            });
        }
        for role in self.catalog.list_roles().await? {
            if DEFAULT_ROLES.contains(&role.as_str()) {
                continue;
            }
            let Some(description) = self.catalog.role_description(&role).await? else {
                continue;
            };
            for grant in self.catalog.role_grants(&role).await? {
                meta.grants.push(GrantEntity {
                    role: Some(role_entity(grant.role)),
                    object: Some(ObjectEntity {
                        name: grant.target.object,
                    }),
                    object_name: grant.target.name,
                    grantor: Some(GrantorEntity {
                        user: Some(UserEntity {
                            name: grant.grantor,
                        }),
                        privilege: Some(PrivilegeEntity {
                            name: privileges::api_name(&grant.privilege).to_string(),
                        }),
                    }),
                    db_name: grant.target.db,
                });
            }
            meta.roles.push(RoleEntity {
                name: role,
                description,
            });
        }
        for group in self.catalog.privilege_groups().await? {
            meta.privilege_groups.push(PrivilegeGroupInfo {
                group_name: group.name,
                privileges: group
                    .privileges
                    .into_iter()
                    .map(|name| PrivilegeEntity { name })
                    .collect(),
            });
        }
        Ok(meta)
    }

    /// `RestoreRBAC`: refuses the whole request unless every part can be restored, then writes
    /// roles, groups, users, memberships and grants, and answers once every replica applied
    /// them. Not one transaction: a write that fails midway (etcd lost, a racing writer)
    /// leaves what was written so far.
    pub(super) async fn restore_rbac(
        &self,
        caller: &Caller,
        meta: Option<RbacMeta>,
    ) -> Result<(), ServiceError> {
        self.require(caller, "RestoreRBAC", "*").await?;
        let meta = meta.unwrap_or_default();
        if meta.roles.is_empty()
            && meta.privilege_groups.is_empty()
            && meta.grants.is_empty()
            && meta.users.is_empty()
        {
            return Err(Refusal::EmptyRbacMeta.into());
        }
        let plan = self.check_restorable(meta).await?;
        let mut last: Option<Revision> = None;
        let mut wrote = |revision: Option<Revision>| {
            last = last.max(revision);
        };
        for (role, description) in &plan.roles {
            wrote(Some(
                self.catalog
                    .create_role_described(role, description)
                    .await?,
            ));
        }
        for group in &plan.groups {
            wrote(
                self.catalog
                    .create_privilege_group(&group.group_name)
                    .await?,
            );
            let members: Vec<String> = group.privileges.iter().map(|p| p.name.clone()).collect();
            wrote(
                self.catalog
                    .alter_privilege_group(&group.group_name, |stored| *stored = members)
                    .await?,
            );
        }
        for (user, hash, roles) in &plan.users {
            wrote(Some(self.catalog.create_user(user, hash, None).await?));
            for role in roles {
                wrote(self.catalog.add_user_to_role(user, role).await?);
            }
        }
        let caller_name = caller.who.name().unwrap_or(ROOT_USER).to_string();
        for (role, target, privilege, grantor) in &plan.grants {
            let grantor = match grantor.as_str() {
                "" => caller_name.as_str(),
                named => named,
            };
            let stored = privileges::metastore_name(privilege);
            wrote(
                self.catalog
                    .grant_privilege(role, target, &stored, grantor)
                    .await?,
            );
        }
        self.confirm_change(caller, last).await
    }

    /// Milvus's `CheckIfRBACRestorable`, plus a parsed hash for every user and a checked
    /// name for everything: what to write, or why not.
    async fn check_restorable(&self, meta: RbacMeta) -> Result<RestorePlan, ServiceError> {
        let mut plan = RestorePlan::default();
        let existing_roles: HashSet<String> =
            self.catalog.list_roles().await?.into_iter().collect();
        let mut roles_after = existing_roles.clone();
        for role in meta.roles {
            let name = RoleName::parse(&role.name).map_err(ServiceError::InvalidRole)?;
            if existing_roles.contains(&role.name) || !roles_after.insert(role.name.clone()) {
                return Err(Refusal::RestoreRoleExists(role.name).into());
            }
            plan.roles.push((name, role.description));
        }
        let existing_groups: HashSet<String> = self
            .catalog
            .privilege_groups()
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect();
        let mut groups_after = existing_groups.clone();
        for group in &meta.privilege_groups {
            crate::rbac::validate::new_group_name(&group.group_name)?;
            if privileges::is_defined(&group.group_name)
                || !groups_after.insert(group.group_name.clone())
            {
                return Err(Refusal::RestoreGroupExists(group.group_name.clone()).into());
            }
        }
        // Members are checked too (Milvus does not): a group naming an unknown privilege
        // would make every policy that uses it unusable.
        for group in &meta.privilege_groups {
            for member in &group.privileges {
                if !privileges::is_defined(&member.name) && !groups_after.contains(&member.name) {
                    return Err(Refusal::RestorePrivilegeUnknown(member.name.clone()).into());
                }
            }
        }
        plan.groups = meta.privilege_groups;
        for grant in meta.grants {
            let privilege = grant
                .grantor
                .as_ref()
                .and_then(|g| g.privilege.as_ref())
                .map(|p| p.name.clone())
                .unwrap_or_default();
            if privilege != "*"
                && !privileges::is_defined(&privilege)
                && !groups_after.contains(&privilege)
            {
                return Err(Refusal::RestorePrivilegeUnknown(privilege).into());
            }
            let role = grant.role.map(|r| r.name).unwrap_or_default();
            let role_name = RoleName::parse(&role).map_err(ServiceError::InvalidRole)?;
            if !roles_after.contains(&role) {
                return Err(Refusal::RestoreRoleMissing(role).into());
            }
            let object = grant
                .object
                .and_then(|o| ObjectType::parse(&o.name))
                .ok_or(Refusal::BadObject)?;
            crate::rbac::validate::name_or_star(&grant.object_name)?;
            let db = match grant.db_name.as_str() {
                "" => DEFAULT_DB.to_string(),
                db => db.to_string(),
            };
            let target = GrantTarget {
                object: object.as_str().to_string(),
                db,
                name: grant.object_name,
            };
            let grantor = grant
                .grantor
                .and_then(|g| g.user)
                .map(|u| u.name)
                .unwrap_or_default();
            plan.grants.push((role_name, target, privilege, grantor));
        }
        let existing_users: HashSet<String> =
            self.catalog.list_users().await?.into_iter().collect();
        let mut users_after = existing_users.clone();
        for user in meta.users {
            if existing_users.contains(&user.user) || !users_after.insert(user.user.clone()) {
                return Err(Refusal::RestoreUserExists(user.user).into());
            }
            let name = self.username(&user.user)?;
            let hash =
                PasswordHash::parse(&user.password).map_err(|e| Refusal::RestoreBadHash {
                    user: user.user.clone(),
                    reason: e.to_string(),
                })?;
            let mut roles = Vec::new();
            for role in user.roles {
                if !roles_after.contains(&role.name) {
                    return Err(Refusal::RestoreRoleMissing(role.name).into());
                }
                roles.push(RoleName::parse(&role.name).map_err(ServiceError::InvalidRole)?);
            }
            plan.users.push((name, hash, roles));
        }
        Ok(plan)
    }
}

/// What a restore writes, in order.
#[derive(Default)]
struct RestorePlan {
    roles: Vec<(RoleName, String)>,
    groups: Vec<PrivilegeGroupInfo>,
    users: Vec<(crate::password::Username, PasswordHash, Vec<RoleName>)>,
    /// Role, target, privilege (API spelling), grantor (empty: the caller).
    grants: Vec<(RoleName, GrantTarget, String, String)>,
}

fn role_entity(name: String) -> RoleEntity {
    RoleEntity {
        name,
        description: String::new(),
    }
}
