//! One conformance suite for both `MetaKv` backends: the same plain async functions run
//! against a real etcd and against the embedded store, so the two cannot drift apart.

mod common;

use std::time::Duration;

use credstore::meta::{
    Compare, EmbeddedKv, EtcdKv, EtcdOptions, EventKind, MetaKv, Op, Store, Txn, WatchMessage,
};

async fn etcd_store(etcd: &common::Etcd) -> Store {
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Store::Etcd(EtcdKv::connect(&options).await.expect("etcd connects"))
}

fn embedded_store(dir: &tempfile::TempDir) -> Store {
    Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).expect("embedded store opens"))
}

fn put(key: &str, value: &str) -> Txn {
    Txn::default().then(Op::Put(key.into(), value.as_bytes().to_vec()))
}

async fn get_put_list_delete(kv: &Store, root: &str) {
    let a = format!("{root}/x/a");
    assert_eq!(kv.get(&a).await.unwrap().value, None);
    let first = kv.txn(put(&a, "1")).await.unwrap();
    assert!(first.succeeded);
    let read = kv.get(&a).await.unwrap();
    let stored = read.value.expect("written");
    assert_eq!(
        (
            stored.value.as_slice(),
            stored.create_revision,
            stored.mod_revision
        ),
        (b"1".as_slice(), first.revision, first.revision)
    );
    assert!(read.revision >= first.revision);
    let second = kv.txn(put(&a, "2")).await.unwrap();
    assert_eq!(
        second.revision,
        first.revision + 1,
        "one write, one revision"
    );
    let stored = kv.get(&a).await.unwrap().value.unwrap();
    assert_eq!(
        (stored.create_revision, stored.mod_revision),
        (first.revision, second.revision)
    );
    kv.txn(put(&format!("{root}/x/b"), "3")).await.unwrap();
    kv.txn(put(&format!("{root}/xy"), "outside")).await.unwrap();
    let listed: Vec<String> = kv
        .list(&format!("{root}/x/"))
        .await
        .unwrap()
        .value
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(listed, [format!("{root}/x/a"), format!("{root}/x/b")]);
    let keys = kv.list_keys(&format!("{root}/x/")).await.unwrap().value;
    assert_eq!(keys, [format!("{root}/x/a"), format!("{root}/x/b")]);
    kv.txn(Txn::default().then(Op::DeletePrefix(format!("{root}/x/"))))
        .await
        .unwrap();
    assert!(
        kv.list(&format!("{root}/x/"))
            .await
            .unwrap()
            .value
            .is_empty()
    );
    assert!(
        kv.get(&format!("{root}/xy")).await.unwrap().value.is_some(),
        "prefix delete stays inside its prefix"
    );
    let before = kv.get(&a).await.unwrap().revision;
    let noop = kv
        .txn(Txn::default().then(Op::Delete(a.clone())))
        .await
        .unwrap();
    assert_eq!(
        noop.revision, before,
        "deleting a missing key writes nothing"
    );
}

async fn create_if_absent_and_cas(kv: &Store, root: &str) {
    let key = format!("{root}/cas");
    let create = |v: &str| {
        Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key.clone(), v.as_bytes().to_vec()))
    };
    let won = kv.txn(create("first")).await.unwrap();
    assert!(won.succeeded);
    let lost = kv.txn(create("second")).await.unwrap();
    assert!(!lost.succeeded);
    assert_eq!(kv.get(&key).await.unwrap().value.unwrap().value, b"first");
    let swap = |rev, v: &str| {
        Txn::default()
            .when(Compare::ModRevision(key.clone(), rev))
            .then(Op::Put(key.clone(), v.as_bytes().to_vec()))
    };
    let swapped = kv.txn(swap(won.revision, "third")).await.unwrap();
    assert!(swapped.succeeded);
    let stale = kv.txn(swap(won.revision, "stale")).await.unwrap();
    assert!(!stale.succeeded, "a CAS on an old revision is refused");
    assert_eq!(kv.get(&key).await.unwrap().value.unwrap().value, b"third");
    let missing = kv
        .txn(
            Txn::default()
                .when(Compare::ModRevision(format!("{root}/none"), 1))
                .then(Op::Put(key.clone(), vec![])),
        )
        .await
        .unwrap();
    assert!(!missing.succeeded, "CAS on a missing key fails");
}

async fn concurrent_creates_one_winner(kv: &Store, root: &str) {
    let key = format!("{root}/race");
    let attempts = (0..16).map(|i| {
        let kv = kv.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let txn = Txn::default()
                .when(Compare::Absent(key.clone()))
                .then(Op::Put(key, format!("{i}").into_bytes()));
            kv.txn(txn).await.unwrap().succeeded
        })
    });
    let mut winners = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        winners += usize::from(attempt.await.unwrap());
    }
    assert_eq!(winners, 1, "exactly one concurrent create wins");
}

async fn watch_from_revision(kv: &Store, root: &str) {
    let prefix = format!("{root}/w/");
    let start = kv.get(&prefix).await.unwrap().revision;
    let mut watch = kv.watch(&prefix, start + 1).await.unwrap();
    let put_rev = kv
        .txn(put(&format!("{prefix}k"), "v"))
        .await
        .unwrap()
        .revision;
    kv.txn(put(&format!("{root}/elsewhere"), "v"))
        .await
        .unwrap();
    let del_rev = kv
        .txn(Txn::default().then(Op::Delete(format!("{prefix}k"))))
        .await
        .unwrap()
        .revision;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("watch delivers")
            .unwrap()
        {
            WatchMessage::Events { events, .. } => seen.extend(events),
            WatchMessage::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].kind, EventKind::Put);
    assert_eq!(
        (seen[0].revision, seen[0].value.as_slice()),
        (put_rev, b"v".as_slice())
    );
    assert_eq!(
        (seen[1].kind.clone(), seen[1].revision),
        (EventKind::Delete, del_rev)
    );
    // Replay: a new watch from the put's revision sees both changes again.
    let mut replay = kv.watch(&prefix, put_rev).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), replay.next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchMessage::Events { events, .. } => assert_eq!(events[0].revision, put_rev),
        WatchMessage::Compacted { .. } => {
            // The embedded store keeps history only since it opened; that is reported honestly.
        }
        other => panic!("unexpected {other:?}"),
    }
    // Progress on request.
    watch.request_progress().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("progress arrives")
            .unwrap()
        {
            WatchMessage::Progress { revision } => {
                assert!(revision >= del_rev);
                break;
            }
            WatchMessage::Events { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn suite(kv: Store, root: &str) {
    get_put_list_delete(&kv, root).await;
    create_if_absent_and_cas(&kv, root).await;
    concurrent_creates_one_winner(&kv, root).await;
    watch_from_revision(&kv, root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_etcd() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    suite(etcd_store(&etcd).await, &common::unique_root("conf")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_embedded() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    suite(embedded_store(&dir), &common::unique_root("conf")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen_and_reports_compaction() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let kv = embedded_store(&dir);
        kv.txn(put("k", "kept")).await.unwrap().revision
    };
    let kv = embedded_store(&dir);
    let read = kv.get("k").await.unwrap();
    assert_eq!(read.value.unwrap().value, b"kept");
    assert_eq!(read.revision, written, "the revision counter persists");
    let next = kv.txn(put("k", "again")).await.unwrap().revision;
    assert_eq!(next, written + 1);
    // History from before this open is gone: a watch from there must say so, not skip it.
    let mut watch = kv.watch("k", written).await.unwrap();
    assert!(matches!(
        watch.next().await.unwrap(),
        WatchMessage::Compacted { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_is_reported_to_a_watch() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let kv = etcd_store(&etcd).await;
    let root = common::unique_root("compact");
    let first = kv
        .txn(put(&format!("{root}/k"), "1"))
        .await
        .unwrap()
        .revision;
    let last = kv
        .txn(put(&format!("{root}/k"), "2"))
        .await
        .unwrap()
        .revision;
    let client = match &kv {
        Store::Etcd(etcd) => etcd.client(),
        Store::Embedded(_) => unreachable!(),
    };
    client.clone().compact(last, None).await.unwrap();
    let mut watch = kv.watch(&format!("{root}/"), first).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(message, WatchMessage::Compacted { compact_revision } if compact_revision >= last - 1),
        "{message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_a_clear_unavailable_error() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let mut etcd = common::Etcd::start();
    let kv = etcd_store(&etcd).await;
    etcd.kill();
    let err = kv.get("anything").await.unwrap_err();
    assert!(
        matches!(err, credstore::meta::MetaError::Unavailable(_)),
        "{err:?}"
    );
}
