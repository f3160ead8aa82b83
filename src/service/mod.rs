//! The gRPC front door: `MilvusService` for users and roles, as pymilvus expects it.
//! Handlers decode and validate input, authorize the caller (from the `Authenticated` the
//! auth layer left in the request), call the catalog, wait for the write to be confirmed by
//! every replica, and turn errors into Milvus answers through `status::to_status` only.

pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine;
use tonic::{Request, Response};

use crate::auth::{Authenticated, Authenticator};
use crate::catalog::{Catalog, ROOT_USER, RoleName};
use crate::coherence::Coherence;
use crate::meta::Revision;
use crate::password::{Limits, Password, Username};
use crate::proto::common::{ErrorCode, ServerInfo, Status};
use crate::proto::milvus::milvus_service_server::MilvusService;
use crate::proto::milvus::*;
use status::{ServiceError, to_status};

/// Milvus's privilege names for the operations credstore serves.
#[derive(Clone, Copy, Debug)]
enum Privilege {
    CreateOwnership,
    DropOwnership,
    SelectOwnership,
    ManageOwnership,
    UpdateUser,
    SelectUser,
}

impl Privilege {
    fn name(self) -> &'static str {
        match self {
            Privilege::CreateOwnership => "PrivilegeCreateOwnership",
            Privilege::DropOwnership => "PrivilegeDropOwnership",
            Privilege::SelectOwnership => "PrivilegeSelectOwnership",
            Privilege::ManageOwnership => "PrivilegeManageOwnership",
            Privilege::UpdateUser => "PrivilegeUpdateUser",
            Privilege::SelectUser => "PrivilegeSelectUser",
        }
    }
}

/// The service state shared by every request.
#[derive(Clone)]
pub struct Api {
    catalog: Catalog,
    auth: Authenticator,
    coherence: Coherence,
    limits: Limits,
    next_identifier: Arc<AtomicI64>,
}

impl Api {
    pub fn new(catalog: Catalog, auth: Authenticator, coherence: Coherence, limits: Limits) -> Api {
        // Identifiers only need to differ between connections; start somewhere unguessable-ish.
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let start = i64::from(u32::from_le_bytes(seed) >> 1) + 1;
        Api {
            catalog,
            auth,
            coherence,
            limits,
            next_identifier: Arc::new(AtomicI64::new(start)),
        }
    }

    /// Allows root, members of `admin`, and — for user-object privileges — the user acting on
    /// themselves; everyone when authorization is disabled. Otherwise PERMISSION_DENIED.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        privilege: Privilege,
        own: Option<&str>,
    ) -> Result<Authenticated, ServiceError> {
        let caller = request
            .extensions()
            .get::<Authenticated>()
            .cloned()
            .ok_or(ServiceError::Unauthenticated)?;
        let Some(user) = caller.name() else {
            return Ok(caller);
        };
        if user == ROOT_USER || own.is_some_and(|o| o.trim() == user) {
            return Ok(caller);
        }
        if self
            .catalog
            .user_roles(user)
            .await?
            .iter()
            .any(|r| r == "admin")
        {
            return Ok(caller);
        }
        let db = request
            .metadata()
            .get("dbname")
            .and_then(|v| v.to_str().ok())
            .filter(|d| !d.is_empty())
            .unwrap_or("default");
        Err(ServiceError::PermissionDenied {
            privilege: privilege.name(),
            user: user.to_string(),
            db: db.to_string(),
        })
    }

    async fn confirm(&self, revision: Revision) -> Result<(), ServiceError> {
        Ok(self.coherence.confirm(revision).await?)
    }

    fn username(&self, raw: &str) -> Result<Username, ServiceError> {
        Username::parse(raw, &self.limits).map_err(ServiceError::InvalidName)
    }

    fn password(&self, encoded: &str) -> Result<Password, ServiceError> {
        Password::new(decode_base64(encoded)?, &self.limits).map_err(ServiceError::InvalidPassword)
    }

    async fn create_credential(
        &self,
        request: Request<CreateCredentialRequest>,
    ) -> Result<(), ServiceError> {
        self.authorize(&request, Privilege::CreateOwnership, None)
            .await?;
        let body = request.into_inner();
        let name = self.username(&body.username)?;
        let password = self.password(&body.password)?;
        let hash = self.auth.pool().hash(password).await?;
        let revision = self
            .catalog
            .create_user(&name, &hash, body.description)
            .await?;
        tracing::info!(user = %name, revision, "user created");
        self.confirm(revision).await
    }

    async fn update_credential(
        &self,
        request: Request<UpdateCredentialRequest>,
    ) -> Result<(), ServiceError> {
        // Super users may reset any password (Milvus's guide); everyone else needs the
        // privilege or to be acting on themselves.
        let caller = match request.extensions().get::<Authenticated>() {
            Some(caller) if caller.is_super_user() => caller.clone(),
            _ => {
                let own = request.get_ref().username.clone();
                self.authorize(&request, Privilege::UpdateUser, Some(&own))
                    .await?
            }
        };
        let body = request.into_inner();
        if body.new_password.is_empty() && body.description.is_some() {
            return self
                .update_description(&body.username, body.description)
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
            return match caller.is_super_user() {
                true => Err(ServiceError::UserNotFound(body.username.trim().to_string())),
                false => Err(ServiceError::WrongOldPassword(
                    body.username.trim().to_string(),
                )),
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
        self.confirm(revision).await
    }

    async fn update_description(
        &self,
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
        self.confirm(revision).await
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<(), ServiceError> {
        self.authorize(&request, Privilege::DropOwnership, None)
            .await?;
        let raw = request.into_inner().username;
        if raw.trim() == ROOT_USER {
            return Err(ServiceError::DeleteRoot);
        }
        // Deleting is idempotent; a name that breaks the rules cannot exist.
        let Ok(name) = Username::parse(&raw, &self.limits) else {
            return Ok(());
        };
        match self.catalog.delete_user(&name).await? {
            Some(revision) => {
                tracing::info!(user = %name, revision, "user deleted");
                self.confirm(revision).await
            }
            None => Ok(()),
        }
    }

    async fn list_cred_users(
        &self,
        request: Request<ListCredUsersRequest>,
    ) -> Result<Vec<String>, ServiceError> {
        self.authorize(&request, Privilege::SelectOwnership, None)
            .await?;
        Ok(self.catalog.list_users().await?)
    }

    async fn select_user(
        &self,
        request: Request<SelectUserRequest>,
    ) -> Result<Vec<UserResult>, ServiceError> {
        let own = request.get_ref().user.as_ref().map(|u| u.name.clone());
        let privilege = match own {
            Some(_) => Privilege::SelectUser,
            None => Privilege::SelectOwnership,
        };
        self.authorize(&request, privilege, own.as_deref()).await?;
        let body = request.into_inner();
        let names = match &body.user {
            Some(user) => vec![self.username(&user.name)?],
            None => self
                .catalog
                .list_users()
                .await?
                .iter()
                .filter_map(|n| Username::parse(n, &self.limits).ok())
                .collect(),
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

    async fn select_role(
        &self,
        request: Request<SelectRoleRequest>,
    ) -> Result<Vec<RoleResult>, ServiceError> {
        self.authorize(&request, Privilege::SelectOwnership, None)
            .await?;
        let body = request.into_inner();
        let roles = match &body.role {
            Some(role) => {
                let role = RoleName::parse(&role.name).map_err(ServiceError::InvalidRole)?;
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
            results.push(RoleResult {
                role: Some(RoleEntity {
                    name: role,
                    description: String::new(),
                }),
                users: users.into_iter().map(|name| UserEntity { name }).collect(),
            });
        }
        Ok(results)
    }

    async fn create_role(&self, request: Request<CreateRoleRequest>) -> Result<(), ServiceError> {
        self.authorize(&request, Privilege::CreateOwnership, None)
            .await?;
        let raw = request
            .into_inner()
            .entity
            .map(|e| e.name)
            .unwrap_or_default();
        let role = RoleName::parse(&raw).map_err(ServiceError::InvalidRole)?;
        let revision = self.catalog.create_role(&role).await?;
        self.confirm(revision).await
    }

    async fn drop_role(&self, request: Request<DropRoleRequest>) -> Result<(), ServiceError> {
        self.authorize(&request, Privilege::DropOwnership, None)
            .await?;
        let role =
            RoleName::parse(&request.into_inner().role_name).map_err(ServiceError::InvalidRole)?;
        let revision = self.catalog.drop_role(&role).await?;
        self.confirm(revision).await
    }

    async fn operate_user_role(
        &self,
        request: Request<OperateUserRoleRequest>,
    ) -> Result<(), ServiceError> {
        self.authorize(&request, Privilege::ManageOwnership, None)
            .await?;
        let body = request.into_inner();
        let user = self.username(&body.username)?;
        let role = RoleName::parse(&body.role_name).map_err(ServiceError::InvalidRole)?;
        let revision = match OperateUserRoleType::try_from(body.r#type) {
            Ok(OperateUserRoleType::AddUserToRole) => {
                self.catalog.add_user_to_role(&user, &role).await?
            }
            Ok(OperateUserRoleType::RemoveUserFromRole) => {
                self.catalog.remove_user_from_role(&user, &role).await?
            }
            Err(_) => {
                return Err(ServiceError::InvalidRole(format!(
                    "unknown operate type {}",
                    body.r#type
                )));
            }
        };
        self.confirm(revision).await
    }
}

fn decode_base64(encoded: &str) -> Result<Vec<u8>, ServiceError> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| ServiceError::Base64(e.to_string()))
}

/// A Status-only answer.
fn reply(
    result: Result<(), ServiceError>,
    failure: ErrorCode,
) -> Result<Response<Status>, tonic::Status> {
    match result {
        Ok(()) => Ok(Response::new(Status::default())),
        Err(err) => Ok(Response::new(to_status(&err, failure)?)),
    }
}

/// A payload answer: the status, and the payload when it succeeded.
fn outcome<T: Default>(
    result: Result<T, ServiceError>,
    failure: ErrorCode,
) -> Result<(Option<Status>, T), tonic::Status> {
    match result {
        Ok(value) => Ok((Some(Status::default()), value)),
        Err(err) => Ok((Some(to_status(&err, failure)?), T::default())),
    }
}

#[tonic::async_trait]
impl MilvusService for Api {
    async fn connect(
        &self,
        _request: Request<ConnectRequest>,
    ) -> Result<Response<ConnectResponse>, tonic::Status> {
        let server_info = ServerInfo {
            build_tags: format!("credstore-{}", env!("CARGO_PKG_VERSION")),
            deploy_mode: "credstore".into(),
            ..ServerInfo::default()
        };
        let identifier = self.next_identifier.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ConnectResponse {
            status: Some(Status::default()),
            server_info: Some(server_info),
            identifier,
        }))
    }

    async fn get_version(
        &self,
        _request: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, tonic::Status> {
        let version = format!("credstore-{}", env!("CARGO_PKG_VERSION"));
        Ok(Response::new(GetVersionResponse {
            status: Some(Status::default()),
            version,
        }))
    }

    async fn check_health(
        &self,
        _request: Request<CheckHealthRequest>,
    ) -> Result<Response<CheckHealthResponse>, tonic::Status> {
        let healthy = self.auth.is_trusted();
        let reasons = match healthy {
            true => Vec::new(),
            false => vec!["replica is re-syncing with etcd".to_string()],
        };
        Ok(Response::new(CheckHealthResponse {
            status: Some(Status::default()),
            is_healthy: healthy,
            reasons,
            quota_states: Vec::new(),
        }))
    }

    async fn create_credential(
        &self,
        request: Request<CreateCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::create_credential(self, request).await,
            ErrorCode::CreateCredentialFailure,
        )
    }

    async fn update_credential(
        &self,
        request: Request<UpdateCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::update_credential(self, request).await,
            ErrorCode::UpdateCredentialFailure,
        )
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::delete_credential(self, request).await,
            ErrorCode::DeleteCredentialFailure,
        )
    }

    async fn list_cred_users(
        &self,
        request: Request<ListCredUsersRequest>,
    ) -> Result<Response<ListCredUsersResponse>, tonic::Status> {
        let (status, usernames) = outcome(
            Api::list_cred_users(self, request).await,
            ErrorCode::ListCredUsersFailure,
        )?;
        Ok(Response::new(ListCredUsersResponse { status, usernames }))
    }

    async fn create_role(
        &self,
        request: Request<CreateRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::create_role(self, request).await,
            ErrorCode::CreateRoleFailure,
        )
    }

    async fn drop_role(
        &self,
        request: Request<DropRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::drop_role(self, request).await,
            ErrorCode::DropRoleFailure,
        )
    }

    async fn operate_user_role(
        &self,
        request: Request<OperateUserRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        reply(
            Api::operate_user_role(self, request).await,
            ErrorCode::OperateUserRoleFailure,
        )
    }

    async fn select_role(
        &self,
        request: Request<SelectRoleRequest>,
    ) -> Result<Response<SelectRoleResponse>, tonic::Status> {
        let (status, results) = outcome(
            Api::select_role(self, request).await,
            ErrorCode::SelectRoleFailure,
        )?;
        Ok(Response::new(SelectRoleResponse { status, results }))
    }

    async fn select_user(
        &self,
        request: Request<SelectUserRequest>,
    ) -> Result<Response<SelectUserResponse>, tonic::Status> {
        let (status, results) = outcome(
            Api::select_user(self, request).await,
            ErrorCode::SelectUserFailure,
        )?;
        Ok(Response::new(SelectUserResponse { status, results }))
    }
}
