//! [`ProxyLayer`] / [`Router`]: the tower layer around the generated `MilvusServiceServer`,
//! inside the auth layer (every request here is authenticated). Methods credstore owns go to
//! the inner service; with an upstream configured, every other known method is
//! pre-checked (may the caller hold its privilege at all? before any body is read), read
//! (size bounded), reduced to its [`Subject`], authorized ([`Authorizer`]), forwarded
//! ([`Forwarder`]) and, for calls that change collections, recorded ([`aftermath`]).
//! Everything else is answered here with UNIMPLEMENTED and a text saying why (unknown,
//! streaming, not implemented, no upstream configured, caller-dependent).

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

use crate::auth::{Authenticated, Authenticator};
use crate::catalog::Catalog;
use crate::coherence::Coherence;
use crate::metrics::Metrics;
use crate::proxy::authorize::{Authorizer, header_or_default};
use crate::proxy::codec::RawCodec;
use crate::proxy::error::Refusal;
use crate::proxy::forwarder::{self, Forwarder};
use crate::proxy::limit::{BodyLimits, ConnectionBudget};
use crate::proxy::methods::{FILTERED, REFLECTED, Route, route};
use crate::proxy::subject::{self, Subject};
use crate::proxy::{aftermath, health, listing, reflect};

/// What forwarding needs; absent when no upstream is configured.
pub struct Proxy {
    pub forwarder: Forwarder,
    pub authorizer: Authorizer,
    pub max_message_bytes: usize,
    /// Size, in-flight budgets and time limit of forwarded bodies.
    pub bodies: BodyLimits,
    /// This replica's own state, folded into the upstream's `CheckHealth`.
    pub auth: Authenticator,
    /// Where the grants of dropped and renamed collections and the alias epoch are written.
    pub catalog: Catalog,
    /// Acknowledges those writes on every live replica.
    pub coherence: Coherence,
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
            (Route::Own, _) => {
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
                let asked = Asked::of(&request);
                Box::pin(async move {
                    if let Err(refusal) = call.precheck(asked).await {
                        let status = refusal.to_status();
                        call.count(status.code());
                        return Ok(status.into_http());
                    }
                    let limit = call.proxy.max_message_bytes;
                    // The reservation is held until the forwarded call has ended.
                    let (request, _held) = call.proxy.bodies.bound(request);
                    let mut grpc = tonic::server::Grpc::new(RawCodec)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit);
                    Ok(grpc.unary(call, request).await)
                })
            }
            (Route::Forward(method), None) => {
                // `route` forwards only with an upstream; answer as it would without one.
                let status = Refusal::NoUpstream(method.to_string()).to_status();
                Box::pin(async move { Ok(status.into_http()) })
            }
            (Route::Refuse(why), _) => {
                tracing::debug!(path, ?why, "answered by the router");
                let status = why.refusal().to_status();
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
                match &answer {
                    Ok(_) => metrics.upstream_reached(true),
                    Err(s) if forwarder::unreachable(s) => metrics.upstream_reached(false),
                    Err(_) => {}
                }
            }
            answer
        })
    }
}

/// What the pre-check reads from a request's head: the caller and the `dbname` header.
struct Asked {
    who: Option<Authenticated>,
    header: Option<String>,
}

impl Asked {
    fn of<B>(request: &http::Request<B>) -> Asked {
        let header = request
            .headers()
            .get("dbname")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        Asked {
            who: request.extensions().get::<Authenticated>().cloned(),
            header,
        }
    }
}

impl Call {
    /// Counts a call answered with `code` (forwarded, or refused at the tier).
    fn count(&self, code: tonic::Code) {
        if let Some(metrics) = &self.metrics {
            metrics.forwarded(&self.method, code_name(code));
        }
    }

    /// Before the body is read: a caller who cannot hold the method's privilege anywhere is
    /// refused now, so no body of theirs is buffered. Reflected and filtered methods are
    /// for every authenticated caller.
    async fn precheck(&self, asked: Asked) -> Result<(), Refusal> {
        let method = &*self.method;
        if REFLECTED.contains(&method) || FILTERED.contains(&method) {
            return Ok(());
        }
        let who = asked.who.ok_or(Refusal::Unauthenticated)?;
        let db = header_or_default(asked.header.as_deref());
        self.proxy.authorizer.precheck(&who, method, db).await
    }
}

/// The subject of the request, its authorization, then the upstream's answer.
async fn authorize_and_forward(
    proxy: &Proxy,
    method: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let who = request
        .extensions()
        .get::<Authenticated>()
        .cloned()
        .ok_or(Refusal::Unauthenticated)?;
    let header = subject::header_db(request.metadata()).map_err(Refusal::from)?;
    let subject =
        subject::extract(method, request.get_ref(), header.as_deref()).map_err(Refusal::from)?;
    match method {
        health::METHOD => return health::check_health(proxy, &subject.db, request).await,
        m if reflect::METHODS.contains(&m) => {
            return reflect::reflect(proxy, m, &subject.db, request).await;
        }
        listing::SHOW_COLLECTIONS => {
            return listing::show_collections(proxy, &who, &subject, request).await;
        }
        listing::LIST_DATABASES => {
            return listing::list_databases(proxy, &who, &subject, request).await;
        }
        _ => {}
    }
    proxy.authorizer.authorize(&who, method, &subject).await?;
    forward_and_record(proxy, method, &subject, request).await
}

/// Forwards an authorized call and records what a success changed (grants, aliases).
async fn forward_and_record(
    proxy: &Proxy,
    method: &str,
    subject: &Subject,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let changing = aftermath::CHANGING.contains(&method);
    let body = changing.then(|| request.get_ref().clone());
    let answer = proxy
        .forwarder
        .forward(method, &subject.db, request)
        .await?;
    if let Some(body) = body {
        aftermath::record(
            &proxy.catalog,
            &proxy.coherence,
            method,
            subject,
            &body,
            answer.get_ref(),
        )
        .await?;
    }
    Ok(answer)
}
