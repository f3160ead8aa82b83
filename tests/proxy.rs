//! The proxy tier's forwarding contract, checked on the wire: an in-process credstore (embedded
//! store) in front of a tiny tonic upstream that records what reaches it. The upstream is a
//! stand-in for header and status checks only (fault-injection style: Milvus Lite has no
//! authentication, so it cannot show which `authorization` it received); the pymilvus tests
//! in tests/compat run the same tier in front of a real Milvus Lite.

mod common;

use std::time::{Duration, Instant};

use common::upstream::{
    Running, Upstream, call, listing, start_credstore, start_credstore_with, start_upstream,
};
use credstore::proto::milvus::{
    CheckHealthRequest, CheckHealthResponse, ShowCollectionsRequest, ShowCollectionsResponse,
};
use prost::Message;
use tokio::sync::oneshot;
use tonic::Code;

/// Creates user bob (password `password1`, no role) as root.
async fn create_bob(uri: &str) {
    let mut root = common::client(uri, "root", "Milvus").await;
    let created = common::create_user(&mut root, "bob", "password1").await;
    assert_eq!(created.code, 0, "{created:?}");
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
    let text = common::scrape(port).await;
    for line in [
        "credstore_forwarded_requests_total{method=\"HasCollection\",code=\"ok\"} 2",
        "credstore_forwarded_requests_total{method=\"Insert\",code=\"permission_denied\"} 1",
        "credstore_upstream_up 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(
        !text.contains("CreateCredential\""),
        "owned methods are not forwarded calls"
    );
}
