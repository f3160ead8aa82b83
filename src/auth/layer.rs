//! The tower `Layer` that authenticates every gRPC request before routing. It is async
//! (tonic's `Interceptor` is sync and could not await a store read), answers failures itself
//! with gRPC UNAUTHENTICATED (or RESOURCE_EXHAUSTED / UNAVAILABLE), and hands handlers an
//! [`Authenticated`] in the request extensions.
//!
//! The standard gRPC health service (`/grpc.health.v1.Health/…`) passes unauthenticated:
//! probes carry no credentials, and it reveals only whether the replica serves.
//!
//! A failed authentication is answered only after `failure_delay`: a waiting future costs no
//! CPU, and it caps how fast one client can try passwords or flood the hashing queue. A login
//! that could not be verified at all — its address spent its failures (`Throttled`) or its
//! name is locked for it (`Locked`) — waits [`REFUSED_DELAY_FACTOR`] times as long: nothing
//! it sends can be verified before the pace refills or the lock ends, and a client that waits
//! for each answer then sends a quarter as many. Once the pace and the lockout had taken the
//! hashing away, these answers were most of what a storm cost the replica and its other
//! clients (BENCHMARKS.md). Each
//! failed login (not an UNAVAILABLE: nothing was decided about the caller) is written to the
//! audit log with the name as sent, the peer and the class the client's answer implies.
//!
//! The peer a login is counted and hashed for is the TCP peer's IP address (from the accepted
//! connection), an IPv6 peer's /64 (which one host commonly holds whole: per address, it
//! could rotate through 2^64 of them) — the rule the connection caps use too; headers such as
//! `x-forwarded-for` are never read — a client could claim any address there.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::audit::{Audit, LoginFailure};
use crate::auth::{AuthError, Authenticator};
use crate::metrics::{AuthOutcome, Metrics};

/// How many `failure_delay`s a `Throttled` or `Locked` answer waits (see the module doc).
pub const REFUSED_DELAY_FACTOR: u32 = 4;

/// The path prefix of `grpc.health.v1.Health`, which needs no credentials.
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    failure_delay: Duration,
    metrics: Option<Metrics>,
    audit: Audit,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator, failure_delay: Duration) -> AuthLayer {
        AuthLayer {
            authenticator,
            failure_delay,
            metrics: None,
            audit: Audit::off(),
        }
    }

    /// Writes every failed login to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> AuthLayer {
        self.audit = audit;
        self
    }

    /// Counts every authentication's result in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> AuthLayer {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
            failure_delay: self.failure_delay,
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
    failure_delay: Duration,
    metrics: Option<Metrics>,
    audit: Audit,
}

/// The client's address, from the connection tonic accepted (plain TCP, or TCP under TLS).
pub fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    peer_in(request.extensions())
}

/// Whom a login is counted and hashed for: the IP address; an IPv6 peer's /64 (its first
/// address); an IPv4-mapped IPv6 address as the IPv4 one. (`transport::PeerKey` counts
/// connections by the same rule.)
pub fn login_peer(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn peer_in(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
}

/// Writes a failed login to `audit`: the name as sent (only when the header held one: an
/// API key or undecodable bytes are not logged) and the class of the answer.
fn audit_failure(audit: &Audit, err: &AuthError, header: Option<&[u8]>, peer: Option<SocketAddr>) {
    let why = match err {
        AuthError::MissingHeader => LoginFailure::MissingHeader,
        AuthError::BadToken | AuthError::ApiKey => LoginFailure::Malformed,
        AuthError::Denied => LoginFailure::Denied,
        AuthError::Refused(refusal) => {
            let name = crate::auth::bearer::audit_name(header);
            audit.login_failed(
                name.as_deref(),
                peer,
                LoginFailure::Credential(refusal.as_str()),
            );
            return;
        }
        AuthError::Busy => LoginFailure::Busy,
        AuthError::Locked { .. } => LoginFailure::Locked,
        AuthError::Throttled => LoginFailure::Throttled,
        AuthError::Unavailable(_) => return,
    };
    let credentials = match why {
        LoginFailure::Denied
        | LoginFailure::Busy
        | LoginFailure::Locked
        | LoginFailure::Throttled => crate::auth::parse_header(header).ok(),
        _ => None,
    };
    audit.login_failed(credentials.as_ref().map(|c| c.user()), peer, why);
}

/// How long the answer to `err` waits: nothing for UNAVAILABLE (nothing was decided about the
/// caller), [`REFUSED_DELAY_FACTOR`] delays for a login that could not be verified (paced or
/// locked), else one.
fn answer_delay(err: &AuthError, failure_delay: Duration) -> Option<Duration> {
    match err {
        AuthError::Unavailable(_) => None,
        AuthError::Throttled | AuthError::Locked { .. } => {
            Some(failure_delay * REFUSED_DELAY_FACTOR)
        }
        _ => Some(failure_delay),
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready yet; keep the ready one for this call (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        let failure_delay = self.failure_delay;
        let metrics = self.metrics.clone();
        let audit = self.audit.clone();
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            return Box::pin(inner.call(request));
        }
        Box::pin(async move {
            let header = request.headers().get("authorization").map(|v| v.as_bytes());
            // Looked up only if the login misses the cache.
            let extensions = request.extensions();
            let from = || peer_in(extensions).map(|address| login_peer(address.ip()));
            let result = authenticator.authenticate_from(header, from).await;
            if let Some(metrics) = &metrics {
                match &result {
                    Ok(who) => metrics.credential(who.kind().as_str(), true),
                    Err(AuthError::Refused(refusal)) => metrics.credential(refusal.kind(), false),
                    Err(_) => {}
                }
                metrics.auth(match &result {
                    Ok(_) => AuthOutcome::Ok,
                    Err(AuthError::Busy | AuthError::Throttled) => AuthOutcome::Busy,
                    Err(AuthError::Locked { .. }) => AuthOutcome::Locked,
                    Err(AuthError::Unavailable(_)) => AuthOutcome::Unavailable,
                    Err(
                        AuthError::MissingHeader
                        | AuthError::BadToken
                        | AuthError::ApiKey
                        | AuthError::Denied
                        | AuthError::Refused(_),
                    ) => AuthOutcome::Denied,
                });
            }
            match result {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(err) => {
                    if audit.is_on() {
                        let header = request.headers().get("authorization");
                        let header = header.map(|v| v.as_bytes());
                        audit_failure(&audit, &err, header, peer(&request));
                    }
                    if let Some(delay) = answer_delay(&err, failure_delay) {
                        tokio::time::sleep(delay).await;
                    }
                    tracing::debug!(path = request.uri().path(), reason = ?err, "request not authenticated");
                    Ok(err.to_status().into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(address: &str, peer: &str) {
        let address: IpAddr = address.parse().unwrap();
        assert_eq!(
            login_peer(address),
            peer.parse::<IpAddr>().unwrap(),
            "{address}"
        );
    }

    #[test]
    fn paced_and_locked_answers_wait_longer_and_an_unavailable_one_not_at_all() {
        let delay = Duration::from_millis(250);
        assert_eq!(answer_delay(&AuthError::Denied, delay), Some(delay));
        assert_eq!(answer_delay(&AuthError::Busy, delay), Some(delay));
        assert_eq!(
            answer_delay(&AuthError::Throttled, delay),
            Some(Duration::from_secs(1))
        );
        let locked = AuthError::Locked {
            account: false,
            seconds: 900,
        };
        assert_eq!(answer_delay(&locked, delay), Some(Duration::from_secs(1)));
        let unavailable = AuthError::Unavailable("re-syncing".into());
        assert_eq!(answer_delay(&unavailable, delay), None);
    }

    #[test]
    fn a_login_peer_is_the_address_or_an_ipv6_slash_64() {
        check("10.0.0.7", "10.0.0.7");
        check("::ffff:10.0.0.7", "10.0.0.7");
        check("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::");
        check("2001:db8:1:2::1", "2001:db8:1:2::");
        check("::1", "::");
    }
}
