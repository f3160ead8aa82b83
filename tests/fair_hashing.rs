//! Fair hashing per peer (issue 18), on a real `credstore serve` process with production
//! argon2id and the default hash pool: one address (`127.0.0.2`) keeps 800 wrong-password
//! logins in flight — each for a name of its own, so no lockout stops them and every one costs
//! a hash — and legitimate logins from `127.0.0.1`, whose passwords are not cached, still
//! succeed within a 2 s deadline each, while the attacker is held to its share (the replica's
//! `credstore_hashes_refused_peer_total` moves). Before per-peer shares, the attacker kept the
//! whole queue full and every uncached login got RESOURCE_EXHAUSTED. (That a login from
//! another address is computed right after the hashes already running, not after the
//! attacker's queue, is `hash_pool`'s unit test; here it is the end-to-end promise.)
//!
//! The deadline is the issue's. On a 2-core machine shared with other builds (load average
//! 10–15) the debug build measured 0.6–1.9 s (of which the user's store read 0.2–1 s):
//! `CREDSTORE_TEST_FAIR_DEADLINE_MS` lengthens it on machines busier than that.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credstore::client::{Authorization, channel_from};
use credstore::proto::milvus::GetVersionRequest;
use tonic::Code;

/// The value of the sample `name` on the metrics port.
async fn sample(port: u16, name: &str) -> f64 {
    common::sample(&common::scrape(port).await, name)
}

/// Connections × requests in flight on each: 800 in flight from one address.
const CONNECTIONS: usize = 8;
const PER_CONNECTION: usize = 100;
const LEGIT_USERS: usize = 5;

/// The fair shares alone (`credstore.lockout.enabled: false`, so no pacing either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_from_one_address_leaves_hashing_for_another() {
    // One storm at a time: two would share the machine's cores.
    let _storm = common::cluster_test(common::TEST_LIMIT);
    let answers = storm(false).await;
    assert!(
        answers.get("pool share").is_some_and(|n| *n > 0),
        "{answers:?}"
    );
}

/// The defaults: the fair shares, and the address paced once it spent its failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_storm_with_the_defaults_is_paced() {
    let _storm = common::cluster_test(common::TEST_LIMIT);
    let answers = storm(true).await;
    assert!(answers.get("paced").is_some_and(|n| *n > 0), "{answers:?}");
}

/// Runs the storm and the legitimate logins; returns the storm's answers by kind.
async fn storm(lockout: bool) -> BTreeMap<String, u64> {
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let port = common::free_port();
    let deadline = std::env::var("CREDSTORE_TEST_FAIR_DEADLINE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis);
    // Production hashing and the production failure delay: what an attacker meets. The
    // hashing threads keep the process's priority: on a machine shared with other builds,
    // nice-10 threads wait for everyone's CPU, which is not what this test is about.
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("fair"))
        .remove("credstore.password.allowWeakParameters")
        .remove("credstore.password.argon2")
        .remove("credstore.failedAuthDelayMs")
        .set("credstore.password.hashNiceness", 0)
        .set("credstore.http.port", port)
        .set("credstore.lockout.enabled", lockout)
        .yaml();
    let replica = tokio::task::block_in_place(|| common::Replica::start(&yaml));
    let uri = replica.uri();
    let mut admin = common::Admin::connect(&replica).await;
    for i in 0..LEGIT_USERS {
        common::assert_ok(
            admin.create(&format!("legit{i}"), "legit-password").await,
            "create",
        );
    }

    let attacker: IpAddr = [127, 0, 0, 2].into();
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut attackers = Vec::new();
    for c in 0..CONNECTIONS {
        let channel = channel_from(&uri, attacker)
            .await
            .expect("attacker connects");
        for k in 0..PER_CONNECTION {
            let (channel, stop, answers) = (channel.clone(), stop.clone(), answers.clone());
            attackers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("nosuch{c}x{k}x{i}");
                    let authorization = Authorization::credentials(&name, "wrong-password");
                    let mut client = credstore::client::client(channel.clone(), authorization);
                    let answer = match client.get_version(GetVersionRequest {}).await {
                        Ok(_) => "accepted".to_string(),
                        Err(s) if s.message().contains("failed logins from this address") => {
                            "paced".to_string()
                        }
                        Err(s) if s.code() == Code::ResourceExhausted => "pool share".to_string(),
                        Err(status) => format!("{:?}", status.code()),
                    };
                    *answers.lock().unwrap().entry(answer).or_default() += 1;
                    i += 1;
                }
            }));
        }
    }
    // The storm is on once the attacker is being refused for holding its share (or paced).
    common::eventually("the attacker is held back", async || {
        let answers = answers.lock().unwrap();
        answers.get("pool share").unwrap_or(&0) + answers.get("paced").unwrap_or(&0) > 100
    })
    .await;

    let legit = common::channel(&uri).await;
    let hashes = "credstore_hash_seconds_count";
    for i in 0..LEGIT_USERS {
        let authorization = Authorization::credentials(&format!("legit{i}"), "legit-password");
        let mut client = credstore::client::client(legit.clone(), authorization);
        let mut request = tonic::Request::new(GetVersionRequest {});
        request.set_timeout(deadline);
        let computed = sample(port, hashes).await;
        let started = Instant::now();
        let answer = client.get_version(request).await;
        let took = started.elapsed();
        let during = sample(port, hashes).await - computed;
        eprintln!(
            "legit{i} (uncached) during the storm: {took:?}, {during} hashes computed meanwhile"
        );
        answer.unwrap_or_else(|e| panic!("legit{i} within {deadline:?} during the storm: {e:?}"));
    }
    if !lockout {
        let refused = sample(port, "credstore_hashes_refused_peer_total").await;
        assert!(refused > 0.0, "the attacker was held to its share");
    }

    stop.store(true, Ordering::Relaxed);
    for task in attackers {
        task.await.expect("storm task");
    }
    let answers = answers.lock().unwrap().clone();
    eprintln!("storm answers: {answers:?}");
    assert_eq!(answers.get("accepted"), None, "no wrong password got in");
    let wrong = format!("{:?}", Code::Unauthenticated);
    assert!(answers.get(&wrong).is_some_and(|n| *n > 0), "{answers:?}");
    answers
}
