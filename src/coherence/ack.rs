//! Acknowledged writes: the writer's view of the live sessions (kept by the sessions watch,
//! backed by listings) and `Coherence::confirm`, which waits until every live replica has
//! applied a revision or lost its lease. It never drops cache entries (that is `credential_watch.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::meta::{Event, EventKind, Leases, MetaError, Read, Revision, WatchMessage};

use super::session::parse_applied;
use super::*;

/// Live sessions and how far each has applied, reflecting every change up to `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SessionsView {
    pub(super) revision: Revision,
    pub(super) sessions: BTreeMap<String, Revision>,
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
impl<S: Leases + Clone + 'static> Coherence<S> {
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

fn not_confirmed(revision: Revision, pending: Vec<String>, current: bool) -> CoherenceError {
    let replicas = match current {
        true => pending,
        false => vec!["(the sessions could not be read)".into()],
    };
    CoherenceError::NotConfirmed { revision, replicas }
}

impl<S: Leases + Clone + 'static> Inner<S> {
    /// Reads the session keys and replaces the view if the read is newer.
    pub(super) async fn relist(&self) -> Result<(), MetaError> {
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
    pub(super) fn count_replicas(&self) {
        let live = self.view.borrow().sessions.len();
        self.auth.lockout().set_replicas(live);
    }

    /// Keeps the view of the sessions up to date from a watch (writers wait on it; `confirm`
    /// lists the keys itself when the view is older than its write).
    pub(super) async fn sessions_loop(self: Arc<Self>) {
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
}
