//! Wiring: builds the store, catalog, hash pool, authenticator and coherence from a `Config`,
//! assembles the middleware stack around the gRPC service, and serves until shutdown.
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{AuthLayer, Authenticator, AuthenticatorConfig};
use crate::catalog::{Catalog, CatalogError};
use crate::coherence::{Coherence, CoherenceConfig, CoherenceError};
use crate::config::{Config, ConfigError};
use crate::hash_pool::HashPool;
use crate::meta::{EmbeddedKv, EtcdKv, EtcdOptions, MetaError, Store, etcd::EtcdTls};
use crate::password::{HashError, Hasher, Password};
use crate::proto::milvus::milvus_service_server::MilvusServiceServer;
use crate::proxy::{ProxyError, ProxyLayer};
use crate::rbac::{BuiltinGroups, Policies};
use crate::service::Api;

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
    #[error("common.security.defaultRootPassword: {0}")]
    RootPassword(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Everything a running replica holds.
pub struct State {
    pub catalog: Catalog,
    pub auth: Authenticator,
    pub coherence: Arc<Coherence>,
    pub policies: Policies,
    proxy: ProxyLayer,
    config: Config,
}

impl State {
    /// Opens the store, bootstraps root and the default roles, joins the cluster.
    /// `address` is where clients reach this replica (recorded in its session).
    pub async fn build(config: Config, address: SocketAddr) -> Result<State, ServerError> {
        let store = open_store(&config).await?;
        let catalog = Catalog::new(store, &config.meta_root());
        let hasher = Hasher::new(config.hash_scheme()?);
        let concurrent = match config.credstore.password.max_concurrent_hashes {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let pool = HashPool::new(
            hasher,
            concurrent,
            config.credstore.password.max_queued_hashes,
            config.credstore.password.hash_niceness,
        );
        let root_password = Password::new(
            config
                .common
                .security
                .default_root_password
                .clone()
                .into_bytes(),
            &config.limits(),
        )
        .map_err(|e| ServerError::RootPassword(e.to_string()))?;
        catalog.ensure_default_roles().await?;
        let root_pool = pool.clone();
        let mut hash_failure = None;
        let created = catalog
            .ensure_root(async || match root_pool.hash(root_password).await {
                Ok(hash) => hash,
                Err(e) => {
                    hash_failure = Some(e);
                    root_pool.hasher().dummy_hash()
                }
            })
            .await?;
        if let Some(e) = hash_failure {
            return Err(e.into());
        }
        if created {
            tracing::info!("created user root with common.security.defaultRootPassword");
        }
        let auth_config = AuthenticatorConfig {
            enabled: config.common.security.authorization_enabled,
            super_users: config.common.security.super_users.0.clone(),
            limits: config.limits(),
            cache_capacity: config.credstore.cache.capacity,
            cache_ttl: match config.credstore.cache.ttl_seconds {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
        };
        let auth = Authenticator::new(auth_config, catalog.clone(), pool).await?;
        let coherence_config = CoherenceConfig {
            replica_id: replica_id(address),
            address: address.to_string(),
            session_ttl: Duration::from_secs(config.credstore.session.ttl_seconds),
            ack_timeout: config.ack_timeout(),
        };
        let coherence =
            Arc::new(Coherence::start(catalog.clone(), auth.clone(), coherence_config).await?);
        let policies = Policies::new(
            catalog.clone(),
            BuiltinGroups::default(),
            config.credstore.cache.capacity,
        );
        let proxy =
            ProxyLayer::from_config(&config.credstore.upstream.options(), policies.clone())?;
        Ok(State {
            catalog,
            auth,
            coherence,
            policies,
            proxy,
            config,
        })
    }
}

async fn open_store(config: &Config) -> Result<Store, ServerError> {
    if config.embedded() {
        let path = config.embedded_path();
        tracing::info!(path = %path.display(), "using the embedded store");
        return Ok(Store::Embedded(EmbeddedKv::open(&path)?));
    }
    let etcd = &config.etcd;
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| ServerError::File {
            path: path.to_string(),
            source,
        })
    };
    let tls = match etcd.ssl.enabled {
        false => None,
        true => {
            let ca_pem = read(etcd.ssl.tls_ca_cert.as_deref().unwrap_or_default())?;
            let client_cert_key_pem = match (&etcd.ssl.tls_cert, &etcd.ssl.tls_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            };
            Some(EtcdTls {
                ca_pem,
                client_cert_key_pem,
            })
        }
    };
    let auth = match etcd.auth.enabled {
        true => etcd.auth.user_name.clone().zip(etcd.auth.password.clone()),
        false => None,
    };
    let options = EtcdOptions {
        endpoints: etcd.endpoints.0.clone(),
        auth,
        tls,
        request_timeout: Duration::from_millis(config.credstore.etcd_timeout_ms),
    };
    tracing::info!(endpoints = ?options.endpoints, root = %config.meta_root(), "connecting to etcd");
    Ok(Store::Etcd(EtcdKv::connect(&options).await?))
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

/// Serves gRPC on `listener` until `shutdown` resolves, then drains in-flight requests and
/// ends the session. The middleware stack, outermost first:
/// 1. per-request timeout — nothing, not even a stuck store read, holds a slot forever;
/// 2. per-connection concurrency limit — one client cannot queue unbounded work;
/// 3. authentication — before routing, so no handler runs unauthenticated (hashing inside
///    it is bounded separately by the hash pool).
pub async fn run(
    listener: TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let address = listener.local_addr().map_err(|source| ServerError::File {
        path: "listener".into(),
        source,
    })?;
    let api = Api::new(
        state.catalog.clone(),
        state.auth.clone(),
        state.coherence.clone(),
        state.config.limits(),
    );
    let stats = state.auth.stats();
    tracing::info!(
        applied = state.coherence.applied(),
        sessions = state.coherence.sessions().len(),
        cache_entries = stats.entries,
        authorization = state.config.common.security.authorization_enabled,
        "credstore ready on {address}"
    );
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .concurrency_limit_per_connection(1024)
        .layer(AuthLayer::new(
            state.auth.clone(),
            state.config.failed_auth_delay(),
        ))
        // Inside auth: forwarded calls are authenticated, then authorized and forwarded.
        .add_service(tower::Layer::layer(
            &state.proxy,
            MilvusServiceServer::new(api),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    let stats = state.auth.stats();
    tracing::info!(
        cache_hits = stats.hits,
        cache_misses = stats.misses,
        cache_entries = stats.entries,
        peak_hashes = state.auth.pool().peak_running(),
        "stopped serving; ending the session"
    );
    match Arc::try_unwrap(state.coherence) {
        Ok(coherence) => coherence.shutdown().await,
        Err(_) => tracing::warn!(
            "coherence still shared at shutdown; the session lease will expire on its own"
        ),
    }
    Ok(())
}
