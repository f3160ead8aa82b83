//! The replica's Prometheus metrics: one [`Metrics`] (a registry and the handles that count),
//! built once by `server::run` and cloned into the auth layer, the hash pool's observer and the
//! HTTP endpoint. Values other parts already keep (cache hits, sessions, applied revision,
//! hashes running) are read at scrape time through a [`Reading`] the server supplies, so this
//! module imports nothing of the crate. Nothing here holds or prints configuration or secrets.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How an authentication ended, as `credstore_auth_requests_total{result=…}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated (or authentication is off).
    Ok,
    /// Missing or malformed header, wrong user name or password: UNAUTHENTICATED.
    Denied,
    /// The hash pool was full, or the peer's share of it taken: RESOURCE_EXHAUSTED.
    Busy,
    /// The (name, address) pair or the name is locked after repeated failures.
    Locked,
    /// The store was away or the cache not trusted: UNAVAILABLE.
    Unavailable,
}

impl AuthOutcome {
    const ALL: [AuthOutcome; 5] = [
        AuthOutcome::Ok,
        AuthOutcome::Denied,
        AuthOutcome::Busy,
        AuthOutcome::Locked,
        AuthOutcome::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            AuthOutcome::Ok => "ok",
            AuthOutcome::Denied => "denied",
            AuthOutcome::Busy => "busy",
            AuthOutcome::Locked => "locked",
            AuthOutcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    result: &'static str,
}

/// A lockout change, as `credstore_lockouts_total{scope=…}` and `credstore_unlocks_total`
/// count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockoutEvent {
    /// A (user name, peer address) pair reached `credstore.lockout.threshold`.
    PairLocked,
    /// A user name reached `credstore.lockout.accountThreshold`.
    AccountLocked,
    /// An operator lifted a user's locks (`credstore user unlock`).
    Unlocked,
}

/// The `kind` labels of `credstore_auth_credentials`; any other kind counts as the last.
const CREDENTIAL_KINDS: [&str; 4] = ["password", "apikey", "oidc", "none"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    method: String,
    code: &'static str,
}

fn etcd_histogram() -> Histogram {
    // 0.5 ms .. ~8 s: a healthy etcd answers in milliseconds; the request deadline is 5 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The values read at scrape time from the running replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: u64,
    pub hashes_running: u64,
    pub hashes_queued: u64,
    pub sessions_live: u64,
    pub applied_revision: i64,
    /// Whether the replica is registered and trusts its cache.
    pub trusted: bool,
    /// Audit lines dropped because the audit writer fell behind.
    pub audit_dropped: u64,
    /// (user name, peer) pairs and user names locked now, as this replica sees them.
    pub locked_pairs: u64,
    pub locked_accounts: u64,
    /// Logins refused because their peer held its share of the hash pool.
    pub hashes_refused_peer: u64,
}

/// Supplies a [`Reading`] on each scrape.
pub type ReadFn = Box<dyn Fn() -> Reading + Send + Sync>;

/// The metrics handle; clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// `credstore_auth_requests_total`'s counters, in [`AuthOutcome::ALL`]'s order: resolved
    /// once, so counting a request takes no label lookup (it runs on every request).
    auth: [Counter; 5],
    /// `credstore_auth_credentials`' counters by [`CREDENTIAL_KINDS`] and (ok, denied),
    /// resolved once for the same reason.
    credentials: [[Counter; 2]; 4],
    hash_seconds: Histogram,
    ack_wait: Histogram,
    etcd: Family<OpLabels, Histogram, fn() -> Histogram>,
    forwarded: Family<ForwardLabels, Counter>,
    lockouts: Family<ScopeLabels, Counter>,
    unlocks: Counter,
    upstream_up: Gauge,
    connections: Connections,
    /// Forwarded request bodies held now, and bodies refused by the proxy tier's limits.
    body_bytes: Gauge,
    body_refused: Family<ReasonLabels, Counter>,
}

/// The gRPC port's connections (`transport`).
struct Connections {
    open: Gauge,
    caps: Family<ScopeLabels, Gauge>,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
}

impl Connections {
    fn register(registry: &mut Registry) -> Connections {
        let connections = Connections {
            open: Gauge::default(),
            caps: Family::default(),
            refused: Family::default(),
            closed: Family::default(),
        };
        registry.register(
            "credstore_connections_open",
            "Connections open on the gRPC port",
            connections.open.clone(),
        );
        registry.register(
            "credstore_connection_limit",
            "The connection caps in force (scope total or per_peer), after fitting the file limit",
            connections.caps.clone(),
        );
        registry.register(
            "credstore_connections_refused",
            "Connections closed at accept, by the cap that was reached",
            connections.refused.clone(),
        );
        registry.register(
            "credstore_connections_closed",
            "Connections the server closed: handshake_timeout, handshake_failed, idle (GOAWAY), resets (cut off)",
            connections.closed.clone(),
        );
        for reason in ["max_connections", "max_connections_per_peer"] {
            drop(connections.refused.get_or_create(&ReasonLabels { reason }));
        }
        for reason in ["handshake_timeout", "handshake_failed", "idle", "resets"] {
            drop(connections.closed.get_or_create(&ReasonLabels { reason }));
        }
        connections
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric once; `read` is called on each scrape.
    pub fn new(read: ReadFn) -> Metrics {
        let mut registry = Registry::default();
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "credstore_auth_requests",
            "gRPC requests authenticated, by result",
            auth.clone(),
        );
        let family = Family::<CredentialLabels, Counter>::default();
        let credentials = CREDENTIAL_KINDS.map(|kind| {
            ["ok", "denied"].map(|result| {
                family
                    .get_or_create(&CredentialLabels { kind, result })
                    .clone()
            })
        });
        registry.register(
            "credstore_auth_credentials",
            "Authentications by credential kind (password, apikey, oidc) and result (ok, denied; \
             password failures are counted only in credstore_auth_requests)",
            family,
        );
        // 1 ms .. ~16 s: argon2id at OWASP's parameters takes tens of milliseconds.
        let hash_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "credstore_hash_seconds",
            "Time one password hash or verification took on a hashing thread",
            hash_seconds.clone(),
        );
        // 1 ms .. ~33 s: a write waits for every live replica, at most credstore.ackTimeoutMs.
        let ack_wait = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "credstore_ack_wait_seconds",
            "Time an acknowledged write waited for every live replica to apply it",
            ack_wait.clone(),
        );
        let etcd = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            etcd_histogram as fn() -> Histogram,
        );
        registry.register(
            "credstore_etcd_request_seconds",
            "Latency of etcd requests by kind (get, list: all pages, txn), failures included",
            etcd.clone(),
        );
        let forwarded = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "credstore_forwarded_requests",
            "Calls routed to the upstream, by method and the gRPC code the client got",
            forwarded.clone(),
        );
        let lockouts = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "credstore_lockouts",
            "Locks this replica's writes started, by scope (pair: a user name from one address; account: a user name from every address)",
            lockouts.clone(),
        );
        let unlocks = Counter::default();
        registry.register(
            "credstore_unlocks",
            "Unlock requests this replica served (credstore user unlock)",
            unlocks.clone(),
        );
        for scope in ["pair", "account"] {
            drop(lockouts.get_or_create(&ScopeLabels { scope }));
        }
        let upstream_up = Gauge::default();
        registry.register(
            "credstore_upstream_up",
            "1 when the last forwarded call reached the upstream, 0 when it could not be reached (or none was forwarded yet)",
            upstream_up.clone(),
        );
        let connections = Connections::register(&mut registry);
        let body_bytes = Gauge::default();
        registry.register(
            "credstore_forwarded_body_bytes",
            "Bytes of forwarded request bodies held now (reserved against credstore.upstream.maxInFlightBytes)",
            body_bytes.clone(),
        );
        let body_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "credstore_forwarded_bodies_refused",
            "Forwarded request bodies refused: replica_budget, connection_budget (RESOURCE_EXHAUSTED), timeout (DEADLINE_EXCEEDED)",
            body_refused.clone(),
        );
        for reason in ["replica_budget", "connection_budget", "timeout"] {
            drop(body_refused.get_or_create(&ReasonLabels { reason }));
        }
        registry.register_collector(Box::new(Scraped { read }));
        // Every result appears from the start, so a rate over a fresh replica is 0, not absent.
        let auth = AuthOutcome::ALL.map(|outcome| {
            auth.get_or_create(&AuthLabels {
                result: outcome.label(),
            })
            .clone()
        });
        Metrics {
            inner: Arc::new(Inner {
                registry,
                auth,
                credentials,
                hash_seconds,
                ack_wait,
                etcd,
                forwarded,
                lockouts,
                unlocks,
                upstream_up,
                connections,
                body_bytes,
                body_refused,
            }),
        }
    }

    /// Counts one authentication.
    pub fn auth(&self, outcome: AuthOutcome) {
        let index = match outcome {
            AuthOutcome::Ok => 0,
            AuthOutcome::Denied => 1,
            AuthOutcome::Busy => 2,
            AuthOutcome::Locked => 3,
            AuthOutcome::Unavailable => 4,
        };
        self.inner.auth[index].inc();
    }

    /// Counts one authentication by credential `kind` (`password`, `apikey`, `oidc`, `none`).
    pub fn credential(&self, kind: &'static str, ok: bool) {
        let kind = CREDENTIAL_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(CREDENTIAL_KINDS.len() - 1);
        self.inner.credentials[kind][usize::from(!ok)].inc();
    }

    /// Records one hash computation.
    pub fn hash_took(&self, took: Duration) {
        self.inner.hash_seconds.observe(took.as_secs_f64());
    }

    /// What the hash pool calls with each job's duration. It holds only the histogram: the
    /// whole `Metrics` reads the authenticator, which owns the pool, and that cycle would
    /// keep the store (and an embedded store's file lock) alive after the server stops.
    pub fn hash_observer(&self) -> impl Fn(Duration) + Send + Sync + 'static {
        let histogram = self.inner.hash_seconds.clone();
        move |took| histogram.observe(took.as_secs_f64())
    }

    /// What the lockout calls on each lock and unlock. It holds only the counters, for the
    /// reason [`Metrics::hash_observer`] gives.
    pub fn lockout_observer(&self) -> impl Fn(LockoutEvent) + Send + Sync + 'static {
        let lockouts = self.inner.lockouts.clone();
        let unlocks = self.inner.unlocks.clone();
        move |event| match event {
            LockoutEvent::PairLocked => {
                lockouts.get_or_create(&ScopeLabels { scope: "pair" }).inc();
            }
            LockoutEvent::AccountLocked => {
                lockouts
                    .get_or_create(&ScopeLabels { scope: "account" })
                    .inc();
            }
            LockoutEvent::Unlocked => {
                unlocks.inc();
            }
        }
    }

    /// Records how long an acknowledged write waited for every live replica.
    pub fn ack_waited(&self, took: Duration) {
        self.inner.ack_wait.observe(took.as_secs_f64());
    }

    /// What the store calls with each etcd request's kind and duration. It holds only the
    /// histograms, for the reason [`Metrics::hash_observer`] gives.
    pub fn etcd_observer(&self) -> impl Fn(&'static str, Duration) + Send + Sync + 'static {
        let family = self.inner.etcd.clone();
        move |op, took| {
            family
                .get_or_create(&OpLabels { op })
                .observe(took.as_secs_f64());
        }
    }

    /// Records whether the upstream answered the last forwarded call.
    pub fn upstream_reached(&self, up: bool) {
        self.inner.upstream_up.set(i64::from(up));
    }

    /// Counts one forwarded-route call: `method` must come from a bounded set (the caller
    /// routes only known method names here), `code` is the gRPC code's name.
    pub fn forwarded(&self, method: &str, code: &'static str) {
        self.inner
            .forwarded
            .get_or_create(&ForwardLabels {
                method: method.to_string(),
                code,
            })
            .inc();
    }

    /// Records the connection caps in force.
    pub fn connection_caps(&self, total: usize, per_peer: usize) {
        let caps = &self.inner.connections.caps;
        for (scope, value) in [("total", total), ("per_peer", per_peer)] {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            caps.get_or_create(&ScopeLabels { scope }).set(value);
        }
    }

    /// One connection more (`1`) or less (`-1`) open.
    pub fn connections_open(&self, delta: i64) {
        self.inner.connections.open.inc_by(delta);
    }

    /// Counts a connection closed at accept; `reason` is one of a fixed set.
    pub fn connection_refused(&self, reason: &'static str) {
        let labels = ReasonLabels { reason };
        self.inner.connections.refused.get_or_create(&labels).inc();
    }

    /// Counts a connection the server closed; `reason` is one of a fixed set.
    pub fn connection_closed(&self, reason: &'static str) {
        let labels = ReasonLabels { reason };
        self.inner.connections.closed.get_or_create(&labels).inc();
    }

    /// Forwarded request body bytes held: `delta` more (or fewer).
    pub fn body_bytes(&self, delta: i64) {
        self.inner.body_bytes.inc_by(delta);
    }

    /// Counts a forwarded body refused by a limit; `reason` is one of a fixed set.
    pub fn body_refused(&self, reason: &'static str) {
        let labels = ReasonLabels { reason };
        self.inner.body_refused.get_or_create(&labels).inc();
    }

    /// The exposition text (OpenMetrics, which Prometheus reads), see [`Metrics::CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }

    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

/// The metrics read from the replica's state on each scrape.
struct Scraped {
    read: ReadFn,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let r = (self.read)();
        let counters: [(&str, &str, u64); 4] = [
            (
                "credstore_cache_hits",
                "Authentications answered from the verified-password cache",
                r.cache_hits,
            ),
            (
                "credstore_cache_misses",
                "Authentications that had to read the store and verify a hash",
                r.cache_misses,
            ),
            (
                "credstore_audit_dropped",
                "Audit log lines dropped because the audit writer fell behind",
                r.audit_dropped,
            ),
            (
                "credstore_hashes_refused_peer",
                "Logins refused (RESOURCE_EXHAUSTED) because their peer address held its share of the hash pool",
                r.hashes_refused_peer,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauge_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let gauges: [(&str, &str, i64); 8] = [
            (
                "credstore_cache_entries",
                "Users whose verified password this replica caches",
                gauge_i64(r.cache_entries),
            ),
            (
                "credstore_hashes_running",
                "Password hashes being computed now",
                gauge_i64(r.hashes_running),
            ),
            (
                "credstore_hashes_queued",
                "Password hashes admitted and waiting for a hashing thread",
                gauge_i64(r.hashes_queued),
            ),
            (
                "credstore_sessions_live",
                "Live replica sessions this replica knows of, itself included",
                gauge_i64(r.sessions_live),
            ),
            (
                "credstore_watch_applied_revision",
                "The newest store revision whose credential changes this replica has applied",
                r.applied_revision,
            ),
            (
                "credstore_cache_trusted",
                "1 while the replica is registered and trusts its cache, else 0",
                i64::from(r.trusted),
            ),
            (
                "credstore_locked_pairs",
                "(user name, peer address) pairs whose logins are locked now",
                gauge_i64(r.locked_pairs),
            ),
            (
                "credstore_locked_accounts",
                "User names whose logins are locked now from every address",
                gauge_i64(r.locked_accounts),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_readings_appear_in_the_text() {
        let metrics = Metrics::new(Box::new(|| Reading {
            cache_hits: 7,
            cache_misses: 3,
            sessions_live: 2,
            applied_revision: 42,
            trusted: true,
            locked_pairs: 3,
            ..Reading::default()
        }));
        metrics.auth(AuthOutcome::Ok);
        metrics.auth(AuthOutcome::Ok);
        metrics.auth(AuthOutcome::Denied);
        metrics.hash_took(Duration::from_millis(3));
        metrics.ack_waited(Duration::from_millis(20));
        (metrics.etcd_observer())("txn", Duration::from_millis(2));
        metrics.forwarded("Search", "ok");
        metrics.forwarded("Search", "ok");
        metrics.forwarded("Search", "permission_denied");
        let lockouts = metrics.lockout_observer();
        lockouts(LockoutEvent::PairLocked);
        lockouts(LockoutEvent::Unlocked);
        metrics.connection_caps(896, 448);
        metrics.connections_open(1);
        metrics.connection_refused("max_connections_per_peer");
        metrics.connection_closed("handshake_timeout");
        metrics.body_bytes(4096);
        metrics.body_refused("timeout");
        let text = metrics.render();
        for line in [
            "credstore_auth_requests_total{result=\"ok\"} 2",
            "credstore_auth_requests_total{result=\"denied\"} 1",
            "credstore_auth_requests_total{result=\"busy\"} 0",
            "credstore_auth_requests_total{result=\"unavailable\"} 0",
            "credstore_cache_hits_total 7",
            "credstore_cache_misses_total 3",
            "credstore_sessions_live 2",
            "credstore_watch_applied_revision 42",
            "credstore_cache_trusted 1",
            "credstore_hash_seconds_count 1",
            "credstore_ack_wait_seconds_count 1",
            "credstore_etcd_request_seconds_count{op=\"txn\"} 1",
            "credstore_forwarded_requests_total{method=\"Search\",code=\"ok\"} 2",
            "credstore_forwarded_requests_total{method=\"Search\",code=\"permission_denied\"} 1",
            "credstore_audit_dropped_total 0",
            "credstore_auth_requests_total{result=\"locked\"} 0",
            "credstore_lockouts_total{scope=\"pair\"} 1",
            "credstore_lockouts_total{scope=\"account\"} 0",
            "credstore_unlocks_total 1",
            "credstore_locked_pairs 3",
            "credstore_locked_accounts 0",
            "credstore_hashes_refused_peer_total 0",
            "credstore_connections_open 1",
            "credstore_connection_limit{scope=\"total\"} 896",
            "credstore_connection_limit{scope=\"per_peer\"} 448",
            "credstore_connections_refused_total{reason=\"max_connections_per_peer\"} 1",
            "credstore_connections_refused_total{reason=\"max_connections\"} 0",
            "credstore_connections_closed_total{reason=\"handshake_timeout\"} 1",
            "credstore_connections_closed_total{reason=\"idle\"} 0",
            "credstore_forwarded_body_bytes 4096",
            "credstore_forwarded_bodies_refused_total{reason=\"timeout\"} 1",
            "credstore_forwarded_bodies_refused_total{reason=\"replica_budget\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
    }
}
