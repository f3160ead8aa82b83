//! [`MergedWatch`]: two watches (of two prefixes of the same store) read as one stream, so
//! a follower that tracks "everything up to revision R is applied" can follow both.
//!
//! Revisions are the store's, shared by both streams. A message's `revision` is the lower of
//! what the two streams have reached, so it promises what each single watch promises: every
//! change up to it, under either prefix, has been delivered. Events are passed on as soon as
//! they arrive, so one message may carry events newer than its `revision` (an early
//! invalidation is always safe; only the reported revision must never run ahead). When one
//! stream has reached a revision the other has not, the other is asked for progress at once,
//! so a write under one prefix is reported without waiting for the follower's next periodic
//! progress request.
//!
//! Cancel safety: messages already read from a stream are kept in the watch, not in the
//! future, so a `next` dropped half-way loses nothing.

use crate::meta::{Event, MetaError, Revision, Watch, WatchMessage};

/// Two watches as one; see the module documentation.
pub struct MergedWatch {
    parts: [Part; 2],
    /// Events read but not yet handed out.
    pending: Vec<Event>,
    /// The revision last handed out.
    reported: Revision,
    /// A compaction seen on either stream, handed out next.
    compacted: Option<Revision>,
    /// The follower asked for progress: once every stream has answered, a `Progress` is
    /// owed even if the revision did not move (the answer itself is a sign of life).
    owed: bool,
}

struct Part {
    watch: Watch,
    /// Everything up to this revision has been delivered by this stream.
    reached: Revision,
    /// Progress was requested and has not been answered yet.
    asked: bool,
}

impl MergedWatch {
    /// Both watches must have been opened at the same start revision `from`.
    pub fn new(first: Watch, second: Watch, from: Revision) -> MergedWatch {
        let part = |watch| Part {
            watch,
            reached: from - 1,
            asked: false,
        };
        MergedWatch {
            parts: [part(first), part(second)],
            pending: Vec::new(),
            reported: from - 1,
            compacted: None,
            owed: false,
        }
    }

    pub(crate) async fn next(&mut self) -> Result<WatchMessage, MetaError> {
        loop {
            if let Some(compact_revision) = self.compacted.take() {
                return Ok(WatchMessage::Compacted { compact_revision });
            }
            let low = self.parts.iter().map(|p| p.reached).min().unwrap_or(0);
            let answered = self.owed && self.parts.iter().all(|p| !p.asked);
            if !self.pending.is_empty() || low > self.reported || answered {
                self.owed = false;
                self.reported = self.reported.max(low);
                let events = std::mem::take(&mut self.pending);
                return Ok(match events.is_empty() {
                    true => WatchMessage::Progress { revision: low },
                    false => WatchMessage::Events {
                        events,
                        revision: self.reported,
                    },
                });
            }
            self.ask_laggards().await?;
            let [first, second] = &mut self.parts;
            // Boxed: a `Watch` may hold a `MergedWatch`, so the future is recursive in type.
            let (index, message) = tokio::select! {
                message = Box::pin(first.watch.next()) => (0, message?),
                message = Box::pin(second.watch.next()) => (1, message?),
            };
            let part = &mut self.parts[index];
            match message {
                WatchMessage::Events {
                    mut events,
                    revision,
                } => {
                    self.pending.append(&mut events);
                    part.reached = part.reached.max(revision);
                    part.asked = false;
                }
                WatchMessage::Progress { revision } => {
                    part.reached = part.reached.max(revision);
                    part.asked = false;
                }
                WatchMessage::Compacted { compact_revision } => {
                    self.compacted = Some(compact_revision);
                }
            }
        }
    }

    /// Asks every stream behind the newest revision either has reached to report progress.
    async fn ask_laggards(&mut self) -> Result<(), MetaError> {
        let high = self.parts.iter().map(|p| p.reached).max().unwrap_or(0);
        for part in &mut self.parts {
            if part.reached < high && !part.asked {
                part.asked = true;
                Box::pin(part.watch.request_progress()).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn request_progress(&mut self) -> Result<(), MetaError> {
        self.owed = true;
        for part in &mut self.parts {
            part.asked = true;
            Box::pin(part.watch.request_progress()).await?;
        }
        Ok(())
    }

    pub(crate) fn starts_behind(&self) -> bool {
        self.parts.iter().any(|p| p.watch.starts_behind())
    }

    pub(crate) fn answers(&self) -> u64 {
        self.parts.iter().map(|p| p.watch.answers()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::meta::{EmbeddedKv, MetaKv, Op, Store, Txn};

    async fn put(store: &Store, key: &str) -> Revision {
        let txn = Txn::default().then(Op::Put(key.into(), b"v".to_vec()));
        store.txn(txn).await.unwrap().revision
    }

    async fn next(watch: &mut Watch) -> WatchMessage {
        tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a message within 5 s")
            .unwrap()
    }

    #[tokio::test]
    async fn a_write_under_either_prefix_is_reported_with_both_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let from = put(&store, "other/x").await + 1;
        let a = store.watch("a/", from).await.unwrap();
        let b = store.watch("b/", from).await.unwrap();
        let mut merged = Watch::merge(a, b, from);
        let written = put(&store, "b/1").await;
        // Stream `a` has nothing to say; it is asked for progress, and the write is reported
        // only with `a` caught up too.
        let mut seen = Vec::new();
        loop {
            match next(&mut merged).await {
                WatchMessage::Events { events, revision } => {
                    seen.extend(events.into_iter().map(|e| e.key));
                    if revision >= written {
                        break;
                    }
                }
                WatchMessage::Progress { revision } if revision >= written => break,
                WatchMessage::Progress { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, vec!["b/1".to_string()]);
        let written = put(&store, "a/1").await;
        match next(&mut merged).await {
            WatchMessage::Events { events, revision } => {
                assert_eq!(events[0].key, "a/1");
                assert!(revision <= written);
            }
            other => panic!("{other:?}"),
        }
    }
}
