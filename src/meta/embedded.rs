//! `MetaKv` in one process: a redb file with etcd's revision numbering and an in-process
//! watch. The default store when no etcd endpoint is configured, so `credstore serve` runs
//! with nothing else installed. It must not be shared by two processes (redb locks the file).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::meta::lease::Lease;
use crate::meta::{
    Compare, EmbeddedFailure, Event, EventKind, KeyValue, MetaError, MetaKv, Op, Read, Revision,
    Txn, TxnOutcome, Watch, WatchMessage,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Keys written on a lease, with the lease's id: swept when the file is next opened (a
/// process that ended without revoking took its leases with it).
const LEASED: TableDefinition<&str, i64> = TableDefinition::new("leased");
/// How many recent changes a watch can resume from; older start revisions read as compacted.
const HISTORY: usize = 16_384;
/// How many bytes of recent changes (keys, values and per-event overhead) are kept for
/// watches. A watcher that falls further behind gets `Compacted` and re-lists, as it would
/// after an etcd compaction, so a stream of large values cannot grow memory without bound.
pub const HISTORY_BYTES: usize = 32 * 1024 * 1024;

/// A handle on the embedded store; clones share it.
#[derive(Clone)]
pub struct EmbeddedKv {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Absolute.
    path: PathBuf,
    /// Opening created the file.
    created: bool,
    state: Mutex<History>,
    revision_tx: watch::Sender<Revision>,
}

/// Whether a missing file may be created.
#[derive(Clone, Copy)]
enum Opening {
    CreateIfMissing,
    Existing,
}

/// Changes since start-up, for watches; revisions before `first_kept` are "compacted".
struct History {
    events: VecDeque<Event>,
    first_kept: Revision,
    /// The sum of [`event_bytes`] over `events`.
    bytes: usize,
    /// The most `bytes` kept (the newest revision's events are always kept).
    max_bytes: usize,
}

/// What one kept event costs: its key and value plus the fixed size of an `Event`.
fn event_bytes(event: &Event) -> usize {
    std::mem::size_of::<Event>() + event.key.len() + event.value.len()
}

impl EmbeddedKv {
    /// Opens the store file at `path`, creating it (and its parent directories) when there is
    /// none: [`EmbeddedKv::was_created`] says which happened.
    pub fn open(path: &Path) -> Result<EmbeddedKv, MetaError> {
        EmbeddedKv::open_with_history_bytes(path, HISTORY_BYTES)
    }

    /// Opens the store file at `path` only if it exists: no file is
    /// [`EmbeddedFailure::Missing`], never a new empty store.
    pub fn open_existing(path: &Path) -> Result<EmbeddedKv, MetaError> {
        EmbeddedKv::open_as(path, HISTORY_BYTES, Opening::Existing)
    }

    /// [`EmbeddedKv::open`] keeping at most `history_bytes` of changes for watches to
    /// resume from (see [`HISTORY_BYTES`]).
    pub fn open_with_history_bytes(
        path: &Path,
        history_bytes: usize,
    ) -> Result<EmbeddedKv, MetaError> {
        EmbeddedKv::open_as(path, history_bytes, Opening::CreateIfMissing)
    }

    /// The store file's absolute path (made absolute against the working directory when it
    /// was opened, so logs and errors say which file, wherever the process was started).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether opening created the file (a new, empty store) rather than finding one.
    pub fn was_created(&self) -> bool {
        self.inner.created
    }

    fn open_as(
        path: &Path,
        history_bytes: usize,
        opening: Opening,
    ) -> Result<EmbeddedKv, MetaError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let fail = |kind: EmbeddedFailure, reason: String| MetaError::Embedded {
            path: path.display().to_string(),
            kind,
            reason,
        };
        let err = |e: &dyn std::fmt::Display| fail(EmbeddedFailure::Other, e.to_string());
        let exists = path.try_exists().map_err(|e| err(&e))?;
        let db = match (exists, opening) {
            (false, Opening::Existing) => {
                return Err(fail(
                    EmbeddedFailure::Missing,
                    "there is no store file there".into(),
                ));
            }
            (_, Opening::CreateIfMissing) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| err(&e))?;
                }
                Database::create(&path)
            }
            (true, Opening::Existing) => Database::open(&path),
        };
        let db = db.map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => fail(
                EmbeddedFailure::InUse,
                "another process has it open (a running `credstore serve`?)".into(),
            ),
            other => err(&other),
        })?;
        let write = db.begin_write().map_err(|e| err(&e))?;
        write.open_table(KV).map_err(|e| err(&e))?;
        let revision = {
            let mut meta = write.open_table(META).map_err(|e| err(&e))?;
            let current = meta
                .get(REVISION_KEY)
                .map_err(|e| err(&e))?
                .map(|g| g.value());
            match current {
                Some(rev) => rev,
                None => {
                    meta.insert(REVISION_KEY, 1).map_err(|e| err(&e))?;
                    1
                }
            }
        };
        let revision = sweep_leased(&write, revision).map_err(|e| err(&e))?;
        write.commit().map_err(|e| err(&e))?;
        let (revision_tx, _) = watch::channel(revision);
        let history = History {
            events: VecDeque::new(),
            first_kept: revision + 1,
            bytes: 0,
            max_bytes: history_bytes,
        };
        let inner = Inner {
            db,
            created: !exists,
            path,
            state: Mutex::new(history),
            revision_tx,
        };
        Ok(EmbeddedKv {
            inner: Arc::new(inner),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, MetaError> {
        let inner = self.inner.clone();
        let path = inner.path.display().to_string();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| MetaError::Embedded {
                path: path.clone(),
                kind: EmbeddedFailure::Other,
                reason: e.to_string(),
            })?
            .map_err(|e| MetaError::Embedded {
                path,
                kind: EmbeddedFailure::Other,
                reason: e.to_string(),
            })
    }
}

impl Inner {
    fn history(&self) -> MutexGuard<'_, History> {
        // A poisoned lock means a panic while appending history: a bug, so propagate it.
        self.state
            .lock()
            .expect("embedded store history lock poisoned")
    }

    fn current_revision(&self) -> Revision {
        *self.revision_tx.borrow()
    }

    fn apply(&self, txn: &Txn) -> Result<TxnOutcome, redb::Error> {
        // Holding the history lock across the write keeps events in revision order.
        let mut history = self.history();
        let write = self.db.begin_write()?;
        let current = self.current_revision();
        let next = current + 1;
        let mut events = Vec::new();
        {
            let mut kv = write.open_table(KV)?;
            let holds = txn
                .compares
                .iter()
                .try_fold(true, |ok, c| Ok::<_, redb::Error>(ok && compare(&kv, c)?))?;
            if !holds {
                return Ok(TxnOutcome {
                    succeeded: false,
                    revision: current,
                });
            }
            for op in &txn.ops {
                apply_op(&mut kv, op, next, &mut events)?;
            }
        }
        if events.is_empty() {
            return Ok(TxnOutcome {
                succeeded: true,
                revision: current,
            });
        }
        write.open_table(META)?.insert(REVISION_KEY, next)?;
        write.commit()?;
        history.bytes += events.iter().map(event_bytes).sum::<usize>();
        history.events.extend(events);
        // Whole revisions are dropped, oldest first, but never the one just written.
        while history.events.len() > HISTORY || history.bytes > history.max_bytes {
            let Some(oldest) = history.events.front().map(|e| e.revision) else {
                break;
            };
            if oldest >= next {
                break;
            }
            while history.events.front().is_some_and(|e| e.revision == oldest) {
                if let Some(dropped) = history.events.pop_front() {
                    history.bytes -= event_bytes(&dropped);
                }
            }
            history.first_kept = oldest + 1;
        }
        self.revision_tx.send_replace(next);
        Ok(TxnOutcome {
            succeeded: true,
            revision: next,
        })
    }
}

fn encode(create_revision: Revision, mod_revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, raw: &[u8]) -> KeyValue {
    let word = |at: usize| {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0)
    };
    KeyValue {
        key: key.to_string(),
        value: raw.get(16..).unwrap_or_default().to_vec(),
        create_revision: word(0),
        mod_revision: word(8),
    }
}

/// The revision of a read snapshot, from the snapshot itself: reading the live counter
/// instead could pair an old value with a newer revision (a write committing in between).
fn snapshot_revision(read: &redb::ReadTransaction) -> Result<Revision, redb::Error> {
    Ok(read
        .open_table(META)?
        .get(REVISION_KEY)?
        .map(|g| g.value())
        .unwrap_or(1))
}

fn read_key(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, redb::Error> {
    Ok(table.get(key)?.map(|guard| decode(key, guard.value())))
}

fn compare(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    compare: &Compare,
) -> Result<bool, redb::Error> {
    Ok(match compare {
        Compare::Absent(key) => read_key(table, key)?.is_none(),
        Compare::ModRevision(key, rev) => {
            read_key(table, key)?.is_some_and(|kv| kv.mod_revision == *rev)
        }
    })
}

fn keys_with_prefix(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>, redb::Error> {
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (key, value) = entry?;
        if !key.value().starts_with(prefix) {
            break;
        }
        out.push(decode(key.value(), value.value()));
    }
    Ok(out)
}

fn apply_op(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    op: &Op,
    revision: Revision,
    events: &mut Vec<Event>,
) -> Result<(), redb::Error> {
    let event = |kind, key: &str, value: &[u8]| Event {
        kind,
        key: key.to_string(),
        value: value.to_vec(),
        revision,
    };
    match op {
        Op::Put(key, value) => {
            let created = read_key(table, key)?
                .map(|kv| kv.create_revision)
                .unwrap_or(revision);
            table.insert(key.as_str(), encode(created, revision, value).as_slice())?;
            events.push(event(EventKind::Put, key, value));
        }
        Op::Delete(key) => {
            if table.remove(key.as_str())?.is_some() {
                events.push(event(EventKind::Delete, key, &[]));
            }
        }
        Op::DeletePrefix(prefix) => {
            for kv in keys_with_prefix(table, prefix)? {
                table.remove(kv.key.as_str())?;
                events.push(event(EventKind::Delete, &kv.key, &[]));
            }
        }
    }
    Ok(())
}

impl MetaKv for EmbeddedKv {
    async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, MetaError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let read = inner.db.begin_read()?;
            let revision = snapshot_revision(&read)?;
            let value = read_key(&read.open_table(KV)?, &key)?;
            Ok(Read { value, revision })
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Read<Vec<Option<KeyValue>>>, MetaError> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let read = inner.db.begin_read()?;
            let revision = snapshot_revision(&read)?;
            let table = read.open_table(KV)?;
            let value = keys
                .iter()
                .map(|key| read_key(&table, key))
                .collect::<Result<_, _>>()?;
            Ok(Read { value, revision })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Read<Vec<KeyValue>>, MetaError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let read = inner.db.begin_read()?;
            let revision = snapshot_revision(&read)?;
            let value = keys_with_prefix(&read.open_table(KV)?, &prefix)?;
            Ok(Read { value, revision })
        })
        .await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Read<Vec<String>>, MetaError> {
        let listed = self.list(prefix).await?;
        let keys = listed.value.into_iter().map(|kv| kv.key).collect();
        Ok(Read {
            value: keys,
            revision: listed.revision,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        self.blocking(move |inner| inner.apply(&txn)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, MetaError> {
        Ok(Watch::Embedded(EmbeddedWatch {
            inner: self.inner.clone(),
            prefix: prefix.to_string(),
            next: from,
            changed: self.inner.revision_tx.subscribe(),
            progress_requested: false,
        }))
    }
}

/// Deletes every key left on a lease by an earlier process, at one new revision.
fn sweep_leased(
    write: &redb::WriteTransaction,
    revision: Revision,
) -> Result<Revision, redb::Error> {
    let mut leased = write.open_table(LEASED)?;
    let keys: Vec<String> = leased
        .iter()?
        .map(|entry| entry.map(|(key, _)| key.value().to_string()))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Ok(revision);
    }
    let mut kv = write.open_table(KV)?;
    for key in &keys {
        kv.remove(key.as_str())?;
        leased.remove(key.as_str())?;
    }
    write.open_table(META)?.insert(REVISION_KEY, revision + 1)?;
    Ok(revision + 1)
}

/// Leases in one process: the keys of a lease are recorded in the `leased` table, so a revoke
/// deletes them and the next open sweeps what a stopped process left behind.
impl EmbeddedKv {
    pub(crate) fn lease_grant(&self, ttl: Duration) -> Lease {
        static NEXT: AtomicI64 = AtomicI64::new(1);
        Lease::new(NEXT.fetch_add(1, Ordering::Relaxed), ttl)
    }

    pub(crate) async fn lease_put(
        &self,
        lease: &Lease,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Revision, MetaError> {
        if lease.is_revoked() {
            return Err(MetaError::Embedded {
                path: self.inner.path.display().to_string(),
                kind: EmbeddedFailure::Other,
                reason: format!("lease {} was revoked", lease.id()),
            });
        }
        // Recorded before the write: a crash in between leaves a record to sweep, never an
        // unrecorded key that would outlive its process.
        let (id, owned) = (lease.id(), key.to_string());
        self.blocking(move |inner| {
            let write = inner.db.begin_write()?;
            write.open_table(LEASED)?.insert(owned.as_str(), id)?;
            write.commit()?;
            Ok(())
        })
        .await?;
        let outcome = self
            .txn(Txn::default().then(Op::Put(key.to_string(), value)))
            .await?;
        Ok(outcome.revision)
    }

    pub(crate) async fn lease_revoke(&self, lease: &Lease) -> Result<(), MetaError> {
        lease.mark_revoked();
        let id = lease.id();
        let keys = self
            .blocking(move |inner| {
                let read = inner.db.begin_read()?;
                let leased = read.open_table(LEASED)?;
                let mut keys = Vec::new();
                for entry in leased.iter()? {
                    let (key, owner) = entry?;
                    if owner.value() == id {
                        keys.push(key.value().to_string());
                    }
                }
                Ok(keys)
            })
            .await?;
        if keys.is_empty() {
            return Ok(());
        }
        let txn = keys
            .iter()
            .fold(Txn::default(), |txn, key| txn.then(Op::Delete(key.clone())));
        self.txn(txn).await?;
        self.blocking(move |inner| {
            let write = inner.db.begin_write()?;
            {
                let mut leased = write.open_table(LEASED)?;
                for key in &keys {
                    leased.remove(key.as_str())?;
                }
            }
            write.commit()?;
            Ok(())
        })
        .await
    }
}

/// An in-process watch: wakes on every commit and reads the shared history.
pub struct EmbeddedWatch {
    inner: Arc<Inner>,
    prefix: String,
    next: Revision,
    changed: watch::Receiver<Revision>,
    progress_requested: bool,
}

impl EmbeddedWatch {
    pub(crate) async fn next(&mut self) -> Result<WatchMessage, MetaError> {
        loop {
            if let Some(message) = self.poll() {
                return Ok(message);
            }
            self.changed
                .changed()
                .await
                .map_err(|_| MetaError::WatchClosed)?;
        }
    }

    fn poll(&mut self) -> Option<WatchMessage> {
        let history = self.inner.history();
        let revision = self.inner.current_revision();
        if self.next < history.first_kept && self.next <= revision {
            return Some(WatchMessage::Compacted {
                compact_revision: history.first_kept - 1,
            });
        }
        let events: Vec<Event> = history
            .events
            .iter()
            .filter(|e| e.revision >= self.next && e.key.starts_with(&self.prefix))
            .cloned()
            .collect();
        self.next = self.next.max(revision + 1);
        if !events.is_empty() {
            return Some(WatchMessage::Events { events, revision });
        }
        if std::mem::take(&mut self.progress_requested) {
            return Some(WatchMessage::Progress { revision });
        }
        None
    }

    pub(crate) fn request_progress(&mut self) -> Result<(), MetaError> {
        self.progress_requested = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<EmbeddedKv, MetaError>) -> Option<EmbeddedFailure> {
        match result {
            Ok(_) => None,
            Err(MetaError::Embedded { kind, .. }) => Some(kind),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn opening_creates_only_when_asked_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store").join("kv.redb");
        // An existing store only: nothing there, and nothing left behind.
        assert_eq!(
            kind(EmbeddedKv::open_existing(&path)),
            Some(EmbeddedFailure::Missing)
        );
        assert!(!dir.path().join("store").exists());
        let created = EmbeddedKv::open(&path).unwrap();
        assert!(created.was_created());
        assert!(created.path().is_absolute());
        // Held by this process's handle: a second open is InUse, whichever way it opens.
        assert_eq!(kind(EmbeddedKv::open(&path)), Some(EmbeddedFailure::InUse));
        assert_eq!(
            kind(EmbeddedKv::open_existing(&path)),
            Some(EmbeddedFailure::InUse)
        );
        drop(created);
        let reopened = EmbeddedKv::open_existing(&path).unwrap();
        assert!(!reopened.was_created());
        drop(reopened);
        assert!(!EmbeddedKv::open(&path).unwrap().was_created());
    }

    #[test]
    fn a_relative_path_is_reported_absolute() {
        let err = match EmbeddedKv::open_existing(Path::new("no-such-dir/kv.redb")) {
            Err(MetaError::Embedded { path, .. }) => path,
            _ => panic!("a missing store must not open"),
        };
        let expected = std::env::current_dir().unwrap().join("no-such-dir/kv.redb");
        assert_eq!(err, expected.display().to_string());
    }
}
