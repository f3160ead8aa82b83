//! The tower `Layer` that authenticates every gRPC request before routing. It is async
//! (tonic's `Interceptor` is sync and could not await a store read), answers failures itself
//! with gRPC UNAUTHENTICATED (or RESOURCE_EXHAUSTED / UNAVAILABLE), and hands handlers an
//! [`Authenticated`] in the request extensions.
//!
//! The standard gRPC health service (`/grpc.health.v1.Health/…`) passes unauthenticated:
//! probes carry no credentials, and it reveals only whether the replica serves.
//!
//! A failed authentication is answered only after `failure_delay`: a waiting future costs no
//! CPU, and it caps how fast one client can try passwords or flood the hashing queue.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tower::{Layer, Service};

use crate::auth::{AuthError, Authenticator};
use crate::metrics::{AuthOutcome, Metrics};

/// The path prefix of `grpc.health.v1.Health`, which needs no credentials.
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
    failure_delay: Duration,
    metrics: Option<Metrics>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator, failure_delay: Duration) -> AuthLayer {
        AuthLayer {
            authenticator,
            failure_delay,
            metrics: None,
        }
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
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
    failure_delay: Duration,
    metrics: Option<Metrics>,
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
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            return Box::pin(inner.call(request));
        }
        Box::pin(async move {
            let header = request.headers().get("authorization").map(|v| v.as_bytes());
            let result = authenticator.authenticate(header).await;
            if let Some(metrics) = &metrics {
                metrics.auth(match &result {
                    Ok(_) => AuthOutcome::Ok,
                    Err(AuthError::Busy) => AuthOutcome::Busy,
                    Err(AuthError::Unavailable(_)) => AuthOutcome::Unavailable,
                    Err(
                        AuthError::MissingHeader
                        | AuthError::BadToken
                        | AuthError::ApiKey
                        | AuthError::Denied,
                    ) => AuthOutcome::Denied,
                });
            }
            match result {
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Err(err) => {
                    if !matches!(err, AuthError::Unavailable(_)) {
                        tokio::time::sleep(failure_delay).await;
                    }
                    tracing::debug!(path = request.uri().path(), reason = %err, "request not authenticated");
                    Ok(err.to_status().into_http())
                }
            }
        })
    }
}
