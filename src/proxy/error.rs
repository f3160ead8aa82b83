//! [`Refusal`]: every way the proxy tier answers a call itself instead of forwarding it (or
//! after forwarding it), and the one place these reach the wire ([`Refusal::to_status`]).
//! The match is exhaustive, so a new refusal does not compile until someone decides what
//! pymilvus sees; a deterministic refusal is never UNAVAILABLE (pymilvus would retry it).

use tonic::Status;

use crate::catalog::CatalogError;
use crate::coherence::CoherenceError;
use crate::proxy::subject::SubjectError;
use crate::rbac::{Denial, Refused};

/// Why a call was not (fully) served by the upstream.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No `Authenticated` in the request: the auth layer did not run (a wiring bug).
    #[error("request is not authenticated")]
    Unauthenticated,
    #[error("unknown method {0}")]
    UnknownMethod(String),
    #[error("{0} is a streaming method, which credstore does not forward")]
    Streaming(String),
    #[error("credstore does not implement {0}")]
    NotImplemented(String),
    #[error(
        "{0} is served by the upstream Milvus, and none is configured: set credstore.upstream.uri (serve --upstream)"
    )]
    NoUpstream(String),
    /// Row-level security and the like: upstream, every call is credstore's identity.
    #[error(
        "{0} depends on the caller's identity at the upstream, where every call through credstore is credstore's own: refused until credstore enforces it itself"
    )]
    CallerDependent(String),
    #[error("{0}")]
    Subject(#[from] SubjectError),
    #[error("{0}")]
    Denied(#[from] Denial),
    #[error("cannot load the authorization policy: {0}")]
    Policy(#[source] CatalogError),
    /// An alias could not be resolved because the upstream did not answer.
    #[error("cannot resolve {name:?} in database {db:?} at the upstream: {reason}")]
    Resolve {
        db: String,
        name: String,
        reason: String,
    },
    /// The upstream acted, but credstore could not record what follows from it (grants of a
    /// dropped or renamed collection, the alias epoch). Retrying the call completes it.
    #[error(
        "{method} succeeded upstream, but credstore could not update its grants and aliases: {reason}; retry the call"
    )]
    Aftermath { method: String, reason: String },
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Refusal {
        match refused {
            Refused::Denied(denial) => Refusal::Denied(denial),
            Refused::Unavailable(e) => Refusal::Policy(e),
        }
    }
}

impl Refusal {
    pub fn aftermath(method: &str, reason: impl std::fmt::Display) -> Refusal {
        Refusal::Aftermath {
            method: method.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn coherence(method: &str, e: CoherenceError) -> Refusal {
        Refusal::aftermath(method, e)
    }

    /// The gRPC answer.
    pub fn to_status(&self) -> Status {
        let text = self.to_string();
        match self {
            Refusal::Unauthenticated => Status::unauthenticated(text),
            Refusal::UnknownMethod(_)
            | Refusal::Streaming(_)
            | Refusal::NotImplemented(_)
            | Refusal::NoUpstream(_)
            | Refusal::CallerDependent(_) => Status::unimplemented(text),
            Refusal::Subject(_) => Status::invalid_argument(text),
            Refusal::Denied(_) => Status::permission_denied(text),
            Refusal::Policy(_) | Refusal::Resolve { .. } | Refusal::Aftermath { .. } => {
                tracing::warn!(error = %text, "forwarded call not completed");
                Status::unavailable(text)
            }
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        refusal.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::Privilege;
    use tonic::Code;

    #[test]
    fn every_refusal_has_its_code_and_text() {
        let denial = Denial::Privilege {
            privilege: Privilege::from_api("Query").unwrap(),
            user: "alice".into(),
            db: "secretdb".into(),
        };
        let table: Vec<(Refusal, Code, &str)> = vec![
            (
                Refusal::Unauthenticated,
                Code::Unauthenticated,
                "request is not authenticated",
            ),
            (
                Refusal::UnknownMethod("/x/Y".into()),
                Code::Unimplemented,
                "unknown method /x/Y",
            ),
            (
                Refusal::Streaming("DumpMessages".into()),
                Code::Unimplemented,
                "DumpMessages is a streaming method",
            ),
            (
                Refusal::NotImplemented("AddUserTags".into()),
                Code::Unimplemented,
                "credstore does not implement AddUserTags",
            ),
            (
                Refusal::NoUpstream("Query".into()),
                Code::Unimplemented,
                "set credstore.upstream.uri",
            ),
            (
                Refusal::CallerDependent("CreateRowPolicy".into()),
                Code::Unimplemented,
                "CreateRowPolicy depends on the caller's identity",
            ),
            (
                Refusal::Subject(SubjectError::DbHeaders),
                Code::InvalidArgument,
                "more than one dbname header",
            ),
            (
                Refusal::Denied(denial),
                Code::PermissionDenied,
                "PrivilegeQuery: permission deny to alice in the `secretdb` database",
            ),
            (
                Refusal::Policy(CatalogError::RoleNotFound("r".into())),
                Code::Unavailable,
                "cannot load the authorization policy",
            ),
            (
                Refusal::Resolve {
                    db: "d".into(),
                    name: "a".into(),
                    reason: "down".into(),
                },
                Code::Unavailable,
                "cannot resolve \"a\"",
            ),
            (
                Refusal::aftermath("DropCollection", "etcd away"),
                Code::Unavailable,
                "DropCollection succeeded upstream",
            ),
        ];
        for (refusal, code, text) in table {
            let status = refusal.to_status();
            assert_eq!(status.code(), code, "{refusal:?}");
            assert!(
                status.message().contains(text),
                "{:?} lacks {text:?}",
                status.message()
            );
        }
    }
}
