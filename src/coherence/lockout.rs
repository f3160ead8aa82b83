//! The lockout watch: keeps every replica's mirror of the failure counts and locks
//! (`auth::Lockout`) current from `{meta}/credstore/lockout/`, listed first and re-listed after
//! a compaction or a silent stream. No acknowledgement and no effect on trust.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use crate::catalog::{CatalogError, decode_lockout};
use crate::meta::{EventKind, Leases, MetaError, Revision, WatchMessage};

use super::*;

impl<S: Leases + Clone + 'static> Inner<S> {
    /// Replaces the lockout mirror with a listing of every lockout record.
    pub(super) async fn relist_lockouts(&self) -> Result<Revision, MetaError> {
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
    pub(super) async fn lockout_loop(self: Arc<Self>) {
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
}
