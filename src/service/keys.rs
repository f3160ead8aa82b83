//! credstore's own `credstore.v1` services, for credentials Milvus has no RPC for:
//! `ApiKeys` (create, list, revoke) and `Oidc` (revoke tokens, list revocations and recently
//! seen identities). They run behind the same authentication as `MilvusService`, and every
//! write is acknowledged by every live replica before it returns (`Api::confirm`).
//!
//! Who may: root and members of `admin` ("managers") for any owner and any role; any local
//! user for their own keys, with roles among those they act with (a key made by a key that
//! lists roles must list roles too, so a limited key cannot mint an unlimited one). OIDC
//! revocation is for managers only. Errors reach the wire in one place, [`to_grpc`], as
//! plain gRPC codes (this is not a Milvus API, so there is no `common.Status`).

use std::collections::BTreeSet;

use tonic::{Request, Response};

use crate::audit::{self, Audit};
use crate::auth::{Roles, apikey};
use crate::catalog::{ADMIN_ROLE, CatalogError, PUBLIC_ROLE, RoleName, StoredKey};
use crate::coherence::CoherenceError;
use crate::password::Username;
use crate::proto::credstore::api_keys_server::ApiKeys;
use crate::proto::credstore::oidc_server::Oidc;
use crate::proto::credstore::*;
use crate::service::audit_target::AuditTarget;
use crate::service::status::ServiceError;
use crate::service::{Api, Caller, MAX_DESCRIPTION_LEN};

/// Most keys (revoked ones not counted) one owner may hold: each is a record every replica
/// may load, so one user must not be able to grow the store without bound.
pub const MAX_KEYS_PER_OWNER: usize = 100;

/// Longest lifetime a key may be given (ten years): keeps expiry arithmetic far from overflow.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Longest `jti` or subject accepted for a revocation.
pub const MAX_CLAIM_LEN: usize = 1024;

/// Most roles one key may list.
pub const MAX_KEY_ROLES: usize = 32;

/// Why a `credstore.v1` request failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(String),
}

impl From<CatalogError> for KeysError {
    fn from(err: CatalogError) -> Self {
        KeysError::Service(err.into())
    }
}

impl From<CoherenceError> for KeysError {
    fn from(err: CoherenceError) -> Self {
        KeysError::Service(err.into())
    }
}

impl KeysError {
    /// The audit line's `result`.
    fn class(&self) -> &'static str {
        match self {
            KeysError::Service(err) => err.class(),
            KeysError::Invalid(_) => "invalid",
            KeysError::NotFound(_) => "not_found",
            KeysError::Denied(_) => "permission_denied",
        }
    }
}

/// The one mapping of these services' errors to the wire (and to a log level).
pub fn to_grpc(err: &KeysError) -> tonic::Status {
    let message = err.to_string();
    let code = match err {
        KeysError::Invalid(_) => tonic::Code::InvalidArgument,
        KeysError::NotFound(_) => tonic::Code::NotFound,
        KeysError::Denied(_) => tonic::Code::PermissionDenied,
        KeysError::Service(inner) => match inner {
            ServiceError::InvalidName(_)
            | ServiceError::InvalidPassword(_)
            | ServiceError::InvalidRole(_)
            | ServiceError::DescriptionTooLong { .. }
            | ServiceError::Base64(_)
            | ServiceError::Refused(_)
            | ServiceError::DeleteRoot
            | ServiceError::DefaultRole(_)
            | ServiceError::WrongOldPassword(_) => tonic::Code::InvalidArgument,
            ServiceError::UserExists(_) | ServiceError::RoleExists(_) => tonic::Code::AlreadyExists,
            ServiceError::UserNotFound(_)
            | ServiceError::RoleNotFound(_)
            | ServiceError::NoSuchRole
            | ServiceError::NoSuchUser
            | ServiceError::GroupNotFound(_) => tonic::Code::NotFound,
            ServiceError::Conflict(_) => tonic::Code::Aborted,
            ServiceError::PermissionDenied { .. } => tonic::Code::PermissionDenied,
            ServiceError::Unauthenticated => tonic::Code::Unauthenticated,
            ServiceError::Unavailable(_) | ServiceError::NotConfirmed(_) => {
                tracing::warn!(%message, "request not completed");
                tonic::Code::Unavailable
            }
            ServiceError::Busy => tonic::Code::ResourceExhausted,
            ServiceError::Corrupt(_)
            | ServiceError::BadHash(_)
            | ServiceError::Store(_)
            | ServiceError::Internal(_) => {
                tracing::error!(%message, "request failed");
                tonic::Code::Internal
            }
        },
    };
    tonic::Status::new(code, message)
}

fn answer<T>(result: Result<T, KeysError>) -> Result<Response<T>, tonic::Status> {
    result.map(Response::new).map_err(|e| to_grpc(&e))
}

impl Api {
    /// Runs `handler` on the request's caller and body, then writes one audit line: the
    /// request's action, the caller, the target fields (those the request names, then those
    /// the handler adds), the revision written and the outcome's class.
    async fn keys_audited<T: AuditTarget, R>(
        &self,
        request: Request<T>,
        handler: impl AsyncFnOnce(
            Caller,
            T,
            &mut serde_json::Map<String, serde_json::Value>,
        ) -> Result<R, KeysError>,
    ) -> Result<R, KeysError> {
        let (caller, body) = Caller::of(request)?;
        let mut fields = body.target();
        let result = handler(caller.clone(), body, &mut fields).await;
        record(&self.audit, T::ACTION, &caller, fields, &result);
        result
    }

    /// Whether the caller may act for anyone: authorization off, an exempt root, or `admin`
    /// among the roles it acts with.
    async fn is_manager(&self, caller: &Caller) -> Result<bool, KeysError> {
        if self.policies.exempt(&caller.who) {
            return Ok(true);
        }
        let roles = self
            .policies
            .roles_of(&caller.who)
            .await
            .map_err(ServiceError::from)?;
        Ok(roles.iter().any(|r| r == ADMIN_ROLE))
    }

    /// Refuses unless the caller is a manager or `owner` itself.
    async fn require_owner_or_manager(
        &self,
        caller: &Caller,
        owner: &str,
        what: &str,
    ) -> Result<(), KeysError> {
        let own = caller.who.username().is_some_and(|me| me.as_str() == owner);
        if own || self.is_manager(caller).await? {
            return Ok(());
        }
        Err(KeysError::Denied(format!(
            "{what}: permission deny to {}: only root, members of admin and the key's owner may",
            caller.who.name().unwrap_or_default()
        )))
    }

    async fn create_key(
        &self,
        caller: &Caller,
        body: CreateApiKeyRequest,
        audit_fields: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<CreateApiKeyResponse, KeysError> {
        let owner = match body.owner.trim() {
            "" => caller.who.username().cloned().ok_or_else(|| {
                KeysError::Invalid("an owner is required: the caller is not a local user".into())
            })?,
            named => Username::parse(named, &self.limits).map_err(ServiceError::InvalidName)?,
        };
        let mut roles = BTreeSet::new();
        if body.roles.len() > MAX_KEY_ROLES {
            return Err(KeysError::Invalid(format!(
                "a key lists at most {MAX_KEY_ROLES} roles"
            )));
        }
        for raw in &body.roles {
            let role = RoleName::parse(raw).map_err(ServiceError::InvalidRole)?;
            roles.insert(role.as_str().to_string());
        }
        if body.description.len() > MAX_DESCRIPTION_LEN {
            return Err(ServiceError::DescriptionTooLong {
                len: body.description.len(),
                max: MAX_DESCRIPTION_LEN,
            }
            .into());
        }
        if body.ttl_seconds > MAX_TTL_SECONDS {
            return Err(KeysError::Invalid(format!(
                "ttl must be at most {MAX_TTL_SECONDS} seconds (ten years)"
            )));
        }
        if !self.is_manager(caller).await? {
            if caller.who.username() != Some(&owner) {
                return Err(KeysError::Denied(format!(
                    "CreateApiKey: permission deny to {}: only root and members of admin may create keys for other users",
                    caller.who.name().unwrap_or_default()
                )));
            }
            if matches!(caller.who.roles(), Roles::Within(_)) && roles.is_empty() {
                return Err(KeysError::Invalid(
                    "a key made with a key that lists roles must list its roles too".into(),
                ));
            }
            let held = self
                .policies
                .roles_of(&caller.who)
                .await
                .map_err(ServiceError::from)?;
            if let Some(role) = roles
                .iter()
                .find(|r| r.as_str() != PUBLIC_ROLE && !held.contains(r))
            {
                return Err(KeysError::Denied(format!(
                    "CreateApiKey: permission deny to {}: the key may list only roles its owner acts with, not {role}",
                    caller.who.name().unwrap_or_default()
                )));
            }
        }
        for role in &roles {
            let name = RoleName::parse(role).map_err(ServiceError::InvalidRole)?;
            if !self.catalog.role_exists(&name).await? {
                return Err(ServiceError::RoleNotFound(role.clone()).into());
            }
        }
        if self.catalog.get_user(&owner).await?.value.is_none() {
            return Err(ServiceError::UserNotFound(owner.to_string()).into());
        }
        let active = self
            .catalog
            .list_api_keys()
            .await?
            .into_iter()
            .filter(|(key, _)| key.owner == owner && key.revoked.is_none())
            .count();
        if active >= MAX_KEYS_PER_OWNER {
            return Err(KeysError::Invalid(format!(
                "{owner} already holds {active} keys, the most allowed: revoke one first"
            )));
        }
        let now = apikey::now_unix();
        let expires = (body.ttl_seconds > 0).then(|| now + body.ttl_seconds as i64);
        // A 64-bit id collides with negligible odds; a collision draws again.
        for _ in 0..4 {
            let new = apikey::generate().map_err(|e| {
                ServiceError::Internal(crate::password::HashError::Hashing(e.to_string()))
            })?;
            let record = StoredKey {
                id: new.id.clone(),
                owner: owner.clone(),
                hash: new.hash.clone(),
                roles: roles.iter().cloned().collect(),
                created: now,
                expires,
                description: body.description.clone(),
                revoked: None,
                mod_revision: 0,
            };
            let Some(revision) = self.catalog.create_api_key(&record).await? else {
                continue;
            };
            audit_fields.insert("id".into(), new.id.clone().into());
            tracing::info!(id = %new.id, owner = %owner, revision, "API key created");
            self.confirm(caller, revision).await?;
            return Ok(CreateApiKeyResponse {
                key: new.key.to_string(),
                info: Some(info(&record, None)),
            });
        }
        Err(KeysError::Service(ServiceError::Conflict(
            "API key id".into(),
        )))
    }

    async fn list_keys(
        &self,
        caller: &Caller,
        body: ListApiKeysRequest,
    ) -> Result<ListApiKeysResponse, KeysError> {
        let owner = body.owner.trim();
        let manager = self.is_manager(caller).await?;
        let mine = caller.who.username().map(Username::as_str);
        let wanted = match (owner, manager) {
            ("", true) => None,
            ("", false) => Some(mine.ok_or_else(|| {
                KeysError::Denied("ListApiKeys: permission deny: not a local user".into())
            })?),
            (named, _) => {
                self.require_owner_or_manager(caller, named, "ListApiKeys")
                    .await?;
                Some(named)
            }
        };
        let mut keys: Vec<ApiKeyInfo> = self
            .catalog
            .list_api_keys()
            .await?
            .iter()
            .filter(|(key, _)| wanted.is_none_or(|w| key.owner.as_str() == w))
            .map(|(key, used)| info(key, *used))
            .collect();
        keys.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        Ok(ListApiKeysResponse { keys })
    }

    async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<(), KeysError> {
        if !apikey::is_id(id) {
            return Err(KeysError::Invalid(format!(
                "{id:?} is not an API key id (16 hex digits, as `credstore apikey list` shows)"
            )));
        }
        for _ in 0..8 {
            let Some(key) = self.catalog.get_api_key(id).await?.value else {
                return Err(KeysError::NotFound(format!("API key {id} not found")));
            };
            self.require_owner_or_manager(caller, key.owner.as_str(), "RevokeApiKey")
                .await?;
            if key.revoked.is_some() {
                return Ok(());
            }
            if let Some(revision) = self
                .catalog
                .revoke_api_key(&key, apikey::now_unix())
                .await?
            {
                tracing::info!(id, owner = %key.owner, revision, "API key revoked");
                self.confirm(caller, revision).await?;
                return Ok(());
            }
        }
        Err(ServiceError::Conflict(format!("API key {id}")).into())
    }

    async fn revoke_tokens(
        &self,
        caller: &Caller,
        body: RevokeTokensRequest,
    ) -> Result<RevokeTokensResponse, KeysError> {
        if !self.is_manager(caller).await? {
            return Err(KeysError::Denied(format!(
                "RevokeTokens: permission deny to {}: only root and members of admin may revoke tokens",
                caller.who.name().unwrap_or_default()
            )));
        }
        let (jti, subject) = (body.jti.as_str(), body.subject.as_str());
        let too_long = jti.len().max(subject.len()) > MAX_CLAIM_LEN;
        if (jti.is_empty() == subject.is_empty()) || too_long {
            return Err(KeysError::Invalid(format!(
                "give exactly one of jti and subject, each at most {MAX_CLAIM_LEN} bytes"
            )));
        }
        let now = apikey::now_unix();
        // Tokens are dated in whole seconds: one issued later in this same second is refused
        // too, rather than one issued before it being let through.
        let revision = match jti.is_empty() {
            false => self.catalog.revoke_jti(jti, now).await?,
            true => self.catalog.revoke_subject(subject, now + 1).await?,
        };
        if let Some(revision) = revision {
            tracing::info!(revision, "OIDC tokens revoked");
            self.confirm(caller, revision).await?;
        }
        Ok(RevokeTokensResponse { revoked_unix: now })
    }

    async fn list_oidc(&self, caller: &Caller) -> Result<ListOidcResponse, KeysError> {
        if !self.is_manager(caller).await? {
            return Err(KeysError::Denied(format!(
                "ListOidc: permission deny to {}: only root and members of admin may list OIDC identities and revocations",
                caller.who.name().unwrap_or_default()
            )));
        }
        let read = self.catalog.oidc_revocations().await?.value;
        let mut revocations: Vec<OidcRevocation> = read
            .jtis
            .into_iter()
            .map(|(jti, at)| OidcRevocation {
                jti,
                subject: String::new(),
                revoked_unix: at,
            })
            .chain(
                read.subjects
                    .into_iter()
                    .map(|(subject, before)| OidcRevocation {
                        jti: String::new(),
                        subject,
                        revoked_unix: before,
                    }),
            )
            .collect();
        revocations.sort_by_key(|r| r.revoked_unix);
        let identities = self
            .auth
            .oidc_identities()
            .into_iter()
            .map(|seen| OidcIdentity {
                name: seen.name,
                roles: seen.roles,
                last_seen_unix: seen.last_seen,
            })
            .collect();
        Ok(ListOidcResponse {
            revocations,
            identities,
        })
    }
}

/// What `ListApiKeys` shows of a key: never its hash.
fn info(key: &StoredKey, last_used: Option<i64>) -> ApiKeyInfo {
    ApiKeyInfo {
        id: key.id.clone(),
        owner: key.owner.to_string(),
        roles: key.roles.clone(),
        created_unix: key.created,
        expires_unix: key.expires.unwrap_or(0),
        last_used_unix: last_used.unwrap_or(0),
        description: key.description.clone(),
        revoked_unix: key.revoked.unwrap_or(0),
    }
}

fn record<R>(
    audit: &Audit,
    action: &'static str,
    caller: &Caller,
    target: serde_json::Map<String, serde_json::Value>,
    result: &Result<R, KeysError>,
) {
    audit.change(audit::Change {
        action,
        user: caller.who.name(),
        peer: caller.peer,
        target,
        revision: caller.written(),
        result: result.as_ref().map_or_else(KeysError::class, |_| "ok"),
    });
}

#[tonic::async_trait]
impl ApiKeys for Api {
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, tonic::Status> {
        let result = self.keys_audited(request, async |caller, body, fields| {
            self.create_key(&caller, body, fields).await
        });
        answer(result.await)
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, tonic::Status> {
        let result = async {
            let (caller, body) = Caller::of(request)?;
            self.list_keys(&caller, body).await
        };
        answer(result.await)
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, tonic::Status> {
        let result = self.keys_audited(request, async |caller, body, _| {
            self.revoke_key(&caller, body.id.trim()).await
        });
        answer(result.await.map(|()| RevokeApiKeyResponse {}))
    }
}

#[tonic::async_trait]
impl Oidc for Api {
    async fn revoke_tokens(
        &self,
        request: Request<RevokeTokensRequest>,
    ) -> Result<Response<RevokeTokensResponse>, tonic::Status> {
        let result = self.keys_audited(request, async |caller, body, _| {
            self.revoke_tokens(&caller, body).await
        });
        answer(result.await)
    }

    async fn list_oidc(
        &self,
        request: Request<ListOidcRequest>,
    ) -> Result<Response<ListOidcResponse>, tonic::Status> {
        let result = async {
            let (caller, _) = Caller::of(request)?;
            self.list_oidc(&caller).await
        };
        answer(result.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_code() {
        let check = |err: KeysError, code: tonic::Code| assert_eq!(to_grpc(&err).code(), code);
        check(KeysError::Invalid("x".into()), tonic::Code::InvalidArgument);
        check(KeysError::NotFound("x".into()), tonic::Code::NotFound);
        check(KeysError::Denied("x".into()), tonic::Code::PermissionDenied);
        check(
            ServiceError::UserNotFound("bob".into()).into(),
            tonic::Code::NotFound,
        );
        check(
            ServiceError::Unavailable(crate::meta::MetaError::Unavailable("x".into())).into(),
            tonic::Code::Unavailable,
        );
        let status = to_grpc(&KeysError::Denied("RevokeApiKey: permission deny".into()));
        assert_eq!(status.message(), "RevokeApiKey: permission deny");
    }
}
