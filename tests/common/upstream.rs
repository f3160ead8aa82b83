//! A recording upstream and an in-process credstore in front of it, for the proxy tier's
//! wire-level tests (tests/proxy.rs, tests/authorization.rs): a tiny tonic `MilvusService`
//! that records every call it receives (method, metadata, body) and echoes the body, with a
//! few methods that answer otherwise (see [`Upstream`]). It is fault injection, not a Milvus:
//! the pymilvus tests run the same tier in front of a real Milvus Lite.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credstore::catalog::Catalog;
use credstore::client::Authorization;
use credstore::coherence::Coherence;
use credstore::config::{Config, Overrides};
use credstore::proto::milvus::{
    CheckHealthResponse, DescribeCollectionRequest, DescribeCollectionResponse,
    ShowCollectionsResponse,
};
use credstore::proxy::RawCodec;
use credstore::server::{self, State};
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

pub const SERVICE: &str = "milvus.proto.milvus.MilvusService";

/// One call as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub metadata: MetadataMap,
    pub body: Bytes,
}

/// The recording upstream: echoes the body for most methods; `Flush` fails with details and
/// metadata; `GetMetrics` never answers in time; `ShowCollections` lists `c1` and `c2`;
/// `DescribeCollection` of a name `al_X` answers `X` (an alias of `X`), any other name
/// answers itself.
#[derive(Clone, Default)]
pub struct Upstream {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Calls whose handler was dropped before it answered (the caller went away).
    pub abandoned: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl tonic::server::NamedService for Upstream {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Upstream {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let handler = Handler {
            seen: self.seen.clone(),
            abandoned: self.abandoned.clone(),
            method,
        };
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(handler, request)
                .await)
        })
    }
}

struct Handler {
    seen: Arc<Mutex<Vec<Seen>>>,
    abandoned: Arc<Mutex<Vec<String>>>,
    method: String,
}

/// Records its method in `abandoned` when dropped unless disarmed.
struct Abandoned(Option<(Arc<Mutex<Vec<String>>>, String)>);

impl Abandoned {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((abandoned, method)) = self.0.take() {
            abandoned.lock().unwrap().push(method);
        }
    }
}

impl tower::Service<Request<Bytes>> for Handler {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.seen.lock().unwrap().push(Seen {
            method: self.method.clone(),
            metadata: request.metadata().clone(),
            body: request.get_ref().clone(),
        });
        let method = self.method.clone();
        let mut guard = Abandoned(Some((self.abandoned.clone(), method.clone())));
        Box::pin(async move {
            let answer = match method.as_str() {
                "Flush" => {
                    let mut status = Status::with_details(
                        Code::Aborted,
                        "upstream says no",
                        Bytes::from_static(b"\x01\x02details"),
                    );
                    status
                        .metadata_mut()
                        .insert("x-upstream", "flush".parse().unwrap());
                    Err(status)
                }
                "GetMetrics" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Err(Status::internal("too late"))
                }
                "ShowCollections" => Ok(Response::new(listing())),
                "DescribeCollection" => Ok(Response::new(describe(request.get_ref()))),
                "CheckHealth" => Ok(Response::new(Bytes::from(
                    CheckHealthResponse {
                        status: Some(Default::default()),
                        is_healthy: false,
                        reasons: vec!["querynode 7 is down".into()],
                        quota_states: vec![2],
                    }
                    .encode_to_vec(),
                ))),
                _ => {
                    let mut response = Response::new(request.into_inner());
                    response
                        .metadata_mut()
                        .insert("x-upstream", "echo".parse().unwrap());
                    Ok(response)
                }
            };
            guard.disarm();
            answer
        })
    }
}

/// The recording upstream's answer to DescribeCollection: `al_X` is an alias of `X`.
fn describe(body: &Bytes) -> Bytes {
    let asked = DescribeCollectionRequest::decode(body.clone()).unwrap_or_default();
    let name = asked.collection_name;
    let real = name.strip_prefix("al_").unwrap_or(&name).to_string();
    let answer = DescribeCollectionResponse {
        status: Some(Default::default()),
        collection_name: real,
        db_name: asked.db_name,
    };
    Bytes::from(answer.encode_to_vec())
}

/// The recording upstream's answer to ShowCollections: two collections.
pub fn listing() -> Bytes {
    let answer = ShowCollectionsResponse {
        status: Some(Default::default()),
        collection_names: vec!["c1".into(), "c2".into()],
        collection_ids: vec![1, 2],
        created_timestamps: vec![10, 20],
        ..Default::default()
    };
    Bytes::from(answer.encode_to_vec())
}

/// The upstream on a loopback port; stops when dropped.
pub struct Running {
    pub address: std::net::SocketAddr,
    pub _stop: oneshot::Sender<()>,
}

pub async fn start_upstream(upstream: Upstream) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(upstream)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                drop(stopped.await)
            })
            .await
            .unwrap();
    });
    Running {
        address,
        _stop: stop,
    }
}

/// credstore in-process on the embedded store, forwarding to `upstream` with `token`.
pub struct Credstore {
    pub uri: String,
    /// The replica's catalog and coherence, for writing grants exactly and waiting for them.
    pub catalog: Catalog,
    pub coherence: Coherence,
    _dir: tempfile::TempDir,
    pub _stop: oneshot::Sender<()>,
}

pub async fn start_credstore(upstream: &Running, token: &str) -> Credstore {
    let dir = tempfile::tempdir().unwrap();
    let base = crate::common::TestConfig::new()
        .weak_hashing()
        .set("etcd.data.dir", dir.path().display().to_string())
        .set("credstore.failedAuthDelayMs", 0);
    start_credstore_with(upstream, token, base, dir).await
}

/// credstore in-process with `base` (its store), forwarding to `upstream` with `token`.
pub async fn start_credstore_with(
    upstream: &Running,
    token: &str,
    base: crate::common::TestConfig,
    dir: tempfile::TempDir,
) -> Credstore {
    let yaml = base
        .set(
            "credstore.upstream.uri",
            format!("http://{}", upstream.address),
        )
        .set("credstore.upstream.token", token)
        .set("credstore.upstream.maxMessageBytes", 4096)
        .yaml();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(Some(&path), [], &Overrides::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = State::build(config, address).await.unwrap();
    let (catalog, coherence) = (state.catalog.clone(), state.coherence.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server::run(listener, state, async move { drop(stopped.await) })
            .await
            .unwrap();
    });
    Credstore {
        uri: format!("http://{address}"),
        catalog,
        coherence,
        _dir: dir,
        _stop: stop,
    }
}

/// Calls `method` through credstore with raw bytes, as `user:password` and `dbname`.
pub async fn call(
    uri: &str,
    method: &str,
    body: Vec<u8>,
    credentials: &str,
    db: &str,
    timeout: Option<Duration>,
) -> Result<Response<Bytes>, Status> {
    let (user, password) = credentials.split_once(':').expect("user:password");
    let mut request =
        Authorization::credentials(user, password).apply(Request::new(Bytes::from(body)));
    let metadata = request.metadata_mut();
    metadata.insert("dbname", db.parse().unwrap());
    metadata.insert("x-client", "dropped".parse().unwrap());
    metadata.insert("client-request-id", "kept".parse().unwrap());
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    unary(uri, method, request).await
}

/// Sends `request` (raw message bytes, metadata as built) as `method` of the MilvusService
/// on a new connection to `uri`.
pub async fn unary(
    uri: &str,
    method: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = format!("/{SERVICE}/{method}").parse().unwrap();
    client.unary(request, path, RawCodec).await
}
