//! User handlers: create, change password or description, delete, list and describe users.
//! Each validates its input, asks for the authorization it needs, calls the catalog and waits
//! for the write to be acknowledged by every replica.

use crate::catalog::ROOT_USER;
use crate::password::Username;
use crate::proto::milvus::{
    CreateCredentialRequest, DeleteCredentialRequest, RoleEntity, SelectUserRequest,
    UpdateCredentialRequest, UserEntity, UserResult,
};
use crate::service::status::ServiceError;
use crate::service::{Api, Caller, decode_base64};

/// The longest user description accepted, in bytes (Milvus's `proxy.maxUserDescriptionLength`
/// default). Any user may set their own description without the old password, so without a
/// bound one user could grow every replica's store without limit.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// Refuses a description over [`MAX_DESCRIPTION_LEN`] bytes.
fn check_description(description: Option<&str>) -> Result<(), ServiceError> {
    match description.map(str::len) {
        Some(len) if len > MAX_DESCRIPTION_LEN => Err(ServiceError::DescriptionTooLong {
            len,
            max: MAX_DESCRIPTION_LEN,
        }),
        _ => Ok(()),
    }
}

impl Api {
    pub(super) async fn create_user(
        &self,
        caller: &Caller,
        body: CreateCredentialRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "CreateCredential", "*").await?;
        let name = self.username(&body.username)?;
        let password = self.password(&body.password)?;
        check_description(body.description.as_deref())?;
        let hash = self.auth.pool().hash(password).await?;
        let revision = self
            .catalog
            .create_user(&name, &hash, body.description)
            .await?;
        tracing::info!(user = %name, revision, "user created");
        self.confirm(caller, revision).await
    }

    /// A password change (with the old password, unless the caller is a super user, as
    /// Milvus's guide says), or a description-only update when no new password is given.
    pub(super) async fn update_user(
        &self,
        caller: &Caller,
        body: UpdateCredentialRequest,
    ) -> Result<(), ServiceError> {
        if !caller.is_super_user() {
            self.require_self_or(caller, &body.username, "UpdateCredential")
                .await?;
        }
        check_description(body.description.as_deref())?;
        if body.new_password.is_empty() && body.description.is_some() {
            return self
                .set_description(caller, &body.username, body.description)
                .await;
        }
        let new_password = self.password(&body.new_password)?;
        let old_password = decode_base64(&body.old_password)?;
        // No stored password is longer than the limit: refuse without spending a hash on it.
        let oversized_old = old_password.len() > self.limits.max_password_len;
        // A name that breaks the rules cannot exist; report it as Milvus does for a missing user.
        let name = Username::parse(&body.username, &self.limits).ok();
        let stored = match &name {
            Some(name) => self.catalog.get_user(name).await?.value,
            None => None,
        };
        let (Some(name), Some(stored)) = (name, stored) else {
            let raw = body.username.trim().to_string();
            return match caller.is_super_user() {
                true => Err(ServiceError::UserNotFound(raw)),
                false => Err(ServiceError::WrongOldPassword(raw)),
            };
        };
        // Checked against the record we will compare-and-swap, so a concurrent change wins.
        if !caller.is_super_user()
            && (oversized_old
                || !self
                    .auth
                    .pool()
                    .verify(stored.hash.clone(), old_password)
                    .await?)
        {
            return Err(ServiceError::WrongOldPassword(name.to_string()));
        }
        let hash = self.auth.pool().hash(new_password).await?;
        let description = body.description.or_else(|| stored.description.clone());
        let revision = self
            .catalog
            .replace_user(&name, &stored.with_hash(hash).with_description(description))
            .await?;
        tracing::info!(user = %name, revision, "password changed");
        self.confirm(caller, revision).await
    }

    async fn set_description(
        &self,
        caller: &Caller,
        raw: &str,
        description: Option<String>,
    ) -> Result<(), ServiceError> {
        let name = Username::parse(raw, &self.limits)
            .map_err(|_| ServiceError::UserNotFound(raw.to_string()))?;
        let stored = self
            .catalog
            .get_user(&name)
            .await?
            .value
            .ok_or_else(|| ServiceError::UserNotFound(name.to_string()))?;
        let revision = self
            .catalog
            .replace_user(&name, &stored.with_description(description))
            .await?;
        self.confirm(caller, revision).await
    }

    pub(super) async fn delete_user(
        &self,
        caller: &Caller,
        body: DeleteCredentialRequest,
    ) -> Result<(), ServiceError> {
        self.require(caller, "DeleteCredential", "*").await?;
        if body.username.trim() == ROOT_USER {
            return Err(ServiceError::DeleteRoot);
        }
        // Deleting is idempotent; a name that breaks the rules cannot exist.
        let Ok(name) = Username::parse(&body.username, &self.limits) else {
            return Ok(());
        };
        let revision = self.catalog.delete_user(&name).await?;
        if let Some(revision) = revision {
            tracing::info!(user = %name, revision, "user deleted");
        }
        self.confirm_change(caller, revision).await
    }

    pub(super) async fn list_users(&self, caller: &Caller) -> Result<Vec<String>, ServiceError> {
        self.require(caller, "ListCredUsers", "*").await?;
        Ok(self.catalog.list_users().await?)
    }

    /// One user (the caller may always describe themselves) or all of them; both are checked
    /// as Milvus does, as `SelectUser` on the user object (`*` for all).
    pub(super) async fn describe_users(
        &self,
        caller: &Caller,
        body: SelectUserRequest,
    ) -> Result<Vec<UserResult>, ServiceError> {
        let names = match &body.user {
            Some(user) => {
                self.require_self_or(caller, &user.name, "SelectUser")
                    .await?;
                vec![self.username(&user.name)?]
            }
            None => {
                self.require(caller, "SelectUser", "*").await?;
                self.catalog
                    .list_users()
                    .await?
                    .iter()
                    .filter_map(|n| Username::parse(n, &self.limits).ok())
                    .collect()
            }
        };
        let mut results = Vec::new();
        for name in names {
            let Some(stored) = self.catalog.get_user(&name).await?.value else {
                continue;
            };
            let roles = match body.include_role_info {
                true => self.catalog.user_roles(name.as_str()).await?,
                false => Vec::new(),
            };
            results.push(UserResult {
                user: Some(UserEntity {
                    name: name.to_string(),
                }),
                roles: roles
                    .into_iter()
                    .map(|name| RoleEntity {
                        name,
                        description: String::new(),
                    })
                    .collect(),
                description: stored.description.unwrap_or_default(),
            });
        }
        Ok(results)
    }
}
