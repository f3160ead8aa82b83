//! Replicas joining a cluster while a writer keeps changing a password: after every
//! acknowledged change, every replica that has joined refuses the old password on its very
//! next request. (The race itself — a writer whose view of the sessions lags a replica that
//! registered just before the write — is reproduced deterministically by a fault-injection
//! test in `src/coherence/tests.rs`; this is the same promise end to end.)
//! Starts an etcd and several replicas: run this file with `--test-threads=1`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credstore::proto::common::Status;
use credstore::proto::milvus::{CreateCredentialRequest, UpdateCredentialRequest};
use tonic::Code;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(180);

fn succeeded(status: &Status) -> bool {
    status.code == 0 && status.error_code == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joining_during_acknowledged_writes_never_accept_an_old_password() {
    tokio::time::timeout(LIMIT, joining())
        .await
        .expect("the test finishes within its limit");
}

async fn joining() {
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let root = common::unique_root("joining");
    let yaml = common::config_yaml(&etcd.endpoint(), &root, "");
    let a = tokio::task::block_in_place(|| common::Replica::start(&yaml));
    let mut admin = common::client(&a.uri(), "root", "Milvus").await;
    let created = admin
        .create_credential(CreateCredentialRequest {
            username: "jo".into(),
            password: common::b64("jo-0000"),
            ..Default::default()
        })
        .await
        .expect("CreateCredential answers")
        .into_inner();
    assert!(succeeded(&created), "create jo: {created:?}");

    // Channels to the replicas that have joined so far; the writer probes each after its acks.
    let joined: Arc<Mutex<Vec<(String, Channel)>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let joined = joined.clone();
        tokio::spawn(async move {
            let (mut stale, mut wrong, mut rounds) = (Vec::new(), Vec::new(), 0);
            let mut after_all_joined = 0;
            let mut old = "jo-0000".to_string();
            while after_all_joined < 20 {
                rounds += 1;
                let new = format!("jo-{rounds:04}");

                let reply = admin
                    .update_credential(UpdateCredentialRequest {
                        username: "jo".into(),
                        old_password: common::b64(&old),
                        new_password: common::b64(&new),
                        ..Default::default()
                    })
                    .await
                    .expect("UpdateCredential answers")
                    .into_inner();
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
        tokio::time::sleep(Duration::from_millis(300)).await;
        // On a blocking thread: the writer keeps both runtime workers while a replica starts.
        let config = yaml.clone();
        let replica = tokio::task::spawn_blocking(move || common::Replica::start(&config))
            .await
            .expect("replica starts");
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
