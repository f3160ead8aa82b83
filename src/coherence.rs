//! Cache coherence across replicas. Owns the only watches: the credential watch that drops
//! cached passwords when a user changes (and cached API keys and tokens when credstore's own
//! identity records under `{meta}/root-coord/credstore/auth/` change), the session (a key on a store lease) that tells
//! writers which replicas are alive and how far each has applied the log, and the
//! acknowledgement a writer waits for before telling its client a change is done.
//! It must not speak gRPC or name a storage backend: leases come from `meta::Leases`.
//!
//! The protocol, for a change written at revision W:
//! 1. every replica's watcher sees W, drops the user's cache entry, then records
//!    `applied >= W` in its session key `{meta}/credstore/sessions/{id}`;
//! 2. the writer reads the session keys at a revision >= W (so every replica that existed at
//!    W is in its view) and answers only when every live session shows `applied >= W`; a
//!    session whose lease expired or was revoked is deleted by the store and no longer
//!    waited for. It fails with `NotConfirmed` after `credstore.ackTimeoutMs`, which exceeds
//!    the session TTL, so that happens only when the store itself cannot be reached;
//! 3. a replica trusts its cache only while (a) its registration completed and its lease
//!    cannot have expired (deadline a margin before the TTL, from the last renewal sent),
//!    (b) its credential watch has caught up with the registration revision, and (c) that
//!    watch answered an event or a progress request within a bound. Otherwise it answers
//!    UNAVAILABLE (see `Authenticator::trust_until`);
//! 4. a watch that broke resumes from `applied + 1`; if that was compacted, the whole cache
//!    is dropped and the watch starts again from the current revision.
//!
//! The lockout's counts are shared the same way, without acknowledgement: a third watch (of
//! `{meta}/credstore/lockout/`, listed first and re-listed after a compaction or a silent
//! stream) keeps every replica's mirror of them (`auth::Lockout`) current, so a lock one
//! replica writes is enforced by all within a watch event; the lockout's writer task runs
//! among these tasks. The number of live sessions is handed to the lockout (each replica's
//! share of an in-flight budget).
//!
//! [`Coherence`] is the cheap handle handlers clone (`confirm`, `applied`, `sessions`);
//! [`CoherenceTasks`] owns the background tasks and ends the session on `shutdown`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::auth::Authenticator;
use crate::catalog::{Catalog, CatalogError, decode_lockout};
use crate::meta::{
    Event, EventKind, Lease, Leases, MetaError, Read, Revision, Store, Watch, WatchMessage,
};
use crate::rbac::{Policies, PolicyChange};

#[derive(Clone, Debug)]
pub struct CoherenceConfig {
    /// This replica's session name (unique per process).
    pub replica_id: String,
    /// The address clients reach this replica at (informational, in the session).
    pub address: String,
    /// Lease time-to-live of the session: how long a silent replica is still waited for.
    pub session_ttl: Duration,
    /// How long a write waits for every live replica; longer than `session_ttl`, so a replica
    /// cut off from the store is dropped (its lease expires) before a writer gives up.
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

/// The handle on the running protocol; cheap to clone. Handlers use it to wait for their
/// writes to be applied everywhere.
pub struct Coherence<S = Store> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Coherence<S> {
    fn clone(&self) -> Self {
        Coherence {
            inner: self.inner.clone(),
        }
    }
}

/// The background tasks (credential watch, session, sessions view). Owned by `server::run`,
/// which calls [`CoherenceTasks::shutdown`]; dropping it stops the tasks without ending the
/// session (its lease then expires on its own).
pub struct CoherenceTasks<S: Leases + Clone + 'static = Store> {
    inner: Arc<Inner<S>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a replica publishes in its session key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionValue {
    applied: Revision,
    address: String,
}

/// The one context every task and the handle share.
struct Inner<S> {
    /// The store the protocol runs on (the catalog's, or a fault-injecting wrapper in tests).
    store: S,
    /// Used only to tell which user a changed key belongs to.
    catalog: Catalog,
    /// The password cache this replica keeps coherent.
    auth: Authenticator,
    /// The authorization cache (roles, grants, groups) kept coherent by the same watch.
    policies: Policies,
    /// What the watch follows: every credential key and the privilege groups.
    credential_prefix: String,
    sessions_prefix: String,
    /// This replica's session key.
    session_key: String,
    address: String,
    ttl: Duration,
    ack_timeout: Duration,
    /// How often the credential watch asks the store for progress.
    progress_every: Duration,
    /// A watch silent for longer than this is not trusted.
    silence_bound: Duration,
    /// The newest revision whose credential changes this replica has applied.
    applied: watch::Sender<Revision>,
    /// The writer's view of the live sessions.
    view: watch::Sender<SessionsView>,
    /// The lease of the completed registration (revoked at shutdown).
    lease: Mutex<Option<Lease>>,
    gate: Gate,
    /// Signalled after a re-registration: the credential watch reopens from the new
    /// registration revision, so trust returns only once a watch from there answers.
    resync: Notify,
}

/// Live sessions and how far each has applied, reflecting every change up to `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SessionsView {
    revision: Revision,
    sessions: BTreeMap<String, Revision>,
}

impl SessionsView {
    /// Applies watched changes newer than the view; returns whether anything changed.
    fn apply(&mut self, prefix: &str, events: &[Event], at: Revision) -> bool {
        let mut changed = false;
        for event in events.iter().filter(|e| e.revision > self.revision) {
            let Some(id) = event.key.strip_prefix(prefix) else {
                continue;
            };
            changed = true;
            match (&event.kind, parse_applied(&event.value)) {
                (EventKind::Put, Some(applied)) => self.sessions.insert(id.to_string(), applied),
                _ => self.sessions.remove(id),
            };
        }
        if at > self.revision {
            self.revision = at;
            changed = true;
        }
        changed
    }

    /// Replaces the view with a listing read at a newer revision.
    fn replace(&mut self, listed: Read<BTreeMap<String, Revision>>) -> bool {
        if listed.revision <= self.revision {
            return false;
        }
        self.revision = listed.revision;
        self.sessions = listed.value;
        true
    }

    /// Sessions that have not yet applied `revision`.
    fn pending(&self, revision: Revision) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, applied)| **applied < revision)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Coherence<Store> {
    /// Registers this replica's session, starts the tasks, and waits (at most one TTL) until
    /// the credential watch has caught up, so the replica serves from the start.
    pub async fn start(
        catalog: Catalog,
        auth: Authenticator,
        policies: Policies,
        config: CoherenceConfig,
    ) -> Result<(Coherence, CoherenceTasks), CoherenceError> {
        let store = catalog.store().clone();
        Coherence::start_on(store, catalog, auth, policies, config).await
    }
}

impl<S: Leases + Clone + 'static> Coherence<S> {
    /// [`Coherence::start`] on any store with leases (tests wrap one to inject faults).
    pub(crate) async fn start_on(
        store: S,
        catalog: Catalog,
        auth: Authenticator,
        policies: Policies,
        config: CoherenceConfig,
    ) -> Result<(Coherence<S>, CoherenceTasks<S>), CoherenceError> {
        let credential_prefix = catalog.watch_prefix();
        let start = store.get(&credential_prefix).await?.revision;
        let sessions_prefix = format!("{}sessions/", credstore_root(&catalog));
        let ttl = config.session_ttl;
        let progress_every = (ttl / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let inner = Arc::new(Inner {
            session_key: format!("{sessions_prefix}{}", config.replica_id),
            store,
            catalog,
            gate: Gate::new(auth.clone()),
            auth,
            policies,
            credential_prefix,
            sessions_prefix,
            address: config.address,
            ttl,
            ack_timeout: config.ack_timeout,
            progress_every,
            silence_bound: progress_every * 3,
            applied: watch::channel(start).0,
            view: watch::channel(SessionsView::default()).0,
            lease: Mutex::new(None),
            resync: Notify::new(),
        });
        let registration = inner.register().await?;
        let listed = match inner.relist_lockouts().await {
            Ok(_) => inner.relist().await,
            Err(e) => Err(e),
        };
        if let Err(e) = listed {
            let _ = timeout(
                inner.request_deadline(),
                inner.store.revoke(&registration.lease),
            )
            .await;
            return Err(e.into());
        }
        let mut tasks = CoherenceTasks {
            inner: inner.clone(),
            tasks: Vec::new(),
        };
        tasks
            .tasks
            .push(tokio::spawn(inner.clone().session_loop(registration)));
        tasks
            .tasks
            .push(tokio::spawn(inner.clone().sessions_loop()));
        tasks.tasks.push(tokio::spawn(inner.clone().watch_loop()));
        tasks.tasks.push(tokio::spawn(inner.clone().lockout_loop()));
        tasks
            .tasks
            .push(tokio::spawn(inner.auth.lockout().clone().write_loop()));
        let deadline = Instant::now() + ttl;
        while !inner.auth.is_trusted() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((Coherence { inner }, tasks))
    }

    /// The newest revision this replica has applied.
    pub fn applied(&self) -> Revision {
        self.inner.applied()
    }

    /// Live sessions and their applied revisions, as this replica last saw them.
    pub fn sessions(&self) -> BTreeMap<String, Revision> {
        self.inner.view.borrow().sessions.clone()
    }

    /// Waits until every replica that is live at `revision` or later has applied it (its
    /// cache no longer holds anything older) or has lost its lease, or fails after the ack
    /// timeout naming the replicas that have not.
    pub async fn confirm(&self, revision: Revision) -> Result<(), CoherenceError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.ack_timeout;
        let mut view = inner.view.subscribe();
        // A first listing at once when the view is older than the write: a replica that
        // registered just before it must not be missed. Later listings only back up the
        // sessions watch (it may be reconnecting).
        let mut relist_at = Instant::now();
        loop {
            let (pending, current) = {
                let view = view.borrow_and_update();
                (view.pending(revision), view.revision >= revision)
            };
            if current && pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        return Err(not_confirmed(revision, pending, current));
                    }
                }
                _ = sleep_until(relist_at) => {
                    if let Ok(Err(e)) = timeout_at(deadline, inner.relist()).await {
                        tracing::debug!(error = %e, "cannot list the sessions; retrying");
                    }
                    relist_at = Instant::now() + Duration::from_millis(500);
                }
                _ = sleep_until(deadline) => return Err(not_confirmed(revision, pending, current)),
            }
        }
    }
}

/// A protocol request that got no answer: the store is as good as unreachable.
fn timed_out(deadline: Duration) -> CoherenceError {
    CoherenceError::Meta(MetaError::Unavailable(format!(
        "no answer within {deadline:?}"
    )))
}

fn not_confirmed(revision: Revision, pending: Vec<String>, current: bool) -> CoherenceError {
    let replicas = match current {
        true => pending,
        false => vec!["(the sessions could not be read)".into()],
    };
    CoherenceError::NotConfirmed { revision, replicas }
}

impl<S: Leases + Clone + 'static> CoherenceTasks<S> {
    /// Stops the tasks and revokes the session's lease (its key goes with it), so writers
    /// waiting for this replica are released at once.
    pub async fn shutdown(mut self) {
        // Failures counted here and not yet written would be lost to the other replicas.
        self.inner
            .auth
            .lockout()
            .flush(Duration::from_secs(1))
            .await;
        for task in self.tasks.drain(..) {
            task.abort();
            // Wait until the task is really gone, so the store it holds is released.
            let _ = task.await;
        }
        self.inner.gate.unregistered();
        let lease = self.inner.lease_slot().take();
        if let Some(lease) = lease {
            match timeout(Duration::from_secs(3), self.inner.store.revoke(&lease)).await {
                Ok(Ok(())) => tracing::info!(session = %self.inner.session_key, "session ended"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not revoke the session lease; it will expire")
                }
                Err(_) => tracing::warn!("revoking the session lease timed out; it will expire"),
            }
        }
    }
}

impl<S: Leases + Clone + 'static> Drop for CoherenceTasks<S> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `{meta}/credstore/`, next to the credential prefix `{meta}/root-coord/credential/`.
fn credstore_root(catalog: &Catalog) -> String {
    let meta = catalog
        .credential_prefix()
        .trim_end_matches("root-coord/credential/");
    format!("{meta}credstore/")
}

fn parse_applied(value: &[u8]) -> Option<Revision> {
    serde_json::from_slice::<SessionValue>(value)
        .ok()
        .map(|s| s.applied)
}

/// Stop trusting the cache a margin before the lease could expire on the store's side.
fn trust_deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl - (ttl / 5).max(Duration::from_millis(500))
}

/// A granted lease whose registration completed: the only kind whose renewal extends trust.
struct Registration {
    lease: Lease,
    recorded: Revision,
}

impl<S: Leases + Clone + 'static> Inner<S> {
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

    fn lease_slot(&self) -> MutexGuard<'_, Option<Lease>> {
        // Only ever held for a swap; a poisoned lock would mean a panic there: a bug.
        self.lease.lock().expect("session lease lock poisoned")
    }

    /// Deadline of one store request made by the protocol itself.
    fn request_deadline(&self) -> Duration {
        self.ttl / 3
    }

    /// Grants a lease, drops the whole cache, and publishes `applied` at the current
    /// revision. Trust is restored only when all of it succeeded; a failure after the grant
    /// revokes the new lease, so no keep-alive can ever renew a half-registered session.
    async fn register(&self) -> Result<Registration, CoherenceError> {
        self.gate.unregistered();
        let deadline = self.request_deadline();
        let sent_at = Instant::now();
        let lease = timeout(deadline, self.store.lease(self.ttl))
            .await
            .map_err(|_| timed_out(deadline))??;
        let completed = async {
            let now = self.store.get(&self.credential_prefix).await?.revision;
            self.auth.invalidate_all(now);
            self.policies.invalidate_all();
            self.advance(now);
            let applied = self.applied();
            self.store
                .put_on_lease(&lease, &self.session_key, self.session_value(applied))
                .await?;
            Ok::<_, MetaError>((now, applied))
        };
        let outcome = match timeout(deadline, completed).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(CoherenceError::Meta(e)),
            Err(_) => Err(timed_out(deadline)),
        };
        let (registered_at, recorded) = match outcome {
            Ok(done) => done,
            Err(e) => {
                if let Ok(Err(revoke)) = timeout(deadline, self.store.revoke(&lease)).await {
                    tracing::debug!(error = %revoke, "cannot revoke a half-registered lease");
                }
                return Err(e);
            }
        };
        *self.lease_slot() = Some(lease.clone());
        self.gate
            .registered(registered_at, trust_deadline(sent_at, self.ttl));
        tracing::info!(session = %self.session_key, lease = lease.id(), applied = registered_at, "session registered");
        Ok(Registration { lease, recorded })
    }

    fn session_value(&self, applied: Revision) -> Vec<u8> {
        serde_json::to_vec(&SessionValue {
            applied,
            address: self.address.clone(),
        })
        .expect("session JSON serializes")
    }

    /// One renewal; `None` when the lease is gone (the caller registers again).
    async fn renew(&self, registration: Registration) -> Option<Registration> {
        let sent_at = Instant::now();
        let deadline = self.request_deadline();
        match timeout(deadline, self.store.keep_alive(&registration.lease)).await {
            Ok(Ok(true)) => {
                self.gate.lease_renewed(trust_deadline(sent_at, self.ttl));
                Some(registration)
            }
            Ok(Ok(false)) => {
                tracing::warn!(session = %self.session_key, "session lease expired; dropping the cache and re-registering");
                self.gate.unregistered();
                self.lease_slot().take();
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session keep-alive failed; the cache stays trusted until the lease could expire");
                Some(registration)
            }
            Err(_) => {
                tracing::warn!(
                    ?deadline,
                    "session keep-alive got no answer; the cache stays trusted until the lease could expire"
                );
                Some(registration)
            }
        }
    }

    /// Ends the session because the credential watch is lost: revokes the lease (its key
    /// goes, releasing writers that wait for this replica) and stops trusting the cache.
    async fn leave(&self, registration: Registration) {
        tracing::warn!(session = %self.session_key, "the credential watch is lost; leaving the cluster until it answers again");
        self.gate.unregistered();
        self.lease_slot().take();
        let deadline = self.request_deadline();
        match timeout(deadline, self.store.revoke(&registration.lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot revoke the session lease; it will expire")
            }
            Err(_) => tracing::warn!("revoking the session lease timed out; it will expire"),
        }
    }

    /// Keeps the session: renews the lease every third of its TTL (registering again when it
    /// was lost) and publishes the applied revision whenever it moves, retrying until the
    /// store takes it — writers wait on this record.
    async fn session_loop(self: Arc<Self>, registration: Registration) {
        let mut current = Some(registration);
        let mut applied = self.applied.subscribe();
        let mut renew_at = Instant::now() + self.ttl / 3;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let target = *applied.borrow_and_update();
            let due = retry_at.is_none_or(|at| at <= Instant::now());
            if let Some(registration) = current.as_mut()
                && target > registration.recorded
                && due
            {
                let deadline = self.request_deadline();
                let put = self.store.put_on_lease(
                    &registration.lease,
                    &self.session_key,
                    self.session_value(target),
                );
                match timeout(deadline, put).await {
                    Ok(Ok(_)) => {
                        registration.recorded = target;
                        retry_at = None;
                        backoff = Duration::from_millis(20);
                    }
                    failed => {
                        let reason = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {deadline:?}"),
                        };
                        tracing::warn!(%reason, "cannot record the applied revision; retrying");
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = sleep_until(renew_at) => {
                    let following = self.gate.watch_live();
                    current = match current.take() {
                        // A replica that cannot follow the log leaves, so writers stop
                        // waiting for it; it joins again once its watch answers.
                        Some(registration) if !following => {
                            self.leave(registration).await;
                            None
                        }
                        Some(registration) => self.renew(registration).await,
                        None => None,
                    };
                    if current.is_none() && following {
                        current = match self.register().await {
                            Ok(registration) => {
                                self.resync.notify_one();
                                Some(registration)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "registering the session failed; will retry");
                                None
                            }
                        };
                    }
                    renew_at = match current {
                        Some(_) => Instant::now() + self.ttl / 3,
                        None => Instant::now() + Duration::from_millis(500),
                    };
                }
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {}
            }
        }
    }

    /// Reads the session keys and replaces the view if the read is newer.
    async fn relist(&self) -> Result<(), MetaError> {
        let read = self.store.list(&self.sessions_prefix).await?;
        let sessions = read
            .value
            .iter()
            .filter_map(|kv| {
                Some((
                    kv.key.strip_prefix(&self.sessions_prefix)?.to_string(),
                    parse_applied(&kv.value)?,
                ))
            })
            .collect();
        self.view.send_if_modified(|view| {
            view.replace(Read {
                value: sessions,
                revision: read.revision,
            })
        });
        self.count_replicas();
        Ok(())
    }

    /// Tells the lockout how many replicas share its budgets.
    fn count_replicas(&self) {
        let live = self.view.borrow().sessions.len();
        self.auth.lockout().set_replicas(live);
    }

    /// Replaces the lockout mirror with a listing of every lockout record.
    async fn relist_lockouts(&self) -> Result<Revision, MetaError> {
        let read = self.catalog.list_lockouts().await.map_err(|e| match e {
            CatalogError::Meta(e) => e,
            other => MetaError::Etcd(other.to_string()),
        })?;
        self.auth.lockout().replace(read.value, read.revision);
        Ok(read.revision)
    }

    /// Keeps the lockout mirror current: lists the records, then follows their watch from
    /// there; lists again after a compaction, a broken stream, or a stream silent for longer
    /// than the bound (asked for progress meanwhile). Nothing here touches trust: a stale
    /// mirror only lets this replica see other replicas' locks late.
    async fn lockout_loop(self: Arc<Self>) {
        let prefix = self.catalog.lockout_prefix();
        let lockout = self.auth.lockout().clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            let followed = async {
                let listed = self.relist_lockouts().await?;
                let mut watch = timeout(self.silence_bound, self.store.watch(&prefix, listed + 1))
                    .await
                    .map_err(|_| timed_out(self.silence_bound))??;
                let mut progress = tokio::time::interval(self.progress_every);
                let mut heard = Instant::now();
                loop {
                    let message = tokio::select! {
                        message = watch.next() => message?,
                        _ = progress.tick() => {
                            if heard.elapsed() > self.silence_bound {
                                return Err(CoherenceError::Meta(MetaError::Unavailable("the lockout watch went silent".into())));
                            }
                            let _ = timeout(self.progress_every, watch.request_progress()).await;
                            continue;
                        }
                    };
                    heard = Instant::now();
                    match message {
                        WatchMessage::Events { events, .. } => {
                            for event in events {
                                let Some(subject) = self.catalog.lockout_subject(&event.key) else {
                                    continue;
                                };
                                let record = match event.kind {
                                    EventKind::Put => Some(decode_lockout(&event.value)),
                                    EventKind::Delete => None,
                                };
                                lockout.apply(subject, record, event.revision);
                            }
                        }
                        WatchMessage::Progress { .. } => {}
                        WatchMessage::Compacted { .. } => return Ok::<(), CoherenceError>(()),
                    }
                }
            };
            match followed.await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, "lockout watch interrupted; listing again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Keeps the view of the sessions up to date from a watch (writers wait on it; `confirm`
    /// lists the keys itself when the view is older than its write).
    async fn sessions_loop(self: Arc<Self>) {
        loop {
            let from = self.view.borrow().revision + 1;
            let opened = timeout(
                self.silence_bound,
                self.store.watch(&self.sessions_prefix, from),
            );
            if let Ok(Ok(mut watch)) = opened.await {
                loop {
                    match watch.next().await {
                        Ok(WatchMessage::Events { events, revision }) => {
                            self.view.send_if_modified(|view| {
                                view.apply(&self.sessions_prefix, &events, revision)
                            });
                            self.count_replicas();
                        }
                        Ok(WatchMessage::Progress { revision }) => {
                            self.view
                                .send_if_modified(|view| view.apply("", &[], revision));
                        }
                        Ok(WatchMessage::Compacted { .. }) | Err(_) => break,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = self.relist().await {
                tracing::debug!(error = %e, "cannot list the sessions; retrying");
            }
        }
    }

    /// Applies credential changes to the cache, in revision order, forever.
    async fn watch_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        let mut failures = Failures::default();
        loop {
            let from = self.applied() + 1;
            let opened = timeout(
                self.silence_bound,
                self.store.watch(&self.credential_prefix, from),
            )
            .await;
            let outcome = match opened {
                // After repeated identical failures, only a delivered message restores trust:
                // a stream that opens and then always fails the same way answers too.
                Ok(Ok(watch)) => self.follow(watch, from, failures.count < 3).await,
                Ok(Err(e)) => Followed::Failed(format!("cannot open the credential watch: {e}")),
                Err(_) => Followed::Failed("opening the credential watch timed out".into()),
            };
            match outcome {
                Followed::Delivered => {
                    backoff = Duration::from_millis(50);
                    failures = Failures::default();
                }
                Followed::Failed(reason) => {
                    tracing::warn!(%reason, from, "credential watch interrupted; resuming");
                    if failures.repeat(reason) {
                        tracing::error!(
                            times = failures.count,
                            "the credential watch keeps failing the same way; the cache is not trusted until it delivers"
                        );
                        self.gate.watch_lost();
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            // Short cap: while this replica's watch is down, writers wait for it.
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Follows one watch stream (opened at `from`) until it breaks, goes silent for longer
    /// than the bound, or a new registration asks for a fresh one. `answers_prove_life`:
    /// whether raw answers (not passed on as messages) count as signs of life.
    async fn follow(&self, mut watch: Watch, from: Revision, answers_prove_life: bool) -> Followed {
        // The first ticks are immediate: a fresh watch proves at once that it is answering.
        let mut progress = tokio::time::interval(self.progress_every);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        let mut heard = Instant::now();
        let mut answers = watch.answers();
        // Once the stream answers at all, it has everything before `from` behind it.
        let start = from - 1;
        let mut delivered = false;
        loop {
            let silent_at = heard + self.silence_bound;
            let message = tokio::select! {
                message = watch.next() => message,
                _ = progress.tick() => {
                    let _ = timeout(self.progress_every, watch.request_progress()).await;
                    continue;
                }
                _ = check.tick() => {
                    // etcd 3.4 answers progress requests during a replay, but they cannot be
                    // passed on as progress; they still prove the stream is alive.
                    if answers_prove_life && watch.answers() > answers {
                        answers = watch.answers();
                        heard = Instant::now();
                        self.gate.watch_heard(start, heard + self.silence_bound);
                    }
                    continue;
                }
                _ = self.resync.notified() => return Followed::Delivered,
                _ = sleep_until(silent_at) => {
                    tracing::warn!(bound = ?self.silence_bound, "the credential watch went silent; not trusting the cache until it answers again");
                    self.gate.watch_lost();
                    // Dropped entries are reloaded at a revision no older than the resumed watch.
                    self.auth.invalidate_all(self.applied());
                    self.policies.invalidate_all();
                    return Followed::Failed("silent".into());
                }
            };
            let revision = match message {
                Ok(WatchMessage::Events { events, revision }) => {
                    for event in &events {
                        if let Some(user) = self.catalog.user_of_key(&event.key) {
                            self.auth.invalidate_user(user, event.revision);
                        }
                        let changed = self.catalog.classify_key(&event.key);
                        if let Some(change) = changed.and_then(PolicyChange::of) {
                            self.policies.invalidate(&change);
                        }
                        if let Some(change) = self.catalog.identity_of_key(&event.key) {
                            self.auth.identity_changed(change, event.revision);
                        }
                    }
                    revision
                }
                Ok(WatchMessage::Progress { revision }) => revision,
                Ok(WatchMessage::Compacted { compact_revision }) => {
                    tracing::warn!(
                        compact_revision,
                        "credential watch fell behind a compaction; dropping the whole cache"
                    );
                    match self.store.get(&self.credential_prefix).await {
                        Ok(read) => {
                            self.auth.invalidate_all(read.revision);
                            self.policies.invalidate_all();
                            self.advance(read.revision);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot re-read after compaction; retrying")
                        }
                    }
                    return Followed::Delivered;
                }
                Err(e) => {
                    return match delivered {
                        true => Followed::Delivered,
                        false => Followed::Failed(format!("credential watch broke: {e}")),
                    };
                }
            };
            delivered = true;
            self.advance(revision);
            answers = watch.answers();
            heard = Instant::now();
            self.gate
                .watch_heard(revision.max(start), heard + self.silence_bound);
        }
    }
}

/// How one watch stream ended.
enum Followed {
    /// It delivered something before it broke (a fresh start, not a repeated failure).
    Delivered,
    Failed(String),
}

/// Consecutive identical watch failures.
#[derive(Default)]
struct Failures {
    last: String,
    count: u32,
}

impl Failures {
    /// Records a failure; true once the same one has happened three times in a row.
    fn repeat(&mut self, reason: String) -> bool {
        if reason == self.last {
            self.count += 1;
        } else {
            self.last = reason;
            self.count = 1;
        }
        self.count >= 3
    }
}

/// Decides until when this replica may answer and hands that deadline to the authenticator:
/// the earlier of what the session's lease and the credential watch's liveness allow, and
/// "not at all" before a registration completed and the watch caught up with it.
struct Gate {
    auth: Authenticator,
    state: Mutex<GateState>,
}

struct GateState {
    /// The revision of the completed registration, if there is one.
    registered_at: Option<Revision>,
    lease_until: Instant,
    /// The newest revision the credential watch has confirmed.
    followed: Revision,
    watch_until: Instant,
}

impl Gate {
    fn new(auth: Authenticator) -> Gate {
        let now = Instant::now();
        let gate = Gate {
            auth,
            state: Mutex::new(GateState {
                registered_at: None,
                lease_until: now,
                followed: 0,
                watch_until: now,
            }),
        };
        gate.update(|_| {});
        gate
    }

    fn update(&self, change: impl FnOnce(&mut GateState)) {
        // Held only for these few assignments; poisoning would mean a panic in them: a bug.
        let mut state = self.state.lock().expect("trust gate lock poisoned");
        change(&mut state);
        let until = match state.registered_at {
            Some(at) if state.followed >= at => state.lease_until.min(state.watch_until),
            _ => Instant::now(),
        };
        self.auth.trust_until(Some(until));
    }

    fn registered(&self, at: Revision, lease_until: Instant) {
        self.update(|s| {
            s.registered_at = Some(at);
            s.lease_until = lease_until;
        });
    }

    fn unregistered(&self) {
        self.update(|s| s.registered_at = None);
    }

    fn lease_renewed(&self, until: Instant) {
        self.update(|s| s.lease_until = until);
    }

    fn watch_heard(&self, followed: Revision, until: Instant) {
        self.update(|s| {
            s.followed = s.followed.max(followed);
            s.watch_until = until;
        });
    }

    /// Whether the credential watch has answered within its bound.
    fn watch_live(&self) -> bool {
        let state = self.state.lock().expect("trust gate lock poisoned");
        state.watch_until > Instant::now()
    }

    fn watch_lost(&self) {
        self.update(|s| s.watch_until = Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::auth::AuthenticatorConfig;
    use crate::hash_pool::HashPool;
    use crate::meta::{EmbeddedKv, KeyValue, MetaKv, Txn, TxnOutcome};
    use crate::password::{HashScheme, Hasher, Limits, Password, Username};

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
            if prefix.ends_with("root-coord/")
                && faults.fail_credential_watch.load(Ordering::Acquire)
            {
                return Err(injected());
            }
            if prefix.ends_with("sessions/") && faults.stall_sessions_watch.load(Ordering::Acquire)
            {
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
        let pool = HashPool::new(Hasher::new(scheme), 2, 8, 0);
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
}
