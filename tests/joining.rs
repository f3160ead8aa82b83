//! Replicas joining a cluster while a writer keeps changing a password: after every
//! acknowledged change, every replica that has joined refuses the old password on its very
//! next request. (The race itself — a writer whose view of the sessions lags a replica that
//! registered just before the write — is reproduced deterministically by a fault-injection
//! test in `src/coherence/tests.rs`; this is the same promise end to end.)
//! Starts an etcd and several replicas, one cluster test at a time (`common::cluster_test`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credstore::proto::common::Status;
use tonic::Code;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(180);

/// Acknowledged changes between two joins.
const JOIN_EVERY: usize = 5;

fn succeeded(status: &Status) -> bool {
    status.code == 0 && status.error_code == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joining_during_acknowledged_writes_never_accept_an_old_password() {
    let _cluster = common::cluster_test(LIMIT);
    joining().await;
}

async fn joining() {
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let root = common::unique_root("joining");
    let yaml = common::config_yaml(&etcd.endpoint(), &root, "");
    let a = tokio::task::block_in_place(|| common::Replica::start(&yaml));
    let mut admin = common::client(&a.uri(), "root", "Milvus").await;
    let created = common::create_user(&mut admin, "jo", "jo-0000").await;
    assert!(succeeded(&created), "create jo: {created:?}");

    // Channels to the replicas that have joined so far; the writer probes each after its acks.
    let joined: Arc<Mutex<Vec<(String, Channel)>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    // How many changes the writer has had acknowledged so far.
    let (rounds_tx, mut rounds_rx) = tokio::sync::watch::channel(0usize);
    let writer = {
        let joined = joined.clone();
        tokio::spawn(async move {
            let (mut stale, mut wrong, mut rounds) = (Vec::new(), Vec::new(), 0);
            let mut after_all_joined = 0;
            let mut old = "jo-0000".to_string();
            while after_all_joined < 20 {
                rounds += 1;
                let new = format!("jo-{rounds:04}");
                let reply = common::change_password(&mut admin, "jo", &old, &new).await;
                assert!(succeeded(&reply), "change {rounds}: {reply:?}");
                let probes = joined.lock().unwrap().clone();
                for (name, channel) in &probes {
                    match common::login(channel, "jo", &old).await {
                        Ok(()) => {
                            stale.push(format!("change {rounds}: {name} accepted the old password"))
                        }
                        Err(Code::Unauthenticated | Code::Unavailable) => {}
                        Err(code) => {
                            wrong.push(format!("change {rounds}: {name} answered {code:?}"))
                        }
                    }
                    // Caches the new password, so the next change has something to invalidate.
                    let _ = common::login(channel, "jo", &new).await;
                }
                old = new;
                let _ = rounds_tx.send(rounds);
                if *done_rx.borrow_and_update() {
                    after_all_joined += 1;
                }
            }
            (rounds, stale, wrong)
        })
    };

    let mut replicas = Vec::new();
    for n in 0..3 {
        // Let the writer run between joins, so each join races many acknowledged writes.
        // Counted in acknowledged changes, not wall-clock time: on a loaded 2-core machine
        // a change can take longer than a fixed pause, and `rounds >= 30` below must hold
        // by construction (3 joins x 5 changes + 20 after the last), never by luck. The
        // test's LIMIT bounds the wait.
        let target = *rounds_rx.borrow() + JOIN_EVERY;
        if rounds_rx.wait_for(|&done| done >= target).await.is_err() {
            break; // the writer ended early: its result below says why
        }
        // On a blocking thread: the writer keeps both runtime workers while a replica starts.
        let replica = common::Replica::start_blocking(yaml.clone()).await;
        let channel = common::channel(&replica.uri()).await;
        joined
            .lock()
            .unwrap()
            .push((format!("joiner {n}"), channel));
        replicas.push(replica);
    }
    let _ = done_tx.send(true);
    let (rounds, stale, wrong) = writer.await.expect("writer task");
    println!("joining: {rounds} acknowledged changes while 3 replicas joined");
    // Holds by construction (see JOIN_EVERY): a check that the joins raced writes, not a
    // timing bound.
    assert!(
        rounds >= 30,
        "only {rounds} changes: the joins raced too few writes"
    );
    assert!(
        stale.is_empty(),
        "{} stale acceptances after acks: {stale:#?}",
        stale.len()
    );
    assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
}
