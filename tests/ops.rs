//! Operating a replica, against real `credstore serve` processes on a real etcd: the metrics
//! and health port (`/metrics` counters that move with logins, `/healthz`, `/readyz` through
//! a SIGTERM drain, nothing but GET), the standard gRPC health service answering without
//! credentials, `credstore.http.port: 0` opening nothing, and a rolling restart of two
//! replicas under authenticated load that loses no call.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credstore::proto::milvus::GetVersionRequest;
use credstore::proto::milvus::milvus_service_client::MilvusServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// One HTTP/1.1 request over a fresh connection: (status code, body).
async fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

async fn get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The value of the sample line `name` (with its labels) in a Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    sample_if_any(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// The value of the sample line `name`, if the series exists yet.
fn sample_if_any(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

async fn scrape(port: u16) -> String {
    let (status, body) = get(port, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

async fn health(uri: &str, service: &str) -> Result<i32, tonic::Status> {
    let channel = Channel::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(answer.into_inner().status)
}

async fn login(uri: &str, user: &str, password: &str) -> Result<(), tonic::Status> {
    let mut client = common::client(uri, user, password).await;
    client.get_version(GetVersionRequest {}).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_drain_on_the_http_port() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let port = common::free_port();
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("ops"))
        .set("credstore.http.port", port)
        // The checks after SIGTERM below (five round trips) must land inside the drain. A
        // window of 10 s rather than 3 s: a test process starved on a loaded 2-core machine
        // must not see the replica gone for a reason other than a bug (costs ~7 s here).
        .set("credstore.shutdown.drainMs", 10_000)
        .yaml();
    let replica = common::Replica::start_blocking(yaml).await;
    let uri = replica.uri();
    assert!(
        replica.log().contains(&format!("http://127.0.0.1:{port}")),
        "the log names the metrics address:\n{}",
        replica.log()
    );

    assert_eq!(get(port, "/healthz").await.0, 200);
    common::eventually("/readyz answers 200", async || {
        get(port, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(get(port, "/nothing").await.0, 404);
    assert_eq!(get(port, "/").await.0, 404);
    for method in ["POST", "PUT", "DELETE"] {
        let (status, _) = http(port, method, "/metrics").await.unwrap();
        assert_eq!(status, 405, "{method} /metrics is refused");
    }

    // Counters move with logins: two good (a miss, then a hit), one bad.
    let before = scrape(port).await;
    login(&uri, "root", "Milvus").await.unwrap();
    login(&uri, "root", "Milvus").await.unwrap();
    let denied = login(&uri, "root", "wrong-password").await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    // A write: an etcd txn, then the wait for every live replica's acknowledgement.
    let mut admin = common::client(&uri, "root", "Milvus").await;
    let created = common::create_user(&mut admin, "metered", "metered-pw1").await;
    assert_eq!(created.code, 0, "{created:?}");
    let after = scrape(port).await;
    let moved = |name: &str| sample(&after, name) - sample_if_any(&before, name).unwrap_or(0.0);
    assert!(moved("credstore_ack_wait_seconds_count") >= 1.0, "{after}");
    assert!(moved("credstore_ack_wait_seconds_sum") > 0.0, "{after}");
    for op in ["get", "txn"] {
        let series = format!("credstore_etcd_request_seconds_count{{op=\"{op}\"}}");
        assert!(moved(&series) >= 1.0, "{series} moves:\n{after}");
    }
    assert_eq!(sample(&after, "credstore_audit_dropped_total"), 0.0);
    assert_eq!(moved("credstore_auth_requests_total{result=\"ok\"}"), 3.0);
    assert_eq!(
        moved("credstore_auth_requests_total{result=\"denied\"}"),
        1.0
    );
    assert_eq!(moved("credstore_auth_requests_total{result=\"busy\"}"), 0.0);
    assert_eq!(
        moved("credstore_auth_requests_total{result=\"unavailable\"}"),
        0.0
    );
    assert!(moved("credstore_cache_misses_total") >= 1.0, "{after}");
    assert!(moved("credstore_cache_hits_total") >= 1.0, "{after}");
    assert!(moved("credstore_hash_seconds_count") >= 1.0, "{after}");
    assert_eq!(sample(&after, "credstore_sessions_live"), 1.0);
    assert!(sample(&after, "credstore_watch_applied_revision") > 0.0);
    assert_eq!(sample(&after, "credstore_cache_trusted"), 1.0);
    assert_eq!(sample(&after, "credstore_hashes_queued"), 0.0);
    assert!(
        !after.contains("Milvus") && !after.contains("etcd.endpoints"),
        "no secrets or configuration on the metrics port"
    );

    // The gRPC health service answers without credentials.
    assert_eq!(
        health(&uri, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(&uri, "milvus.proto.milvus.MilvusService")
            .await
            .unwrap(),
        ServingStatus::Serving as i32
    );

    // SIGTERM: not ready at once, yet still serving through the drain, then gone.
    let stopping = tokio::task::spawn_blocking(move || replica.stop());
    common::eventually("/readyz answers 503 while draining", async || {
        get(port, "/readyz").await.0 == 503
    })
    .await;
    assert_eq!(get(port, "/readyz").await.1, "draining\n");
    assert_eq!(get(port, "/healthz").await.0, 200, "alive while draining");
    assert_eq!(
        health(&uri, "").await.unwrap(),
        ServingStatus::NotServing as i32
    );
    login(&uri, "root", "Milvus")
        .await
        .expect("authenticated calls still served while draining");
    let status = stopping.await.unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    assert!(
        http(port, "GET", "/healthz").await.is_err(),
        "the HTTP port closes with the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_zero_opens_no_port() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("ops-off"))
        .set("credstore.http.port", 0)
        .yaml();
    let replica = common::Replica::start_blocking(yaml).await;
    login(&replica.uri(), "root", "Milvus").await.unwrap();
    assert!(
        !replica.log().contains("metrics and health on"),
        "no HTTP listener:\n{}",
        replica.log()
    );
    // Only the gRPC port listens: the process's listening sockets, from /proc.
    let listening = listening_ports(replica.addr.port());
    assert_eq!(listening, vec![replica.addr.port()], "{}", replica.log());
}

/// Every TCP port the process listening on `grpc_port` listens on (from /proc: the listening
/// sockets of /proc/net/tcp whose inodes are among that process's file descriptors).
fn listening_ports(grpc_port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // (port, inode) of sockets in LISTEN (state 0A).
    let listeners: Vec<(u16, String)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.to_string();
            (*fields.get(3)? == "0A").then_some((port, inode))
        })
        .collect();
    let mut ports = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if !exe.ends_with("credstore") {
            continue;
        }
        let inodes: Vec<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect();
        let mine: Vec<u16> = listeners
            .iter()
            .filter(|(_, inode)| inodes.contains(inode))
            .map(|(port, _)| *port)
            .collect();
        if mine.contains(&grpc_port) {
            ports = mine;
        }
    }
    ports.sort();
    ports
}

/// Adds root's `authorization` header, as pymilvus does; cloneable, unlike the harness's.
#[derive(Clone)]
struct RootAuth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for RootAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type LoadClient =
    MilvusServiceClient<tonic::service::interceptor::InterceptedService<Channel, RootAuth>>;

/// A client that connects lazily (a replica may be down when it is made).
fn lazy_client(uri: &str) -> LoadClient {
    let channel = Channel::from_shared(uri.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let header = common::b64("root:Milvus").parse().expect("ASCII");
    MilvusServiceClient::with_interceptor(channel, RootAuth(header))
}

/// A call the stopping replica never processed, which a client may send again elsewhere:
/// UNAVAILABLE (refused connection), or the transport's own failures when a connection closes
/// under it — hyper cancelling a request still queued on it, an HTTP/2 stream refused after
/// GOAWAY. gRPC's C core, under pymilvus, retries the latter two transparently; tonic does
/// not, so this client does what pymilvus's would.
fn never_processed(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Cancelled => status.message() == "operation was canceled",
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// Under load, stops each replica in turn (SIGTERM, a clean exit), leaves it down for `down`,
/// starts it again from `yaml` and tells `restarted` where the new one listens; one second of
/// load before each restart and after the last.
async fn restart_in_turn(
    replicas: &mut [Option<common::Replica>],
    yaml: &str,
    down: Duration,
    mut restarted: impl FnMut(usize, &common::Replica),
) {
    for (i, slot) in replicas.iter_mut().enumerate() {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let replica = slot.take().expect("a running replica");
        let status = tokio::task::spawn_blocking(move || replica.stop())
            .await
            .expect("stopped");
        assert!(status.success(), "replica {i} exits cleanly: {status:?}");
        tokio::time::sleep(down).await;
        let replica = common::Replica::start_blocking(yaml.to_string()).await;
        restarted(i, &replica);
        *slot = Some(replica);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

/// Two replicas restarted in turn under load from clients that send a call once more, to the
/// other replica, when the first replica never processed it (see `never_processed`): no call
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_call() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = common::Etcd::start();
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("rolling"))
        .set("credstore.shutdown.drainMs", 500)
        .yaml();
    let mut replicas: Vec<_> = common::start_replicas_from([yaml.clone(), yaml.clone()])
        .map(Some)
        .into();
    let uris: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        replicas.iter().flatten().map(|r| r.uri()).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for worker in 0..4u64 {
        let (uris, stop, served, retried, failures) = (
            uris.clone(),
            stop.clone(),
            served.clone(),
            retried.clone(),
            failures.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut cached: Vec<(String, LoadClient)> = Vec::new();
            let mut client_for = |uri: &str| match cached.iter().find(|(u, _)| u == uri) {
                Some((_, client)) => client.clone(),
                None => {
                    let client = lazy_client(uri);
                    cached.push((uri.to_string(), client.clone()));
                    client
                }
            };
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let now: Vec<String> = uris.lock().unwrap().clone();
                let first = &now[(n % 2) as usize];
                let other = &now[((n + 1) % 2) as usize];
                let call = async |uri: &str, mut client: LoadClient| {
                    let mut request = tonic::Request::new(GetVersionRequest {});
                    request.set_timeout(Duration::from_secs(5));
                    client
                        .get_version(request)
                        .await
                        .map_err(|e| (uri.to_string(), e))
                };
                let result = match call(first, client_for(first)).await {
                    Err((_, status)) if never_processed(&status) => {
                        retried.fetch_add(1, Ordering::Relaxed);
                        call(other, client_for(other)).await
                    }
                    other => other,
                };
                match result {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((uri, status)) => failures.lock().unwrap().push(format!(
                        "{uri}: {:?} {}",
                        status.code(),
                        status.message()
                    )),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Down for a moment: calls to it are UNAVAILABLE and go to the other replica.
    restart_in_turn(
        &mut replicas,
        &yaml,
        Duration::from_millis(300),
        |i, restarted| {
            uris.lock().unwrap()[i] = restarted.uri();
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "rolling restart: {served} calls served, {} retried once, {} failed",
        retried.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "failed calls: {failures:#?}");
    assert!(served > 100, "the load ran: {served} calls");
}

/// Load behind a balancer that sends calls only to replicas whose gRPC health said SERVING
/// (checked every 50 ms) and never retries: the drain alone must keep every call whole. With
/// `drainMs: 0` a replica stops the moment it reports NOT_SERVING, and calls routed to it in
/// between fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_a_health_checking_balancer() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = common::Etcd::start();
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("balanced"))
        // The balancer must see NOT_SERVING (checked every 50 ms, 200 ms per check) before
        // the drain ends. 3 s, not 1 s: on a loaded 2-core machine the checker task can lag
        // by a second; the promise tested is "the drain keeps calls whole", not its length.
        .set("credstore.shutdown.drainMs", 3000)
        .yaml();
    let mut replicas: Vec<_> = common::start_replicas_from([yaml.clone(), yaml.clone()])
        .map(Some)
        .into();
    // (uri, last health answer was SERVING)
    let pool: Arc<Mutex<Vec<(String, bool)>>> = Arc::new(Mutex::new(
        replicas
            .iter()
            .flatten()
            .map(|r| (r.uri(), false))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let uris: Vec<String> = pool
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(u, _)| u.clone())
                    .collect();
                for uri in uris {
                    let serving = matches!(
                        tokio::time::timeout(Duration::from_millis(200), health(&uri, "")).await,
                        Ok(Ok(status)) if status == ServingStatus::Serving as i32
                    );
                    for entry in pool.lock().unwrap().iter_mut() {
                        if entry.0 == uri {
                            entry.1 = serving;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for worker in 0..4u64 {
        let (pool, stop, served, failures) =
            (pool.clone(), stop.clone(), served.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let mut cached: Vec<(String, LoadClient)> = Vec::new();
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let healthy: Vec<String> = pool
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, serving)| *serving)
                    .map(|(u, _)| u.clone())
                    .collect();
                let Some(uri) = healthy.get((n as usize) % healthy.len().max(1)).cloned() else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut client = match cached.iter().find(|(u, _)| *u == uri) {
                    Some((_, client)) => client.clone(),
                    None => {
                        let client = lazy_client(&uri);
                        cached.push((uri.clone(), client.clone()));
                        client
                    }
                };
                let mut request = tonic::Request::new(GetVersionRequest {});
                request.set_timeout(Duration::from_secs(5));
                match client.get_version(request).await {
                    Ok(_) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => failures.lock().unwrap().push(format!(
                        "{uri}: {:?} {}",
                        status.code(),
                        status.message()
                    )),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    restart_in_turn(&mut replicas, &yaml, Duration::ZERO, |i, restarted| {
        pool.lock().unwrap()[i] = (restarted.uri(), false);
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    checker.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "balanced rolling restart: {served} calls served, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed calls: {failures:#?}");
    assert!(served > 100, "the load ran: {served} calls");
}
