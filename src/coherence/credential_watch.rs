//! The credential watch of `{meta}/root-coord/`: applies every change (passwords, grants,
//! groups, the alias epoch, credstore's identity records) to the caches in revision order,
//! moves `applied`, and tells the trust gate when it hears from the store. A compacted or
//! lost watch drops what it cannot replay.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout};

use crate::meta::{Leases, Revision, Watch, WatchMessage};
use crate::rbac::PolicyChange;

use super::*;

impl<S: Leases + Clone + 'static> Inner<S> {
    pub(super) fn applied(&self) -> Revision {
        *self.applied.borrow()
    }

    pub(super) fn advance(&self, revision: Revision) -> bool {
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        })
    }

    /// Applies credential changes to the cache, in revision order, forever.
    pub(super) async fn watch_loop(self: Arc<Self>) {
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
                        self.trust.watch_lost();
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
                        self.trust.watch_heard(start, heard + self.silence_bound);
                    }
                    continue;
                }
                _ = self.resync.notified() => return Followed::Delivered,
                _ = sleep_until(silent_at) => {
                    tracing::warn!(bound = ?self.silence_bound, "the credential watch went silent; not trusting the cache until it answers again");
                    self.trust.watch_lost();
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
            self.trust
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
