//! One admitted connection. First the handshake, under `handshakeTimeoutMs`: TLS when on, then
//! the HTTP/2 client preface (the 24-byte magic and the client's first SETTINGS frame), read
//! here and replayed to hyper, so a connection that never speaks — or speaks anything but
//! HTTP/2 — is closed by the deadline whatever the transport. Then hyper's HTTP/2 server with
//! every limit set explicitly in [`http2`]; each request gets the peer's connect info and the
//! per-connection extension, and runs under the request deadline. The connection gets GOAWAY
//! after the idle timeout without a stream, and is cut off when its client cancels most of its
//! streams (the accepted-then-reset form of rapid reset, which h2's pending-reset limit alone
//! does not see).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::metrics::Metrics;
use crate::tls::ServerTls;
use crate::transport::{
    ConnectionSettings, MAX_HEADER_LIST_BYTES, MAX_STREAMS_PER_CONNECTION, REQUEST_TIMEOUT, Slot,
    Stack,
};

/// What an HTTP/2 client sends first (RFC 9113 §3.4), before its SETTINGS frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest first frame a client may send.
const MAX_FRAME: usize = 16 * 1024;

/// Streams reset by the client before the server accepted them, at once (h2's default,
/// CVE-2023-44487): past it the connection gets GOAWAY.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server had to reset because the client broke the protocol (h2's "MadeYouReset"
/// limit); past it the connection gets GOAWAY. A correct client causes none.
const MAX_LOCAL_ERROR_RESETS: usize = 128;
/// Flow-control windows: what a client may send ahead of the server reading it, per stream and
/// per connection (hyper's defaults, which tonic used). The connection window bounds what one
/// connection makes hyper buffer; bodies past it wait on the client.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes buffered per stream before the service is made to wait (hyper's default).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// The HPACK dynamic table the client may use (the RFC's default).
const HEADER_TABLE: u32 = 4096;

/// A connection whose client cancelled at least this many streams, and more than half of all
/// it opened, is cut off (Envoy's premature-reset rule, without its lifetime threshold).
const RESET_FLOOR: u64 = 100;

/// Idle is checked this many times per idle timeout; GOAWAY goes out between one and 1¼
/// idle timeouts after the last stream ended.
const IDLE_CHECKS: u32 = 4;

/// hyper's HTTP/2 server with every limit credstore relies on set here, none by default.
pub(super) fn http2(settings: &ConnectionSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .header_table_size(HEADER_TABLE)
        .max_frame_size(MAX_FRAME as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    builder
}

/// One admitted connection and what serving it needs; dropping it frees its [`Slot`].
pub(super) struct Connection<S, X> {
    pub settings: ConnectionSettings,
    pub http2: Arc<http2::Builder<TokioExecutor>>,
    pub stack: S,
    pub extension: Option<X>,
    pub metrics: Metrics,
    /// Turns true when the server stops.
    pub stopping: watch::Receiver<bool>,
    pub _slot: Slot,
}

/// The connect info tonic's own server put into requests (`auth::peer`, `remote_addr()`).
#[derive(Clone)]
enum Peer {
    Tcp(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

impl Peer {
    fn insert(&self, extensions: &mut http::Extensions) {
        match self {
            Peer::Tcp(info) => drop(extensions.insert(info.clone())),
            Peer::Tls(info) => drop(extensions.insert(info.clone())),
        }
    }
}

impl<S: Stack, X: Clone + Send + Sync + 'static> Connection<S, X> {
    pub(super) async fn run_plain(mut self, mut stream: TcpStream, peer: SocketAddr) {
        let info = Peer::Tcp(stream.connect_info());
        let handshake = async move {
            let preface = read_preface(&mut stream).await?;
            Ok(Rewind::new(preface, stream))
        };
        if let Some(io) = self.handshake(peer, handshake).await {
            self.serve(io, info, peer).await;
        }
    }

    pub(super) async fn run_tls(mut self, stream: TcpStream, peer: SocketAddr, tls: ServerTls) {
        let handshake = async move {
            let mut stream = tls.handshake(stream).await?;
            let info = Peer::Tls(stream.connect_info());
            let preface = read_preface(&mut stream).await?;
            Ok((Rewind::new(preface, stream), info))
        };
        if let Some((io, info)) = self.handshake(peer, handshake).await {
            self.serve(io, info, peer).await;
        }
    }

    /// `work` within the handshake deadline; `None` (counted, logged at debug) when it
    /// failed, ran out of time or the server is stopping.
    async fn handshake<T>(
        &mut self,
        peer: SocketAddr,
        work: impl Future<Output = io::Result<T>>,
    ) -> Option<T> {
        let limit = self.settings.handshake_timeout;
        tokio::select! {
            outcome = tokio::time::timeout(limit, work) => match outcome {
                Ok(Ok(value)) => Some(value),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection closed: no TLS and HTTP/2 start: {e}");
                    self.metrics.connection_closed("handshake_failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, limit_ms = limit.as_millis() as u64, "connection closed: no TLS and HTTP/2 start in time");
                    self.metrics.connection_closed("handshake_timeout");
                    None
                }
            },
            _ = self.stopping.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Serves HTTP/2 on `io` until the client leaves, the connection idles out, the server
    /// stops (GOAWAY, then the open streams finish) or the client is cut off.
    async fn serve<IO>(self, io: IO, info: Peer, peer: SocketAddr)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            settings,
            http2,
            stack,
            extension,
            metrics,
            mut stopping,
            _slot,
        } = self;
        let activity = Arc::new(Activity::default());
        let service = PerConnection {
            stack,
            extension,
            peer: info,
            activity: activity.clone(),
        };
        let connection = http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let check_every = (settings.idle_timeout / IDLE_CHECKS).max(Duration::from_millis(10));
        let mut checks =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = Idle::default();
        let mut draining = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                _ = stopping.wait_for(|stopping| *stopping), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = checks.tick(), if !draining => {
                    if idle.quiet_checks(&activity) >= IDLE_CHECKS {
                        tracing::debug!(%peer, "connection idle: GOAWAY");
                        metrics.connection_closed("idle");
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                _ = activity.abusive.notified() => {
                    tracing::warn!(%peer, "connection cut off: its client cancelled most of its streams (rapid reset)");
                    metrics.connection_closed("resets");
                    return;
                }
            }
        }
    }
}

/// Reads the client preface: the magic, then a SETTINGS frame (not an ACK, on stream 0, a
/// whole number of settings). Returns every byte read, for hyper to read again.
async fn read_preface<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Vec<u8>> {
    let not_http2 = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut read = vec![0u8; PREFACE.len() + FRAME_HEADER];
    io.read_exact(&mut read[..PREFACE.len()]).await?;
    if &read[..PREFACE.len()] != PREFACE {
        return Err(not_http2("not an HTTP/2 client preface"));
    }
    io.read_exact(&mut read[PREFACE.len()..]).await?;
    let header = &read[PREFACE.len()..];
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let settings = header[3] == SETTINGS && header[4] & ACK == 0 && stream == 0;
    if !settings || !length.is_multiple_of(6) || length > MAX_FRAME {
        return Err(not_http2("the HTTP/2 preface is not followed by SETTINGS"));
    }
    let start = read.len();
    read.resize(start + length, 0);
    io.read_exact(&mut read[start..]).await?;
    Ok(read)
}

/// An IO that first gives back bytes already read from it.
struct Rewind<IO> {
    read: Vec<u8>,
    at: usize,
    inner: IO,
}

impl<IO> Rewind<IO> {
    fn new(read: Vec<u8>, inner: IO) -> Rewind<IO> {
        Rewind { read, at: 0, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.read.len() {
            let n = buf.remaining().min(self.read.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the streams of one connection did, counted as they start and end.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    ended: AtomicU64,
    /// Streams the client reset (or abandoned) before their answer was out.
    cancelled: AtomicU64,
    cut_off: AtomicBool,
    abusive: Notify,
}

impl Activity {
    fn start(self: &Arc<Self>) -> Stream {
        self.started.fetch_add(1, Ordering::Relaxed);
        Stream(Arc::new(StreamState {
            activity: self.clone(),
            answered: AtomicBool::new(false),
            reset: AtomicBool::new(false),
        }))
    }
}

/// Consecutive idle checks that saw no stream open, start or end.
#[derive(Default)]
struct Idle {
    started: u64,
    ended: u64,
    quiet: u32,
}

impl Idle {
    fn quiet_checks(&mut self, activity: &Activity) -> u32 {
        let started = activity.started.load(Ordering::Relaxed);
        let ended = activity.ended.load(Ordering::Relaxed);
        let quiet = started == self.started && ended == self.ended && started == ended;
        (self.started, self.ended) = (started, ended);
        self.quiet = if quiet { self.quiet + 1 } else { 0 };
        self.quiet
    }
}

/// One open stream, shared by its request body, its handler and its answer. It ends when the
/// last of them is gone; it counts as cancelled when its answer did not go out whole, or
/// its request body broke off (the client reset it: the handler may still have answered,
/// into a stream that no longer exists).
#[derive(Clone)]
struct Stream(Arc<StreamState>);

struct StreamState {
    activity: Arc<Activity>,
    answered: AtomicBool,
    reset: AtomicBool,
}

impl Stream {
    fn answered(&self) {
        self.0.answered.store(true, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.0.reset.store(true, Ordering::Relaxed);
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        let activity = &self.activity;
        if self.reset.load(Ordering::Relaxed) || !self.answered.load(Ordering::Relaxed) {
            let cancelled = activity.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
            let started = activity.started.load(Ordering::Relaxed);
            if cancelled >= RESET_FLOOR
                && cancelled * 2 > started
                && !activity.cut_off.swap(true, Ordering::Relaxed)
            {
                activity.abusive.notify_one();
            }
        }
        activity.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request body that marks its stream reset when it breaks off.
struct Received {
    body: Incoming,
    stream: Stream,
}

impl Body for Received {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Err(_)) = &frame {
            self.stream.reset();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The service hyper calls for each stream of one connection: connect info and the
/// per-connection extension into the request, the request deadline around the stack, the
/// stack's errors as gRPC statuses, and the stream counted until its answer is out.
struct PerConnection<S, X> {
    stack: S,
    extension: Option<X>,
    peer: Peer,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<S: Stack, X: Clone + Send + Sync + 'static> hyper::service::Service<http::Request<Incoming>>
    for PerConnection<S, X>
{
    type Response = http::Response<Answer>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let stream = self.activity.start();
        let mut request = request.map(|body| {
            tonic::body::Body::new(Received {
                body,
                stream: stream.clone(),
            })
        });
        let limit = grpc_timeout(request.headers())
            .map_or(REQUEST_TIMEOUT, |client| client.min(REQUEST_TIMEOUT));
        let extensions = request.extensions_mut();
        self.peer.insert(extensions);
        if let Some(extension) = &self.extension {
            extensions.insert(extension.clone());
        }
        let mut stack = self.stack.clone();
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| stack.poll_ready(cx)).await?;
                stack.call(request).await
            };
            let response = match tokio::time::timeout(limit, answer).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => tonic::Status::from_error(e.into()).into_http(),
                // tonic's own answer to a request past its deadline.
                Err(_) => {
                    tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string()).into_http()
                }
            };
            Ok(response.map(|body| Answer::new(body, stream)))
        })
    }
}

/// The client's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if !(2..=9).contains(&value.len()) {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A response body that ends its stream's count once the last frame is out.
struct Answer {
    body: tonic::body::Body,
    stream: Option<Stream>,
}

impl Answer {
    fn new(body: tonic::body::Body, stream: Stream) -> Answer {
        let mut answer = Answer {
            body,
            stream: Some(stream),
        };
        // A trailers-only answer (every refusal) is complete before hyper polls it.
        if answer.body.is_end_stream() {
            answer.answered();
        }
        answer
    }

    fn answered(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.answered();
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        let last = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(frame)) => frame.is_trailers() || self.body.is_end_stream(),
        };
        if last {
            self.answered();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(length: usize, flags: u8, stream: u32) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
        bytes.push(SETTINGS);
        bytes.push(flags);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0u8, length));
        bytes
    }

    async fn preface_of(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = bytes;
        read_preface(&mut reader).await
    }

    #[tokio::test]
    async fn the_preface_is_the_magic_and_a_settings_frame() {
        let good = settings_frame(12, 0, 0);
        assert_eq!(preface_of(&good).await.unwrap(), good);
        let mut more = settings_frame(0, 0, 0);
        more.extend_from_slice(b"next frame");
        assert_eq!(preface_of(&more).await.unwrap(), settings_frame(0, 0, 0));
        for bad in [
            settings_frame(7, 0, 0),
            settings_frame(6, ACK, 0),
            settings_frame(6, 0, 1),
            settings_frame(MAX_FRAME + 6, 0, 0),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ] {
            let err = preface_of(&bad).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        let cut = &settings_frame(12, 0, 0)[..30];
        assert_eq!(
            preface_of(cut).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn rewind_gives_back_what_was_read_then_the_rest() {
        let rest: &[u8] = b" world";
        let mut io = Rewind::new(b"hello".to_vec(), rest);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    fn check_timeout(value: &str, expected: Option<Duration>) {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        assert_eq!(grpc_timeout(&headers), expected, "{value:?}");
    }

    #[test]
    fn grpc_timeout_headers() {
        check_timeout("1H", Some(Duration::from_secs(3600)));
        check_timeout("2M", Some(Duration::from_secs(120)));
        check_timeout("3S", Some(Duration::from_secs(3)));
        check_timeout("4m", Some(Duration::from_millis(4)));
        check_timeout("5u", Some(Duration::from_micros(5)));
        check_timeout("99999999n", Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "+1S", "-1S", "1.5S"] {
            check_timeout(bad, None);
        }
    }

    #[test]
    fn a_connection_is_idle_after_checks_that_saw_nothing() {
        let activity = Arc::new(Activity::default());
        let mut idle = Idle::default();
        assert_eq!(idle.quiet_checks(&activity), 1);
        let stream = activity.start();
        assert_eq!(idle.quiet_checks(&activity), 0);
        assert_eq!(idle.quiet_checks(&activity), 0, "a stream is open");
        stream.answered();
        drop(stream);
        assert_eq!(idle.quiet_checks(&activity), 0, "a stream ended since");
        assert_eq!(idle.quiet_checks(&activity), 1);
        // A stream that started and ended between two checks.
        activity.start().answered();
        assert_eq!(idle.quiet_checks(&activity), 0);
        assert_eq!(idle.quiet_checks(&activity), 1);
        assert_eq!(idle.quiet_checks(&activity), 2);
    }

    #[test]
    fn a_client_cancelling_most_streams_is_cut_off_once() {
        let activity = Arc::new(Activity::default());
        // Answered streams keep a connection that cancels some of its calls.
        for _ in 0..RESET_FLOOR {
            activity.start().answered();
        }
        for _ in 0..RESET_FLOOR / 2 {
            drop(activity.start());
        }
        // Answered into a stream the client had reset: cancelled too.
        for _ in 0..RESET_FLOOR / 2 {
            let stream = activity.start();
            stream.reset();
            stream.answered();
        }
        assert!(!activity.cut_off.load(Ordering::Relaxed), "half, not more");
        drop(activity.start());
        assert!(activity.cut_off.load(Ordering::Relaxed));
        assert_eq!(activity.cancelled.load(Ordering::Relaxed), RESET_FLOOR + 1);
    }
}
