//! The gRPC front door for the methods credstore owns: the shared state (`Api`), the caller
//! of a request (`Caller`), and what every handler asks of it — the two authorization
//! decisions (both `rbac::decide`), waiting for a write's acknowledgement, name and password
//! parsing. Handlers never read headers. Beside it: the tonic adapter (`milvus.rs`), what an
//! audit line records per request type (`audit_target.rs`), the handlers (`users.rs`,
//! `roles.rs`, `grants.rs`, `backup.rs`, `admin.rs`, `keys.rs`) and the one error mapping of
//! the Milvus handlers (`status.rs`).

mod admin;
mod audit_target;
mod backup;
mod grants;
mod keys;
mod milvus;
mod roles;
pub mod status;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine;
use tonic::Request;

use crate::audit::Audit;
use crate::auth::{self, Authenticated, Authenticator};
use crate::catalog::Catalog;
use crate::coherence::Coherence;
use crate::meta::Revision;
use crate::metrics::Metrics;
use crate::password::{Limits, Password, Username};
use crate::rbac::{self, Policies, Target};
use status::ServiceError;

pub use users::MAX_DESCRIPTION_LEN;

/// Who is calling, and the database they named (Milvus's `dbname` header; it only appears in
/// the text of a denial), from where, and the newest revision the request wrote (for the
/// audit line; clones share it).
#[derive(Clone, Debug)]
struct Caller {
    who: Authenticated,
    db: String,
    peer: Option<SocketAddr>,
    /// 0 until a write is confirmed (revisions start at 1).
    written: Arc<AtomicI64>,
}

impl Caller {
    /// Splits a request into its caller and its body.
    fn of<T>(request: Request<T>) -> Result<(Caller, T), ServiceError> {
        let (who, db) = auth::caller(&request).ok_or(ServiceError::Unauthenticated)?;
        let caller = Caller {
            who,
            db,
            peer: request.remote_addr(),
            written: Arc::default(),
        };
        Ok((caller, request.into_inner()))
    }

    fn is_super_user(&self) -> bool {
        self.who.is_super_user()
    }

    fn wrote(&self, revision: Revision) {
        self.written.fetch_max(revision, Ordering::Relaxed);
    }

    /// The newest revision this request wrote, if it wrote anything.
    fn written(&self) -> Option<Revision> {
        Some(self.written.load(Ordering::Relaxed)).filter(|r| *r > 0)
    }
}

/// The service state shared by every request.
#[derive(Clone)]
pub struct Api {
    /// Users and roles in etcd.
    catalog: Catalog,
    /// For the hash pool (hashing new passwords, checking old ones) and the health answer.
    auth: Authenticator,
    /// Every write waits for its acknowledgement by every live replica.
    coherence: Coherence,
    /// Each user's roles and each role's grants, cached and kept coherent like passwords.
    policies: Policies,
    /// Milvus's name and password rules.
    limits: Limits,
    /// `proxy.maxRoleNum`: most roles, `admin` and `public` included.
    max_roles: usize,
    /// `Connect`'s identifier: only needs to differ between connections.
    next_identifier: Arc<AtomicI64>,
    /// One line per change request (and backup), whatever its outcome.
    audit: Audit,
    /// Records how long writes wait for their acknowledgement.
    metrics: Option<Metrics>,
}

/// The settings handlers need besides the shared components.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub limits: Limits,
    pub max_roles: usize,
}

impl Api {
    pub fn new(
        catalog: Catalog,
        auth: Authenticator,
        coherence: Coherence,
        policies: Policies,
        settings: ApiSettings,
    ) -> Api {
        // Identifiers only need to differ between connections; start somewhere unguessable-ish.
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let start = i64::from(u32::from_le_bytes(seed) >> 1) + 1;
        Api {
            catalog,
            auth,
            coherence,
            policies,
            limits: settings.limits,
            max_roles: settings.max_roles,
            next_identifier: Arc::new(AtomicI64::new(start)),
            audit: Audit::off(),
            metrics: None,
        }
    }

    /// Records each write's acknowledgement wait in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Api {
        self.metrics = Some(metrics);
        self
    }

    /// Writes an audit line for every change request to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Api {
        self.audit = audit;
        self
    }

    /// May the caller do what `method` needs (its entry in Milvus's privilege table) on the
    /// object `name`? The one decision, `rbac::decide`: every method served here is
    /// cluster-wide, so only cluster-level grants count, whatever the `dbname` header says.
    async fn require(&self, caller: &Caller, method: &str, name: &str) -> Result<(), ServiceError> {
        let dbs = [caller.db.as_str()];
        let target = Target {
            dbs: &dbs,
            names: &[name],
        };
        Ok(rbac::decide(&self.policies, &caller.who, method, target).await?)
    }

    /// Decision two: a user acting on their own record (`target`, as sent) needs no
    /// privilege; anyone else needs what `method` needs on `target` (decision one).
    async fn require_self_or(
        &self,
        caller: &Caller,
        target: &str,
        method: &str,
    ) -> Result<(), ServiceError> {
        let own = Username::parse(target, &self.limits)
            .is_ok_and(|target| caller.who.name() == Some(target.as_str()));
        match own {
            true => Ok(()),
            false => self.require(caller, method, target.trim()).await,
        }
    }

    /// Waits until every live replica applied `revision`, which `caller`'s request wrote.
    async fn confirm(&self, caller: &Caller, revision: Revision) -> Result<(), ServiceError> {
        caller.wrote(revision);
        let started = std::time::Instant::now();
        let confirmed = self.coherence.confirm(revision).await;
        if let Some(metrics) = &self.metrics {
            metrics.ack_waited(started.elapsed());
        }
        Ok(confirmed?)
    }

    /// Waits for the acknowledgement of a write, if there was one; a request that changed
    /// nothing has nothing to wait for.
    async fn confirm_change(
        &self,
        caller: &Caller,
        revision: Option<Revision>,
    ) -> Result<(), ServiceError> {
        match revision {
            Some(revision) => self.confirm(caller, revision).await,
            None => Ok(()),
        }
    }

    fn username(&self, raw: &str) -> Result<Username, ServiceError> {
        Username::parse(raw, &self.limits).map_err(ServiceError::InvalidName)
    }

    fn password(&self, encoded: &str) -> Result<Password, ServiceError> {
        Password::new(decode_base64(encoded)?, &self.limits).map_err(ServiceError::InvalidPassword)
    }
}

fn decode_base64(encoded: &str) -> Result<Vec<u8>, ServiceError> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(ServiceError::Base64)
}
