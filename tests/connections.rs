//! The gRPC port's connection limits, against real `credstore serve` processes: connections
//! that never speak (plaintext or TLS, or TLS without the HTTP/2 preface) are closed within
//! `credstore.grpc.handshakeTimeoutMs`, and a legitimate call made while 1 100 of them are
//! open succeeds; `maxConnectionsPerPeer` refuses a peer at its cap while another loopback
//! address still connects, and `maxConnections` refuses everyone at the total; an idle
//! connection gets GOAWAY and a peer that stops answering pings is closed; a reset flood is
//! cut off while valid calls on other connections keep working.
//!
//! Each test takes the cluster lock: they open hundreds of sockets or flood a replica, and on
//! a 2-core machine they must not do it at the same time.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::raw::RawConnection;
use common::{Replica, TestConfig};
use credstore::client::Authorization;
use credstore::proto::milvus::GetVersionRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Endpoint;

/// Slack on top of a configured time limit before a test calls it broken: a loaded 2-core
/// machine can be seconds late, and being late is not what these tests look for.
const SLACK: Duration = Duration::from_secs(15);

/// A replica on the embedded store with `keys` set, its metrics port open.
fn replica(keys: &[(&str, serde_json::Value)]) -> (Replica, u16) {
    let mut config = TestConfig::new().weak_hashing();
    for (key, value) in keys {
        config = config.set(key, value.clone());
    }
    Replica::start_with_metrics(&config)
}

/// GetVersion as root over a fresh connection from the loopback address `from`.
async fn call_from(from: IpAddr, address: SocketAddr) -> Result<(), Code> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .local_address(Some(from))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|_| Code::Unavailable)?;
    credstore::client::client(channel, Authorization::credentials("root", "Milvus"))
        .get_version(GetVersionRequest {})
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

/// A TCP connection from the loopback address `from` that says nothing.
async fn silent_from(from: IpAddr, address: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(address).await.expect("TCP connect")
}

/// Resolves once the server has closed `stream` (end of file or a reset).
async fn closed_by_server(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Raises this test process's own open-file limit (it holds the silent sockets' other ends)
/// and fails, saying why, when the machine's hard limit is too low for the test.
fn files_for(sockets: u64) {
    let limit = credstore::transport::raise_file_limit();
    let needed = sockets + 500;
    assert!(
        limit.soft.is_none_or(|soft| soft >= needed),
        "this test holds {sockets} sockets and needs an open-file limit of at least {needed} \
         (RLIMIT_NOFILE hard limit here: {:?}; raise it, e.g. `ulimit -Hn 4096`)",
        limit.hard
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_by_the_handshake_deadline_while_a_call_gets_through() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    const SILENT: usize = 1_100;
    // The replica raises its own soft limit to the hard one and fits its caps under it; this
    // process needs room for the other ends. The caps are raised so that 1 100 connections
    // from one address are admitted (one peer may hold half of maxConnections).
    files_for(SILENT as u64);
    // Long enough to open them all and make the call on a loaded machine.
    let handshake = Duration::from_millis(15_000);
    let (replica, metrics) = replica(&[
        (
            "credstore.grpc.handshakeTimeoutMs",
            (handshake.as_millis() as u64).into(),
        ),
        ("credstore.grpc.maxConnections", 4_000.into()),
        ("credstore.grpc.maxConnectionsPerPeer", 2_000.into()),
    ]);
    let opened = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(replica.addr).await.expect("TCP connect"));
    }
    println!(
        "{SILENT} silent connections opened in {:?}",
        opened.elapsed()
    );
    common::eventually("the replica holds every silent connection", async || {
        common::sample(&common::scrape(metrics).await, "credstore_connections_open")
            >= SILENT as f64
    })
    .await;
    assert_eq!(
        call_from(ip("127.0.0.1"), replica.addr).await,
        Ok(()),
        "a legitimate call while {SILENT} silent connections are open"
    );
    let text = common::scrape(metrics).await;
    assert!(
        common::sample(&text, "credstore_connections_open") >= SILENT as f64,
        "the silent connections were still open after the call:\n{text}"
    );
    let mut closing = JoinSet::new();
    for stream in silent {
        closing.spawn(closed_by_server(stream));
    }
    common::time_limit(handshake + SLACK, async {
        while let Some(closed) = closing.join_next().await {
            closed.expect("reader task");
        }
    })
    .await;
    let took = opened.elapsed();
    println!("all {SILENT} closed by the server {took:?} after the first was opened");
    assert!(
        took >= handshake,
        "closed after {took:?}, before the handshake deadline of {handshake:?}"
    );
    let text = common::scrape(metrics).await;
    assert!(
        common::sample(
            &text,
            "credstore_connections_closed_total{reason=\"handshake_timeout\"}"
        ) >= SILENT as f64,
        "{text}"
    );
    assert_eq!(call_from(ip("127.0.0.1"), replica.addr).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_the_http2_preface_must_both_arrive_in_time() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::test_certificates(dir.path());
    let handshake = Duration::from_millis(2_000);
    let (replica, metrics) = replica(&[
        ("common.security.tlsMode", 1.into()),
        ("tls.serverPemPath", cert.display().to_string().into()),
        ("tls.serverKeyPath", key.display().to_string().into()),
        (
            "credstore.grpc.handshakeTimeoutMs",
            (handshake.as_millis() as u64).into(),
        ),
    ]);
    let started = Instant::now();
    // No TLS at all.
    let silent = TcpStream::connect(replica.addr).await.unwrap();
    // TLS completed by openssl, which then sends nothing (its stdin stays open).
    let mut openssl = tokio::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-alpn", "h2", "-connect"])
        .arg(replica.addr.to_string())
        .arg("-CAfile")
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    // A client that completes TLS and HTTP/2 is served meanwhile.
    let tls = credstore::tls::ClientTls {
        ca_pem_path: Some(ca.clone()),
        ..Default::default()
    };
    let uri = format!("https://{}", replica.addr);
    let mut admin = credstore::client::Admin::connect_tls(
        &uri,
        &tls,
        Authorization::credentials("root", "Milvus"),
    )
    .await
    .expect("TLS client connects");
    admin.list_users().await.expect("a TLS call is served");
    common::time_limit(handshake + SLACK, closed_by_server(silent)).await;
    let exit = common::time_limit(handshake + SLACK, openssl.wait())
        .await
        .expect("openssl waited for");
    println!(
        "openssl (TLS, no preface) ended {exit} after {:?}",
        started.elapsed()
    );
    let text = common::scrape(metrics).await;
    assert!(
        common::sample(
            &text,
            "credstore_connections_closed_total{reason=\"handshake_timeout\"}"
        ) >= 2.0,
        "{text}"
    );
    admin
        .list_users()
        .await
        .expect("the served connection stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_at_its_cap_is_refused_while_other_addresses_still_connect() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    const PER_PEER: usize = 10;
    const TOTAL: usize = 40;
    // Silent connections are held by a long handshake deadline.
    let (replica, metrics) = replica(&[
        ("credstore.grpc.handshakeTimeoutMs", 600_000.into()),
        ("credstore.grpc.maxConnections", TOTAL.into()),
        ("credstore.grpc.maxConnectionsPerPeer", PER_PEER.into()),
    ]);
    let text = common::scrape(metrics).await;
    assert_eq!(
        common::sample(&text, "credstore_connection_limit{scope=\"total\"}"),
        40.0
    );
    assert_eq!(
        common::sample(&text, "credstore_connection_limit{scope=\"per_peer\"}"),
        10.0
    );
    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        held.push(silent_from(ip("127.0.0.1"), replica.addr).await);
    }
    common::eventually(
        "the replica holds the first peer's connections",
        async || {
            common::sample(&common::scrape(metrics).await, "credstore_connections_open")
                >= PER_PEER as f64
        },
    )
    .await;
    // 127.0.0.1 is at its cap: a new connection is closed at once (no gRPC status: the
    // refusal is the closed connection, and the counter says which cap), a call fails.
    let refused = silent_from(ip("127.0.0.1"), replica.addr).await;
    common::time_limit(SLACK, closed_by_server(refused)).await;
    assert!(call_from(ip("127.0.0.1"), replica.addr).await.is_err());
    // Another address of the same machine is another peer.
    assert_eq!(call_from(ip("127.0.0.2"), replica.addr).await, Ok(()));
    let text = common::scrape(metrics).await;
    let per_peer = "credstore_connections_refused_total{reason=\"max_connections_per_peer\"}";
    assert!(common::sample(&text, per_peer) >= 2.0, "{text}");
    // The total cap: three more peers fill it, a fifth is refused too (once the calls'
    // connections are gone, so that only the silent ones count).
    common::eventually("only the first peer's connections are open", async || {
        common::sample(&common::scrape(metrics).await, "credstore_connections_open")
            == PER_PEER as f64
    })
    .await;
    for peer in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        for _ in 0..PER_PEER {
            held.push(silent_from(ip(peer), replica.addr).await);
        }
    }
    common::eventually("the replica holds every connection", async || {
        common::sample(&common::scrape(metrics).await, "credstore_connections_open") >= TOTAL as f64
    })
    .await;
    assert!(call_from(ip("127.0.0.5"), replica.addr).await.is_err());
    let text = common::scrape(metrics).await;
    assert!(
        common::sample(
            &text,
            "credstore_connections_refused_total{reason=\"max_connections\"}"
        ) >= 1.0,
        "{text}"
    );
    // A place freed is a place for the next connection.
    drop(held.remove(0));
    common::eventually(
        "127.0.0.1 connects again once a place is free",
        async || call_from(ip("127.0.0.1"), replica.addr).await == Ok(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_and_a_peer_that_ignores_pings_is_closed() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let idle = Duration::from_secs(2);
    let (replica, metrics) = replica(&[
        ("credstore.grpc.idleTimeoutSeconds", 2.into()),
        ("credstore.grpc.keepaliveIntervalSeconds", 1.into()),
        ("credstore.grpc.keepaliveTimeoutSeconds", 1.into()),
    ]);
    // A call whose body is held back for three idle timeouts: an open stream is not idle.
    let mut connection = RawConnection::connect(replica.addr).await;
    let mut call = connection
        .open("GetVersion", "root", "Milvus")
        .await
        .expect("a call opens");
    tokio::time::sleep(idle * 3).await;
    assert!(
        !connection.is_closed(),
        "a connection with an open stream was closed"
    );
    call.body
        .send_data(common::raw::grpc_header(0), true)
        .expect("the body goes out");
    let (code, message) = common::raw::grpc_status(call.response)
        .await
        .expect("an answer");
    assert_eq!((code, message.as_str()), (0, ""), "GetVersion answered");
    // Now idle: GOAWAY, and the connection ends cleanly.
    let ended = Instant::now();
    common::time_limit(idle + SLACK, connection.closed())
        .await
        .expect("the connection ends with GOAWAY, not an error");
    println!(
        "idle connection closed {:?} after its last stream",
        ended.elapsed()
    );
    // A peer that sends the preface and then never reads: the server's PINGs go unanswered.
    let mut deaf = TcpStream::connect(replica.addr).await.unwrap();
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    common::time_limit(SLACK, closed_by_server(deaf)).await;
    let text = common::scrape(metrics).await;
    assert!(
        common::sample(&text, "credstore_connections_closed_total{reason=\"idle\"}") >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_is_cut_off_while_valid_calls_keep_working() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    // Far more than either cut-off needs: on a server without them the test ends in seconds.
    const FLOOD: usize = 20_000;
    const PACED: usize = 2_000;
    let (replica, metrics) = replica(&[]);
    // A valid caller on its own connection, calling until the floods are over.
    let address = replica.addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let valid = tokio::spawn(async move {
        let channel = common::channel(&format!("http://{address}")).await;
        let mut answered = 0u32;
        while !*stopped.borrow() {
            common::get_version(&channel, "root", "Milvus").await?;
            answered += 1;
        }
        Ok::<_, tonic::Status>(answered)
    });
    // 1. The classic rapid reset: HEADERS then RST_STREAM at once, as fast as it goes.
    let mut rapid = RawConnection::connect(replica.addr).await;
    let mut sent = 0;
    while sent < FLOOD {
        let Ok(mut call) = rapid.open("GetVersion", "root", "Milvus").await else {
            break;
        };
        call.body.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    println!("rapid reset: {sent} streams before the server ended the connection");
    assert!(
        sent < FLOOD,
        "{FLOOD} reset streams and the connection still open"
    );
    // 2. Paced: batches of streams the server has accepted and started before each is
    // reset, never more than h2's 20 unaccepted at once, so h2's limit does not see them.
    // On a loaded machine the server may still fall behind and h2 end a connection first;
    // a fresh connection tries again, and one of them must meet the cut-off for resets.
    let resets = "credstore_connections_closed_total{reason=\"resets\"}";
    for attempt in 1..=5 {
        let mut paced = RawConnection::connect(replica.addr).await;
        let mut sent = 0;
        'flood: while sent < PACED {
            let mut batch = Vec::new();
            for _ in 0..10 {
                match paced.open("GetVersion", "root", "Milvus").await {
                    Ok(call) => batch.push(call),
                    Err(_) => break 'flood,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for mut call in batch {
                call.body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
        }
        println!(
            "paced reset, attempt {attempt}: {sent} streams before the server ended the connection"
        );
        assert!(
            sent < PACED,
            "{PACED} reset streams and the connection still open"
        );
        if common::sample(&common::scrape(metrics).await, resets) >= 1.0 {
            break;
        }
    }
    let _ = stop.send(true);
    let answered = common::time_limit(SLACK, valid)
        .await
        .expect("the valid caller")
        .expect("every valid call during the floods answered");
    println!("{answered} valid calls answered during the floods");
    assert!(answered > 0, "no valid call was made during the floods");
    let text = common::scrape(metrics).await;
    assert!(common::sample(&text, resets) >= 1.0, "{text}");
    assert_eq!(call_from(ip("127.0.0.1"), replica.addr).await, Ok(()));
}
