//! [`ProxyLayer`] / [`Router`]: the tower layer around the generated `MilvusServiceServer`,
//! inside the auth layer (every request here is authenticated). Methods credstore owns go to
//! the inner service; with an upstream configured, every other known method is read (size
//! bounded), authorized by the [`Gate`] and forwarded by the [`Forwarder`]; unknown and
//! streaming methods are refused with UNIMPLEMENTED. Without an upstream everything goes to
//! the inner service, which answers UNIMPLEMENTED for what it does not implement.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use prost::bytes::Bytes;
use tonic::codegen::{StdError, http};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::{Layer, Service};

use crate::auth::{self, Authenticator};
use crate::metrics::Metrics;
use crate::proxy::codec::RawCodec;
use crate::proxy::forwarder::Forwarder;
use crate::proxy::gate::Gate;
use crate::proxy::limit::{BodyLimits, ConnectionBudget};
use crate::proxy::methods::{Route, route};
use crate::proxy::{health, listing};

/// What forwarding needs; absent when no upstream is configured.
pub struct Proxy {
    pub forwarder: Forwarder,
    pub gate: Gate,
    pub max_message_bytes: usize,
    /// Size, in-flight budgets and time limit of forwarded bodies.
    pub bodies: BodyLimits,
    /// This replica's own state, folded into the upstream's `CheckHealth`.
    pub auth: Authenticator,
}

impl Proxy {
    /// Whether this replica trusts its cache (registered, watch live and caught up).
    pub fn trusted(&self) -> bool {
        self.auth.is_trusted()
    }
}

/// Installs a [`Router`] around a service.
#[derive(Clone)]
pub struct ProxyLayer {
    proxy: Option<Arc<Proxy>>,
    metrics: Option<Metrics>,
}

impl ProxyLayer {
    /// `None`: no upstream; the inner service answers everything.
    pub fn new(proxy: Option<Proxy>) -> ProxyLayer {
        ProxyLayer {
            proxy: proxy.map(Arc::new),
            metrics: None,
        }
    }

    /// Counts forwarded calls by method and answer in `metrics`, and the bodies held.
    pub fn with_metrics(mut self, metrics: Metrics) -> ProxyLayer {
        if let Some(proxy) = &self.proxy {
            proxy.bodies.observe(metrics.clone());
        }
        self.metrics = Some(metrics);
        self
    }
}

impl ProxyLayer {
    /// What each connection's requests carry for the proxy tier: its body budget (none
    /// without an upstream).
    pub fn connection_budgets(&self) -> impl Fn() -> Option<ConnectionBudget> + use<> {
        let proxy = self.proxy.clone();
        move || proxy.as_ref().map(|proxy| proxy.bodies.connection_budget())
    }
}

impl<S> Layer<S> for ProxyLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            inner,
            proxy: self.proxy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Router<S> {
    inner: S,
    proxy: Option<Arc<Proxy>>,
    metrics: Option<Metrics>,
}

impl<S: NamedService> NamedService for Router<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Router<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        match (route(path, self.proxy.is_some()), &self.proxy) {
            (Route::Own, _) | (Route::Forward(_), None) => {
                // The clone is not ready yet; keep the ready one for this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            (Route::Forward(method), Some(proxy)) => {
                let call = Call {
                    proxy: proxy.clone(),
                    method: Arc::from(method),
                    metrics: self.metrics.clone(),
                };
                let limit = proxy.max_message_bytes;
                // The reservation is held until the forwarded call has ended.
                let (request, held) = proxy.bodies.bound(request);
                Box::pin(async move {
                    let _held = held;
                    let mut grpc = tonic::server::Grpc::new(RawCodec)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit);
                    Ok(grpc.unary(call, request).await)
                })
            }
            (Route::Refuse, _) => {
                tracing::debug!(path, "unknown or unsupported method");
                let status = Status::unimplemented(format!("unknown method {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// One forwarded call, once its message has been read: authorize, then forward.
struct Call {
    proxy: Arc<Proxy>,
    /// A known method name ([`route`] forwards no other), so a bounded metrics label.
    method: Arc<str>,
    metrics: Option<Metrics>,
}

/// The snake_case name of a gRPC code, as `credstore_forwarded_requests_total{code=…}` says it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

impl Service<Request<Bytes>> for Call {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let proxy = self.proxy.clone();
        let method = self.method.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = authorize_and_forward(&proxy, &method, request).await;
            if let Some(metrics) = &metrics {
                let code = answer
                    .as_ref()
                    .map_or_else(Status::code, |_| tonic::Code::Ok);
                metrics.forwarded(&method, code_name(code));
            }
            answer
        })
    }
}

/// The gate's decision, then the upstream's answer.
async fn authorize_and_forward(
    proxy: &Proxy,
    method: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let (caller, db) = auth::caller(&request)
        .ok_or_else(|| Status::unauthenticated("request is not authenticated"))?;
    proxy
        .gate
        .authorize(&caller, method, &db, request.get_ref())
        .await?;
    match method {
        health::METHOD => health::check_health(proxy, request).await,
        listing::METHOD => listing::show_collections(proxy, caller.name(), &db, request).await,
        _ => proxy.forwarder.forward(method, request).await,
    }
}
