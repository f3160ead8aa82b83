//! Cache coherence across replicas. Owns the only watches: the credential watch that drops
//! cached passwords when a user changes, the session (an etcd lease) that tells writers
//! which replicas are alive and how far each has applied the log, and the acknowledgement a
//! writer waits for before telling its client a change is done.
//!
//! The protocol, for a change written at revision W:
//! 1. every replica's watcher sees W, drops the user's cache entry, then records
//!    `applied >= W` in its session key `{meta}/credstore/sessions/{id}`;
//! 2. the writer watches all session keys and answers only when every live session shows
//!    `applied >= W` (a session whose lease expired is deleted by etcd and no longer waited for),
//!    or fails with `NotConfirmed` after `credstore.ackTimeoutMs`;
//! 3. a replica trusts its cache only until its lease could have expired (see
//!    `Authenticator::trust_until`); after that it refuses until it has re-registered and
//!    dropped its whole cache;
//! 4. a watch that broke resumes from `applied + 1`; if that was compacted, the whole cache
//!    is dropped and the watch starts again from the current revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::meta::{
    EventKind, MetaError, MetaKv, Revision, Store, Watch, WatchMessage, etcd::map_err,
};

#[derive(Clone, Debug)]
pub struct CoherenceConfig {
    /// This replica's session name (unique per process).
    pub replica_id: String,
    /// The address clients reach this replica at (informational, in the session).
    pub address: String,
    pub session_ttl: Duration,
    pub ack_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CoherenceError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(
        "change stored at revision {revision} but not yet confirmed by replicas {replicas:?}; retrying is safe"
    )]
    NotConfirmed {
        revision: Revision,
        replicas: Vec<String>,
    },
}

/// What a replica publishes in its session key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionValue {
    applied: Revision,
    address: String,
}

/// State shared by the tasks and the writers.
struct Shared {
    /// The newest revision whose credential changes this replica has applied.
    applied: watch::Sender<Revision>,
    /// Live sessions (etcd only) and how far each has applied.
    sessions: watch::Sender<BTreeMap<String, Revision>>,
}

impl Shared {
    fn applied(&self) -> Revision {
        *self.applied.borrow()
    }

    fn advance(&self, revision: Revision) -> bool {
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        })
    }
}

/// This replica's session: a key on a lease, rewritten as the applied revision moves.
struct Session {
    client: Client,
    key: String,
    address: String,
    lease: AtomicI64,
}

impl Session {
    async fn record(&self, applied: Revision) -> Result<(), MetaError> {
        let value = serde_json::to_vec(&SessionValue {
            applied,
            address: self.address.clone(),
        })
        .expect("session JSON serializes");
        let options = PutOptions::new().with_lease(self.lease.load(Ordering::Acquire));
        self.client
            .clone()
            .put(self.key.as_str(), value, Some(options))
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// The running protocol; dropping it stops its tasks, [`Coherence::shutdown`] also ends the
/// session at once so writers stop waiting for this replica.
pub struct Coherence {
    shared: Arc<Shared>,
    session: Option<Arc<Session>>,
    tasks: Vec<JoinHandle<()>>,
    ack_timeout: Duration,
}

impl Coherence {
    /// Registers the session (etcd) and starts watching from the current revision.
    pub async fn start(
        catalog: Catalog,
        auth: Authenticator,
        config: CoherenceConfig,
    ) -> Result<Coherence, CoherenceError> {
        let store = catalog.store().clone();
        let start = store.get(catalog.credential_prefix()).await?.revision;
        let (applied, _) = watch::channel(start);
        let (sessions, _) = watch::channel(BTreeMap::new());
        let shared = Arc::new(Shared { applied, sessions });
        let mut coherence = Coherence {
            shared: shared.clone(),
            session: None,
            tasks: Vec::new(),
            ack_timeout: config.ack_timeout,
        };
        if let Some(etcd) = store.etcd() {
            let client = etcd.client();
            let session = Arc::new(Session {
                client: client.clone(),
                key: format!("{}sessions/{}", sessions_root(&catalog), config.replica_id),
                address: config.address.clone(),
                lease: AtomicI64::new(0),
            });
            register(
                &session,
                &auth,
                &shared,
                &store,
                &catalog,
                config.session_ttl,
            )
            .await?;
            coherence.session = Some(session.clone());
            let listed = list_sessions(&store, &sessions_root(&catalog)).await?;
            shared.sessions.send_replace(listed.value);
            let keeper = keep_alive_loop(
                session.clone(),
                auth.clone(),
                shared.clone(),
                catalog.clone(),
                config.session_ttl,
            );
            coherence.tasks.push(tokio::spawn(keeper));
            coherence.tasks.push(tokio::spawn(sessions_loop(
                store.clone(),
                sessions_root(&catalog),
                shared.clone(),
                listed.revision,
            )));
            coherence
                .tasks
                .push(tokio::spawn(record_loop(session.clone(), shared.clone())));
        }
        coherence
            .tasks
            .push(tokio::spawn(status_loop(auth.clone(), shared.clone())));
        let watcher = watch_loop(catalog, auth, shared);
        coherence.tasks.push(tokio::spawn(watcher));
        Ok(coherence)
    }

    /// The newest revision this replica has applied.
    pub fn applied(&self) -> Revision {
        self.shared.applied()
    }

    /// Live sessions and their applied revisions (etcd only).
    pub fn sessions(&self) -> BTreeMap<String, Revision> {
        self.shared.sessions.borrow().clone()
    }

    /// Waits until every live replica has applied `revision` (its cache no longer holds
    /// anything older), or fails after the ack timeout naming the replicas that have not.
    pub async fn confirm(&self, revision: Revision) -> Result<(), CoherenceError> {
        let deadline = Instant::now() + self.ack_timeout;
        if self.session.is_none() {
            let mut applied = self.shared.applied.subscribe();
            let waited =
                tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= revision)).await;
            return match waited {
                Ok(Ok(_)) => Ok(()),
                _ => Err(CoherenceError::NotConfirmed {
                    revision,
                    replicas: vec!["local".into()],
                }),
            };
        }
        let mut sessions = self.shared.sessions.subscribe();
        loop {
            let pending: Vec<String> = sessions
                .borrow_and_update()
                .iter()
                .filter(|(_, a)| **a < revision)
                .map(|(id, _)| id.clone())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, sessions.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(CoherenceError::NotConfirmed {
                        revision,
                        replicas: pending,
                    });
                }
            }
        }
    }

    /// Stops the tasks and revokes the session's lease (its key goes with it).
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            // Wait until the task is really gone, so the store it holds is released.
            let _ = task.await;
        }
        if let Some(session) = self.session.take() {
            let lease = session.lease.load(Ordering::Acquire);
            if let Err(e) = session.client.clone().lease_revoke(lease).await {
                tracing::warn!(error = %e, "could not revoke the session lease; it will expire");
            }
        }
    }
}

impl Drop for Coherence {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn sessions_root(catalog: &Catalog) -> String {
    // The credential prefix is `{meta}/root-coord/credential/`; sessions live at `{meta}/credstore/`.
    let meta = catalog
        .credential_prefix()
        .trim_end_matches("root-coord/credential/");
    format!("{meta}credstore/")
}

/// Grants a lease, drops the whole cache, and publishes `applied` at the current revision.
async fn register(
    session: &Session,
    auth: &Authenticator,
    shared: &Shared,
    store: &Store,
    catalog: &Catalog,
    ttl: Duration,
) -> Result<(), CoherenceError> {
    let granted_at = Instant::now();
    let lease = session
        .client
        .clone()
        .lease_grant(ttl.as_secs() as i64, None)
        .await
        .map_err(map_err)?;
    session.lease.store(lease.id(), Ordering::Release);
    let now = store.get(catalog.credential_prefix()).await?.revision;
    auth.invalidate_all(now);
    shared.advance(now);
    session.record(shared.applied()).await?;
    auth.trust_until(Some(trust_deadline(granted_at, ttl)));
    tracing::info!(session = %session.key, lease = lease.id(), applied = now, "session registered");
    Ok(())
}

/// Stop trusting the cache a margin before the lease could expire on etcd's side.
fn trust_deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl - (ttl / 5).max(Duration::from_millis(500))
}

/// Renews the lease every third of its TTL; a lost lease means re-registering from scratch.
async fn keep_alive_loop(
    session: Arc<Session>,
    auth: Authenticator,
    shared: Arc<Shared>,
    catalog: Catalog,
    ttl: Duration,
) {
    let store = catalog.store().clone();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent_at = Instant::now();
        match keep_alive_once(&session).await {
            Ok(true) => auth.trust_until(Some(trust_deadline(sent_at, ttl))),
            Ok(false) => {
                tracing::warn!(session = %session.key, "session lease expired; dropping the cache and re-registering");
                auth.trust_until(Some(Instant::now()));
                if let Err(e) = register(&session, &auth, &shared, &store, &catalog, ttl).await {
                    tracing::warn!(error = %e, "re-registering the session failed; will retry");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "session keep-alive failed; the cache stays trusted until the lease could expire")
            }
        }
    }
}

/// One keep-alive round trip: `Ok(false)` when etcd says the lease is gone.
async fn keep_alive_once(session: &Session) -> Result<bool, MetaError> {
    let lease = session.lease.load(Ordering::Acquire);
    // etcd-client sends one keep-alive and reads its answer before returning; an expired
    // lease comes back as an error, not as a TTL of 0.
    match session.client.clone().lease_keep_alive(lease).await {
        Ok(_) => Ok(true),
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
        Err(e) => Err(map_err(e)),
    }
}

/// Publishes the applied revision in the session key whenever it moves, retrying until etcd
/// takes it: writers wait on this record, so a lost one would stall every acknowledgement.
async fn record_loop(session: Arc<Session>, shared: Arc<Shared>) {
    let mut applied = shared.applied.subscribe();
    let mut recorded = 0;
    let mut backoff = Duration::from_millis(20);
    loop {
        let target = *applied.borrow_and_update();
        if target > recorded {
            match session.record(target).await {
                Ok(()) => {
                    recorded = target;
                    backoff = Duration::from_millis(20);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the applied revision; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Logs the replica's coherence state once a minute, for operators reading logs.
async fn status_loop(auth: Authenticator, shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        let stats = auth.stats();
        tracing::info!(
            applied = shared.applied(),
            live_sessions = shared.sessions.borrow().len(),
            trusted = auth.is_trusted(),
            cache_entries = stats.entries,
            cache_hits = stats.hits,
            cache_misses = stats.misses,
            peak_hashes = auth.pool().peak_running(),
            "status"
        );
    }
}

/// Applies credential changes to the cache, in revision order, forever.
async fn watch_loop(catalog: Catalog, auth: Authenticator, shared: Arc<Shared>) {
    let store = catalog.store().clone();
    let prefix = catalog.credential_prefix().to_string();
    let mut backoff = Duration::from_millis(50);
    loop {
        let from = shared.applied() + 1;
        match store.watch(&prefix, from).await {
            Ok(watch) => {
                if follow(watch, &catalog, &auth, &shared).await {
                    backoff = Duration::from_millis(50);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, from, "cannot open the credential watch; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        // Short cap: while this replica's watch is down, writers wait for it.
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Follows one watch stream until it breaks; returns whether it delivered anything.
async fn follow(
    mut watch: Watch,
    catalog: &Catalog,
    auth: &Authenticator,
    shared: &Shared,
) -> bool {
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    let mut delivered = false;
    loop {
        let message = tokio::select! {
            message = watch.next() => message,
            _ = progress.tick() => {
                let _ = watch.request_progress().await;
                continue;
            }
        };
        match message {
            Ok(WatchMessage::Events { events, revision }) => {
                delivered = true;
                for event in &events {
                    if let Some(user) = catalog.user_of_key(&event.key) {
                        auth.invalidate_user(user, event.revision);
                    }
                }
                shared.advance(revision);
            }
            Ok(WatchMessage::Progress { revision }) => {
                delivered = true;
                shared.advance(revision);
            }
            Ok(WatchMessage::Compacted { compact_revision }) => {
                tracing::warn!(
                    compact_revision,
                    "credential watch fell behind a compaction; dropping the whole cache"
                );
                match catalog.store().get(catalog.credential_prefix()).await {
                    Ok(read) => {
                        auth.invalidate_all(read.revision);
                        shared.advance(read.revision);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read after compaction; retrying")
                    }
                }
                return delivered;
            }
            Err(e) => {
                tracing::warn!(error = %e, "credential watch broke; resuming");
                return delivered;
            }
        }
    }
}

async fn list_sessions(
    store: &Store,
    root: &str,
) -> Result<crate::meta::Read<BTreeMap<String, Revision>>, MetaError> {
    let prefix = format!("{root}sessions/");
    let read = store.list(&prefix).await?;
    let sessions = read
        .value
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.strip_prefix(&prefix)?.to_string(),
                parse_applied(&kv.value)?,
            ))
        })
        .collect();
    Ok(crate::meta::Read {
        value: sessions,
        revision: read.revision,
    })
}

fn parse_applied(value: &[u8]) -> Option<Revision> {
    serde_json::from_slice::<SessionValue>(value)
        .ok()
        .map(|s| s.applied)
}

/// Keeps `shared.sessions` equal to the live session keys (writers wait on it).
async fn sessions_loop(store: Store, root: String, shared: Arc<Shared>, mut revision: Revision) {
    let prefix = format!("{root}sessions/");
    loop {
        if let Ok(mut watch) = store.watch(&prefix, revision + 1).await {
            loop {
                match watch.next().await {
                    Ok(WatchMessage::Events {
                        events,
                        revision: at,
                    }) => {
                        shared.sessions.send_modify(|sessions| {
                            for event in events {
                                let Some(id) = event.key.strip_prefix(&prefix) else {
                                    continue;
                                };
                                match (event.kind, parse_applied(&event.value)) {
                                    (EventKind::Put, Some(applied)) => {
                                        sessions.insert(id.to_string(), applied)
                                    }
                                    _ => sessions.remove(id),
                                };
                            }
                        });
                        revision = at;
                    }
                    Ok(WatchMessage::Progress { revision: at }) => revision = revision.max(at),
                    Ok(WatchMessage::Compacted { .. }) | Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(listed) = list_sessions(&store, &root).await {
            shared.sessions.send_replace(listed.value);
            revision = listed.revision;
        }
    }
}
