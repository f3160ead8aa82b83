//! The proxy tier: credstore in front of a Milvus. Calls credstore does not own are
//! authenticated (by `auth`, outside), reduced to what the upstream will act on
//! ([`subject`], aliases resolved by [`aliases`]), authorized by the one RBAC decision
//! ([`authorize`] → `rbac::decide`), forwarded as bytes ([`codec`], [`forwarder`]) to the
//! upstream in `credstore.upstream`, and what a success changed is recorded ([`aftermath`]);
//! [`router`] decides per method ([`methods`]), [`limit`] bounds what one request may make
//! credstore buffer, and [`error`] is where refusals reach the wire.
//!
//! Must not: decode whole forwarded messages (the small listing, health and alias answers
//! excepted), send the caller's credentials or unlisted headers upstream, or forward a call
//! on anything other than what was authorized.

pub mod aftermath;
pub mod aliases;
pub mod authorize;
pub mod codec;
pub mod error;
pub mod forwarder;
pub mod health;
pub mod limit;
pub mod listing;
pub mod methods;
pub mod reflect;
pub mod router;
pub mod subject;

pub use authorize::Authorizer;
pub use codec::RawCodec;
pub use error::Refusal;
pub use forwarder::Forwarder;
pub use limit::{BodyLimits, ConnectionBudget};
pub use router::{Proxy, ProxyLayer, Router};

use std::time::Duration;

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::coherence::Coherence;
use crate::password::Secret;
use crate::rbac::Policies;
use crate::tls::{ClientTls, TlsError};

/// Where forwarded calls go and how (from `credstore.upstream`). `Debug` hides the token (a
/// [`Secret`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `http://host:port`; empty: no upstream.
    pub uri: String,
    /// `user:password` presented upstream; empty: no `authorization` header.
    pub token: Secret,
    /// Largest request or response message forwarded.
    pub max_message_bytes: usize,
    /// Request bodies held at once by this replica, and by one connection (`limit.rs`).
    pub max_in_flight_bytes: usize,
    pub max_in_flight_bytes_per_connection: usize,
    /// A request body must be complete within this long.
    pub body_timeout: Duration,
    /// Deadline of a call whose client sent no `grpc-timeout`.
    pub default_timeout: Duration,
    /// How to reach an `https://` upstream.
    pub tls: ClientTls,
}

/// Why the proxy tier could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("credstore.upstream.tls is set but credstore.upstream.uri {uri:?} is not https://")]
    TlsWithoutHttps { uri: String },
    #[error("credstore.upstream.tls: {0}")]
    Tls(#[source] TlsError),
    #[error("credstore.upstream.uri {uri:?}: {reason}")]
    Uri { uri: String, reason: String },
    #[error("credstore.upstream.token {0}")]
    Token(String),
}

/// The replica's parts the proxy tier works with.
pub struct Parts {
    /// Roles, grants and alias resolutions, cached and kept coherent.
    pub policies: Policies,
    /// This replica's state, for `CheckHealth`.
    pub auth: Authenticator,
    /// Where grants of dropped/renamed collections and the alias epoch are written.
    pub catalog: Catalog,
    /// Acknowledges those writes.
    pub coherence: Coherence,
}

impl ProxyLayer {
    /// The layer for `config`: forwarding when `config.uri` is set.
    pub fn from_config(config: &Upstream, parts: Parts) -> Result<ProxyLayer, ProxyError> {
        if config.uri.trim().is_empty() {
            return Ok(ProxyLayer::new(None));
        }
        let forwarder = Forwarder::new(config)?;
        let aliases = aliases::Aliases::new(parts.policies.clone(), forwarder.clone());
        let proxy = Proxy {
            forwarder,
            authorizer: Authorizer::new(parts.policies, aliases),
            max_message_bytes: config.max_message_bytes,
            bodies: BodyLimits::new(config),
            auth: parts.auth,
            catalog: parts.catalog,
            coherence: parts.coherence,
        };
        tracing::info!(upstream = %config.uri.trim(), "forwarding calls credstore does not own");
        Ok(ProxyLayer::new(Some(proxy)))
    }
}
