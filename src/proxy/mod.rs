//! The proxy tier: credstore in front of a Milvus. Calls credstore does not own are
//! authenticated (by `auth`, outside), authorized by RBAC ([`gate`]) and forwarded as bytes
//! ([`codec`], [`forwarder`]) to the upstream in `credstore.upstream`; [`router`] decides per
//! method ([`methods`]) and [`limit`] bounds what one request may make credstore buffer.
//!
//! Must not: decode whole forwarded messages, send the caller's credentials upstream, or
//! forward a call that was not authorized.

pub mod codec;
pub mod forwarder;
pub mod gate;
pub mod health;
pub mod limit;
pub mod listing;
pub mod methods;
pub mod router;

pub use codec::RawCodec;
pub use forwarder::Forwarder;
pub use gate::Gate;
pub use limit::{BodyLimits, ConnectionBudget};
pub use router::{Proxy, ProxyLayer, Router};

use std::time::Duration;

use crate::auth::Authenticator;
use crate::rbac::Policies;
use crate::tls::{ClientTls, TlsError};

/// Where forwarded calls go and how (from `credstore.upstream`). `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http://host:port`; empty: no upstream.
    pub uri: String,
    /// `user:password` presented upstream; empty: no `authorization` header.
    pub token: String,
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

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("uri", &self.uri)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field(
                "max_in_flight_bytes_per_connection",
                &self.max_in_flight_bytes_per_connection,
            )
            .field("body_timeout", &self.body_timeout)
            .field("default_timeout", &self.default_timeout)
            .field("tls", &self.tls)
            .finish()
    }
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

impl ProxyLayer {
    /// The layer for `config`: forwarding when `config.uri` is set, authorized by `policies`;
    /// `auth` is this replica's state for `CheckHealth`.
    pub fn from_config(
        config: &Upstream,
        policies: Policies,
        auth: Authenticator,
    ) -> Result<ProxyLayer, ProxyError> {
        if config.uri.trim().is_empty() {
            return Ok(ProxyLayer::new(None));
        }
        let proxy = Proxy {
            forwarder: Forwarder::new(config)?,
            gate: Gate::new(policies),
            max_message_bytes: config.max_message_bytes,
            bodies: BodyLimits::new(config),
            auth,
        };
        tracing::info!(upstream = %config.uri.trim(), "forwarding calls credstore does not own");
        Ok(ProxyLayer::new(Some(proxy)))
    }
}
