//! The gRPC front door: the tonic `MilvusService` adapter. Each method takes the caller (the
//! `Authenticated` the auth layer left in the request) and the body, hands them to a handler
//! in `users` or `roles`, and turns the outcome into Milvus's answer through
//! `status::to_status` only. Authorization — the two decisions a handler asks for — lives
//! here too; handlers never read headers.

mod admin;
mod backup;
mod grants;
mod keys;
mod roles;
pub mod status;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine;
use tonic::{Request, Response};

use crate::audit::{self, Audit};
use crate::auth::{self, Authenticated, Authenticator};
use crate::catalog::Catalog;
use crate::coherence::Coherence;
use crate::meta::Revision;
use crate::metrics::Metrics;
use crate::password::{Limits, Password, Username};
use crate::proto::common::{ErrorCode, ServerInfo, Status};
use crate::proto::milvus::milvus_service_server::MilvusService;
use crate::proto::milvus::*;
use crate::rbac::{self, Policies, Target};
use status::{ServiceError, to_status};

pub use users::MAX_DESCRIPTION_LEN;

/// Who is calling, and the database they named (Milvus's `dbname` header; it only appears in
/// the text of a denial), from where, and the newest revision the request wrote (for the
/// audit line; clones share it).
#[derive(Clone, Debug)]
struct Caller {
    who: Authenticated,
    db: String,
    peer: Option<SocketAddr>,
    /// 0 until a write is confirmed (revisions start at 1).
    written: Arc<AtomicI64>,
}

impl Caller {
    /// Splits a request into its caller and its body.
    fn of<T>(request: Request<T>) -> Result<(Caller, T), ServiceError> {
        let (who, db) = auth::caller(&request).ok_or(ServiceError::Unauthenticated)?;
        let caller = Caller {
            who,
            db,
            peer: request.remote_addr(),
            written: Arc::default(),
        };
        Ok((caller, request.into_inner()))
    }

    fn is_super_user(&self) -> bool {
        self.who.is_super_user()
    }

    fn wrote(&self, revision: Revision) {
        self.written.fetch_max(revision, Ordering::Relaxed);
    }

    /// The newest revision this request wrote, if it wrote anything.
    fn written(&self) -> Option<Revision> {
        Some(self.written.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }
}

/// The service state shared by every request.
#[derive(Clone)]
pub struct Api {
    /// Users and roles in etcd.
    catalog: Catalog,
    /// For the hash pool (hashing new passwords, checking old ones) and the health answer.
    auth: Authenticator,
    /// Every write waits for its acknowledgement by every live replica.
    coherence: Coherence,
    /// Each user's roles and each role's grants, cached and kept coherent like passwords.
    policies: Policies,
    /// Milvus's name and password rules.
    limits: Limits,
    /// `proxy.maxRoleNum`: most roles, `admin` and `public` included.
    max_roles: usize,
    /// `Connect`'s identifier: only needs to differ between connections.
    next_identifier: Arc<AtomicI64>,
    /// One line per change request (and backup), whatever its outcome.
    audit: Audit,
    /// Records how long writes wait for their acknowledgement.
    metrics: Option<Metrics>,
}

/// The settings handlers need besides the shared components.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub limits: Limits,
    pub max_roles: usize,
}

impl Api {
    pub fn new(
        catalog: Catalog,
        auth: Authenticator,
        coherence: Coherence,
        policies: Policies,
        settings: ApiSettings,
    ) -> Api {
        // Identifiers only need to differ between connections; start somewhere unguessable-ish.
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let start = i64::from(u32::from_le_bytes(seed) >> 1) + 1;
        Api {
            catalog,
            auth,
            coherence,
            policies,
            limits: settings.limits,
            max_roles: settings.max_roles,
            next_identifier: Arc::new(AtomicI64::new(start)),
            audit: Audit::off(),
            metrics: None,
        }
    }

    /// Records each write's acknowledgement wait in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Api {
        self.metrics = Some(metrics);
        self
    }

    /// Writes an audit line for every change request to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Api {
        self.audit = audit;
        self
    }

    /// May the caller do what `method` needs (its entry in Milvus's privilege table) on the
    /// object `name`? The one decision, `rbac::decide`: every method served here is
    /// cluster-wide, so only cluster-level grants count, whatever the `dbname` header says.
    async fn require(&self, caller: &Caller, method: &str, name: &str) -> Result<(), ServiceError> {
        let dbs = [caller.db.as_str()];
        let target = Target {
            dbs: &dbs,
            names: &[name],
        };
        Ok(rbac::decide(&self.policies, &caller.who, method, target).await?)
    }

    /// Decision two: a user acting on their own record (`target`, as sent) needs no
    /// privilege; anyone else needs what `method` needs on `target` (decision one).
    async fn require_self_or(
        &self,
        caller: &Caller,
        target: &str,
        method: &str,
    ) -> Result<(), ServiceError> {
        let own = Username::parse(target, &self.limits)
            .is_ok_and(|target| caller.who.name() == Some(target.as_str()));
        match own {
            true => Ok(()),
            false => self.require(caller, method, target.trim()).await,
        }
    }

    /// Waits until every live replica applied `revision`, which `caller`'s request wrote.
    async fn confirm(&self, caller: &Caller, revision: Revision) -> Result<(), ServiceError> {
        caller.wrote(revision);
        let started = std::time::Instant::now();
        let confirmed = self.coherence.confirm(revision).await;
        if let Some(metrics) = &self.metrics {
            metrics.ack_waited(started.elapsed());
        }
        Ok(confirmed?)
    }

    /// Waits for the acknowledgement of a write, if there was one; a request that changed
    /// nothing has nothing to wait for.
    async fn confirm_change(
        &self,
        caller: &Caller,
        revision: Option<Revision>,
    ) -> Result<(), ServiceError> {
        match revision {
            Some(revision) => self.confirm(caller, revision).await,
            None => Ok(()),
        }
    }

    fn username(&self, raw: &str) -> Result<Username, ServiceError> {
        Username::parse(raw, &self.limits).map_err(ServiceError::InvalidName)
    }

    fn password(&self, encoded: &str) -> Result<Password, ServiceError> {
        Password::new(decode_base64(encoded)?, &self.limits).map_err(ServiceError::InvalidPassword)
    }
}

fn decode_base64(encoded: &str) -> Result<Vec<u8>, ServiceError> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(ServiceError::Base64)
}

/// Runs `handler` on the request's caller and body.
async fn handle<T, R>(
    request: Request<T>,
    handler: impl AsyncFnOnce(Caller, T) -> Result<R, ServiceError>,
) -> Result<R, ServiceError> {
    let (caller, body) = Caller::of(request)?;
    handler(caller, body).await
}

impl Api {
    /// [`handle`], then one audit line: `action` (the method), the caller, what `target`
    /// reads from the body (names only), the revision written and the outcome's class.
    async fn audited<T, R>(
        &self,
        request: Request<T>,
        action: &'static str,
        target: impl FnOnce(&T) -> serde_json::Map<String, serde_json::Value>,
        handler: impl AsyncFnOnce(Caller, T) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let (caller, body) = Caller::of(request)?;
        let target = match self.audit.is_on() {
            true => target(&body),
            false => serde_json::Map::new(),
        };
        let result = handler(caller.clone(), body).await;
        self.audit.change(audit::Change {
            action,
            user: caller.who.name(),
            peer: caller.peer,
            target,
            revision: caller.written(),
            result: result.as_ref().map_or_else(ServiceError::class, |_| "ok"),
        });
        result
    }
}

/// An operation type's proto name for an audit line (`AddUserToRole`, `Grant`), or `null`.
fn op_name<E>(name: Result<&'static str, E>) -> serde_json::Value {
    name.map_or(serde_json::Value::Null, Into::into)
}

/// The privilege a grant names, as sent.
fn privilege_name(grantor: Option<GrantorEntity>) -> String {
    grantor
        .and_then(|g| g.privilege)
        .map(|p| p.name)
        .unwrap_or_default()
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
        let target =
            |b: &CreateCredentialRequest| audit::target([("user", b.username.clone().into())]);
        let result = self.audited(request, "CreateCredential", target, async |caller, body| {
            self.create_user(&caller, body).await
        });
        reply(result.await, ErrorCode::CreateCredentialFailure)
    }

    async fn update_credential(
        &self,
        request: Request<UpdateCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &UpdateCredentialRequest| {
            audit::target([
                ("user", b.username.clone().into()),
                ("password", (!b.new_password.is_empty()).into()),
            ])
        };
        let result = self.audited(request, "UpdateCredential", target, async |caller, body| {
            self.update_user(&caller, body).await
        });
        reply(result.await, ErrorCode::UpdateCredentialFailure)
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target =
            |b: &DeleteCredentialRequest| audit::target([("user", b.username.clone().into())]);
        let result = self.audited(request, "DeleteCredential", target, async |caller, body| {
            self.delete_user(&caller, body).await
        });
        reply(result.await, ErrorCode::DeleteCredentialFailure)
    }

    async fn list_cred_users(
        &self,
        request: Request<ListCredUsersRequest>,
    ) -> Result<Response<ListCredUsersResponse>, tonic::Status> {
        let result = handle(request, async |caller, _| self.list_users(&caller).await);
        let (status, usernames) = outcome(result.await, ErrorCode::ListCredUsersFailure)?;
        Ok(Response::new(ListCredUsersResponse { status, usernames }))
    }

    async fn create_role(
        &self,
        request: Request<CreateRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &CreateRoleRequest| {
            let role = b
                .entity
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_default();
            audit::target([("role", role.into())])
        };
        let result = self.audited(request, "CreateRole", target, async |caller, body| {
            self.add_role(&caller, body).await
        });
        reply(result.await, ErrorCode::CreateRoleFailure)
    }

    async fn alter_role(
        &self,
        request: Request<AlterRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &AlterRoleRequest| audit::target([("role", b.role_name.clone().into())]);
        let result = self.audited(request, "AlterRole", target, async |caller, body| {
            self.change_role(&caller, body).await
        });
        // Milvus has no legacy code of its own for AlterRole failures.
        reply(result.await, ErrorCode::UnexpectedError)
    }

    async fn backup_rbac(
        &self,
        request: Request<BackupRbacMetaRequest>,
    ) -> Result<Response<BackupRbacMetaResponse>, tonic::Status> {
        // Not a change, but it exports every user's hash.
        let target = |_: &BackupRbacMetaRequest| audit::target([]);
        let result = self.audited(request, "BackupRBAC", target, async |caller, _| {
            self.backup_rbac(&caller).await
        });
        let (status, meta) = outcome(result.await, ErrorCode::OperatePrivilegeFailure)?;
        Ok(Response::new(BackupRbacMetaResponse {
            status,
            rbac_meta: Some(meta),
        }))
    }

    async fn restore_rbac(
        &self,
        request: Request<RestoreRbacMetaRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &RestoreRbacMetaRequest| {
            let meta = b.rbac_meta.clone().unwrap_or_default();
            audit::target([
                ("users", meta.users.len().into()),
                ("roles", meta.roles.len().into()),
                ("grants", meta.grants.len().into()),
                ("groups", meta.privilege_groups.len().into()),
            ])
        };
        let result = self.audited(request, "RestoreRBAC", target, async |caller, body| {
            self.restore_rbac(&caller, body.rbac_meta).await
        });
        reply(result.await, ErrorCode::OperatePrivilegeFailure)
    }

    async fn drop_role(
        &self,
        request: Request<DropRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &DropRoleRequest| {
            audit::target([
                ("role", b.role_name.clone().into()),
                ("force", b.force_drop.into()),
            ])
        };
        let result = self.audited(request, "DropRole", target, async |caller, body| {
            self.remove_role(&caller, body).await
        });
        reply(result.await, ErrorCode::DropRoleFailure)
    }

    async fn operate_user_role(
        &self,
        request: Request<OperateUserRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &OperateUserRoleRequest| {
            audit::target([
                ("user", b.username.clone().into()),
                ("role", b.role_name.clone().into()),
                (
                    "op",
                    op_name(OperateUserRoleType::try_from(b.r#type).map(|t| t.as_str_name())),
                ),
            ])
        };
        let result = self.audited(request, "OperateUserRole", target, async |caller, body| {
            self.change_membership(&caller, body).await
        });
        reply(result.await, ErrorCode::OperateUserRoleFailure)
    }

    async fn select_role(
        &self,
        request: Request<SelectRoleRequest>,
    ) -> Result<Response<SelectRoleResponse>, tonic::Status> {
        let result = handle(request, async |caller, body| {
            self.describe_roles(&caller, body).await
        });
        let (status, results) = outcome(result.await, ErrorCode::SelectRoleFailure)?;
        Ok(Response::new(SelectRoleResponse { status, results }))
    }

    async fn select_user(
        &self,
        request: Request<SelectUserRequest>,
    ) -> Result<Response<SelectUserResponse>, tonic::Status> {
        let result = handle(request, async |caller, body| {
            self.describe_users(&caller, body).await
        });
        let (status, results) = outcome(result.await, ErrorCode::SelectUserFailure)?;
        Ok(Response::new(SelectUserResponse { status, results }))
    }
    async fn operate_privilege(
        &self,
        request: Request<OperatePrivilegeRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &OperatePrivilegeRequest| {
            let entity = b.entity.clone().unwrap_or_default();
            audit::target([
                (
                    "role",
                    entity.role.map(|r| r.name).unwrap_or_default().into(),
                ),
                ("privilege", privilege_name(entity.grantor).into()),
                (
                    "object",
                    entity.object.map(|o| o.name).unwrap_or_default().into(),
                ),
                ("name", entity.object_name.into()),
                ("db", entity.db_name.into()),
                (
                    "op",
                    op_name(OperatePrivilegeType::try_from(b.r#type).map(|t| t.as_str_name())),
                ),
            ])
        };
        let result = self.audited(request, "OperatePrivilege", target, async |caller, body| {
            self.operate_privilege(&caller, body).await
        });
        reply(result.await, ErrorCode::OperatePrivilegeFailure)
    }

    async fn operate_privilege_v2(
        &self,
        request: Request<OperatePrivilegeV2Request>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &OperatePrivilegeV2Request| {
            audit::target([
                (
                    "role",
                    b.role.clone().map(|r| r.name).unwrap_or_default().into(),
                ),
                ("privilege", privilege_name(b.grantor.clone()).into()),
                ("db", b.db_name.clone().into()),
                ("collection", b.collection_name.clone().into()),
                (
                    "op",
                    op_name(OperatePrivilegeType::try_from(b.r#type).map(|t| t.as_str_name())),
                ),
            ])
        };
        let result = self.audited(
            request,
            "OperatePrivilegeV2",
            target,
            async |caller, body| self.operate_privilege_v2(&caller, body).await,
        );
        reply(result.await, ErrorCode::OperatePrivilegeFailure)
    }

    async fn select_grant(
        &self,
        request: Request<SelectGrantRequest>,
    ) -> Result<Response<SelectGrantResponse>, tonic::Status> {
        let result = handle(request, async |caller, body| {
            self.select_grants(&caller, body).await
        });
        let (status, entities) = outcome(result.await, ErrorCode::SelectGrantFailure)?;
        Ok(Response::new(SelectGrantResponse { status, entities }))
    }

    async fn create_privilege_group(
        &self,
        request: Request<CreatePrivilegeGroupRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &CreatePrivilegeGroupRequest| {
            audit::target([("group", b.group_name.clone().into())])
        };
        let result = self.audited(
            request,
            "CreatePrivilegeGroup",
            target,
            async |caller, body| self.add_group(&caller, body.group_name).await,
        );
        reply(result.await, ErrorCode::CreatePrivilegeGroupFailure)
    }

    async fn drop_privilege_group(
        &self,
        request: Request<DropPrivilegeGroupRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target =
            |b: &DropPrivilegeGroupRequest| audit::target([("group", b.group_name.clone().into())]);
        let result = self.audited(
            request,
            "DropPrivilegeGroup",
            target,
            async |caller, body| self.remove_group(&caller, body.group_name).await,
        );
        reply(result.await, ErrorCode::DropPrivilegeGroupFailure)
    }

    async fn list_privilege_groups(
        &self,
        request: Request<ListPrivilegeGroupsRequest>,
    ) -> Result<Response<ListPrivilegeGroupsResponse>, tonic::Status> {
        let result = handle(request, async |caller, _| self.list_groups(&caller).await);
        let (status, privilege_groups) =
            outcome(result.await, ErrorCode::ListPrivilegeGroupsFailure)?;
        Ok(Response::new(ListPrivilegeGroupsResponse {
            status,
            privilege_groups,
        }))
    }

    async fn operate_privilege_group(
        &self,
        request: Request<OperatePrivilegeGroupRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let target = |b: &OperatePrivilegeGroupRequest| {
            let privileges: Vec<serde_json::Value> =
                b.privileges.iter().map(|p| p.name.clone().into()).collect();
            let op = OperatePrivilegeGroupType::try_from(b.r#type).map(|t| t.as_str_name());
            audit::target([
                ("group", b.group_name.clone().into()),
                ("privileges", privileges.into()),
                ("op", op_name(op)),
            ])
        };
        let result = self.audited(
            request,
            "OperatePrivilegeGroup",
            target,
            async |caller, body| self.change_group(&caller, body).await,
        );
        reply(result.await, ErrorCode::OperatePrivilegeGroupFailure)
    }
}
