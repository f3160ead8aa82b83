//! The coherence protocol's tests against a store that fails on cue.

use std::sync::atomic::{AtomicBool, Ordering};

use super::session::SessionValue;
use super::*;
use crate::auth::AuthenticatorConfig;
use crate::hash_pool::{HashPool, HashPoolConfig};
use crate::meta::{EmbeddedKv, KeyValue, MetaKv, Read, Txn, TxnOutcome, Watch};
use crate::password::{HashScheme, Limits, Password, Username};

/// Faults a test switches on and off while the protocol runs.
#[derive(Default)]
struct Faults {
    /// Keep-alives say the lease is gone (as after it lapsed).
    expire: AtomicBool,
    /// Writes on a lease (the session record) fail.
    fail_lease_put: AtomicBool,
    /// Opening the credential watch (`{meta}/root-coord/`) fails.
    fail_credential_watch: AtomicBool,
    /// A watch on the sessions prefix opens but never delivers.
    stall_sessions_watch: AtomicBool,
}

/// A store that fails on cue, around the real embedded store.
#[derive(Clone)]
struct Faulty {
    inner: Store,
    faults: Arc<Faults>,
}

fn injected() -> MetaError {
    MetaError::Unavailable("injected fault".into())
}

impl MetaKv for Faulty {
    async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, MetaError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Read<Vec<KeyValue>>, MetaError> {
        self.inner.list(prefix).await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Read<Vec<String>>, MetaError> {
        self.inner.list_keys(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, MetaError> {
        let faults = &self.faults;
        if prefix.ends_with("root-coord/") && faults.fail_credential_watch.load(Ordering::Acquire) {
            return Err(injected());
        }
        if prefix.ends_with("sessions/") && faults.stall_sessions_watch.load(Ordering::Acquire) {
            return self
                .inner
                .watch("nothing-is-ever-written-here/", from)
                .await;
        }
        self.inner.watch(prefix, from).await
    }
}

impl Leases for Faulty {
    async fn lease(&self, ttl: Duration) -> Result<Lease, MetaError> {
        self.inner.lease(ttl).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<bool, MetaError> {
        match self.faults.expire.load(Ordering::Acquire) {
            true => Ok(false),
            false => self.inner.keep_alive(lease).await,
        }
    }

    async fn put_on_lease(
        &self,
        lease: &Lease,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Revision, MetaError> {
        match self.faults.fail_lease_put.load(Ordering::Acquire) {
            true => Err(injected()),
            false => self.inner.put_on_lease(lease, key, value).await,
        }
    }

    async fn revoke(&self, lease: &Lease) -> Result<(), MetaError> {
        self.inner.revoke(lease).await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    catalog: Catalog,
    pool: HashPool,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
    let catalog = Catalog::new(store.clone(), "t/meta");
    let scheme = HashScheme::Argon2id {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let pool = HashPool::new(HashPoolConfig {
        concurrent: 2,
        queued: 8,
        ..HashPoolConfig::new(scheme)
    });
    Fixture {
        _dir: dir,
        store,
        catalog,
        pool,
    }
}

impl Fixture {
    async fn create(&self, user: &str, password: &str) -> Revision {
        let hash = self
            .pool
            .hash(Password::new(password.as_bytes().to_vec(), &Limits::default()).unwrap())
            .await
            .unwrap();
        let name = Username::parse(user, &Limits::default()).unwrap();
        self.catalog.create_user(&name, &hash, None).await.unwrap()
    }

    async fn replica(
        &self,
        id: &str,
        faults: &Arc<Faults>,
        ack_timeout: Duration,
    ) -> (Authenticator, Coherence<Faulty>, CoherenceTasks<Faulty>) {
        let config = AuthenticatorConfig {
            enabled: true,
            super_users: vec![],
            limits: Limits::default(),
            cache_capacity: 100,
            cache_ttl: None,
            lockout: crate::auth::LockoutPolicy::default(),
        };
        let auth = Authenticator::new(config, self.catalog.clone(), self.pool.clone())
            .await
            .unwrap();
        let store = Faulty {
            inner: self.store.clone(),
            faults: faults.clone(),
        };
        let config = CoherenceConfig {
            replica_id: id.into(),
            address: "test".into(),
            session_ttl: Duration::from_secs(3),
            ack_timeout,
        };
        let policies = Policies::new(self.catalog.clone(), Default::default(), 100, false);
        let (coherence, tasks) =
            Coherence::start_on(store, self.catalog.clone(), auth.clone(), policies, config)
                .await
                .unwrap();
        (auth, coherence, tasks)
    }
}

/// 9.4: a registration that failed after its lease was granted must not let a later
/// keep-alive restore trust over a cache that was never flushed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_done_registration_never_restores_trust() {
    let run = async {
        let fx = fixture().await;
        fx.create("alice", "password1").await;
        let faults = Arc::new(Faults::default());
        let (auth, _coherence, tasks) = fx.replica("r1", &faults, Duration::from_secs(5)).await;
        assert!(auth.is_trusted(), "trusted once registered");
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));

        // The lease lapses, and every re-registration fails at the session record.
        faults.fail_lease_put.store(true, Ordering::Release);
        faults.expire.store(true, Ordering::Release);
        let until = Instant::now() + Duration::from_secs(3);
        while auth.is_trusted() {
            assert!(Instant::now() < until, "trust never lapsed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Keep-alives work again (any granted lease would be renewed), the record still fails.
        faults.expire.store(false, Ordering::Release);
        let watch_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < watch_until {
            assert!(
                !auth.is_trusted(),
                "trust came back without a completed registration"
            );
            assert!(matches!(
                auth.verify("alice", b"password1").await,
                Err(crate::auth::AuthError::Unavailable(_))
            ));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The record works again: the replica registers, flushed, and serves.
        faults.fail_lease_put.store(false, Ordering::Release);
        let until = Instant::now() + Duration::from_secs(5);
        while !auth.is_trusted() {
            assert!(Instant::now() < until, "trust never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !auth.is_cached("alice"),
            "re-registration flushed the cache"
        );
        assert_eq!(auth.verify("alice", b"password1").await, Ok(()));
        tasks.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("within the limit");
}

/// 9.5: a replica that registered before a write is waited for, even when the writer's
/// sessions watch has not told it about that replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_registered_before_a_write_is_never_skipped() {
    let run = async {
        let fx = fixture().await;
        let writer_faults = Arc::new(Faults::default());
        writer_faults
            .stall_sessions_watch
            .store(true, Ordering::Release);
        let (_, writer, writer_tasks) = fx
            .replica("writer", &writer_faults, Duration::from_millis(1500))
            .await;
        // The newcomer has registered (its session key is on a lease) but has not
        // applied anything yet: exactly what a replica looks like while it starts.
        let registered_at = fx.store.get("t/meta/").await.unwrap().revision;
        let lease = fx.store.lease(Duration::from_secs(10)).await.unwrap();
        let value = serde_json::to_vec(&SessionValue {
            applied: registered_at,
            address: "newcomer".into(),
        })
        .unwrap();
        fx.store
            .put_on_lease(&lease, "t/meta/credstore/sessions/newcomer", value)
            .await
            .unwrap();
        assert!(
            !writer.sessions().contains_key("newcomer"),
            "the writer's own view has not seen the newcomer (its watch is stalled)"
        );
        let written = fx.create("bob", "password1").await;
        match writer.confirm(written).await {
            Err(CoherenceError::NotConfirmed { replicas, .. }) => assert_eq!(
                replicas,
                vec!["newcomer".to_string()],
                "the writer waits for the newcomer only"
            ),
            other => panic!("acknowledged without the newcomer: {other:?}"),
        }
        // The newcomer's session ends (a clean stop revokes it): the write is confirmed.
        fx.store.revoke(&lease).await.unwrap();
        writer
            .confirm(written)
            .await
            .expect("confirmed once the newcomer's session ended");
        writer_tasks.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("within the limit");
}

/// A replica whose credential watch is lost (while its lease is fine) leaves the
/// cluster, so writers are not held until their ack timeout; it joins again once its
/// watch answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_follow_the_log_releases_writers() {
    let run = async {
        let fx = fixture().await;
        let writer_faults = Arc::new(Faults::default());
        let (_, writer, writer_tasks) = fx
            .replica("writer", &writer_faults, Duration::from_secs(5))
            .await;
        let lost_faults = Arc::new(Faults::default());
        let (lost_auth, lost, lost_tasks) = fx
            .replica("lost", &lost_faults, Duration::from_secs(5))
            .await;
        assert!(lost_auth.is_trusted());
        // Its watch breaks and cannot be opened again.
        lost_faults
            .fail_credential_watch
            .store(true, Ordering::Release);
        lost.inner.resync.notify_one();
        let written = fx.create("carl", "password1").await;
        let asked = Instant::now();
        writer
            .confirm(written)
            .await
            .expect("confirmed once the lost replica left");
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "the writer waited {:?}",
            asked.elapsed()
        );
        assert!(
            !lost_auth.is_trusted(),
            "a replica that left does not serve"
        );
        assert!(!writer.sessions().contains_key("lost"));
        // The watch opens again: the replica rejoins and serves.
        lost_faults
            .fail_credential_watch
            .store(false, Ordering::Release);
        let until = Instant::now() + Duration::from_secs(5);
        while !lost_auth.is_trusted() {
            assert!(Instant::now() < until, "never rejoined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lost_tasks.shutdown().await;
        writer_tasks.shutdown().await;
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("within the limit");
}
