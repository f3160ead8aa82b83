//! `Connect` and `GetVersion` with an upstream: the upstream's own answers, so pymilvus sees
//! the Milvus version and server info it enables features by; when the upstream cannot be
//! reached, credstore answers them itself, so a fresh client still connects and users,
//! roles and grants stay manageable while Milvus is away (data calls then answer UNAVAILABLE
//! naming the upstream).

use prost::Message;
use prost::bytes::Bytes;
use tonic::{Code, Request, Response, Status};

use crate::proto::common::{ServerInfo, Status as MilvusStatus};
use crate::proto::milvus::{ConnectResponse, GetVersionResponse};
use crate::proxy::router::Proxy;

/// The methods this module answers.
pub const METHODS: &[&str] = &["Connect", "GetVersion"];

/// The upstream's answer, or credstore's own when the upstream is unreachable.
pub async fn reflect(
    proxy: &Proxy,
    method: &str,
    db: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    match proxy.forwarder.forward(method, db, request).await {
        Err(status) if status.code() == Code::Unavailable => {
            tracing::debug!(
                method,
                reason = status.message(),
                "upstream unreachable; answering from credstore"
            );
            Ok(Response::new(local(method)))
        }
        answer => answer,
    }
}

/// credstore's own answer to `method` (one of [`METHODS`]).
fn local(method: &str) -> Bytes {
    let version = format!("credstore-{}", env!("CARGO_PKG_VERSION"));
    let encoded = match method {
        "Connect" => ConnectResponse {
            status: Some(MilvusStatus::default()),
            server_info: Some(ServerInfo {
                build_tags: version,
                deploy_mode: "credstore (upstream unreachable)".into(),
                ..ServerInfo::default()
            }),
            identifier: identifier(),
        }
        .encode_to_vec(),
        _ => GetVersionResponse {
            status: Some(MilvusStatus::default()),
            version,
        }
        .encode_to_vec(),
    };
    Bytes::from(encoded)
}

/// A connection identifier: it only needs to differ between connections.
fn identifier() -> i64 {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    (i64::from_le_bytes(seed) >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_answers_decode() {
        let connect = ConnectResponse::decode(local("Connect")).unwrap();
        assert!(connect.identifier > 0);
        assert!(
            connect
                .server_info
                .unwrap()
                .build_tags
                .starts_with("credstore-")
        );
        let version = GetVersionResponse::decode(local("GetVersion")).unwrap();
        assert!(version.version.starts_with("credstore-"));
    }
}
