//! The transport limits `server::run` sets, seen from a client: one HTTP/2 connection that
//! opens far more requests than `MAX_STREAMS_PER_CONNECTION` gets every one answered, while
//! the server never runs more than the limit at once; an oversized header block is refused
//! before authentication. (TCP_NODELAY on accepted sockets is a unit test in `transport`;
//! connection caps, handshake and idle timeouts and resets are tests/connections.rs.)

mod common;

use std::time::{Duration, Instant};

use credstore::config::{Config, Overrides};
use credstore::proto::milvus::GetVersionRequest;
use credstore::proto::milvus::milvus_service_client::MilvusServiceClient;
use credstore::server::{self, State};
use credstore::transport::{MAX_HEADER_LIST_BYTES, MAX_STREAMS_PER_CONNECTION};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

/// Each failed login is answered after this long, which keeps its stream open.
const FAILED_AUTH_DELAY: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_with_more_requests_than_the_stream_limit_is_served_in_bounded_waves() {
    tokio::time::timeout(LIMIT, many_streams_on_one_connection())
        .await
        .expect("the test finishes within its limit");
}

async fn many_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "etcd:\n  data:\n    dir: {}\ncredstore:\n  failedAuthDelayMs: {}\n  lockout:\n    enabled: false\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1}}\n",
        dir.path().display(),
        FAILED_AUTH_DELAY.as_millis()
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut config = Config::load(Some(&path), [], &Overrides::default()).expect("valid config");
    // In-process servers run side by side: none opens the metrics port or drains.
    config.credstore.http.port = 0;
    config.credstore.shutdown.drain_ms = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = State::build(config, address).await.expect("state builds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        listener,
        state,
        async move { drop(stopped.await) },
    ));

    // One channel is one HTTP/2 connection.
    let channel = common::channel(&format!("http://{address}")).await;
    let requests = 3 * MAX_STREAMS_PER_CONNECTION as usize - 20;
    let started = Instant::now();
    let calls: Vec<_> = (0..requests)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move { common::login(&channel, "nobody", "wrong-password").await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("call task"));
    }
    let took = started.elapsed();
    println!(
        "{requests} failed logins on one connection (stream limit {MAX_STREAMS_PER_CONNECTION}) answered in {took:?}"
    );
    let odd: Vec<_> = answers
        .iter()
        .filter(|a| **a != Err(Code::Unauthenticated))
        .collect();
    assert!(
        odd.is_empty(),
        "every request is answered as a failed login: {} odd, e.g. {:?}",
        odd.len(),
        odd.first()
    );
    // Three waves of at most the stream limit, each held open for the delay: had the server
    // run them all at once, they would all have been answered after one delay.
    assert!(
        took >= FAILED_AUTH_DELAY * 2,
        "{requests} requests answered in {took:?}: more than the stream limit ran at once"
    );

    // A header block over MAX_HEADER_LIST_BYTES is refused before any handler runs.
    let mut request = credstore::client::Authorization::credentials("nobody", "wrong-password")
        .apply(tonic::Request::new(GetVersionRequest {}));
    let big = "x".repeat(2 * MAX_HEADER_LIST_BYTES as usize);
    request
        .metadata_mut()
        .insert("x-padding", big.parse().unwrap());
    let channel = common::channel(&format!("http://{address}")).await;
    let refused = MilvusServiceClient::new(channel)
        .get_version(request)
        .await
        .map(|_| ())
        .map_err(|status| status.code());
    println!("an oversized header block: {refused:?}");
    assert!(
        refused.is_err() && refused != Err(Code::Unauthenticated),
        "an oversized header block reached the auth layer: {refused:?}"
    );

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("server stops cleanly");
}
