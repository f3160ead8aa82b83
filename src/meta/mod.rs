//! The storage boundary: `MetaKv`, the few key-value operations the catalog and the
//! coherence protocol need, with etcd's semantics (revisions, create-if-absent and
//! compare-and-swap transactions, prefix watches from a revision).
//!
//! Two implementations: [`EtcdKv`] for clusters and [`EmbeddedKv`] (a redb file) for a single
//! process. [`Store`] picks one at start-up. Nothing here knows users or gRPC.

mod embedded;
mod etcd;
mod lease;

use std::future::Future;

pub use embedded::EmbeddedKv;
pub use etcd::{EtcdKv, EtcdOptions, EtcdTls, LatencyObserver, Page};
pub use lease::{Lease, Leases};

/// The most operations (and, separately, compares) etcd takes in one transaction
/// (`--max-txn-ops`, default 128): the bound of [`MetaKv::get_many`] and of every batch.
pub const MAX_TXN_OPS: usize = 128;

/// An etcd-style revision: every write to the store raises it by one.
pub type Revision = i64;

/// One stored key with its etcd metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// A value read at a store revision: everything written up to `revision` is reflected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read<T> {
    pub value: T,
    pub revision: Revision,
}

/// A condition of a transaction; all must hold for its operations to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (etcd: `create_revision == 0`).
    Absent(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, Revision),
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    DeletePrefix(String),
}

/// An all-or-nothing write: if every compare holds, every op is applied at one new revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// The result of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (and so the ops were applied).
    pub succeeded: bool,
    /// The store revision after the transaction (the write's revision when it wrote).
    pub revision: Revision,
}

/// What changed at a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value of a put; empty for a delete.
    pub value: Vec<u8>,
    /// The revision of this change.
    pub revision: Revision,
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order; the store has reached `revision`.
    Events {
        events: Vec<Event>,
        revision: Revision,
    },
    /// Nothing changed under the prefix up to `revision`.
    Progress { revision: Revision },
    /// The start revision is no longer kept; the watcher must re-list and watch anew.
    Compacted { compact_revision: Revision },
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    #[error("etcd request failed: {0}")]
    Etcd(String),
    #[error("embedded store at {path} failed: {reason}")]
    Embedded {
        path: String,
        kind: EmbeddedFailure,
        reason: String,
    },
    #[error("watch stream closed")]
    WatchClosed,
}

/// Why the embedded store failed, for callers that answer differently: `credstore admin
/// reset-root` names what to do when there is no store, or when a server holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddedFailure {
    /// Opening an existing store: there is no file at the path.
    Missing,
    /// Another process has the file open (redb locks it): a running `credstore serve`.
    InUse,
    /// Anything else (I/O, a damaged file, a revoked lease).
    Other,
}

/// The storage operations, with etcd's semantics, shared by both backends.
pub trait MetaKv: Send + Sync {
    /// The key's current value, if any.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Read<Option<KeyValue>>, MetaError>> + Send;
    /// Every key under `prefix`, in key order.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Read<Vec<KeyValue>>, MetaError>> + Send;
    /// The keys under `prefix`, in key order, without their values.
    fn list_keys(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Read<Vec<String>>, MetaError>> + Send;
    /// The values of `keys` (at most [`MAX_TXN_OPS`]) in one request; etcd reads them all at
    /// one revision. The default asks for them one by one (the embedded store and test
    /// wrappers; its revision is the last read's).
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Read<Vec<Option<KeyValue>>>, MetaError>> + Send {
        async move {
            let mut values = Vec::with_capacity(keys.len());
            let mut revision = 0;
            for key in keys {
                let read = self.get(key).await?;
                revision = revision.max(read.revision);
                values.push(read.value);
            }
            Ok(Read {
                value: values,
                revision,
            })
        }
    }
    /// Applies `txn` atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, MetaError>> + Send;
    /// Watches every key under `prefix` from `from` (inclusive).
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<Watch, MetaError>> + Send;
}

/// A live watch of one prefix. Few exist (two per replica), so the etcd variant is not boxed.
#[allow(clippy::large_enum_variant)]
pub enum Watch {
    Etcd(etcd::EtcdWatch),
    Embedded(embedded::EmbeddedWatch),
}

impl Watch {
    /// The next message; `Err(WatchClosed)` or another error when the stream broke.
    pub async fn next(&mut self) -> Result<WatchMessage, MetaError> {
        match self {
            Watch::Etcd(w) => w.next().await,
            Watch::Embedded(w) => w.next().await,
        }
    }

    /// How many answers etcd has sent on this stream, including ones not passed on as
    /// messages (etcd 3.4 progress answers while history is replayed): proof the stream is
    /// alive. Always 0 for the embedded store, whose progress answers are messages.
    pub fn answers(&self) -> u64 {
        match self {
            Watch::Etcd(w) => w.answers(),
            Watch::Embedded(_) => 0,
        }
    }

    /// Asks for a `Progress` message carrying the current revision.
    pub async fn request_progress(&mut self) -> Result<(), MetaError> {
        match self {
            Watch::Etcd(w) => w.request_progress().await,
            Watch::Embedded(w) => w.request_progress(),
        }
    }
}

/// The configured backend. One `Store` exists per process (clones share it), so the size
/// difference between the variants costs nothing worth a box.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Etcd(EtcdKv),
    Embedded(EmbeddedKv),
}

impl Store {
    /// Reports each etcd request's latency to `observer`; the embedded store reports none.
    pub fn observe_latency(&self, observer: LatencyObserver) {
        if let Store::Etcd(kv) = self {
            kv.observe_latency(observer);
        }
    }
}

impl MetaKv for Store {
    async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, MetaError> {
        match self {
            Store::Etcd(kv) => kv.get(key).await,
            Store::Embedded(kv) => kv.get(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Read<Vec<KeyValue>>, MetaError> {
        match self {
            Store::Etcd(kv) => kv.list(prefix).await,
            Store::Embedded(kv) => kv.list(prefix).await,
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Read<Vec<String>>, MetaError> {
        match self {
            Store::Etcd(kv) => kv.list_keys(prefix).await,
            Store::Embedded(kv) => kv.list_keys(prefix).await,
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Read<Vec<Option<KeyValue>>>, MetaError> {
        match self {
            Store::Etcd(kv) => kv.get_many(keys).await,
            Store::Embedded(kv) => kv.get_many(keys).await,
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        match self {
            Store::Etcd(kv) => kv.txn(txn).await,
            Store::Embedded(kv) => kv.txn(txn).await,
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, MetaError> {
        match self {
            Store::Etcd(kv) => kv.watch(prefix, from).await,
            Store::Embedded(kv) => kv.watch(prefix, from).await,
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
