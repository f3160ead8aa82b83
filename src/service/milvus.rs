//! The tonic `MilvusService` adapter: each method takes the caller (the `Authenticated` the
//! auth layer left in the request) and the body, hands them to a handler (`users.rs`,
//! `roles.rs`, `grants.rs`, `backup.rs`) — through [`Api::audited`] for change requests — and
//! turns the outcome into Milvus's answer through `status::to_status` only. No rules here.

use std::sync::atomic::Ordering;

use tonic::{Request, Response};

use crate::proto::common::{ErrorCode, ServerInfo, Status};
use crate::proto::milvus::milvus_service_server::MilvusService;
use crate::proto::milvus::*;
use crate::service::status::{ServiceError, to_status};
use crate::service::{Api, Caller};

/// Runs `handler` on the request's caller and body.
pub(super) async fn handle<T, R>(
    request: Request<T>,
    handler: impl AsyncFnOnce(Caller, T) -> Result<R, ServiceError>,
) -> Result<R, ServiceError> {
    let (caller, body) = Caller::of(request)?;
    handler(caller, body).await
}

/// A Status-only answer.
pub(super) fn reply(
    result: Result<(), ServiceError>,
    failure: ErrorCode,
) -> Result<Response<Status>, tonic::Status> {
    match result {
        Ok(()) => Ok(Response::new(Status::default())),
        Err(err) => Ok(Response::new(to_status(&err, failure)?)),
    }
}

/// A payload answer: the status, and the payload when it succeeded.
pub(super) fn outcome<T: Default>(
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
        let result = self.audited(request, async |caller, body| {
            self.create_user(&caller, body).await
        });
        reply(result.await, ErrorCode::CreateCredentialFailure)
    }

    async fn update_credential(
        &self,
        request: Request<UpdateCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.update_user(&caller, body).await
        });
        reply(result.await, ErrorCode::UpdateCredentialFailure)
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
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
        let result = self.audited(request, async |caller, body| {
            self.add_role(&caller, body).await
        });
        reply(result.await, ErrorCode::CreateRoleFailure)
    }

    async fn alter_role(
        &self,
        request: Request<AlterRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.change_role(&caller, body).await
        });
        // Milvus has no legacy code of its own for AlterRole failures.
        reply(result.await, ErrorCode::UnexpectedError)
    }

    async fn backup_rbac(
        &self,
        request: Request<BackupRbacMetaRequest>,
    ) -> Result<Response<BackupRbacMetaResponse>, tonic::Status> {
        let result = self.audited(request, async |caller, _| self.backup_rbac(&caller).await);
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
        let result = self.audited(request, async |caller, body| {
            self.restore_rbac(&caller, body.rbac_meta).await
        });
        reply(result.await, ErrorCode::OperatePrivilegeFailure)
    }

    async fn drop_role(
        &self,
        request: Request<DropRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.remove_role(&caller, body).await
        });
        reply(result.await, ErrorCode::DropRoleFailure)
    }

    async fn operate_user_role(
        &self,
        request: Request<OperateUserRoleRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
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
        let result = self.audited(request, async |caller, body| {
            self.operate_privilege(&caller, body).await
        });
        reply(result.await, ErrorCode::OperatePrivilegeFailure)
    }

    async fn operate_privilege_v2(
        &self,
        request: Request<OperatePrivilegeV2Request>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.operate_privilege_v2(&caller, body).await
        });
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
        let result = self.audited(request, async |caller, body| {
            self.add_group(&caller, body.group_name).await
        });
        reply(result.await, ErrorCode::CreatePrivilegeGroupFailure)
    }

    async fn drop_privilege_group(
        &self,
        request: Request<DropPrivilegeGroupRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.remove_group(&caller, body.group_name).await
        });
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
        let result = self.audited(request, async |caller, body| {
            self.change_group(&caller, body).await
        });
        reply(result.await, ErrorCode::OperatePrivilegeGroupFailure)
    }
}
