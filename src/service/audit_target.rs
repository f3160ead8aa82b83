//! What an audit line says a change request targets: [`AuditTarget`], one implementation per
//! audited request type (its action name and the names it reads from the body, never a
//! secret), and [`Api::audited`], which runs a handler and writes the line. Served methods
//! say only which handler runs; what gets audited for each is listed here, in one place.

use serde_json::{Map, Value};
use tonic::Request;

use crate::audit::{self, target};
use crate::proto::credstore::{
    CreateApiKeyRequest, RevokeApiKeyRequest, RevokeTokensRequest, UnlockRequest,
};
use crate::proto::milvus::*;
use crate::service::status::ServiceError;
use crate::service::{Api, Caller};

/// A request an audit line is written for.
pub(super) trait AuditTarget {
    /// The action the line names: the RPC's name (`CreateCredential`, `Unlock`).
    const ACTION: &'static str;
    /// The names the request targets, as sent (no password, hash or key material).
    fn target(&self) -> Map<String, Value>;
}

/// An operation type's proto name for an audit line (`AddUserToRole`, `Grant`), or `null`.
fn op_name<E>(name: Result<&'static str, E>) -> Value {
    name.map_or(Value::Null, Into::into)
}

/// The privilege a grant names, as sent.
fn privilege_name(grantor: Option<GrantorEntity>) -> String {
    grantor
        .and_then(|g| g.privilege)
        .map(|p| p.name)
        .unwrap_or_default()
}

/// Roles as a JSON list.
fn roles(roles: &[String]) -> Value {
    roles.iter().map(|r| Value::from(r.clone())).collect()
}

impl AuditTarget for CreateCredentialRequest {
    const ACTION: &'static str = "CreateCredential";
    fn target(&self) -> Map<String, Value> {
        target([("user", self.username.clone().into())])
    }
}

impl AuditTarget for UpdateCredentialRequest {
    const ACTION: &'static str = "UpdateCredential";
    fn target(&self) -> Map<String, Value> {
        target([
            ("user", self.username.clone().into()),
            ("password", (!self.new_password.is_empty()).into()),
        ])
    }
}

impl AuditTarget for DeleteCredentialRequest {
    const ACTION: &'static str = "DeleteCredential";
    fn target(&self) -> Map<String, Value> {
        target([("user", self.username.clone().into())])
    }
}

impl AuditTarget for CreateRoleRequest {
    const ACTION: &'static str = "CreateRole";
    fn target(&self) -> Map<String, Value> {
        let role = self
            .entity
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_default();
        target([("role", role.into())])
    }
}

impl AuditTarget for AlterRoleRequest {
    const ACTION: &'static str = "AlterRole";
    fn target(&self) -> Map<String, Value> {
        target([("role", self.role_name.clone().into())])
    }
}

/// Not a change, but it exports every user's hash.
impl AuditTarget for BackupRbacMetaRequest {
    const ACTION: &'static str = "BackupRBAC";
    fn target(&self) -> Map<String, Value> {
        target([])
    }
}

impl AuditTarget for RestoreRbacMetaRequest {
    const ACTION: &'static str = "RestoreRBAC";
    fn target(&self) -> Map<String, Value> {
        let meta = self.rbac_meta.clone().unwrap_or_default();
        target([
            ("users", meta.users.len().into()),
            ("roles", meta.roles.len().into()),
            ("grants", meta.grants.len().into()),
            ("groups", meta.privilege_groups.len().into()),
        ])
    }
}

impl AuditTarget for DropRoleRequest {
    const ACTION: &'static str = "DropRole";
    fn target(&self) -> Map<String, Value> {
        target([
            ("role", self.role_name.clone().into()),
            ("force", self.force_drop.into()),
        ])
    }
}

impl AuditTarget for OperateUserRoleRequest {
    const ACTION: &'static str = "OperateUserRole";
    fn target(&self) -> Map<String, Value> {
        let op = OperateUserRoleType::try_from(self.r#type).map(|t| t.as_str_name());
        target([
            ("user", self.username.clone().into()),
            ("role", self.role_name.clone().into()),
            ("op", op_name(op)),
        ])
    }
}

impl AuditTarget for OperatePrivilegeRequest {
    const ACTION: &'static str = "OperatePrivilege";
    fn target(&self) -> Map<String, Value> {
        let entity = self.entity.clone().unwrap_or_default();
        let op = OperatePrivilegeType::try_from(self.r#type).map(|t| t.as_str_name());
        target([
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
            ("op", op_name(op)),
        ])
    }
}

impl AuditTarget for OperatePrivilegeV2Request {
    const ACTION: &'static str = "OperatePrivilegeV2";
    fn target(&self) -> Map<String, Value> {
        let op = OperatePrivilegeType::try_from(self.r#type).map(|t| t.as_str_name());
        target([
            (
                "role",
                self.role.clone().map(|r| r.name).unwrap_or_default().into(),
            ),
            ("privilege", privilege_name(self.grantor.clone()).into()),
            ("db", self.db_name.clone().into()),
            ("collection", self.collection_name.clone().into()),
            ("op", op_name(op)),
        ])
    }
}

impl AuditTarget for CreatePrivilegeGroupRequest {
    const ACTION: &'static str = "CreatePrivilegeGroup";
    fn target(&self) -> Map<String, Value> {
        target([("group", self.group_name.clone().into())])
    }
}

impl AuditTarget for DropPrivilegeGroupRequest {
    const ACTION: &'static str = "DropPrivilegeGroup";
    fn target(&self) -> Map<String, Value> {
        target([("group", self.group_name.clone().into())])
    }
}

impl AuditTarget for OperatePrivilegeGroupRequest {
    const ACTION: &'static str = "OperatePrivilegeGroup";
    fn target(&self) -> Map<String, Value> {
        let privileges: Vec<Value> = self
            .privileges
            .iter()
            .map(|p| p.name.clone().into())
            .collect();
        let op = OperatePrivilegeGroupType::try_from(self.r#type).map(|t| t.as_str_name());
        target([
            ("group", self.group_name.clone().into()),
            ("privileges", privileges.into()),
            ("op", op_name(op)),
        ])
    }
}

impl AuditTarget for UnlockRequest {
    const ACTION: &'static str = "Unlock";
    fn target(&self) -> Map<String, Value> {
        target([("user", self.user_name.clone().into())])
    }
}

impl AuditTarget for CreateApiKeyRequest {
    const ACTION: &'static str = "CreateApiKey";
    fn target(&self) -> Map<String, Value> {
        target([
            ("owner", self.owner.clone().into()),
            ("roles", roles(&self.roles)),
            ("ttl_seconds", self.ttl_seconds.into()),
        ])
    }
}

impl AuditTarget for RevokeApiKeyRequest {
    const ACTION: &'static str = "RevokeApiKey";
    fn target(&self) -> Map<String, Value> {
        target([("id", self.id.clone().into())])
    }
}

impl AuditTarget for RevokeTokensRequest {
    const ACTION: &'static str = "RevokeTokens";
    fn target(&self) -> Map<String, Value> {
        target([
            ("jti", self.jti.clone().into()),
            ("subject", self.subject.clone().into()),
        ])
    }
}

impl Api {
    /// Runs `handler` on the request's caller and body, then writes one audit line: the
    /// request's action, the caller, its target (read only while the audit log is on), the
    /// revision written and the outcome's class.
    pub(super) async fn audited<T: AuditTarget, R>(
        &self,
        request: Request<T>,
        handler: impl AsyncFnOnce(Caller, T) -> Result<R, ServiceError>,
    ) -> Result<R, ServiceError> {
        let (caller, body) = Caller::of(request)?;
        let target = match self.audit.is_on() {
            true => body.target(),
            false => Map::new(),
        };
        let result = handler(caller.clone(), body).await;
        self.audit.change(audit::Change {
            action: T::ACTION,
            user: caller.who.name(),
            peer: caller.peer,
            target,
            revision: caller.written(),
            result: result.as_ref().map_or_else(ServiceError::class, |_| "ok"),
        });
        result
    }
}
