//! `CheckHealth` with an upstream: the upstream Milvus's own answer (its health, reasons and
//! quota states) with this replica's state folded in, so a probe through credstore sees the
//! health of the whole path. The upstream unreachable, or this replica not trusting its cache,
//! makes the answer unhealthy with a reason saying which; the call itself still succeeds, as
//! Milvus's does when a component is down.

use prost::Message;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::proto::common::Status as MilvusStatus;
use crate::proto::milvus::CheckHealthResponse;
use crate::proxy::router::Proxy;

/// The method this module answers.
pub const METHOD: &str = "CheckHealth";

/// Why this replica is unhealthy on its own account.
pub const RESYNCING: &str = "credstore replica is re-syncing with etcd";

/// Asks the upstream, then folds in `trusted` (whether this replica trusts its cache).
pub async fn check_health(
    proxy: &Proxy,
    db: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let upstream = proxy.forwarder.forward(METHOD, db, request).await;
    let folded = fold(upstream, proxy.trusted());
    Ok(Response::new(Bytes::from(folded.encode_to_vec())))
}

fn fold(upstream: Result<Response<Bytes>, Status>, trusted: bool) -> CheckHealthResponse {
    let mut answer = match upstream {
        Ok(response) => CheckHealthResponse::decode(response.into_inner()).unwrap_or_else(|e| {
            unhealthy(format!(
                "upstream Milvus answered CheckHealth unreadably: {e}"
            ))
        }),
        Err(status) => unhealthy(format!(
            "upstream Milvus unreachable: {:?}: {}",
            status.code(),
            status.message()
        )),
    };
    if !trusted {
        answer.is_healthy = false;
        answer.reasons.push(RESYNCING.to_string());
    }
    answer
}

fn unhealthy(reason: String) -> CheckHealthResponse {
    CheckHealthResponse {
        status: Some(MilvusStatus::default()),
        is_healthy: false,
        reasons: vec![reason],
        quota_states: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(healthy: bool, reasons: &[&str]) -> Result<Response<Bytes>, Status> {
        let response = CheckHealthResponse {
            status: Some(MilvusStatus::default()),
            is_healthy: healthy,
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            quota_states: vec![1],
        };
        Ok(Response::new(Bytes::from(response.encode_to_vec())))
    }

    #[test]
    fn the_upstreams_answer_passes_when_this_replica_is_fine() {
        let folded = fold(answer(true, &[]), true);
        assert!(folded.is_healthy);
        assert_eq!(folded.quota_states, vec![1]);
        let folded = fold(answer(false, &["querynode down"]), true);
        assert!(!folded.is_healthy);
        assert_eq!(folded.reasons, vec!["querynode down"]);
    }

    #[test]
    fn a_resyncing_replica_or_a_dead_upstream_is_unhealthy_with_a_reason() {
        let folded = fold(answer(true, &[]), false);
        assert!(!folded.is_healthy);
        assert_eq!(folded.reasons, vec![RESYNCING]);
        let folded = fold(Err(Status::unavailable("connection refused")), true);
        assert!(!folded.is_healthy);
        assert!(folded.reasons[0].starts_with("upstream Milvus unreachable: Unavailable"));
        let folded = fold(Ok(Response::new(Bytes::from_static(b"\xff\xff"))), false);
        assert!(!folded.is_healthy);
        assert_eq!(folded.reasons.len(), 2);
        assert_eq!(folded.status.unwrap().code, 0);
    }
}
