//! `credstore bench-upstream` (hidden): an empty tonic `MilvusService` for benchmarks. It
//! answers `GetVersion`, `Connect` and `HasCollection` with fixed replies (after decoding the
//! request, as any tonic server does) and everything else with UNIMPLEMENTED; it checks no
//! credentials. `scripts/bench.py` puts it behind credstore's proxy tier to measure what the
//! tier adds, and uses it as the baseline a plain tonic server sets for tail latency.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use http_body::Body;
use prost::bytes::Bytes;
use tokio::net::TcpListener;
use tonic::codegen::{StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::proto::common::Status as MilvusStatus;
use crate::proto::milvus::*;

/// The version the empty upstream reports.
pub const VERSION: &str = "bench-upstream";

/// The service: fixed answers, a counter for `Connect` identifiers.
#[derive(Clone, Default)]
pub struct EmptyMilvus {
    identifier: Arc<AtomicI64>,
}

impl NamedService for EmptyMilvus {
    const NAME: &'static str = "milvus.proto.milvus.MilvusService";
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<B> tower::Service<http::Request<B>> for EmptyMilvus
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        match method {
            "GetVersion" => unary(request, Fixed(|_: GetVersionRequest| get_version())),
            "Connect" => {
                let id = self.identifier.fetch_add(1, Ordering::Relaxed);
                unary(request, Fixed(move |_: ConnectRequest| connect(id)))
            }
            "HasCollection" => unary(request, Fixed(|_: HasCollectionRequest| has_collection())),
            _ => {
                let status = Status::unimplemented(format!("bench-upstream: no {method}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

fn ok() -> Option<MilvusStatus> {
    Some(MilvusStatus::default())
}

fn get_version() -> GetVersionResponse {
    GetVersionResponse {
        status: ok(),
        version: VERSION.into(),
    }
}

fn connect(identifier: i64) -> ConnectResponse {
    ConnectResponse {
        status: ok(),
        server_info: None,
        identifier,
    }
}

fn has_collection() -> BoolResponse {
    BoolResponse {
        status: ok(),
        value: true,
    }
}

/// Serves one method through tonic's own unary path (decode, call, encode), as generated
/// servers do.
fn unary<B, Q, A, F>(
    request: http::Request<B>,
    handler: Fixed<F>,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Q: prost::Message + Default + Send + 'static,
    A: prost::Message + Send + 'static,
    F: FnMut(Q) -> A + Send + 'static,
{
    Box::pin(async move {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<A, Q>::default());
        Ok(grpc.unary(handler, request).await)
    })
}

/// A handler giving a fixed answer.
struct Fixed<F>(F);

impl<Q, A, F> UnaryService<Q> for Fixed<F>
where
    F: FnMut(Q) -> A,
    A: Send + 'static,
{
    type Response = A;
    type Future = Ready<Result<Response<A>, Status>>;

    fn call(&mut self, request: Request<Q>) -> Self::Future {
        ready(Ok(Response::new((self.0)(request.into_inner()))))
    }
}

/// Serves [`EmptyMilvus`] on `listener` (TCP_NODELAY on accepted sockets, as credstore's
/// server) until the process ends; logs `ready on ADDRESS` once it listens.
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!("bench-upstream ready on {address}");
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EmptyMilvus::default())
        .serve_with_incoming(incoming)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::{BenchConfig, Rpc, run};

    fn config(uri: String, rpc: Rpc) -> BenchConfig {
        BenchConfig {
            uri,
            rpc,
            connections: 1,
            concurrency: 2,
            duration: Duration::from_secs(10),
            user: "root".into(),
            password: "Milvus".into(),
            prefix: "bench_".into(),
            users: 1,
            user_password: "bench-password".into(),
            requests: Some(20),
            collection: "c".into(),
            tls: Default::default(),
            source_ip: None,
        }
    }

    #[tokio::test]
    async fn answers_its_methods_and_the_bench_counts_the_rest_as_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve(listener));
        for rpc in [Rpc::GetVersion, Rpc::Connect, Rpc::HasCollection] {
            let report = run(config(uri.clone(), rpc)).await.unwrap();
            assert_eq!((report.ok, report.errors.len()), (20, 0), "{rpc:?}");
        }
        let report = run(config(uri, Rpc::ListUsers)).await.unwrap();
        assert_eq!(report.ok, 0);
        assert_eq!(report.errors.get("Unimplemented"), Some(&20));
        server.abort();
    }
}
