//! The operator's HTTP port (`credstore.http.port`): Prometheus metrics at `/metrics`,
//! liveness at `/healthz` (200 while the process serves) and readiness at `/readyz` (200 while
//! the replica is registered, trusts its cache and is not draining; else 503). GET only;
//! any other path is 404. Nothing here changes state or shows configuration or secrets.
//! Also owns [`Readiness`], which the gRPC health service reports too.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::Authenticator;
use crate::metrics::Metrics;

/// Most probe/scrape connections open at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lasts at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Whether the replica should receive traffic: registered and trusting its cache, and not
/// draining for shutdown. Clones share the draining flag.
#[derive(Clone)]
pub struct Readiness {
    auth: Authenticator,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(auth: Authenticator) -> Readiness {
        Readiness {
            auth,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on the replica reports not ready (it still serves until it stops).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.auth.is_trusted()
    }
}

/// Serves the endpoints on `listener` until `shutdown` resolves; open connections are then
/// closed.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "metrics port: cannot accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let response = respond(&request, &metrics, &readiness);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                    drop(slot);
                });
            }
        }
    }
    connections.abort_all();
}

fn respond<B>(
    request: &Request<B>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(Metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if readiness.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "cache not trusted\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
