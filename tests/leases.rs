//! One conformance check for `meta::Leases` on both backends: a key put on a lease lives
//! while the lease does; revoking the lease deletes the key (a delete a watch sees) and the
//! lease can no longer be renewed or written on. Backend-specific: an etcd lease left
//! unrenewed expires with its key; the embedded store sweeps leased keys a stopped process
//! left behind when the file is next opened.

mod common;

use std::time::Duration;

use credstore::meta::{EmbeddedKv, EventKind, Leases, MetaKv, Store, WatchMessage};

const LIMIT: Duration = Duration::from_secs(60);

async fn etcd_store(etcd: &common::Etcd) -> Store {
    etcd.store().await
}

fn embedded_store(dir: &tempfile::TempDir) -> Store {
    Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).expect("embedded store opens"))
}

async fn lease_lifecycle(kv: &Store, root: &str) {
    let key = format!("{root}/sessions/me");
    let lease = kv.lease(Duration::from_secs(10)).await.expect("granted");
    assert_eq!(lease.ttl(), Duration::from_secs(10));
    let written = kv
        .put_on_lease(&lease, &key, b"alive".to_vec())
        .await
        .expect("put on the lease");
    let read = kv.get(&key).await.unwrap().value.expect("the key exists");
    assert_eq!(
        (read.value.as_slice(), read.mod_revision),
        (&b"alive"[..], written)
    );
    assert!(kv.keep_alive(&lease).await.unwrap(), "a live lease renews");

    let mut watch = kv
        .watch(&format!("{root}/sessions/"), written + 1)
        .await
        .unwrap();
    kv.revoke(&lease).await.expect("revoked");
    assert_eq!(
        kv.get(&key).await.unwrap().value,
        None,
        "revoking deletes the key"
    );
    let message = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the delete is watched")
        .unwrap();
    match message {
        WatchMessage::Events { events, .. } => {
            assert_eq!(
                (events[0].kind.clone(), events[0].key.as_str()),
                (EventKind::Delete, key.as_str())
            )
        }
        other => panic!("expected the delete, got {other:?}"),
    }
    assert!(
        !kv.keep_alive(&lease).await.unwrap(),
        "a revoked lease is gone"
    );
    assert!(
        kv.put_on_lease(&lease, &key, b"again".to_vec())
            .await
            .is_err(),
        "nothing can be written on a revoked lease"
    );
    kv.revoke(&lease).await.expect("revoking twice is harmless");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_leases() {
    tokio::time::timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let kv = embedded_store(&dir);
        lease_lifecycle(&kv, "t").await;
        // A key left on a lease by a process that stopped without revoking is swept at the
        // next open; other keys stay.
        let lease = kv.lease(Duration::from_secs(10)).await.unwrap();
        kv.put_on_lease(&lease, "t/sessions/gone", b"x".to_vec())
            .await
            .unwrap();
        kv.txn(
            credstore::meta::Txn::default()
                .then(credstore::meta::Op::Put("t/kept".into(), b"y".to_vec())),
        )
        .await
        .unwrap();
        drop(kv);
        let kv = embedded_store(&dir);
        assert_eq!(kv.get("t/sessions/gone").await.unwrap().value, None);
        assert!(kv.get("t/kept").await.unwrap().value.is_some());
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leases() {
    tokio::time::timeout(LIMIT, async {
        let etcd = tokio::task::block_in_place(common::Etcd::start);
        let kv = etcd_store(&etcd).await;
        let root = common::unique_root("leases");
        lease_lifecycle(&kv, &root).await;
        // Unrenewed, a lease expires with its key.
        let key = format!("{root}/sessions/lapsing");
        let lease = kv.lease(Duration::from_secs(2)).await.unwrap();
        kv.put_on_lease(&lease, &key, b"x".to_vec()).await.unwrap();
        common::eventually("an unrenewed lease expires with its key", async || {
            kv.get(&key).await.unwrap().value.is_none()
        })
        .await;
        assert!(
            !kv.keep_alive(&lease).await.unwrap(),
            "an expired lease is gone"
        );
    })
    .await
    .expect("within the limit");
}
