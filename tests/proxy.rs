//! The proxy tier's forwarding contract, checked on the wire: an in-process credstore (embedded
//! store) in front of a tiny tonic upstream that records what reaches it. The upstream is a
//! stand-in for header and status checks only (fault-injection style: Milvus Lite has no
//! authentication, so it cannot show which `authorization` it received); the pymilvus tests
//! in tests/compat run the same tier in front of a real Milvus Lite.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credstore::client::Authorization;
use credstore::config::{Config, Overrides};
use credstore::proto::milvus::{
    CheckHealthRequest, CheckHealthResponse, CreateCredentialRequest, ShowCollectionsRequest,
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

const SERVICE: &str = "milvus.proto.milvus.MilvusService";

/// One call as the upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    metadata: MetadataMap,
    body: Bytes,
}

/// The recording upstream: echoes the body for most methods; `Flush` fails with details and
/// metadata; `GetMetrics` never answers in time.
#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Calls whose handler was dropped before it answered (the caller went away).
    abandoned: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
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

/// The recording upstream's answer to ShowCollections: two collections.
fn listing() -> Bytes {
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
struct Running {
    address: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_upstream(upstream: Upstream) -> Running {
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
struct Credstore {
    uri: String,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn start_credstore(upstream: &Running, token: &str) -> Credstore {
    let dir = tempfile::tempdir().unwrap();
    let base = common::TestConfig::new()
        .weak_hashing()
        .set("etcd.data.dir", dir.path().display().to_string())
        .set("credstore.failedAuthDelayMs", 0);
    start_credstore_with(upstream, token, base, dir).await
}

/// credstore in-process with `base` (its store), forwarding to `upstream` with `token`.
async fn start_credstore_with(
    upstream: &Running,
    token: &str,
    base: common::TestConfig,
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
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server::run(listener, state, async move { drop(stopped.await) })
            .await
            .unwrap();
    });
    Credstore {
        uri: format!("http://{address}"),
        _dir: dir,
        _stop: stop,
    }
}

/// Creates user bob (password `password1`, no role) as root.
async fn create_bob(uri: &str) {
    let mut root = common::client(uri, "root", "Milvus").await;
    let created = root
        .create_credential(CreateCredentialRequest {
            username: "bob".into(),
            password: common::b64("password1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.code, 0, "{created:?}");
}

/// Calls `method` through credstore with raw bytes, as `user:password` and `dbname`.
async fn call(
    uri: &str,
    method: &str,
    body: Vec<u8>,
    credentials: &str,
    db: &str,
    timeout: Option<Duration>,
) -> Result<Response<Bytes>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
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
    let path = format!("/{SERVICE}/{method}").parse().unwrap();
    client.unary(request, path, RawCodec).await
}

/// An `InsertRequest` naming collection `c1` (field 3), padded with `extra` bytes (field 5).
fn insert_body(extra: usize) -> Vec<u8> {
    let mut body = vec![0x1a, 2, b'c', b'1'];
    if extra > 0 {
        body.push(0x2a);
        let mut len = extra;
        while len >= 0x80 {
            body.push((len as u8) | 0x80);
            len >>= 7;
        }
        body.push(len as u8);
        body.extend(std::iter::repeat_n(7u8, extra));
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_carry_credstores_token_and_come_back_as_given() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    let credstore = start_credstore(&running, "svc:token1").await;
    let uri = &credstore.uri;

    // Root's call reaches the upstream with credstore's token, the client's other metadata
    // and a deadline; the answer and its metadata come back byte for byte.
    let body = insert_body(100);
    let answer = call(uri, "Insert", body.clone(), "root:Milvus", "db7", None)
        .await
        .unwrap();
    assert_eq!(answer.get_ref().as_ref(), &body[..]);
    assert_eq!(answer.metadata().get("x-upstream").unwrap(), "echo");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let first = &seen[0];
    assert_eq!(first.method, "Insert");
    assert_eq!(first.body.as_ref(), &body[..]);
    assert_eq!(
        first.metadata.get("authorization").unwrap(),
        common::b64("svc:token1").as_str(),
        "the caller's authorization never goes upstream"
    );
    assert_eq!(first.metadata.get("dbname").unwrap(), "db7");
    assert_eq!(first.metadata.get("client-request-id").unwrap(), "kept");
    assert!(
        first.metadata.get("x-client").is_none(),
        "only allowlisted client headers cross"
    );
    assert!(
        first.metadata.get("grpc-timeout").is_some(),
        "a default deadline is sent when the client has none"
    );

    // The client's deadline is propagated and enforced, and the upstream call is cancelled.
    let started = Instant::now();
    let late = call(
        uri,
        "GetMetrics",
        Vec::new(),
        "root:Milvus",
        "",
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    // DEADLINE_EXCEEDED from credstore, or CANCELLED from this client's own channel, which
    // enforces the same deadline; never UNAVAILABLE (pymilvus would retry it).
    assert!(
        matches!(late.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{late:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    common::eventually("the upstream call was cancelled", async || {
        upstream
            .abandoned
            .lock()
            .unwrap()
            .contains(&"GetMetrics".to_string())
    })
    .await;
    let timeout = upstream.seen()[1]
        .metadata
        .get("grpc-timeout")
        .unwrap()
        .clone();
    let timeout = timeout.to_str().unwrap();
    assert!(
        timeout.ends_with('m') || timeout.ends_with('u'),
        "{timeout}"
    );

    // The upstream's error comes back with its code, message, details and metadata.
    let flush = vec![0x1a, 1, b'a'];
    let refused = call(uri, "Flush", flush, "root:Milvus", "", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted);
    assert_eq!(refused.message(), "upstream says no");
    assert_eq!(refused.details(), b"\x01\x02details");
    assert_eq!(refused.metadata().get("x-upstream").unwrap(), "flush");

    // Refused at the tier, never forwarded: too large, unknown method, unreadable body,
    // a user without the privilege, bad credentials.
    let forwarded = upstream.seen().len();
    let big = call(uri, "Insert", insert_body(5000), "root:Milvus", "", None)
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::ResourceExhausted, "{big:?}");
    let unknown = call(uri, "NoSuchMethod", Vec::new(), "root:Milvus", "", None)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");
    let garbled = call(uri, "Insert", vec![0x1a, 5, b'a'], "root:Milvus", "", None)
        .await
        .unwrap_err();
    assert_eq!(garbled.code(), Code::InvalidArgument, "{garbled:?}");

    create_bob(uri).await;
    let denied = call(uri, "Insert", insert_body(0), "bob:password1", "db7", None)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "PrivilegeInsert: permission deny to bob in the `db7` database"
    );
    let unannotated = call(
        uri,
        "GetComponentStates",
        Vec::new(),
        "bob:password1",
        "",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(unannotated.code(), Code::PermissionDenied);
    let bad = call(
        uri,
        "Insert",
        insert_body(0),
        "bob:wrong-password",
        "",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    assert_eq!(
        upstream.seen().len(),
        forwarded,
        "refused calls reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_no_authorization_goes_upstream() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    let credstore = start_credstore(&running, "").await;
    call(
        &credstore.uri,
        "HasCollection",
        Vec::new(),
        "root:Milvus",
        "",
        None,
    )
    .await
    .unwrap();
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].metadata.get("authorization").is_none(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_unavailable() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let running = start_upstream(Upstream::default()).await;
    let address = running.address;
    drop(running);
    // Wait until the upstream's listener is gone.
    common::eventually("the upstream stopped", async || {
        tokio::net::TcpStream::connect(address).await.is_err()
    })
    .await;
    let dead = Running {
        address,
        _stop: oneshot::channel().0,
    };
    let credstore = start_credstore(&dead, "").await;
    let status = call(
        &credstore.uri,
        "Insert",
        insert_body(0),
        "root:Milvus",
        "",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Health through credstore says why it is unhealthy; the call itself succeeds.
    let health = check_health(&credstore.uri, "root:Milvus").await;
    assert!(!health.is_healthy);
    assert!(
        health.reasons[0].starts_with("upstream Milvus unreachable: Unavailable"),
        "{health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_collections_is_cut_to_the_callers_grants() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let running = start_upstream(Upstream::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = common::TestConfig::new()
        .weak_hashing()
        .set("etcd.data.dir", dir.path().display().to_string())
        .set("proxy.enablePublicPrivilege", false);
    let credstore = start_credstore_with(&running, "root:Milvus", base, dir).await;
    create_bob(&credstore.uri).await;
    let list = async |credentials: &str| {
        let body = ShowCollectionsRequest::default().encode_to_vec();
        call(
            &credstore.uri,
            "ShowCollections",
            body,
            credentials,
            "",
            None,
        )
        .await
        .unwrap()
        .into_inner()
    };
    // root sees the upstream's answer byte for byte.
    assert_eq!(list("root:Milvus").await, listing());
    // bob, without roles or public grants, may list and sees nothing, in every list.
    let cut = ShowCollectionsResponse::decode(list("bob:password1").await).unwrap();
    assert!(cut.collection_names.is_empty(), "{cut:?}");
    assert!(cut.collection_ids.is_empty() && cut.created_timestamps.is_empty());
    assert_eq!(cut.status.unwrap().code, 0);
}

async fn check_health(uri: &str, credentials: &str) -> CheckHealthResponse {
    let body = CheckHealthRequest {}.encode_to_vec();
    let answer = call(uri, "CheckHealth", body, credentials, "", None)
        .await
        .unwrap();
    CheckHealthResponse::decode(answer.into_inner()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_health_is_the_upstreams_with_this_replica_folded_in() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    let credstore = start_credstore(&running, "root:Milvus").await;
    create_bob(&credstore.uri).await;
    // Any authenticated caller (bob has no role), as on Milvus.
    let health = check_health(&credstore.uri, "bob:password1").await;
    assert!(!health.is_healthy);
    assert_eq!(health.reasons, vec!["querynode 7 is down"]);
    assert_eq!(health.quota_states, vec![2]);
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().method, "CheckHealth");
    let bad = call(
        &credstore.uri,
        "CheckHealth",
        vec![],
        "bob:wrong-pw",
        "",
        None,
    )
    .await;
    assert_eq!(bad.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        upstream.seen().len(),
        seen.len(),
        "a bad login reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_cannot_be_loaded_is_unavailable() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let mut etcd = common::Etcd::start();
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    let base = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("proxy"))
        // Cached logins stay trusted well past the etcd outage below; policy reads give up
        // after 2 s.
        .set("credstore.session.ttlSeconds", 60)
        .set("credstore.etcdTimeoutMs", 2000);
    let credstore = start_credstore_with(&running, "", base, tempfile::tempdir().unwrap()).await;
    let uri = &credstore.uri;
    create_bob(uri).await;
    // bob's password is verified (and cached) by a call that reads no policy: an unknown
    // method is refused before authorization.
    let unknown = call(uri, "NoSuchMethod", Vec::new(), "bob:password1", "", None)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented);

    etcd.kill();
    let status = call(uri, "Insert", insert_body(0), "bob:password1", "", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("authorization policy"),
        "{status:?}"
    );
    assert!(upstream.seen().is_empty(), "nothing was forwarded");
}

/// `/metrics` of a credstore whose metrics port is `port`.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_are_counted_by_method_and_code() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let running = start_upstream(Upstream::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = common::TestConfig::new()
        .weak_hashing()
        .set("etcd.data.dir", dir.path().display().to_string())
        .set("credstore.failedAuthDelayMs", 0)
        .set("credstore.http.port", port);
    let credstore = start_credstore_with(&running, "", base, dir).await;
    let uri = &credstore.uri;
    create_bob(uri).await;
    for _ in 0..2 {
        call(uri, "HasCollection", Vec::new(), "root:Milvus", "", None)
            .await
            .unwrap();
    }
    // Refused at the gate: counted with the code the client got; the upstream never sees it.
    let denied = call(uri, "Insert", insert_body(0), "bob:password1", "", None).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    let text = scrape(port).await;
    for line in [
        "credstore_forwarded_requests_total{method=\"HasCollection\",code=\"ok\"} 2",
        "credstore_forwarded_requests_total{method=\"Insert\",code=\"permission_denied\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(
        !text.contains("CreateCredential\""),
        "owned methods are not forwarded calls"
    );
}
