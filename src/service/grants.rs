//! Grant and privilege-group handlers: `OperatePrivilege` (v1 and v2), `SelectGrant`, and
//! creating, dropping, listing and changing custom privilege groups — Milvus's semantics and
//! texts (rules in `rbac::validate`), Milvus's keys (written by the catalog). A request that
//! changes nothing (a re-grant, revoking a missing grant) answers at once.

use crate::catalog::{DEFAULT_DB, GrantTarget, RoleName, StoredGrant};
use crate::proto::milvus::{
    GrantEntity, GrantorEntity, ObjectEntity, OperatePrivilegeGroupRequest,
    OperatePrivilegeGroupType, OperatePrivilegeRequest, OperatePrivilegeType,
    OperatePrivilegeV2Request, PrivilegeEntity, PrivilegeGroupInfo, RoleEntity, SelectGrantRequest,
    UserEntity,
};
use crate::rbac::privileges::{self, BUILTIN_GROUP_NAMES, ObjectType, Privilege};
use crate::rbac::validate::{self, Refusal};
use crate::service::status::ServiceError;
use crate::service::{Api, Caller};

/// A grant or revoke after validation: what to write.
struct Operation {
    role: RoleName,
    target: GrantTarget,
    /// API spelling.
    privilege: String,
    grant: bool,
}

/// Milvus's "related privileges": granting `Load` also grants what loading clients poll.
fn related(privilege: &str) -> &'static [&'static str] {
    match privilege {
        "Load" => &["GetLoadState", "GetLoadingProgress"],
        "Flush" => &["GetFlushState"],
        _ => &[],
    }
}

fn role_name(raw: &str) -> Result<RoleName, ServiceError> {
    RoleName::parse(raw).map_err(ServiceError::InvalidRole)
}

fn is_grant(raw: i32) -> Result<bool, ServiceError> {
    match OperatePrivilegeType::try_from(raw) {
        Ok(OperatePrivilegeType::Grant) => Ok(true),
        Ok(OperatePrivilegeType::Revoke) => Ok(false),
        Err(_) => Err(ServiceError::InvalidRole(format!(
            "invalid operate privilege type, current type: {raw}"
        ))),
    }
}

impl Api {
    /// `OperatePrivilege` (v1: the object type is given, groups are refused).
    pub(super) async fn operate_privilege(
        &self,
        caller: &Caller,
        body: OperatePrivilegeRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "OperatePrivilege", "*").await?;
        let grant = is_grant(body.r#type)?;
        let entity = body.entity.ok_or(Refusal::NoGrantEntity)?;
        let role = role_name(&entity.role.map(|r| r.name).unwrap_or_default())?;
        let object = entity
            .object
            .and_then(|o| ObjectType::parse(&o.name))
            .ok_or(Refusal::BadObject)?;
        let privilege = entity
            .grantor
            .and_then(|g| g.privilege)
            .map(|p| p.name)
            .ok_or(Refusal::NoPrivilege)?;
        validate::name_or_star(&privilege)?;
        validate::name_or_star(&entity.object_name)?;
        let custom = self.is_custom_group(&privilege).await?;
        validate::v1_privilege(&privilege, object, custom)?;
        // Milvus stores a Global privilege on `*` whatever name was sent.
        let name = match object {
            ObjectType::Global => "*".to_string(),
            _ => entity.object_name,
        };
        let db = match entity.db_name.as_str() {
            "" => DEFAULT_DB.to_string(),
            db => db.to_string(),
        };
        let target = GrantTarget {
            object: object.as_str().to_string(),
            db,
            name,
        };
        let mut names = vec![privilege.clone()];
        names.extend(related(&privilege).iter().map(|p| p.to_string()));
        for privilege in names {
            let operation = Operation {
                role: role.clone(),
                target: target.clone(),
                privilege,
                grant,
            };
            self.apply(caller, operation).await?;
        }
        Ok(())
    }

    /// `OperatePrivilegeV2`: the object type follows from the privilege; groups allowed.
    pub(super) async fn operate_privilege_v2(
        &self,
        caller: &Caller,
        body: OperatePrivilegeV2Request,
    ) -> Result<(), ServiceError> {
        self.require(caller, "OperatePrivilegeV2", "*").await?;
        let grant = is_grant(body.r#type)?;
        let role = role_name(&body.role.map(|r| r.name).unwrap_or_default())?;
        let privilege = body
            .grantor
            .and_then(|g| g.privilege)
            .map(|p| p.name)
            .ok_or(Refusal::NoPrivilege)?;
        validate::name_or_star(&privilege)?;
        let db = match body.db_name.as_str() {
            "" => caller.db.clone(),
            db => db.to_string(),
        };
        let collection = body.collection_name;
        validate::name_or_star(&db)?;
        validate::name_or_star(&collection)?;
        let custom = self.custom_group(&privilege).await?;
        let object = validate::v2_privilege(&privilege, custom.is_some())?;
        let first = match &custom {
            Some(members) => members.first().and_then(|m| Privilege::from_api(m)),
            None => self
                .policies
                .builtin_groups()
                .members(&privilege)
                .and_then(|m| m.first().copied()),
        };
        validate::group_scope(&privilege, first, &db, &collection)?;
        let operation = Operation {
            role,
            target: GrantTarget {
                object: object.as_str().to_string(),
                db,
                name: collection,
            },
            privilege,
            grant,
        };
        self.apply(caller, operation).await
    }

    async fn apply(&self, caller: &Caller, op: Operation) -> Result<(), ServiceError> {
        let stored = privileges::metastore_name(&op.privilege);
        let revision = match op.grant {
            true => {
                let grantor = caller.who.name().unwrap_or(crate::catalog::ROOT_USER);
                self.catalog
                    .grant_privilege(&op.role, &op.target, &stored, grantor)
                    .await
            }
            false => {
                self.catalog
                    .revoke_privilege(&op.role, &op.target, &stored)
                    .await
            }
        }
        .map_err(|e| match e {
            crate::catalog::CatalogError::RoleNotFound(_) => ServiceError::NoSuchRole,
            other => other.into(),
        })?;
        tracing::info!(
            role = op.role.as_str(),
            privilege = %stored,
            object = %op.target.object,
            db = %op.target.db,
            name = %op.target.name,
            grant = op.grant,
            changed = revision.is_some(),
            "privilege operation"
        );
        self.confirm_change(caller, revision).await
    }

    /// `SelectGrant`: a role's grants, in one db (`*`: all) and optionally on one object.
    pub(super) async fn select_grants(
        &self,
        caller: &Caller,
        body: SelectGrantRequest,
    ) -> Result<Vec<GrantEntity>, ServiceError> {
        let entity = body.entity.ok_or(Refusal::NoGrantEntity)?;
        let role = entity.role.ok_or(Refusal::NoGrantRole)?;
        let role = role_name(&role.name)?;
        let holds = match caller.who.name() {
            Some(_) => self
                .policies
                .roles_of(&caller.who)
                .await?
                .contains(&role.as_str().to_string()),
            None => true,
        };
        if !holds {
            self.require(caller, "SelectGrant", "*").await?;
        }
        if !self.catalog.role_exists(&role).await? {
            return Err(ServiceError::NoSuchRole);
        }
        let db = match entity.db_name.as_str() {
            "" => DEFAULT_DB,
            db => db,
        };
        let object = match &entity.object {
            Some(o) if !o.name.is_empty() => {
                Some(ObjectType::parse(&o.name).ok_or(Refusal::BadObject)?)
            }
            _ => None,
        };
        let grants = self.catalog.role_grants(role.as_str()).await?;
        let wanted = |g: &StoredGrant| {
            let db_ok = g.target.db == db || g.target.db == "*" || db == "*";
            let object_ok = match object {
                Some(o) if !entity.object_name.is_empty() => {
                    g.target.object == o.as_str() && g.target.name == entity.object_name
                }
                Some(o) => g.target.object == o.as_str(),
                None => true,
            };
            db_ok && object_ok
        };
        Ok(grants.iter().filter(|g| wanted(g)).map(to_entity).collect())
    }

    /// `CreatePrivilegeGroup`.
    pub(super) async fn add_group(
        &self,
        caller: &Caller,
        name: String,
    ) -> Result<(), ServiceError> {
        self.require(caller, "CreatePrivilegeGroup", "*").await?;
        validate::new_group_name(&name)?;
        match self.catalog.create_privilege_group(&name).await? {
            Some(revision) => self.confirm(caller, revision).await,
            None => Err(Refusal::GroupExists(name).into()),
        }
    }

    /// `DropPrivilegeGroup`: a group some role's grant uses cannot go.
    pub(super) async fn remove_group(
        &self,
        caller: &Caller,
        name: String,
    ) -> Result<(), ServiceError> {
        self.require(caller, "DropPrivilegeGroup", "*").await?;
        if privileges::is_defined(&name) {
            return Err(Refusal::GroupIsBuiltin(name).into());
        }
        let stored = privileges::metastore_name(&name);
        for role in self.catalog.list_roles().await? {
            let grants = self.catalog.role_grants(&role).await?;
            if grants.iter().any(|g| g.privilege == stored) {
                return Err(Refusal::GroupInUse { group: name, role }.into());
            }
        }
        let revision = self.catalog.drop_privilege_group(&name).await?;
        self.confirm_change(caller, revision).await
    }

    /// `ListPrivilegeGroups`: the custom groups, then the built-in ones.
    pub(super) async fn list_groups(
        &self,
        caller: &Caller,
    ) -> Result<Vec<PrivilegeGroupInfo>, ServiceError> {
        self.require(caller, "ListPrivilegeGroups", "*").await?;
        let entities = |names: Vec<String>| {
            names
                .into_iter()
                .map(|name| PrivilegeEntity { name })
                .collect()
        };
        let mut groups: Vec<PrivilegeGroupInfo> = self
            .catalog
            .privilege_groups()
            .await?
            .into_iter()
            .map(|g| PrivilegeGroupInfo {
                group_name: g.name,
                privileges: entities(g.privileges),
            })
            .collect();
        for name in BUILTIN_GROUP_NAMES {
            let members = self
                .policies
                .builtin_groups()
                .members(name)
                .unwrap_or_default();
            groups.push(PrivilegeGroupInfo {
                group_name: name.to_string(),
                privileges: entities(members.iter().map(|p| p.api_name().to_string()).collect()),
            });
        }
        Ok(groups)
    }

    /// `OperatePrivilegeGroup`: add or remove privileges (built-in ones or other custom groups).
    pub(super) async fn change_group(
        &self,
        caller: &Caller,
        body: OperatePrivilegeGroupRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "OperatePrivilegeGroup", "*").await?;
        let add = match OperatePrivilegeGroupType::try_from(body.r#type) {
            Ok(OperatePrivilegeGroupType::AddPrivilegesToGroup) => true,
            Ok(OperatePrivilegeGroupType::RemovePrivilegesFromGroup) => false,
            Err(_) => return Err(Refusal::NoPrivileges.into()),
        };
        // One read of the custom groups serves the target and every member name.
        let groups = self.catalog.privilege_groups().await?;
        let Some(current) = groups.iter().find(|g| g.name == body.group_name) else {
            return Err(ServiceError::GroupNotFound(body.group_name));
        };
        let current = &current.privileges;
        let names: Vec<String> = body.privileges.into_iter().map(|p| p.name).collect();
        if names.is_empty() {
            return Err(Refusal::NoPrivileges.into());
        }
        for name in &names {
            let known =
                Privilege::from_api(name).is_some() || groups.iter().any(|g| &g.name == name);
            if !known {
                return Err(Refusal::UnknownPrivilege(name.clone()).into());
            }
        }
        if add {
            let levels: Vec<Privilege> = current
                .iter()
                .chain(&names)
                .filter_map(|n| Privilege::from_api(n))
                .collect();
            validate::same_level(&levels)?;
        }
        let revision = self
            .catalog
            .alter_privilege_group(&body.group_name, |members| {
                for name in &names {
                    let held = members.iter().position(|m| m == name);
                    match (add, held) {
                        (true, None) => members.push(name.clone()),
                        (false, Some(at)) => {
                            members.remove(at);
                        }
                        _ => {}
                    }
                }
            })
            .await?;
        self.confirm_change(caller, revision).await
    }

    /// The members of custom group `name`, if it is one.
    async fn custom_group(&self, name: &str) -> Result<Option<Vec<String>>, ServiceError> {
        let groups = self.catalog.privilege_groups().await?;
        Ok(groups
            .into_iter()
            .find(|g| g.name == name)
            .map(|g| g.privileges))
    }

    async fn is_custom_group(&self, name: &str) -> Result<bool, ServiceError> {
        Ok(self.custom_group(name).await?.is_some())
    }
}

/// A stored grant as pymilvus reads it (privilege in API spelling).
fn to_entity(grant: &StoredGrant) -> GrantEntity {
    GrantEntity {
        role: Some(RoleEntity {
            name: grant.role.clone(),
            description: String::new(),
        }),
        object: Some(ObjectEntity {
            name: grant.target.object.clone(),
        }),
        object_name: grant.target.name.clone(),
        grantor: Some(GrantorEntity {
            user: Some(UserEntity {
                name: grant.grantor.clone(),
            }),
            privilege: Some(PrivilegeEntity {
                name: privileges::api_name(&grant.privilege).to_string(),
            }),
        }),
        db_name: grant.target.db.clone(),
    }
}
