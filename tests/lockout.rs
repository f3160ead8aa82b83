//! Login lockout (issue 18), on real processes: two `credstore serve` replicas on one real etcd,
//! clients whose TCP connections leave from distinct loopback addresses (`127.0.0.x`), which
//! is all a replica knows a peer by. Five failures from one address lock that (name, address)
//! pair on both replicas — an uncached right password is refused with the lock answer, a
//! cached one is still served — while another address still logs in; a hundred failures from
//! rotating addresses lock the name (root's only per address); a busy client's cache hits
//! never reset an attacker's count, a freshly verified password does; names that do not exist
//! are counted and answered exactly like names that do; `credstore user unlock` lifts it all,
//! for root only, audited and counted in the metrics; counts and locks lapse with time.
//!
//! Every refusal is asserted with its code and text next to a positive control on the same
//! replica, so a dead replica can never pass for a locked one.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use credstore::client::channel_from;
use tonic::Code;
use tonic::transport::Channel;

use common::Replica;

const DENIED: &str = "auth check failure, please check username and password are correct";
const PAIR: &str = "login attempts for this user from this address are locked";
const ACCOUNT: &str = "login attempts for this user from every address are locked";
const PW: &str = "right-password-1";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A connection to `replica` from `127.0.0.{last}`.
async fn from(replica: &Replica, last: u8) -> Channel {
    channel_from(&replica.uri(), ip(last))
        .await
        .expect("replica reachable")
}

async fn login(channel: &Channel, user: &str, password: &str) -> Result<(), tonic::Status> {
    common::get_version(channel, user, password).await
}

#[track_caller]
fn assert_denied(result: Result<(), tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(status.message(), DENIED, "{what}");
}

/// The lock answer: UNAUTHENTICATED, saying what is locked and for how long.
#[track_caller]
fn assert_locked(result: Result<(), tonic::Status>, scope: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    let message = status.message();
    assert!(message.contains(scope), "{what}: {message}");
    assert!(
        message.contains("retry in ") && message.contains(" s or ask an administrator"),
        "{what}: {message}"
    );
}

fn is_locked(result: &Result<(), tonic::Status>) -> bool {
    matches!(result, Err(s) if s.code() == Code::Unauthenticated && s.message().contains("are locked"))
}

/// The per-address pace these tests run under: their addresses fail tens of times in a row
/// on purpose, which the default (2 a second, 8 at once; tested in `src/auth/pace.rs`,
/// `authenticator.rs` and the compat suite) would answer with RESOURCE_EXHAUSTED before the
/// lockout is reached.
const PACE: u32 = 1000;

/// Two replicas on a fresh etcd with the test defaults (weak hashing, no failure delay) and
/// the default lockout (a pace out of the way), changed by `config`.
fn cluster(
    name: &str,
    config: impl Fn(common::TestConfig) -> common::TestConfig,
) -> (common::Etcd, [Replica; 2]) {
    let etcd = common::Etcd::start();
    let base = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root(name))
        .set("credstore.lockout.enabled", true)
        .set("credstore.lockout.peerFailuresPerSecond", PACE);
    let yaml = config(base).yaml();
    let replicas = common::start_replicas_from([yaml.clone(), yaml]);
    (etcd, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_from_one_address_lock_it_on_both_replicas() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let (_etcd, [a, b]) = tokio::task::block_in_place(|| cluster("lock-pair", |c| c));
    let mut admin = common::Admin::connect(&a).await;
    for user in ["alice", "carol"] {
        common::assert_ok(admin.create(user, PW).await, user);
    }
    // A client at .3 has alice's password verified (cached) on B.
    let b3 = from(&b, 3).await;
    login(&b3, "alice", PW).await.expect("alice logs in on B");

    let a2 = from(&a, 2).await;
    for i in 0..5 {
        for user in ["alice", "carol"] {
            assert_denied(login(&a2, user, &format!("guess-{i}")).await, "a guess");
        }
    }
    let locked_at = Instant::now();
    // On A, from .2: right passwords not cached there are refused, wrong ones too.
    for user in ["alice", "carol"] {
        assert_locked(
            login(&a2, user, PW).await,
            PAIR,
            "right password from .2 on A",
        );
        assert_locked(
            login(&a2, user, "guess-5").await,
            PAIR,
            "guess from .2 on A",
        );
    }
    // On B the lock arrives through etcd.
    let b2 = from(&b, 2).await;
    common::eventually("B refuses carol from .2", async || {
        is_locked(&login(&b2, "carol", "guess-b").await)
    })
    .await;
    eprintln!(
        "the lock reached B {:?} after A's fifth failure",
        locked_at.elapsed()
    );
    assert_locked(
        login(&b2, "carol", PW).await,
        PAIR,
        "carol's uncached password on B",
    );
    // alice's password was verified on B before the lock: served (it proves nothing new).
    login(&b2, "alice", PW)
        .await
        .expect("a cached password is still served");
    // Another address still logs in on both (uncached on A: this verifies afresh).
    let a3 = from(&a, 3).await;
    for user in ["alice", "carol"] {
        login(&a3, user, PW)
            .await
            .expect("another address logs in on A");
        login(&b3, user, PW)
            .await
            .expect("another address logs in on B");
    }
    // From .2 guessing stays locked even for names now cached.
    assert_locked(login(&a2, "carol", "guess-6").await, PAIR, "still locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_failures_from_rotating_addresses_lock_the_name_but_root_only_per_address() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let (_etcd, replicas) = tokio::task::block_in_place(|| cluster("lock-account", |c| c));
    let [a, b] = &replicas;
    let mut admin = common::Admin::connect(a).await;
    common::assert_ok(admin.create("alice", PW).await, "alice");
    // One guess per address (far below the pair threshold), alternating replicas: alice,
    // a name that does not exist, and root.
    for i in 0..100u8 {
        let channel = from(&replicas[usize::from(i % 2)], 10 + i).await;
        for user in ["alice", "ghost", "root"] {
            assert_denied(login(&channel, user, &format!("guess-{i}")).await, user);
        }
    }
    // A fresh address, on both replicas: alice's right password and any guess at ghost get
    // the account lock answer; root's right password (not cached on B) logs in.
    for replica in [a, b] {
        let fresh = from(replica, 200).await;
        common::eventually("the account lock reaches the replica", async || {
            is_locked(&login(&fresh, "ghost", "guess-x").await)
        })
        .await;
        assert_locked(login(&fresh, "alice", PW).await, ACCOUNT, "alice");
        assert_locked(login(&fresh, "ghost", "guess-y").await, ACCOUNT, "ghost");
        login(&fresh, "root", "Milvus")
            .await
            .expect("root is never account-locked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_never_reset_a_count_and_a_verified_password_does() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let (_etcd, [a, _b]) = tokio::task::block_in_place(|| cluster("lock-busy", |c| c));
    let mut admin = common::Admin::connect(&a).await;
    for user in ["alice", "bob"] {
        common::assert_ok(admin.create(user, PW).await, user);
    }
    // A busy client and an attacker share the address .2.
    let busy = from(&a, 2).await;
    let attacker = from(&a, 2).await;
    login(&busy, "alice", PW).await.expect("first login");
    for i in 0..4 {
        assert_denied(
            login(&attacker, "alice", &format!("guess-{i}")).await,
            "guess",
        );
        for _ in 0..25 {
            login(&busy, "alice", PW).await.expect("cache hit");
        }
    }
    assert_denied(login(&attacker, "alice", "guess-4").await, "fifth guess");
    assert_locked(
        login(&attacker, "alice", "guess-5").await,
        PAIR,
        "the hits in between reset nothing",
    );
    login(&busy, "alice", PW)
        .await
        .expect("the busy client's cached password is still served");

    // bob: four guesses, then his password verified afresh from the same address resets
    // the pair: four more guesses and a fifth are answered as wrong passwords, not locked.
    for i in 0..4 {
        assert_denied(
            login(&attacker, "bob", &format!("guess-{i}")).await,
            "guess",
        );
    }
    login(&busy, "bob", PW).await.expect("bob verified afresh");
    for i in 4..9 {
        assert_denied(
            login(&attacker, "bob", &format!("guess-{i}")).await,
            "after the reset",
        );
    }
    assert_locked(
        login(&attacker, "bob", "guess-9").await,
        PAIR,
        "five since the reset",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_counted_and_answered_like_existing_ones() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let (_etcd, [a, b]) = tokio::task::block_in_place(|| cluster("lock-unknown", |c| c));
    let mut admin = common::Admin::connect(&a).await;
    common::assert_ok(admin.create("alice", PW).await, "alice");
    let a2 = from(&a, 2).await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let alice = login(&a2, "alice", &format!("guess-{i}"))
            .await
            .unwrap_err();
        let ghost = login(&a2, "ghost", &format!("guess-{i}"))
            .await
            .unwrap_err();
        answers.push((alice, ghost));
    }
    let digitless = |s: &tonic::Status| (s.code(), s.message().replace(char::is_numeric, ""));
    for (i, (alice, ghost)) in answers.iter().enumerate() {
        assert_eq!(digitless(alice), digitless(ghost), "answer {i}");
    }
    assert_eq!(answers[4].0.message(), DENIED);
    assert!(answers[5].0.message().contains(PAIR), "{:?}", answers[5].0);
    // The same on the other replica, once the lock has arrived there; and from elsewhere
    // both are plain wrong-password answers again.
    let b2 = from(&b, 2).await;
    common::eventually("B locks ghost for .2", async || {
        is_locked(&login(&b2, "ghost", "guess-b").await)
    })
    .await;
    assert_locked(login(&b2, "alice", PW).await, PAIR, "alice on B");
    let b3 = from(&b, 3).await;
    assert_denied(login(&b3, "ghost", "guess-c").await, "ghost from .3");
    login(&b3, "alice", PW).await.expect("alice from .3");
}

/// `credstore user unlock NAME`, the CLI as an operator runs it.
fn unlock(uri: &str, user: &str, password: &str, name: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_credstore"))
        .args(["user", "unlock", name, "--uri", uri, "--user", user])
        .env("CREDSTORE_PASSWORD", password)
        .output()
        .expect("credstore user unlock runs")
}

/// The value of the sample `name` (labels included) on the metrics port, if it exists.
async fn sample(port: u16, name: &str) -> Option<f64> {
    common::try_sample(&common::scrape(port).await, name)
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_lifts_every_lock_on_every_replica_and_is_audited_and_counted() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let base = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("unlock"))
        .set("credstore.lockout.enabled", true)
        .set("credstore.lockout.peerFailuresPerSecond", PACE)
        .set("credstore.lockout.accountThreshold", 10)
        .set("credstore.audit.path", audit.to_str().unwrap());
    let [a, b] = common::start_replicas_from([
        base.clone().set("credstore.http.port", port_a).yaml(),
        base.set("credstore.http.port", port_b).yaml(),
    ]);
    let mut admin = common::Admin::connect(&a).await;
    common::assert_ok(admin.create("alice", PW).await, "alice");
    common::assert_ok(admin.create("bob", "bobs-password").await, "bob");
    // The pair (alice, .2) and, from ten more addresses, the name alice.
    let a2 = from(&a, 2).await;
    for i in 0..5 {
        assert_denied(login(&a2, "alice", &format!("guess-{i}")).await, "guess");
    }
    for i in 0..10u8 {
        let channel = from(&a, 30 + i).await;
        let _ = login(&channel, "alice", "guess-x").await;
    }
    let b2 = from(&b, 2).await;
    common::eventually("B sees the locks", async || {
        sample(port_b, "credstore_locked_pairs").await == Some(1.0)
            && sample(port_b, "credstore_locked_accounts").await == Some(1.0)
    })
    .await;
    assert_eq!(sample(port_a, "credstore_locked_pairs").await, Some(1.0));
    let pair_locks = "credstore_lockouts_total{scope=\"pair\"}";
    let account_locks = "credstore_lockouts_total{scope=\"account\"}";
    assert_eq!(sample(port_a, pair_locks).await, Some(1.0));
    assert_eq!(sample(port_a, account_locks).await, Some(1.0));
    assert_locked(login(&b2, "alice", PW).await, ACCOUNT, "alice on B");

    // bob may not unlock (positive control below on the same replica).
    let refused = tokio::task::block_in_place(|| unlock(&a.uri(), "bob", "bobs-password", "alice"));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("permission deny to bob"),
        "{stderr}"
    );
    assert_locked(login(&a2, "alice", PW).await, ACCOUNT, "still locked");
    let done = tokio::task::block_in_place(|| unlock(&a.uri(), "root", "Milvus", " alice "));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&done.stdout), "unlocked alice\n");
    // The unlocking replica at once, the other through etcd.
    login(&a2, "alice", PW).await.expect("unlocked on A");
    common::eventually("B lifts the locks", async || {
        login(&b2, "alice", PW).await.is_ok()
    })
    .await;
    assert_eq!(sample(port_a, "credstore_locked_pairs").await, Some(0.0));
    assert_eq!(sample(port_a, "credstore_unlocks_total").await, Some(1.0));
    common::eventually("B counts no lock", async || {
        sample(port_b, "credstore_locked_accounts").await == Some(0.0)
    })
    .await;
    // Unlocking a name that never failed (or does not exist) answers alike.
    let nobody = tokio::task::block_in_place(|| unlock(&a.uri(), "root", "Milvus", "nobody"));
    assert_eq!(
        String::from_utf8_lossy(&nobody.stdout),
        "nobody was not locked; its failure counts are cleared\n"
    );

    // Audit: the locks (written by A, which counted them) and both unlock requests.
    let mut lines = Vec::new();
    common::eventually("the audit lines are written", async || {
        lines = audit_lines(&audit);
        lines.iter().filter(|l| l["action"] == "Unlock").count() == 3
    })
    .await;
    let locks: Vec<_> = lines.iter().filter(|l| l["event"] == "lockout").collect();
    assert_eq!(locks.len(), 2, "{locks:?}");
    assert!(locks.iter().any(|l| l["scope"] == "pair"
        && l["user"] == "alice"
        && l["peer"] == "127.0.0.2"
        && l["failures"] == 5));
    assert!(
        locks
            .iter()
            .any(|l| l["scope"] == "account" && l["user"] == "alice" && l["peer"].is_null())
    );
    let unlocks: Vec<_> = lines.iter().filter(|l| l["action"] == "Unlock").collect();
    assert_eq!(unlocks[0]["user"], "bob");
    assert_eq!(unlocks[0]["result"], "permission_denied");
    assert_eq!(unlocks[1]["user"], "root");
    assert_eq!(unlocks[1]["target"]["user"], " alice ");
    assert_eq!(unlocks[1]["result"], "ok");
    assert!(unlocks[1]["revision"].is_number());
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "login_failed" && l["reason"] == "locked")
        .collect();
    assert!(!failed.is_empty(), "refusals while locked are audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_lapse_after_reset_seconds_and_locks_after_duration_seconds() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let reset = Duration::from_secs(2);
    let (_etcd, [a, b]) = tokio::task::block_in_place(|| {
        cluster("lock-lapse", |c| {
            c.set("credstore.lockout.resetSeconds", 2)
                .set("credstore.lockout.durationSeconds", 3)
        })
    });
    let mut admin = common::Admin::connect(&a).await;
    common::assert_ok(admin.create("alice", PW).await, "alice");
    let a2 = from(&a, 2).await;
    let b2 = from(&b, 2).await;
    for i in 0..4 {
        assert_denied(
            login(&a2, "alice", &format!("guess-{i}")).await,
            "guess on A",
        );
    }
    // The time under test: a count lapses `resetSeconds` after its newest failure.
    tokio::time::sleep(reset + Duration::from_millis(500)).await;
    // Four more, on the other replica: counted from zero, so the fifth is still a guess.
    for i in 4..9 {
        assert_denied(
            login(&b2, "alice", &format!("guess-{i}")).await,
            "after the lapse",
        );
    }
    assert_locked(login(&b2, "alice", PW).await, PAIR, "five since the lapse");
    let locked = Instant::now();
    common::eventually("the lock ends after durationSeconds", async || {
        login(&b2, "alice", PW).await.is_ok()
    })
    .await;
    eprintln!("the 3 s lock ended after {:?}", locked.elapsed());
    assert!(
        locked.elapsed() >= Duration::from_secs(2),
        "a lock lasts its duration"
    );
}
