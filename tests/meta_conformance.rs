//! One conformance suite for both `MetaKv` backends: the same plain async functions run
//! against a real etcd and against the embedded store, so the two cannot drift apart.

mod common;

use std::ops::Bound::{Excluded, Included};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use credstore::meta::{Compare, EmbeddedKv, EventKind, MetaKv, Op, Store, Txn, WatchMessage};

async fn etcd_store(etcd: &common::Etcd) -> Store {
    etcd.store().await
}

/// An etcd store whose listings read 3 keys per request, so that they span many pages.
async fn etcd_store_small_pages(etcd: &common::Etcd) -> Store {
    match etcd_store(etcd).await {
        Store::Etcd(kv) => Store::Etcd(kv.with_page_size(3)),
        Store::Embedded(_) => unreachable!(),
    }
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

/// A read's revision belongs to the same snapshot as its value: while one writer rewrites
/// a key, no read may pair a value with a revision at which that key already held a newer
/// one (an old verifier carrying a new revision would be cached as current for good).
async fn reads_pair_values_with_their_own_revision(kv: &Store, root: &str) {
    let key = format!("{root}/snap/k");
    let prefix = format!("{root}/snap/");
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, key, done) = (kv.clone(), key.clone(), done.clone());
        tokio::spawn(async move {
            let mut written = std::collections::BTreeMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            for i in 0..3000u32 {
                if tokio::time::Instant::now() > deadline {
                    break;
                }
                let value = i.to_string().into_bytes();
                let outcome = kv.txn(put(&key, &i.to_string())).await.unwrap();
                written.insert(outcome.revision, value);
            }
            done.store(true, Ordering::Relaxed);
            written
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (kv, key, prefix, done) = (kv.clone(), key.clone(), prefix.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    // (read revision, value's mod_revision, value)
                    let read = if reader == 0 {
                        let read = kv.get(&key).await.unwrap();
                        read.value.map(|v| (read.revision, v.mod_revision, v.value))
                    } else {
                        let read = kv.list(&prefix).await.unwrap();
                        let value = read.value.into_iter().next();
                        value.map(|v| (read.revision, v.mod_revision, v.value))
                    };
                    reads.extend(read);
                }
                reads
            })
        })
        .collect();
    let written = writer.await.unwrap();
    let mut checked = 0;
    for reader in readers {
        for (revision, mod_revision, value) in reader.await.unwrap() {
            checked += 1;
            assert!(mod_revision <= revision, "a value newer than its read");
            assert_eq!(
                written.get(&mod_revision),
                Some(&value),
                "the value read is the one written at its mod_revision"
            );
            let newer = written
                .range((Excluded(mod_revision), Included(revision)))
                .next();
            assert!(
                newer.is_none(),
                "read at revision {revision} returned the value of {mod_revision}, \
                 but the key was rewritten at {:?}",
                newer.map(|(r, _)| r)
            );
        }
    }
    assert!(checked > 100, "only {checked} reads overlapped the writer");
}

/// Listings longer than a page: every key, in order, and one consistent snapshot even while
/// a writer adds keys at both ends of the range in each transaction.
async fn listing_spans_pages(kv: &Store, root: &str) {
    let prefix = format!("{root}/pages/");
    for i in 0..25 {
        kv.txn(put(&format!("{prefix}m{i:03}"), "v")).await.unwrap();
    }
    let listed = kv.list(&prefix).await.unwrap();
    let expected: Vec<String> = (0..25).map(|i| format!("{prefix}m{i:03}")).collect();
    let keys: Vec<String> = listed.value.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, expected);
    assert!(
        listed
            .value
            .iter()
            .all(|kv| kv.mod_revision <= listed.revision)
    );
    assert_eq!(kv.list_keys(&prefix).await.unwrap().value, expected);

    let writer = {
        let (kv, prefix) = (kv.clone(), prefix.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let txn = Txn::default()
                    .then(Op::Put(format!("{prefix}a{i:03}"), vec![]))
                    .then(Op::Put(format!("{prefix}z{i:03}"), vec![]));
                kv.txn(txn).await.unwrap();
            }
        })
    };
    let mut listings = 0;
    while !writer.is_finished() || listings == 0 {
        let keys = kv.list_keys(&prefix).await.unwrap().value;
        let count = |p: &str| {
            keys.iter()
                .filter(|k| k.starts_with(&format!("{prefix}{p}")))
                .count()
        };
        assert_eq!(count("m"), 25);
        assert_eq!(count("a"), count("z"), "a listing mixes two revisions");
        listings += 1;
    }
    writer.await.unwrap();
}

/// `get_many` answers each key, in the order asked, absent ones as `None`.
async fn get_many_reads_each_key_in_order(kv: &Store, root: &str) {
    let (a, missing, b) = (
        format!("{root}/many/a"),
        format!("{root}/many/missing"),
        format!("{root}/many/b"),
    );
    let written = kv
        .txn(put(&a, "1").then(Op::Put(b.clone(), b"2".to_vec())))
        .await
        .unwrap();
    let read = kv.get_many(&[b.clone(), missing, a.clone()]).await.unwrap();
    let values: Vec<Option<(String, Vec<u8>, i64)>> = read
        .value
        .into_iter()
        .map(|kv| kv.map(|kv| (kv.key, kv.value, kv.mod_revision)))
        .collect();
    assert_eq!(
        values,
        [
            Some((b, b"2".to_vec(), written.revision)),
            None,
            Some((a, b"1".to_vec(), written.revision)),
        ]
    );
    assert!(read.revision >= written.revision);
    assert!(kv.get_many(&[]).await.unwrap().value.is_empty());
}

async fn suite(kv: Store, root: &str) {
    get_many_reads_each_key_in_order(&kv, root).await;
    get_put_list_delete(&kv, root).await;
    create_if_absent_and_cas(&kv, root).await;
    concurrent_creates_one_winner(&kv, root).await;
    watch_from_revision(&kv, root).await;
    reads_pair_values_with_their_own_revision(&kv, root).await;
    listing_spans_pages(&kv, root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_etcd() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let store = etcd_store_small_pages(&etcd).await;
    within(suite(store, &common::unique_root("conf"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_embedded() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    within(suite(embedded_store(&dir), &common::unique_root("conf"))).await;
}

/// The time limit of one conformance run.
async fn within(test: impl std::future::Future<Output = ()>) {
    common::time_limit(Duration::from_secs(60), test).await;
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

/// The embedded store keeps a bounded number of bytes of history: a watcher that falls
/// further behind is told `Compacted` (and re-lists, as after an etcd compaction), while a
/// watcher that keeps up still sees every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_is_bounded_by_bytes() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open_with_history_bytes(&dir.path().join("kv.redb"), 16 * 1024)
            .expect("embedded store opens");
        let kv = Store::Embedded(kv);
        let start = kv.get("p/").await.unwrap().revision;
        let mut behind = kv.watch("p/", start + 1).await.unwrap();
        let mut current = kv.watch("p/", start + 1).await.unwrap();
        let big = "x".repeat(4096);
        let mut last = start;
        for i in 0..32 {
            last = kv.txn(put(&format!("p/{i}"), &big)).await.unwrap().revision;
            match current.next().await.unwrap() {
                WatchMessage::Events { events, .. } => {
                    assert_eq!(events.len(), 1);
                    assert_eq!(events[0].revision, last);
                }
                other => panic!(
                    "a watcher that keeps up sees every change, got {}",
                    summary(&other)
                ),
            }
        }
        match behind.next().await.unwrap() {
            WatchMessage::Compacted { compact_revision } => {
                assert!(compact_revision > start && compact_revision < last)
            }
            other => panic!(
                "128 KiB written into a 16 KiB history, got {}",
                summary(&other)
            ),
        }
        // Resuming from the newest revision still works.
        let mut resumed = kv.watch("p/", last).await.unwrap();
        match resumed.next().await.unwrap() {
            WatchMessage::Events { events, .. } => assert_eq!(events[0].revision, last),
            other => panic!(
                "the newest revision is always kept, got {}",
                summary(&other)
            ),
        }
    })
    .await;
}

/// A watch whose replay is larger than gRPC's default 4 MiB message limit delivers it (it
/// used to fail the same way on every reopen), and a listing of that much data works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_replays_more_than_4_mib() {
    within(async {
        let etcd = common::Etcd::start();
        let kv = etcd_store(&etcd).await;
        let prefix = format!("{}/big/", common::unique_root("big"));
        let start = kv.get(&prefix).await.unwrap().revision;
        // etcd's default --max-request-bytes is 1.5 MiB: one 1 MiB value per write.
        let value = "v".repeat(1024 * 1024);
        let mut last = start;
        for i in 0..6 {
            last = kv
                .txn(put(&format!("{prefix}{i}"), &value))
                .await
                .unwrap()
                .revision;
        }
        let mut watch = kv.watch(&prefix, start + 1).await.unwrap();
        let mut seen = 0;
        while seen < 6 {
            match tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("the replay arrives")
                .expect("the replay is not refused")
            {
                WatchMessage::Events { events, revision } => {
                    assert!(events.iter().all(|e| e.value.len() == value.len()));
                    seen += events.len();
                    assert!(revision <= last);
                }
                WatchMessage::Progress { .. } => {}
                other => panic!("unexpected {}", summary(&other)),
            }
        }
        assert_eq!(seen, 6);
        let listed = kv.list(&prefix).await.expect("a 6 MiB listing");
        assert_eq!(listed.value.len(), 6);
    })
    .await;
}

/// A watch message without its (possibly huge) values.
fn summary(message: &WatchMessage) -> String {
    match message {
        WatchMessage::Events { events, revision } => format!(
            "{} events up to revision {revision}: {:?}",
            events.len(),
            events
                .iter()
                .map(|e| (&e.key, e.revision))
                .collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}

/// A listing whose first page would exceed the client's 64 MiB message limit (70 values of
/// 1 MiB) is read again in smaller pages instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_listing_over_the_message_limit_is_paged_down() {
    within(async {
        let etcd = common::Etcd::start();
        let kv = etcd_store(&etcd).await;
        let prefix = format!("{}/huge/", common::unique_root("huge"));
        let value = "v".repeat(1024 * 1024);
        for i in 0..70 {
            kv.txn(put(&format!("{prefix}{i:02}"), &value))
                .await
                .unwrap();
        }
        let listed = kv.list(&prefix).await.expect("a 70 MiB listing");
        assert_eq!(listed.value.len(), 70);
        assert!(listed.value.iter().all(|kv| kv.value.len() == value.len()));
        assert_eq!(kv.list_keys(&prefix).await.unwrap().value.len(), 70);
    })
    .await;
}

/// What `admin import` reads a Milvus keyspace with: pages and prefix lists at one (older)
/// revision, later writes unseen; a compacted revision is an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_pages_and_prefix_lists_read_one_revision() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let Store::Etcd(kv) = etcd_store(&etcd).await else {
        unreachable!("an etcd store")
    };
    within(async {
        let root = common::unique_root("pages");
        let key = |name: &str| format!("{root}/p/{name}");
        let first = (1..=5).fold(Txn::default(), |txn, i| {
            txn.then(Op::Put(key(&format!("k{i}")), b"old".to_vec()))
        });
        let at = kv.txn(first).await.unwrap().revision;
        let later = Txn::default()
            .then(Op::Put(key("k1"), b"new".to_vec()))
            .then(Op::Put(key("k6"), b"new".to_vec()))
            .then(Op::Put(format!("{root}/q/x"), b"new".to_vec()));
        let now = kv.txn(later).await.unwrap().revision;
        let prefix = format!("{root}/p/");
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = kv
                .page(&prefix, after.as_deref(), Some(at), 2)
                .await
                .unwrap();
            assert!(page.kvs.len() <= 2);
            assert_eq!(
                page.revision, now,
                "the answer's header is the store's revision"
            );
            after = page.kvs.last().map(|kv| kv.key.clone());
            seen.extend(page.kvs.into_iter().map(|kv| (kv.key, kv.value)));
            if !page.more {
                break;
            }
        }
        let expected: Vec<(String, Vec<u8>)> = (1..=5)
            .map(|i| (key(&format!("k{i}")), b"old".to_vec()))
            .collect();
        assert_eq!(seen, expected, "the revision asked for, page by page");
        let current = kv.page(&prefix, None, None, 10).await.unwrap();
        assert_eq!(current.kvs.len(), 6);
        let lists = kv
            .list_each_at(&[prefix.clone(), format!("{root}/q/")], at)
            .await
            .unwrap();
        assert_eq!(lists[0].len(), 5);
        assert_eq!(lists[0][0].value, b"old");
        assert!(lists[1].is_empty(), "written after the revision");

        let mut client = kv.client();
        client.compact(now, None).await.unwrap();
        let err = kv.page(&prefix, None, Some(at), 2).await.unwrap_err();
        assert!(
            err.to_string().contains("has compacted that revision"),
            "{err}"
        );
        let err = kv
            .list_each_at(std::slice::from_ref(&prefix), at)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("has compacted that revision"),
            "{err}"
        );
    })
    .await;
}
