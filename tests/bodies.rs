//! The proxy tier's body limits against real processes: `credstore serve` forwarding to
//! `credstore bench-upstream`, driven by a raw HTTP/2 client that withholds bodies. A body
//! that stalls is refused within `credstore.upstream.bodyTimeoutMs` and its reservation
//! freed; past `maxInFlightBytesPerConnection` or `maxInFlightBytes` a call is refused with
//! RESOURCE_EXHAUSTED at once, while a small call on the same replica still goes through.

mod common;

use std::time::{Duration, Instant};

use common::raw::{RawCall, RawConnection, grpc_header, grpc_status, insert_message};
use common::{Replica, TestConfig};
use prost::bytes::Bytes;

const MIB: usize = 1 << 20;
/// gRPC codes as numbers on the wire.
const UNIMPLEMENTED: i32 = 12;
const RESOURCE_EXHAUSTED: i32 = 8;
const DEADLINE_EXCEEDED: i32 = 4;
/// Slack on top of the body timeout before the test calls the replica late.
const SLACK: Duration = Duration::from_secs(15);

/// A whole Insert of about `size` bytes: the gRPC status it got.
async fn insert(connection: &mut RawConnection, size: usize) -> (i32, String) {
    let message = insert_message(size);
    let mut call = connection
        .open("Insert", "root", "Milvus")
        .await
        .expect("a call opens");
    call.body
        .send_data(grpc_header(message.len() as u32), false)
        .unwrap();
    call.body.send_data(Bytes::from(message), true).unwrap();
    grpc_status(call.response).await.expect("an answer")
}

/// An Insert that announces `size` bytes, sends 64 KiB of them and withholds the rest. A
/// refusal may close the stream while it is still being sent: the answer says what happened.
async fn stall(connection: &mut RawConnection, size: usize) -> RawCall {
    let message = insert_message(size);
    let mut call = connection
        .open("Insert", "root", "Milvus")
        .await
        .expect("a call opens");
    let header = grpc_header(message.len() as u32);
    let _ = call.body.send_data(header, false);
    let _ = call
        .body
        .send_data(Bytes::copy_from_slice(&message[..64 * 1024]), false);
    call
}

/// Waits until the replica holds `bytes` of request bodies (it reserves a message's size
/// when its header arrives, which the client cannot see).
async fn holds(port: u16, bytes: usize) {
    common::eventually(
        &format!("the replica holds {bytes} body bytes"),
        async || {
            common::sample(
                &common::scrape(port).await,
                "credstore_forwarded_body_bytes",
            ) == bytes as f64
        },
    )
    .await;
}

/// Whether a call's answer has not come yet.
async fn unanswered(call: &mut RawCall) -> bool {
    tokio::time::timeout(Duration::from_millis(1), &mut call.response)
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_refused_in_time_and_budgets_refuse_at_once() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Replica::bench_upstream();
    // Long enough for the steps before the timeout on a loaded machine.
    let body_timeout = Duration::from_millis(12_000);
    let (replica, metrics) = Replica::start_with_metrics(
        &TestConfig::new()
            .weak_hashing()
            .set("credstore.upstream.uri", upstream.uri())
            .set("credstore.upstream.maxMessageBytes", 4 * MIB)
            .set("credstore.upstream.maxInFlightBytesPerConnection", 6 * MIB)
            .set("credstore.upstream.maxInFlightBytes", 10 * MIB)
            .set(
                "credstore.upstream.bodyTimeoutMs",
                body_timeout.as_millis() as u64,
            ),
    );
    let upstream_said = (UNIMPLEMENTED, "bench-upstream: no Insert".to_string());
    let insert_size = |size: usize| insert_message(size).len();

    // A whole insert is forwarded: the answer is the upstream's.
    let mut a = RawConnection::connect(replica.addr).await;
    assert_eq!(insert(&mut a, 1024).await, upstream_said);

    // Two connections announce 3 MiB each and withhold most of it.
    let started = Instant::now();
    let mut stalled = vec![stall(&mut a, 3 * MIB).await];
    let mut b = RawConnection::connect(replica.addr).await;
    stalled.push(stall(&mut b, 3 * MIB).await);
    holds(metrics, 2 * insert_size(3 * MIB)).await;

    // Connection a holds 3 of its 6 MiB: 3.5 MiB more on it are refused at once.
    let refused = stall(&mut a, 3 * MIB + MIB / 2).await;
    let (code, message) = grpc_status(refused.response).await.unwrap();
    assert_eq!(code, RESOURCE_EXHAUSTED, "{message}");
    assert!(
        message.contains("(credstore.upstream.maxInFlightBytesPerConnection)"),
        "{message}"
    );
    for call in &mut stalled {
        assert!(
            unanswered(call).await,
            "refused at once, not at the timeout"
        );
    }

    // A third connection's 3 MiB fit the replica's 10; then a fourth's 2 MiB do not.
    let mut c = RawConnection::connect(replica.addr).await;
    stalled.push(stall(&mut c, 3 * MIB).await);
    holds(metrics, 3 * insert_size(3 * MIB)).await;
    let mut d = RawConnection::connect(replica.addr).await;
    let refused = stall(&mut d, 2 * MIB).await;
    let (code, message) = grpc_status(refused.response).await.unwrap();
    assert_eq!(code, RESOURCE_EXHAUSTED, "{message}");
    assert!(
        message.contains("(credstore.upstream.maxInFlightBytes)"),
        "{message}"
    );
    // A small call on the same connection, and a call credstore answers itself, still work.
    assert_eq!(insert(&mut d, 1024).await, upstream_said);
    let channel = common::channel(&replica.uri()).await;
    common::get_version(&channel, "root", "Milvus")
        .await
        .expect("GetVersion while the budget is full");
    for call in &mut stalled {
        assert!(unanswered(call).await, "a stalled body refused early");
    }

    // The stalled bodies are refused by the body timeout, and what they held is freed.
    for call in stalled {
        let (code, message) = common::time_limit(body_timeout + SLACK, grpc_status(call.response))
            .await
            .unwrap();
        assert_eq!(code, DEADLINE_EXCEEDED, "{message}");
        assert_eq!(
            message,
            "request body not complete within 12000 ms (credstore.upstream.bodyTimeoutMs)"
        );
    }
    let took = started.elapsed();
    println!("stalled bodies refused after {took:?}");
    assert!(took >= body_timeout, "refused after {took:?}");
    holds(metrics, 0).await;
    assert_eq!(insert(&mut a, 3 * MIB + MIB / 2).await, upstream_said);
    let text = common::scrape(metrics).await;
    for (reason, count) in [
        ("timeout", 3.0),
        ("replica_budget", 1.0),
        ("connection_budget", 1.0),
    ] {
        let name = format!("credstore_forwarded_bodies_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(common::sample(&text, &name), count, "{text}");
    }
}
