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
//!    UNAVAILABLE (see `auth::Trust`, written by `trust.rs`);
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
//!
//! One file per concern: this one holds the handle, the shared context and the tasks'
//! owner; `session.rs` the session on a lease (register, renew, leave); `ack.rs` the
//! writers' view of the sessions and `confirm`; `credential_watch.rs` the credential watch that applies
//! changes to the caches; `lockout.rs` the lockout watch; `trust.rs` the trust gate that
//! decides until when the cache may answer.

mod ack;
mod credential_watch;
mod lockout;
mod session;
mod trust;

use ack::SessionsView;
use trust::TrustGate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::meta::{Lease, Leases, MetaError, Revision, Store};
use crate::rbac::Policies;

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
    trust: TrustGate,
    /// Signalled after a re-registration: the credential watch reopens from the new
    /// registration revision, so trust returns only once a watch from there answers.
    resync: Notify,
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
            trust: TrustGate::new(auth.cache().trust().clone()),
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
        self.inner.trust.unregistered();
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

/// A protocol request that got no answer: the store is as good as unreachable.
fn timed_out(deadline: Duration) -> CoherenceError {
    CoherenceError::Meta(MetaError::Unavailable(format!(
        "no answer within {deadline:?}"
    )))
}

impl<S: Leases + Clone + 'static> Inner<S> {
    pub(super) fn lease_slot(&self) -> MutexGuard<'_, Option<Lease>> {
        // Only ever held for a swap; a poisoned lock would mean a panic there: a bug.
        self.lease.lock().expect("session lease lock poisoned")
    }

    /// Deadline of one store request made by the protocol itself.
    pub(super) fn request_deadline(&self) -> Duration {
        self.ttl / 3
    }
}

#[cfg(test)]
mod tests;
