//! [`Aliases`]: which collection a name resolves to at call time, so a grant reaches the
//! collection a request will really act on (Milvus 2.6.11's `proxy.resolveAliasForPrivilege`,
//! for every collection-level method, not only Search). A grant on an unused name `x` no
//! longer opens `secret` once someone points alias `x` at it.
//!
//! The upstream answers (`DescribeCollection` as credstore's identity: an alias answers with
//! its collection's name; a name that is no collection answers "not found" and resolves to
//! itself). Answers are cached per replica in `rbac::Policies` and dropped by the same watch
//! as grants: every alias-changing call through the tier bumps the alias epoch
//! (`proxy::aftermath`), acknowledged by every live replica before the caller hears back.
//! Anything else the upstream answers is no resolution: the call is refused (fail closed).

use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use tonic::Request;

use crate::proto::common::Status as MilvusStatus;
use crate::proto::milvus::{DescribeCollectionRequest, DescribeCollectionResponse};
use crate::proxy::error::Refusal;
use crate::proxy::forwarder::Forwarder;
use crate::rbac::Policies;

/// Milvus's codes for "no such collection" (`ErrCollectionNotFound`) and "no such database"
/// (`ErrDatabaseNotFound`), and the legacy `CollectionNotExists` error code.
const NOT_FOUND_CODES: [i32; 2] = [100, 800];
const COLLECTION_NOT_EXISTS: i32 = 28;

/// Alias resolution through the upstream, cached in the policies.
#[derive(Clone)]
pub struct Aliases {
    policies: Policies,
    forwarder: Forwarder,
}

impl Aliases {
    pub fn new(policies: Policies, forwarder: Forwarder) -> Aliases {
        Aliases {
            policies,
            forwarder,
        }
    }

    /// The collection `name` of `db` resolves to (itself when it is no alias).
    pub async fn resolve(&self, db: &str, name: &str) -> Result<Arc<str>, Refusal> {
        if let Some(hit) = self.policies.cached_alias(db, name) {
            return Ok(hit);
        }
        let token = self.policies.alias_token();
        let target = self.ask(db, name).await?;
        self.policies
            .remember_alias(token, db, name, target.clone());
        Ok(target)
    }

    async fn ask(&self, db: &str, name: &str) -> Result<Arc<str>, Refusal> {
        let refusal = |reason: String| Refusal::Resolve {
            db: db.to_string(),
            name: name.to_string(),
            reason,
        };
        let body = DescribeCollectionRequest {
            base: None,
            db_name: db.to_string(),
            collection_name: name.to_string(),
        };
        let request = Request::new(Bytes::from(body.encode_to_vec()));
        let answer = self
            .forwarder
            .forward("DescribeCollection", db, request)
            .await
            .map_err(|s| refusal(format!("{:?}: {}", s.code(), s.message())))?;
        let described = DescribeCollectionResponse::decode(answer.into_inner())
            .map_err(|e| refusal(format!("unreadable answer: {e}")))?;
        let status = described.status.unwrap_or_default();
        if succeeded(&status) {
            return Ok(match described.collection_name.as_str() {
                "" => Arc::from(name),
                real => Arc::from(real),
            });
        }
        if not_found(&status) {
            return Ok(Arc::from(name));
        }
        Err(refusal(format!(
            "the upstream answered code {} ({})",
            status.code, status.reason
        )))
    }
}

/// Whether a Milvus `common.Status` says success (both the new and the legacy code).
pub fn succeeded(status: &MilvusStatus) -> bool {
    status.code == 0 && status.error_code == 0
}

fn not_found(status: &MilvusStatus) -> bool {
    NOT_FOUND_CODES.contains(&status.code) || status.error_code == COLLECTION_NOT_EXISTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert!(succeeded(&MilvusStatus::default()));
        let missing = MilvusStatus {
            code: 100,
            reason: "collection not found".into(),
            ..MilvusStatus::default()
        };
        assert!(!succeeded(&missing) && not_found(&missing));
        let legacy = MilvusStatus {
            error_code: COLLECTION_NOT_EXISTS,
            ..MilvusStatus::default()
        };
        assert!(not_found(&legacy));
        let denied = MilvusStatus {
            code: 65535,
            ..MilvusStatus::default()
        };
        assert!(!succeeded(&denied) && !not_found(&denied));
    }
}
