//! Wiring: builds the store, catalog, hash pool, authenticator and coherence from a `Config`,
//! assembles the middleware stack around the gRPC service, and serves until shutdown.
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::auth::{AuthLayer, AuthStats, Authenticator};
use crate::catalog::{Catalog, CatalogError};
use crate::coherence::{Coherence, CoherenceError, CoherenceTasks};
use crate::config::{Config, ConfigError, StoreConfig};
use crate::hash_pool::HashPool;
use crate::meta::{EmbeddedKv, EtcdKv, MetaError, Revision, Store};
use crate::password::{HashError, Hasher};
use crate::proto::milvus::milvus_service_server::MilvusServiceServer;
use crate::proxy::{ProxyError, ProxyLayer};
use crate::rbac::Policies;
use crate::service::{Api, ApiSettings};

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
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
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
    config: Config,
}

impl State {
    /// Opens the store, bootstraps root and the default roles, joins the cluster.
    /// `address` is where clients reach this replica (recorded in its session).
    pub async fn build(config: Config, address: SocketAddr) -> Result<State, ServerError> {
        let store = open_store(&config).await?;
        let catalog = Catalog::new(store, &config.meta_root());
        let settings = config.hash_pool();
        let pool = HashPool::new(
            Hasher::new(settings.scheme),
            settings.concurrent,
            settings.queued,
            settings.niceness,
        );
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
        let auth = Authenticator::new(config.authenticator(), catalog.clone(), pool).await?;
        let policies = Policies::new(
            catalog.clone(),
            config.builtin_groups()?,
            config.credstore.cache.capacity,
        );
        let (coherence, coherence_tasks) = Coherence::start(
            catalog.clone(),
            auth.clone(),
            policies.clone(),
            config.coherence(replica_id(address), address),
        )
        .await?;
        let proxy =
            ProxyLayer::from_config(&config.credstore.upstream.options(), policies.clone())?;
        Ok(State {
            catalog,
            auth,
            coherence,
            coherence_tasks,
            policies,
            proxy,
            config,
        })
    }
}

async fn open_store(config: &Config) -> Result<Store, ServerError> {
    match config.store()? {
        StoreConfig::Embedded { path } => {
            tracing::info!(path = %path.display(), "using the embedded store");
            Ok(Store::Embedded(EmbeddedKv::open(&path)?))
        }
        StoreConfig::Etcd(options) => {
            let endpoints = &options.endpoints;
            tracing::info!(?endpoints, root = %config.meta_root(), "connecting to etcd");
            Ok(Store::Etcd(EtcdKv::connect(&options).await?))
        }
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

/// Most requests one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
/// Clients queue further requests on their side, where their own deadline covers the wait.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Largest header block a request may send. Milvus clients send a few short headers (the
/// `authorization` header is refused past 1 KiB anyway); hyper's default is 16 MiB.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long any one request may take, from the moment the server starts it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepted connections, each with `TCP_NODELAY` set. tonic sets it only on listeners it
/// binds itself; `run` takes a bound listener, so it is set here.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    // Nagle's algorithm holding back a small response until the client's delayed ACK costs
    // ~40 ms per answer on a request/response protocol.
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight requests and
/// ends the session. The transport knobs and the middleware stack, outermost first:
/// 1. HTTP/2 limits per connection — at most [`MAX_STREAMS_PER_CONNECTION`] requests open
///    at once and [`MAX_HEADER_LIST_BYTES`] of headers each, so one connection cannot hold
///    unbounded memory; a request over the stream limit waits on the client, inside its own
///    deadline, never in a server queue that the request timeout would not cover (tonic's
///    `concurrency_limit_per_connection` waits *outside* its timeout, so it is not used);
/// 2. per-request timeout — nothing, not even a stuck store read, holds a stream forever;
/// 3. authentication — before routing, so no handler runs unauthenticated (hashing inside
///    it is bounded separately by the hash pool).
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
        config,
    } = state;
    let settings = ApiSettings {
        limits: config.limits(),
        root_binds_role: config.common.security.root_should_bind_role,
        max_roles: config.proxy.max_role_num,
    };
    let api = Api::new(catalog, auth.clone(), coherence.clone(), policies, settings);
    Snapshot::of(&auth, &coherence).log(&format!(
        "credstore ready on {address} (authorization {})",
        config.common.security.authorization_enabled
    ));
    let status = tokio::spawn(status_loop(auth.clone(), coherence.clone()));
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .timeout(REQUEST_TIMEOUT)
        .layer(AuthLayer::new(auth.clone(), config.failed_auth_delay()))
        // Inside auth: forwarded calls are authenticated, then authorized and forwarded.
        .add_service(tower::Layer::layer(&proxy, MilvusServiceServer::new(api)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    status.abort();
    Snapshot::of(&auth, &coherence).log("stopped serving; ending the session");
    coherence_tasks.shutdown().await;
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let stream = accepted.next().await.unwrap().unwrap();
        assert!(
            stream.nodelay().unwrap(),
            "TCP_NODELAY is set on accepted sockets"
        );
    }
}
