//! The one place where errors reach the wire: every [`ServiceError`] becomes either a gRPC
//! error (authentication, permission, overload, etcd away) or gRPC OK with a Milvus
//! `common.Status` carrying both the new `code` and the legacy `error_code`. The `match` is
//! exhaustive, so a new variant does not compile until someone decides what pymilvus sees —
//! and a deterministic error can never leak out as a retryable UNAVAILABLE.

use crate::catalog::CatalogError;
use crate::coherence::CoherenceError;
use crate::meta::MetaError;
use crate::password::{HashError, RuleError};
use crate::proto::common::{ErrorCode, Status};
use crate::rbac::validate::Refusal;
use crate::rbac::{Denial, Refused};

/// Everything a handler can fail with. No variant carries a password or hash; errors from the
/// modules below are kept as sources.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}: invalid parameter")]
    InvalidName(RuleError),
    #[error("{0}")]
    InvalidPassword(RuleError),
    #[error("{0}: invalid parameter")]
    InvalidRole(String),
    #[error(
        "invalid description length: invalid parameter[{len} out of range 0 <= value <= {max}]"
    )]
    DescriptionTooLong { len: usize, max: usize },
    #[error("decode password fail: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("user already exists: {0}: invalid parameter")]
    UserExists(String),
    #[error("old password not correct for {0}: not authenticated")]
    WrongOldPassword(String),
    #[error("root user cannot be deleted: privilege not permitted")]
    DeleteRoot,
    #[error("user not found: {0}")]
    UserNotFound(String),
    #[error("role [{0}] already exists")]
    RoleExists(String),
    #[error("role [{0}] not found")]
    RoleNotFound(String),
    /// Milvus's answer to taking a user out of a role that does not exist.
    #[error("not found the role, maybe the role isn't existed or internal system error")]
    NoSuchRole,
    /// Milvus's answer to a role operation naming a user that does not exist.
    #[error("not found the user, maybe the user isn't existed or internal system error")]
    NoSuchUser,
    #[error("the role[{0}] is a default role, which can't be dropped: privilege not permitted")]
    DefaultRole(String),
    #[error("there is no privilege group name [{0}] defined in system to operate")]
    GroupNotFound(String),
    /// A grant, role or privilege-group request Milvus refuses, in its words.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// What changed: `user bob`, `role reader`.
    #[error("{0} was changed concurrently; read it again and retry")]
    Conflict(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(#[source] CatalogError),
    #[error("stored data is unreadable: {0}")]
    BadHash(#[source] HashError),
    /// `rbac::decide`'s denial, in Milvus's words.
    #[error(transparent)]
    PermissionDenied(#[from] Denial),
    #[error("request is not authenticated")]
    Unauthenticated,
    #[error("credential store unavailable, retry: {0}")]
    Unavailable(#[source] MetaError),
    #[error("credential store failed: {0}")]
    Store(#[source] MetaError),
    /// The hash pool's queue is full; the text is the pool's own.
    #[error("{}", HashError::Busy)]
    Busy,
    #[error("internal error: {0}")]
    Internal(#[source] HashError),
    #[error(transparent)]
    NotConfirmed(CoherenceError),
}

impl ServiceError {
    /// The error's class for an audit line's `result`: a fixed word, never the text (which
    /// may quote client input).
    pub fn class(&self) -> &'static str {
        match self {
            ServiceError::InvalidName(_)
            | ServiceError::InvalidPassword(_)
            | ServiceError::InvalidRole(_)
            | ServiceError::DescriptionTooLong { .. }
            | ServiceError::Base64(_) => "invalid",
            ServiceError::Refused(refusal) if refusal.is_input_error() => "invalid",
            ServiceError::UserExists(_) | ServiceError::RoleExists(_) => "exists",
            ServiceError::UserNotFound(_)
            | ServiceError::RoleNotFound(_)
            | ServiceError::NoSuchRole
            | ServiceError::NoSuchUser
            | ServiceError::GroupNotFound(_) => "not_found",
            ServiceError::WrongOldPassword(_) => "wrong_old_password",
            ServiceError::DeleteRoot | ServiceError::DefaultRole(_) | ServiceError::Refused(_) => {
                "refused"
            }
            ServiceError::Conflict(_) => "conflict",
            ServiceError::PermissionDenied(_) => "permission_denied",
            ServiceError::Unauthenticated => "unauthenticated",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Busy => "busy",
            ServiceError::NotConfirmed(_) => "not_confirmed",
            ServiceError::Corrupt(_)
            | ServiceError::BadHash(_)
            | ServiceError::Store(_)
            | ServiceError::Internal(_) => "error",
        }
    }
}

/// Maps `err` to what pymilvus sees: `Err` is a gRPC error, `Ok` a failed `common.Status`
/// whose legacy `error_code` is `failure` (the one Milvus reports for a failed operation of
/// this kind) unless the error has its own. Also logs it at the level it deserves.
pub fn to_status(err: &ServiceError, failure: ErrorCode) -> Result<Status, tonic::Status> {
    let reason = err.to_string();
    let (code, legacy, input_error) = match err {
        ServiceError::InvalidName(_)
        | ServiceError::InvalidPassword(_)
        | ServiceError::InvalidRole(_)
        | ServiceError::DescriptionTooLong { .. } => {
            tracing::debug!(%reason, "invalid input");
            (1100, ErrorCode::IllegalArgument, true)
        }
        ServiceError::UserExists(_) => {
            tracing::debug!(%reason, "refused");
            (1100, failure, true)
        }
        // Milvus answers these with the legacy UnexpectedError whatever the operation
        // (checked against Milvus 2.3.5: tests/compat/test_differential.py).
        ServiceError::WrongOldPassword(_) => {
            tracing::debug!(%reason, "refused");
            (1400, ErrorCode::UnexpectedError, false)
        }
        ServiceError::DeleteRoot | ServiceError::DefaultRole(_) => {
            tracing::debug!(%reason, "refused");
            (1401, ErrorCode::UnexpectedError, false)
        }
        ServiceError::Base64(_) => {
            tracing::debug!(%reason, "refused");
            (65535, ErrorCode::UnexpectedError, false)
        }
        ServiceError::UserNotFound(_)
        | ServiceError::RoleExists(_)
        | ServiceError::RoleNotFound(_)
        | ServiceError::GroupNotFound(_)
        | ServiceError::NoSuchRole
        | ServiceError::NoSuchUser
        | ServiceError::Conflict(_) => {
            tracing::debug!(%reason, "refused");
            (65535, failure, false)
        }
        ServiceError::Refused(refusal) if refusal.is_input_error() => {
            tracing::debug!(%reason, "invalid input");
            (1100, ErrorCode::IllegalArgument, true)
        }
        ServiceError::Refused(_) => {
            tracing::debug!(%reason, "refused");
            (65535, failure, false)
        }
        ServiceError::NotConfirmed(_) => {
            tracing::warn!(%reason, "write not confirmed by every replica");
            (65535, failure, false)
        }
        ServiceError::Corrupt(_)
        | ServiceError::BadHash(_)
        | ServiceError::Store(_)
        | ServiceError::Internal(_) => {
            tracing::error!(%reason, "request failed");
            (65535, failure, false)
        }
        ServiceError::PermissionDenied(_) => {
            tracing::debug!(%reason, "permission denied");
            return Err(tonic::Status::permission_denied(reason));
        }
        ServiceError::Unauthenticated => return Err(tonic::Status::unauthenticated(reason)),
        ServiceError::Unavailable(_) => {
            tracing::warn!(%reason, "store unavailable");
            return Err(tonic::Status::unavailable(reason));
        }
        ServiceError::Busy => {
            tracing::warn!(%reason, "hashing queue full");
            return Err(tonic::Status::resource_exhausted(reason));
        }
    };
    let mut status = Status {
        error_code: legacy as i32,
        reason,
        code,
        ..Status::default()
    };
    if input_error {
        status
            .extra_info
            .insert("is_input_error".into(), "true".into());
    }
    Ok(status)
}

impl From<Refused> for ServiceError {
    fn from(refused: Refused) -> ServiceError {
        match refused {
            Refused::Denied(denial) => ServiceError::PermissionDenied(denial),
            Refused::Unavailable(e) => e.into(),
        }
    }
}

impl From<CatalogError> for ServiceError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::Meta(e) => e.into(),
            CatalogError::UserExists(name) => ServiceError::UserExists(name),
            CatalogError::UserNotFound(name) => ServiceError::UserNotFound(name),
            CatalogError::UserConflict(name) => ServiceError::Conflict(format!("user {name}")),
            CatalogError::RoleConflict(role) => ServiceError::Conflict(format!("role {role}")),
            CatalogError::RoleExists(role) => ServiceError::RoleExists(role),
            CatalogError::RoleNotFound(role) => ServiceError::RoleNotFound(role),
            CatalogError::DefaultRole(role) => ServiceError::DefaultRole(role),
            CatalogError::GroupNotFound(group) => ServiceError::GroupNotFound(group),
            CatalogError::GroupConflict(group) => {
                ServiceError::Conflict(format!("privilege group {group}"))
            }
            corrupt @ (CatalogError::BadJson { .. }
            | CatalogError::BadHash { .. }
            | CatalogError::BadValue { .. }) => ServiceError::Corrupt(corrupt),
        }
    }
}

impl From<MetaError> for ServiceError {
    fn from(err: MetaError) -> Self {
        match err {
            MetaError::Unavailable(_) | MetaError::WatchClosed => ServiceError::Unavailable(err),
            MetaError::Etcd(_) | MetaError::Embedded { .. } => ServiceError::Store(err),
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => ServiceError::Busy,
            HashError::Malformed => ServiceError::BadHash(err),
            HashError::Hashing(_) | HashError::TooWeak(_) | HashError::BcryptTooLong => {
                ServiceError::Internal(err)
            }
        }
    }
}

impl From<CoherenceError> for ServiceError {
    fn from(err: CoherenceError) -> Self {
        match err {
            CoherenceError::Meta(e) => e.into(),
            not_confirmed @ CoherenceError::NotConfirmed { .. } => {
                ServiceError::NotConfirmed(not_confirmed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (gRPC code if not OK, or Status code, legacy code, reason)
    fn check(err: ServiceError, expected: Result<(i32, ErrorCode, &str), (tonic::Code, &str)>) {
        let got = to_status(&err, ErrorCode::CreateCredentialFailure);
        match (got, expected) {
            (Ok(status), Ok((code, legacy, reason))) => {
                assert_eq!(
                    (status.code, status.error_code, status.reason.as_str()),
                    (code, legacy as i32, reason)
                );
            }
            (Err(status), Err((code, message))) => {
                assert_eq!((status.code(), status.message()), (code, message))
            }
            (got, want) => panic!("{err:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn every_variant_maps_as_milvus_does() {
        use ServiceError as E;
        let ok = |code, legacy, reason| Ok((code, legacy, reason));
        let long = RuleError::PasswordLength {
            len: 5,
            min: 6,
            max: 256,
        };
        check(
            E::InvalidName(RuleError::EmptyName),
            ok(
                1100,
                ErrorCode::IllegalArgument,
                "username must be not empty: invalid parameter",
            ),
        );
        check(
            E::InvalidPassword(long),
            ok(
                1100,
                ErrorCode::IllegalArgument,
                "invalid password length: invalid parameter[5 out of range 6 <= value <= 256]",
            ),
        );
        check(
            E::InvalidRole("bad".into()),
            ok(1100, ErrorCode::IllegalArgument, "bad: invalid parameter"),
        );
        check(
            E::Base64(base64::DecodeError::InvalidLength(5)),
            ok(
                65535,
                ErrorCode::UnexpectedError,
                "decode password fail: Invalid input length: 5",
            ),
        );
        check(
            E::DescriptionTooLong {
                len: 1025,
                max: 1024,
            },
            ok(
                1100,
                ErrorCode::IllegalArgument,
                "invalid description length: invalid parameter[1025 out of range 0 <= value <= 1024]",
            ),
        );
        check(
            E::NoSuchRole,
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "not found the role, maybe the role isn't existed or internal system error",
            ),
        );
        check(
            E::NoSuchUser,
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "not found the user, maybe the user isn't existed or internal system error",
            ),
        );
        check(
            E::UserExists("bob".into()),
            ok(
                1100,
                ErrorCode::CreateCredentialFailure,
                "user already exists: bob: invalid parameter",
            ),
        );
        check(
            E::WrongOldPassword("bob".into()),
            ok(
                1400,
                ErrorCode::UnexpectedError,
                "old password not correct for bob: not authenticated",
            ),
        );
        check(
            E::DeleteRoot,
            ok(
                1401,
                ErrorCode::UnexpectedError,
                "root user cannot be deleted: privilege not permitted",
            ),
        );
        check(
            E::UserNotFound("x".into()),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "user not found: x",
            ),
        );
        check(
            E::RoleExists("r".into()),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "role [r] already exists",
            ),
        );
        check(
            E::RoleNotFound("r".into()),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "role [r] not found",
            ),
        );
        check(
            E::GroupNotFound("g".into()),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "there is no privilege group name [g] defined in system to operate",
            ),
        );
        check(
            E::DefaultRole("admin".into()),
            ok(
                1401,
                ErrorCode::UnexpectedError,
                "the role[admin] is a default role, which can't be dropped: privilege not permitted",
            ),
        );
        check(
            CatalogError::UserConflict("bob".into()).into(),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "user bob was changed concurrently; read it again and retry",
            ),
        );
        check(
            CatalogError::RoleConflict("r".into()).into(),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "role r was changed concurrently; read it again and retry",
            ),
        );
        check(
            E::Corrupt(CatalogError::BadHash {
                key: "k".into(),
                source: HashError::Malformed,
            }),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "stored data is unreadable: stored value at k holds no valid hash: stored credential hash is invalid",
            ),
        );
        check(
            HashError::Malformed.into(),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "stored data is unreadable: stored credential hash is invalid",
            ),
        );
        check(
            MetaError::Etcd("s".into()).into(),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "credential store failed: etcd request failed: s",
            ),
        );
        check(
            HashError::Hashing("i".into()).into(),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "internal error: password hashing failed: i",
            ),
        );
        let not_confirmed = CoherenceError::NotConfirmed {
            revision: 7,
            replicas: vec!["b".into()],
        };
        check(
            E::NotConfirmed(not_confirmed),
            ok(
                65535,
                ErrorCode::CreateCredentialFailure,
                "change stored at revision 7 but not yet confirmed by replicas [\"b\"]; retrying is safe",
            ),
        );
        check(
            E::PermissionDenied(Denial::Privilege {
                privilege: crate::rbac::Privilege::from_api("CreateOwnership").unwrap(),
                user: "bob".into(),
                db: "default".into(),
            }),
            Err((
                tonic::Code::PermissionDenied,
                "PrivilegeCreateOwnership: permission deny to bob in the `default` database",
            )),
        );
        check(
            E::Unauthenticated,
            Err((tonic::Code::Unauthenticated, "request is not authenticated")),
        );
        check(
            MetaError::Unavailable("down".into()).into(),
            Err((
                tonic::Code::Unavailable,
                "credential store unavailable, retry: etcd is unavailable: down",
            )),
        );
        check(
            HashError::Busy.into(),
            Err((
                tonic::Code::ResourceExhausted,
                "too many password hash computations are waiting; retry later",
            )),
        );
    }

    #[test]
    fn input_errors_are_flagged() {
        let status = to_status(
            &ServiceError::InvalidName(RuleError::EmptyName),
            ErrorCode::CreateCredentialFailure,
        )
        .unwrap();
        assert_eq!(
            status.extra_info.get("is_input_error").map(String::as_str),
            Some("true")
        );
    }
}
