//! Leases at the storage boundary: a key that lives only as long as its owner keeps renewing
//! a lease (etcd's leases; an in-process equivalent for the embedded store). `coherence` puts
//! each replica's session key on one, so a replica that stops (or is cut off) drops out of
//! the set writers wait for. Nothing here knows sessions or users.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::meta::{MetaError, MetaKv, Revision, Store};

/// A granted lease. Cheap to clone; every clone names the same lease.
#[derive(Clone, Debug)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    /// Embedded store only: set once the lease is revoked (its keys are gone).
    revoked: Arc<AtomicBool>,
}

impl Lease {
    pub(crate) fn new(id: i64, ttl: Duration) -> Lease {
        Lease {
            id,
            ttl,
            revoked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The store's identifier of the lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The time-to-live granted: unrenewed for this long, the lease and its keys are gone.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn mark_revoked(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

/// Stores that grant leases. The keys put on a lease are deleted (a watchable delete) when
/// it is revoked or expires.
pub trait Leases: MetaKv {
    /// Grants a lease of `ttl` (whole seconds, at least one).
    fn lease(&self, ttl: Duration) -> impl Future<Output = Result<Lease, MetaError>> + Send;
    /// One renewal round trip: `Ok(false)` when the store says the lease no longer exists.
    /// Callers put a deadline on it: a store cut off by a partition may never answer.
    fn keep_alive(&self, lease: &Lease) -> impl Future<Output = Result<bool, MetaError>> + Send;
    /// Writes `key` so that it lives only as long as `lease`; returns the write's revision.
    fn put_on_lease(
        &self,
        lease: &Lease,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<Revision, MetaError>> + Send;
    /// Ends the lease now; its keys are deleted.
    fn revoke(&self, lease: &Lease) -> impl Future<Output = Result<(), MetaError>> + Send;
}

impl Leases for Store {
    async fn lease(&self, ttl: Duration) -> Result<Lease, MetaError> {
        match self {
            Store::Etcd(kv) => kv.lease_grant(ttl).await,
            Store::Embedded(kv) => Ok(kv.lease_grant(ttl)),
        }
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<bool, MetaError> {
        match self {
            Store::Etcd(kv) => kv.lease_keep_alive(lease).await,
            // In one process a lease cannot outlive its owner's keep-alives going silent
            // without the owner itself being stopped, so only revocation ends it.
            Store::Embedded(_) => Ok(!lease.is_revoked()),
        }
    }

    async fn put_on_lease(
        &self,
        lease: &Lease,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Revision, MetaError> {
        match self {
            Store::Etcd(kv) => kv.lease_put(lease, key, value).await,
            Store::Embedded(kv) => kv.lease_put(lease, key, value).await,
        }
    }

    async fn revoke(&self, lease: &Lease) -> Result<(), MetaError> {
        match self {
            Store::Etcd(kv) => kv.lease_revoke(lease).await,
            Store::Embedded(kv) => kv.lease_revoke(lease).await,
        }
    }
}
