//! Role handlers: create, alter (the description), drop and describe roles, and grant or take
//! a role from a user.
//! A request that changed nothing (granting a role the user holds, taking one they do not
//! hold) answers at once: there is no write for the replicas to acknowledge.

use crate::catalog::{CatalogError, DEFAULT_ROLES, RoleName};
use crate::proto::milvus::{
    AlterRoleRequest, CreateRoleRequest, DropRoleRequest, OperateUserRoleRequest,
    OperateUserRoleType, RoleEntity, RoleResult, SelectRoleRequest, UserEntity,
};
use crate::rbac::validate::Refusal;
use crate::service::status::ServiceError;
use crate::service::{Api, Caller};

/// Milvus's rootcoord words for a missing user or role in role operations.
fn milvus_not_found(err: CatalogError) -> ServiceError {
    match err {
        CatalogError::RoleNotFound(_) => ServiceError::NoSuchRole,
        CatalogError::UserNotFound(_) => ServiceError::NoSuchUser,
        other => other.into(),
    }
}

fn role_name(raw: &str) -> Result<RoleName, ServiceError> {
    RoleName::parse(raw).map_err(ServiceError::InvalidRole)
}

impl Api {
    pub(super) async fn add_role(
        &self,
        caller: &Caller,
        body: CreateRoleRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "CreateRole", "*").await?;
        let entity = body.entity.unwrap_or_default();
        let role = role_name(&entity.name)?;
        // Milvus counts `admin` and `public` too (`proxy.maxRoleNum`).
        if self.catalog.list_roles().await?.len() >= self.max_roles {
            return Err(Refusal::TooManyRoles(self.max_roles).into());
        }
        let revision = self
            .catalog
            .create_role_described(&role, &entity.description)
            .await?;
        self.confirm(caller, revision).await
    }

    /// `AlterRole` (pymilvus 3.0 `alter_role`): sets an existing role's description.
    pub(super) async fn change_role(
        &self,
        caller: &Caller,
        body: AlterRoleRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "AlterRole", "*").await?;
        let role = role_name(&body.role_name)?;
        let revision = self.catalog.alter_role(&role, &body.description).await?;
        self.confirm(caller, revision).await
    }

    pub(super) async fn remove_role(
        &self,
        caller: &Caller,
        body: DropRoleRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "DropRole", "*").await?;
        let role = role_name(&body.role_name)?;
        // A role with grants goes only with `force_drop` (its grants go with it).
        let builtin = DEFAULT_ROLES.contains(&role.as_str());
        if !builtin
            && !body.force_drop
            && !self.catalog.role_grants(role.as_str()).await?.is_empty()
        {
            return Err(Refusal::RoleHasGrants.into());
        }
        let revision = self
            .catalog
            .drop_role(&role)
            .await
            .map_err(milvus_not_found)?;
        self.confirm(caller, revision).await
    }

    /// Grants a role to a user or takes it away (`OperateUserRole`).
    pub(super) async fn change_membership(
        &self,
        caller: &Caller,
        body: OperateUserRoleRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "OperateUserRole", "*").await?;
        let user = self.username(&body.username)?;
        let role = role_name(&body.role_name)?;
        let revision = match OperateUserRoleType::try_from(body.r#type) {
            Ok(OperateUserRoleType::AddUserToRole) => self
                .catalog
                .add_user_to_role(&user, &role)
                .await
                .map_err(milvus_not_found)?,
            Ok(OperateUserRoleType::RemoveUserFromRole) => self
                .catalog
                .remove_user_from_role(&user, &role)
                .await
                .map_err(milvus_not_found)?,
            Err(_) => {
                return Err(ServiceError::InvalidRole(format!(
                    "unknown operate type {}",
                    body.r#type
                )));
            }
        };
        self.confirm_change(caller, revision).await
    }

    /// One role (none if it does not exist) or all, with their members if asked.
    pub(super) async fn describe_roles(
        &self,
        caller: &Caller,
        body: SelectRoleRequest,
    ) -> Result<Vec<RoleResult>, ServiceError> {
        self.require(caller, "SelectRole", "*").await?;
        let roles = match &body.role {
            Some(role) => {
                let role = role_name(&role.name)?;
                match self.catalog.role_exists(&role).await? {
                    true => vec![role.as_str().to_string()],
                    false => Vec::new(),
                }
            }
            None => self.catalog.list_roles().await?,
        };
        let mut results = Vec::new();
        for role in roles {
            let users = match body.include_user_info {
                true => self.catalog.role_users(&role).await?,
                false => Vec::new(),
            };
            // A role dropped since it was listed is left out.
            let Some(description) = self.catalog.role_description(&role).await? else {
                continue;
            };
            results.push(RoleResult {
                role: Some(RoleEntity {
                    name: role,
                    description,
                }),
                users: users.into_iter().map(|name| UserEntity { name }).collect(),
            });
        }
        Ok(results)
    }
}
