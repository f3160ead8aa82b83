//! Wiring: builds the store, catalog, hash pool, authenticator and coherence from a `Config`,
//! assembles the middleware stack around the gRPC service, and serves until shutdown.
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::audit::{self, Audit};
use crate::auth::{AuthLayer, AuthStats, Authenticator};
use crate::catalog::{Catalog, CatalogError, ROOT_USER};
use crate::coherence::{Coherence, CoherenceError, CoherenceTasks};
use crate::config::{Config, ConfigError, StoreConfig};
use crate::hash_pool::HashPool;
use crate::http::Readiness;
use crate::import::{ImportError, ImportOptions, Source, Summary};
use crate::meta::{EmbeddedFailure, EmbeddedKv, EtcdKv, MetaError, Revision, Store};
use crate::metrics::{Metrics, Reading};
use crate::password::{HashError, Password, RuleError, Username};
use crate::proto::credstore::api_keys_server::ApiKeysServer;
use crate::proto::credstore::credstore_admin_server::CredstoreAdminServer;
use crate::proto::credstore::oidc_server::OidcServer;
use crate::proto::milvus::milvus_service_server::MilvusServiceServer;
use crate::proxy::{ProxyError, ProxyLayer, Router};
use crate::rbac::Policies;
use crate::service::{Api, ApiSettings};
use crate::tls::{ServerTls, TlsError, TlsMode};
use crate::transport;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Meta(#[from] MetaError),
    #[error("cannot initialise the catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("password hashing: {0}")]
    Hash(#[from] HashError),
    #[error("cannot join the cluster: {0}")]
    Coherence(#[from] CoherenceError),
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the new root password: {0}")]
    RootPassword(#[source] RuleError),
    #[error("root's record kept changing while it was reset; run it again")]
    RootRaced,
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(
        "no embedded store at {0}: `admin reset-root` never creates one. Give it the server's \
         --config, or run it in the directory the server was started from (etcd.data.dir is \
         relative to the working directory)"
    )]
    NoStore(String),
    #[error(
        "the embedded store at {0} is held by a running `credstore serve`: stop that server, \
         run `credstore admin reset-root` again, then start the server (an embedded store \
         serves one process; with etcd, reset-root runs beside live replicas)"
    )]
    StoreInUse(String),
    #[error(
        "{0} holds no root user: nothing to reset, and `admin reset-root` never creates a store \
         (is etcd.rootPath the one the servers use?)"
    )]
    NoRoot(String),
    #[error(
        "cannot serve metrics and health on {address} (credstore.http.port; 0 turns it off): {source}"
    )]
    HttpListen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the audit log {path:?} (credstore.audit.path): {source}")]
    Audit {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a running replica holds.
pub struct State {
    pub catalog: Catalog,
    pub auth: Authenticator,
    /// The handle handlers clone to wait for their writes to be applied everywhere.
    pub coherence: Coherence,
    /// The coherence tasks; `run` shuts them down (ending the session) after serving.
    coherence_tasks: CoherenceTasks,
    /// Roles and grants, cached per replica; invalidated by the coherence watch.
    pub policies: Policies,
    /// Routes calls credstore does not own to the upstream Milvus, if one is configured.
    proxy: ProxyLayer,
    /// The listener's TLS (`common.security.tlsMode` 1 or 2), loaded before anything else.
    tls: Option<ServerTls>,
    /// `credstore.audit.path`: changes and failed logins.
    pub audit: Audit,
    config: Config,
}

impl State {
    /// Opens the store (creating an embedded one on first start), bootstraps root and the
    /// default roles, joins the cluster.
    /// `address` is where clients reach this replica (recorded in its session).
    pub async fn build(config: Config, address: SocketAddr) -> Result<State, ServerError> {
        State::build_on(config, address, Opening::CreateIfMissing).await
    }

    async fn build_on(
        config: Config,
        address: SocketAddr,
        opening: Opening,
    ) -> Result<State, ServerError> {
        let tls = config.server_tls()?.map(ServerTls::load).transpose()?;
        let audit = open_audit(&config.credstore.audit.path)?;
        let store = open_store(&config, opening).await?;
        let catalog = Catalog::new(store, &config.meta_root());
        if let Opening::Existing = opening {
            let root = Username::parse(ROOT_USER, &config.limits()).expect("root is a valid name");
            if catalog.get_user(&root).await?.value.is_none() {
                return Err(ServerError::NoRoot(describe_store(&config)));
            }
        }
        let pool = HashPool::new(config.hash_pool());
        catalog.ensure_default_roles().await?;
        if config.proxy.enable_public_privilege {
            catalog.ensure_public_grants().await?;
        }
        let root_password = config.root_password()?;
        let created = catalog
            .ensure_root(async || Ok::<_, ServerError>(pool.hash(root_password).await?))
            .await?;
        if created {
            tracing::info!("created user root with common.security.defaultRootPassword");
        }
        let auth = Authenticator::with_oidc(
            config.authenticator(),
            catalog.clone(),
            pool,
            config.oidc()?,
        )
        .await?;
        auth.warm_up_oidc().await;
        let policies = Policies::new(
            catalog.clone(),
            config.builtin_groups()?,
            config.credstore.cache.capacity,
            config.common.security.root_should_bind_role,
        );
        let (coherence, coherence_tasks) = Coherence::start(
            catalog.clone(),
            auth.clone(),
            policies.clone(),
            config.coherence(replica_id(address), address),
        )
        .await?;
        let proxy = ProxyLayer::from_config(
            &config.credstore.upstream.options(),
            crate::proxy::Parts {
                policies: policies.clone(),
                auth: auth.clone(),
                catalog: catalog.clone(),
                coherence: coherence.clone(),
            },
        )?;
        Ok(State {
            catalog,
            auth,
            coherence,
            coherence_tasks,
            policies,
            proxy,
            tls,
            audit,
            config,
        })
    }
}

/// Whether `State` may create the store: `serve` does on its first start; `admin reset-root`
/// never does (it would reset root in a store no server uses).
#[derive(Clone, Copy)]
enum Opening {
    CreateIfMissing,
    /// An existing store holding root's record.
    Existing,
}

/// What `credstore admin reset-root` did.
#[derive(Debug)]
pub struct RootReset {
    /// The write's revision.
    pub revision: Revision,
    /// Which store: the embedded store's absolute path, or etcd's endpoints and meta root.
    pub store: String,
}

fn open_audit(path: &str) -> Result<Audit, ServerError> {
    Audit::open(path).map_err(|source| ServerError::Audit {
        path: path.to_string(),
        source,
    })
}

/// Break-glass recovery (`credstore admin reset-root`): sets root's password with the store's
/// own credentials, no login. It is an ordinary acknowledged change: this process joins the
/// cluster for the length of the write (a session, the watch), writes root's record with a
/// compare-and-swap, waits until every live replica applied it, then leaves (its lease is
/// revoked). It never creates a store: an embedded store must exist (and no server may hold
/// it), and the store must hold root's record.
pub async fn reset_root(mut config: Config, password: &[u8]) -> Result<RootReset, ServerError> {
    // It serves nothing: the listener's certificates need not be on this machine.
    config.common.security.tls_mode = 0;
    let password =
        Password::new(password.to_vec(), &config.limits()).map_err(ServerError::RootPassword)?;
    let store = describe_store(&config);
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let state = State::build_on(config, local, Opening::Existing).await?;
    let written = write_root(&state, password).await;
    let confirmed = match &written {
        Ok(revision) => state
            .coherence
            .confirm(*revision)
            .await
            .map_err(ServerError::from),
        Err(_) => Ok(()),
    };
    state.audit.change(audit::Change {
        action: "ResetRoot",
        user: None,
        peer: None,
        target: audit::target([("user", ROOT_USER.into())]),
        revision: written.as_ref().ok().copied(),
        result: match (&written, &confirmed) {
            (Ok(_), Ok(())) => "ok",
            (Ok(_), Err(_)) => "not_confirmed",
            (Err(ServerError::RootRaced), _) => "conflict",
            (Err(_), _) => "error",
        },
    });
    state.audit.flush().await;
    state.coherence_tasks.shutdown().await;
    confirmed?;
    Ok(RootReset {
        revision: written?,
        store,
    })
}

/// Hashes `password` and writes it as root's (compare-and-swap, retried on a race).
async fn write_root(state: &State, password: Password) -> Result<Revision, ServerError> {
    let hash = state.auth.pool().hash(password).await?;
    let root = Username::parse(ROOT_USER, &state.config.limits()).expect("root is a valid name");
    let revision = state
        .catalog
        .put_user_hash(&root, &hash, 8)
        .await?
        .ok_or(ServerError::RootRaced)?;
    tracing::warn!(
        revision,
        "root's password was reset (break-glass, admin reset-root)"
    );
    Ok(revision)
}

/// `credstore admin import`: copies a Milvus keyspace into the store (`import::import`) as
/// `reset_root` writes root: this process joins the cluster for the length of the import,
/// and returns once every live replica applied the last write (the usual watch delivers the
/// imported state; nobody restarts). One audit line says what was imported, from where.
pub async fn import(
    mut config: Config,
    source: &Source,
    options: &ImportOptions,
) -> Result<Summary, ServerError> {
    config.common.security.tls_mode = 0;
    let limits = config.limits();
    let state = State::build(config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let imported = crate::import::import(&state.catalog, source, options, &limits).await;
    let revision = imported.as_ref().ok().and_then(Summary::revision);
    let confirmed = match revision {
        Some(revision) => state.coherence.confirm(revision).await,
        None => Ok(()),
    };
    let written = |s: &Summary| {
        [
            s.users.written,
            s.roles.written,
            s.bindings.written,
            s.grants.written,
            s.groups.written,
        ]
    };
    let [users, roles, bindings, grants, groups] =
        imported.as_ref().map(written).unwrap_or_default();
    state.audit.change(audit::Change {
        action: "Import",
        user: None,
        peer: None,
        target: audit::target([
            ("source", source.meta_root().into()),
            ("users", users.into()),
            ("roles", roles.into()),
            ("bindings", bindings.into()),
            ("grants", grants.into()),
            ("privilege_groups", groups.into()),
        ]),
        revision,
        result: match (&imported, &confirmed) {
            (Ok(_), Ok(())) => "ok",
            (Ok(_), Err(_)) => "not_confirmed",
            (Err(ImportError::Conflicts { .. } | ImportError::ChangedMeanwhile { .. }), _) => {
                "conflict"
            }
            (Err(_), _) => "error",
        },
    });
    state.audit.flush().await;
    state.coherence_tasks.shutdown().await;
    let summary = imported?;
    confirmed?;
    Ok(summary)
}

async fn open_store(config: &Config, opening: Opening) -> Result<Store, ServerError> {
    match config.store()? {
        StoreConfig::Embedded { path } => {
            let opened = match opening {
                Opening::CreateIfMissing => EmbeddedKv::open(&path),
                Opening::Existing => EmbeddedKv::open_existing(&path),
            };
            let kv = match opened {
                Ok(kv) => kv,
                Err(MetaError::Embedded { path, kind, .. })
                    if matches!(opening, Opening::Existing)
                        && matches!(kind, EmbeddedFailure::Missing) =>
                {
                    return Err(ServerError::NoStore(path));
                }
                Err(MetaError::Embedded {
                    path,
                    kind: EmbeddedFailure::InUse,
                    ..
                }) if matches!(opening, Opening::Existing) => {
                    return Err(ServerError::StoreInUse(path));
                }
                Err(other) => return Err(other.into()),
            };
            let path = kv.path().display().to_string();
            match kv.was_created() {
                // A new store where an old one was meant is a forked cluster: say so loudly.
                true => tracing::warn!(
                    "created a new, empty embedded store at {path} (etcd.data.dir is relative \
                     to the working directory: if a store exists elsewhere, stop and start \
                     there); {}",
                    root_password_source(config)
                ),
                false => tracing::info!("opened the embedded store at {path}"),
            }
            Ok(Store::Embedded(kv))
        }
        StoreConfig::Etcd(options) => {
            let endpoints = &options.endpoints;
            tracing::info!(?endpoints, root = %config.meta_root(), "connecting to etcd");
            Ok(Store::Etcd(EtcdKv::connect(&options).await?))
        }
    }
}

/// Where root's first password comes from, for the new-store warning; never the password
/// itself unless it is Milvus's well-known default.
fn root_password_source(config: &Config) -> &'static str {
    match config.common.security.default_root_password.expose() {
        "Milvus" => {
            "root's password is `Milvus`, the default common.security.defaultRootPassword: \
             change it before anyone else can reach this port"
        }
        _ => "root's password is common.security.defaultRootPassword as configured",
    }
}

/// The store `config` names, for messages: the embedded store's absolute path, or etcd's
/// endpoints and meta root.
fn describe_store(config: &Config) -> String {
    match config.store() {
        Ok(StoreConfig::Embedded { path }) => {
            let path = std::path::absolute(&path).unwrap_or(path);
            format!("the embedded store {}", path.display())
        }
        Ok(StoreConfig::Etcd(options)) => {
            format!("etcd {:?} under {}", options.endpoints, config.meta_root())
        }
        Err(_) => "the configured store".to_string(),
    }
}

fn replica_id(address: SocketAddr) -> String {
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!(
        "{}-{}-{:08x}",
        address.port(),
        std::process::id(),
        u32::from_le_bytes(random)
    )
}

/// One reading of a replica's state, shared by the ready, periodic and stopped log lines.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The newest revision whose credential changes this replica has applied.
    pub applied: Revision,
    /// Live replicas (sessions) this replica knows of, itself included.
    pub live_sessions: usize,
    /// Whether the cache may answer (lease held, watch live and caught up).
    pub trusted: bool,
    pub cache: AuthStats,
    pub peak_hashes: usize,
}

impl Snapshot {
    pub fn of(auth: &Authenticator, coherence: &Coherence) -> Snapshot {
        Snapshot {
            applied: coherence.applied(),
            live_sessions: coherence.sessions().len(),
            trusted: auth.is_trusted(),
            cache: auth.stats(),
            peak_hashes: auth.pool().peak_running(),
        }
    }

    fn log(&self, message: &str) {
        tracing::info!(
            applied = self.applied,
            live_sessions = self.live_sessions,
            trusted = self.trusted,
            cache_entries = self.cache.entries,
            cache_hits = self.cache.hits,
            cache_misses = self.cache.misses,
            peak_hashes = self.peak_hashes,
            "{message}"
        );
    }
}

/// Logs a [`Snapshot`] once a minute, for operators reading logs.
async fn status_loop(auth: Authenticator, coherence: Coherence) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        Snapshot::of(&auth, &coherence).log("status");
    }
}

/// Writes API keys' last uses to the store once a minute (never on the request path).
async fn key_use_loop(auth: Authenticator) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        auth.keys().flush_uses().await;
    }
}

/// The metrics and health listener on the gRPC listener's host, unless `port` is 0.
async fn http_listener(grpc: SocketAddr, port: u16) -> Result<Option<TcpListener>, ServerError> {
    if port == 0 {
        return Ok(None);
    }
    let address = SocketAddr::new(grpc.ip(), port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::HttpListen { address, source })?;
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!("metrics and health on http://{bound} (/metrics, /healthz, /readyz)");
    Ok(Some(listener))
}

/// What `/metrics` reads from the replica on each scrape.
fn reading(auth: Authenticator, coherence: Coherence, audit: Audit) -> crate::metrics::ReadFn {
    Box::new(move || {
        let cache = auth.stats();
        let pool = auth.pool().stats();
        let locked = auth.lockout().locked_counts();
        Reading {
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_entries: cache.entries,
            hashes_running: pool.running as u64,
            hashes_queued: pool.queued as u64,
            sessions_live: coherence.sessions().len() as u64,
            applied_revision: coherence.applied(),
            trusted: auth.is_trusted(),
            audit_dropped: audit.dropped(),
            locked_pairs: locked.pairs as u64,
            locked_accounts: locked.accounts as u64,
            hashes_refused_peer: pool.refused_peer,
        }
    })
}

/// Sets the gRPC health of the server ("") and of the Milvus service.
async fn report_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic::server::NamedService;
    let status = match serving {
        true => tonic_health::ServingStatus::Serving,
        false => tonic_health::ServingStatus::NotServing,
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(<MilvusServiceServer<Api> as NamedService>::NAME, status)
        .await;
}

/// Keeps the gRPC health status in step with [`Readiness`] (trust can be lost and regained).
async fn health_loop(reporter: tonic_health::server::HealthReporter, readiness: Readiness) {
    let mut reported = None;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        every.tick().await;
        let ready = readiness.is_ready();
        if reported != Some(ready) {
            report_health(&reporter, ready).await;
            reported = Some(ready);
        }
    }
}

/// The replica's background tasks: the metrics and health HTTP port, the gRPC health
/// reporter, the status log, certificate reloads, audit reopening on SIGHUP, and coherence's
/// tasks. [`Tasks::shutdown`] stops them in order and ends the session; dropping the guard
/// instead (an early return, a panic) aborts every one of them.
struct Tasks {
    loops: Vec<JoinHandle<()>>,
    /// The HTTP port stops gracefully: a signal, then its task is awaited.
    http: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    coherence: Option<CoherenceTasks>,
}

impl Tasks {
    fn new(coherence: CoherenceTasks) -> Tasks {
        Tasks {
            loops: Vec::new(),
            http: None,
            coherence: Some(coherence),
        }
    }

    /// Runs `task` until the replica stops.
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.loops.push(tokio::spawn(task));
    }

    fn serve_http(&mut self, listener: TcpListener, metrics: Metrics, readiness: Readiness) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::http::serve(
            listener,
            metrics,
            readiness,
            async move {
                let _ = stopped.await;
            },
        ));
        self.http = Some((stop, task));
    }

    /// Stops the loops and the HTTP port, then ends the session (revokes its lease).
    async fn shutdown(mut self) {
        for task in self.loops.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Some((stop, task)) = self.http.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some(coherence) = self.coherence.take() {
            coherence.shutdown().await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.loops {
            task.abort();
        }
        if let Some((_, task)) = &self.http {
            task.abort();
        }
        // `CoherenceTasks` aborts its own tasks when dropped.
    }
}

/// credstore's own gRPC services (`credstore.v1`).
struct Own {
    admin: CredstoreAdminServer<Api>,
    keys: ApiKeysServer<Api>,
    oidc: OidcServer<Api>,
}

/// The request stack every connection feeds, outermost first. Before it, `transport` has
/// admitted the connection (caps per replica and per peer), seen TLS and the HTTP/2 preface
/// within the handshake deadline, applied the HTTP/2 limits, and put the request deadline
/// around each request (see `transport`):
/// 1. authentication — before routing, so no handler runs unauthenticated (hashing inside it
///    is bounded separately by the hash pool);
/// 2. routing: `grpc.health.v1` (which the auth layer lets through without credentials),
///    credstore's own `credstore.v1` services (`CredstoreAdmin`: unlock; `ApiKeys`, `Oidc`;
///    never forwarded), and the Milvus
///    service inside the proxy layer (forwarded calls are authenticated, then authorized and
///    forwarded; owned calls go to the handlers).
fn stack(
    auth: AuthLayer,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    own: Own,
    milvus: Router<MilvusServiceServer<Api>>,
) -> impl transport::Stack {
    let routes = Routes::new(health)
        .add_service(own.admin)
        .add_service(own.keys)
        .add_service(own.oidc)
        .add_service(milvus)
        .prepare();
    tower::Layer::layer(&auth, routes)
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight requests and
/// ends the session. Wiring only: the transport (`transport::serve`), the request stack
/// ([`stack`]) and the background tasks ([`Tasks`]) hold the rest.
pub async fn run(
    listener: TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let address = listener.local_addr().map_err(ServerError::Listener)?;
    let State {
        catalog,
        auth,
        coherence,
        coherence_tasks,
        policies,
        proxy,
        tls,
        audit,
        config,
    } = state;
    let mut tasks = Tasks::new(coherence_tasks);
    let readiness = Readiness::new(auth.clone());
    let metrics = Metrics::new(reading(auth.clone(), coherence.clone(), audit.clone()));
    catalog
        .store()
        .observe_latency(Box::new(metrics.etcd_observer()));
    auth.pool()
        .observe_durations(Box::new(metrics.hash_observer()));
    auth.lockout()
        .report_to(audit.clone(), Box::new(metrics.lockout_observer()));
    let served = async {
        if let Some(hangups) = audit::reopen_on_sighup(audit.clone()) {
            tasks.loops.push(hangups);
        }
        if let Some(tls) = &tls {
            tasks.spawn(tls.clone().keep_reloading());
        }
        if let Some(http) = http_listener(address, config.credstore.http.port).await? {
            tasks.serve_http(http, metrics.clone(), readiness.clone());
        }
        let (reporter, health_service) = tonic_health::server::health_reporter();
        report_health(&reporter, readiness.is_ready()).await;
        tasks.spawn(health_loop(reporter.clone(), readiness.clone()));
        let settings = ApiSettings {
            limits: config.limits(),
            max_roles: config.proxy.max_role_num,
        };
        let api = Api::new(catalog, auth.clone(), coherence.clone(), policies, settings)
            .with_audit(audit.clone())
            .with_metrics(metrics.clone());
        let proxy = proxy.with_metrics(metrics.clone());
        let auth_layer = AuthLayer::new(auth.clone(), config.failed_auth_delay())
            .with_metrics(metrics.clone())
            .with_audit(audit.clone());
        // credstore's own API (unlock, keys, OIDC revocation): authenticated like the rest.
        let own = Own {
            admin: CredstoreAdminServer::new(api.clone()),
            keys: ApiKeysServer::new(api.clone()),
            oidc: OidcServer::new(api.clone()),
        };
        let milvus = tower::Layer::layer(&proxy, MilvusServiceServer::new(api));
        let connections = config.connections();
        let serving = transport::Serving {
            caps: transport::caps_for(&connections, &metrics),
            settings: connections,
            tls: tls.clone(),
            stack: stack(auth_layer, health_service, own, milvus),
            per_connection: proxy.connection_budgets(),
            metrics: metrics.clone(),
        };
        // Logged once the HTTP port listens too: tests and scripts wait for this line.
        let transport = match tls.as_ref().map(ServerTls::mode) {
            None => "plaintext",
            Some(TlsMode::Server) => "TLS",
            Some(TlsMode::Mutual { .. }) => "mutual TLS",
        };
        Snapshot::of(&auth, &coherence).log(&format!(
            "credstore ready on {address} (authorization {}, {transport})",
            config.common.security.authorization_enabled
        ));
        tasks.spawn(status_loop(auth.clone(), coherence.clone()));
        tasks.spawn(key_use_loop(auth.clone()));
        let drain = Duration::from_millis(config.credstore.shutdown.drain_ms);
        let stopping = stopping(shutdown, readiness.clone(), reporter, drain);
        transport::serve(listener, serving, stopping).await;
        Ok(())
    }
    .await;
    audit.flush().await;
    Snapshot::of(&auth, &coherence).log("stopped serving; ending the session");
    tasks.shutdown().await;
    served
}

/// Resolves once the replica should stop accepting: on the shutdown signal it reports not
/// ready at once and keeps serving for the drain period (balancers and clients move away).
async fn stopping(
    shutdown: impl Future<Output = ()>,
    readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    drain: Duration,
) {
    shutdown.await;
    readiness.start_draining();
    report_health(&reporter, false).await;
    if !drain.is_zero() {
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "draining: reporting not ready, still serving"
        );
        tokio::time::sleep(drain).await;
    }
}
