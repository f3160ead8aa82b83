//! This replica's session: a key on a store lease that tells writers it is alive and how far
//! it has applied the log. Registering drops the whole cache; renewal extends trust only for a
//! completed registration; leaving revokes the lease. Trust itself is decided in `trust.rs`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep_until, timeout};

use crate::meta::{Lease, Leases, MetaError, Revision};

use super::*;

/// What a replica publishes in its session key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SessionValue {
    pub(super) applied: Revision,
    pub(super) address: String,
}

pub(super) fn parse_applied(value: &[u8]) -> Option<Revision> {
    serde_json::from_slice::<SessionValue>(value)
        .ok()
        .map(|s| s.applied)
}

/// Stop trusting the cache a margin before the lease could expire on the store's side.
fn trust_deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl - (ttl / 5).max(Duration::from_millis(500))
}

/// A granted lease whose registration completed: the only kind whose renewal extends trust.
pub(super) struct Registration {
    pub(super) lease: Lease,
    recorded: Revision,
}

impl<S: Leases + Clone + 'static> Inner<S> {
    /// Grants a lease, drops the whole cache, and publishes `applied` at the current
    /// revision. Trust is restored only when all of it succeeded; a failure after the grant
    /// revokes the new lease, so no keep-alive can ever renew a half-registered session.
    pub(super) async fn register(&self) -> Result<Registration, CoherenceError> {
        self.trust.unregistered();
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
        self.trust
            .registered(registered_at, trust_deadline(sent_at, self.ttl));
        tracing::info!(session = %self.session_key, lease = lease.id(), applied = registered_at, "session registered");
        Ok(Registration { lease, recorded })
    }

    pub(super) fn session_value(&self, applied: Revision) -> Vec<u8> {
        serde_json::to_vec(&SessionValue {
            applied,
            address: self.address.clone(),
        })
        .expect("session JSON serializes")
    }

    /// One renewal; `None` when the lease is gone (the caller registers again).
    pub(super) async fn renew(&self, registration: Registration) -> Option<Registration> {
        let sent_at = Instant::now();
        let deadline = self.request_deadline();
        match timeout(deadline, self.store.keep_alive(&registration.lease)).await {
            Ok(Ok(true)) => {
                self.trust.lease_renewed(trust_deadline(sent_at, self.ttl));
                Some(registration)
            }
            Ok(Ok(false)) => {
                tracing::warn!(session = %self.session_key, "session lease expired; dropping the cache and re-registering");
                self.trust.unregistered();
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
    pub(super) async fn leave(&self, registration: Registration) {
        tracing::warn!(session = %self.session_key, "the credential watch is lost; leaving the cluster until it answers again");
        self.trust.unregistered();
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
    pub(super) async fn session_loop(self: Arc<Self>, registration: Registration) {
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
                    let following = self.trust.watch_live();
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
}
