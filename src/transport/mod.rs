//! Every connection to the gRPC port, from accept to close, plaintext and TLS alike.
//! credstore's own accept loop ([`serve`]) admits a connection only while fewer than the
//! effective `credstore.grpc.maxConnections` are open, and fewer than `maxConnectionsPerPeer`
//! from its peer (the TCP peer's IP address, an IPv6 peer's /64; never a forwarded-for
//! header); anything beyond is closed at once and counted. An admitted connection gets
//! `handshakeTimeoutMs` to finish TLS and the HTTP/2 preface (`connection.rs`), and is then
//! served by hyper's HTTP/2 server under explicit limits, with GOAWAY after
//! `idleTimeoutSeconds` without a stream. At start-up the soft open-file limit is raised to
//! the hard one and the caps are fitted under it ([`Caps::fit`]).
//!
//! Must not: know what a request means (the stack `server` builds answers it), read the
//! configuration (it is handed [`ConnectionSettings`]), or name rustls (`tls` does handshakes).

mod connection;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::codegen::http;

use crate::metrics::Metrics;
use crate::tls::ServerTls;

use connection::Connection;

/// Most requests one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
/// Clients queue further requests on their side, where their own deadline covers the wait.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Largest header block a request may send. Milvus clients send a few short headers (the
/// `authorization` header is refused past 1 KiB anyway); hyper's default is 16 MiB. h2 derives
/// its cap on CONTINUATION frames from it (a 16 KiB list fits in at most 5 frames).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long any one request may take, from the moment the server starts it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// File descriptors kept out of the connection caps for everything else the process opens:
/// etcd and upstream connections, the metrics port, the store and audit files, the runtime.
pub const RESERVED_FILES: u64 = 128;

/// `credstore.grpc.*`: how long a connection may take to start, stay idle and stay silent,
/// and how many may be open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// TLS (when on) and the HTTP/2 preface must be complete within this long.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long gets GOAWAY.
    pub idle_timeout: Duration,
    /// An HTTP/2 PING goes out this often; a peer that does not answer within
    /// `keepalive_timeout` is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections open at once, before fitting under the file limit.
    pub max_connections: usize,
    /// Connections open at once from one peer, before fitting.
    pub max_connections_per_peer: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
        }
    }
}

/// The connection caps in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_peer: usize,
}

impl Caps {
    /// The caps `settings` ask for, fitted under an open-file limit of `files` (`None`:
    /// unlimited): at most `files` minus [`RESERVED_FILES`] (or half of `files` when that is
    /// smaller) connections in all, and one peer never more than half of that, so the
    /// sockets of one address always leave room for everyone else.
    pub fn fit(settings: &ConnectionSettings, files: Option<u64>) -> Caps {
        let mut total = settings.max_connections.max(1);
        if let Some(files) = files {
            let room = files - RESERVED_FILES.min(files / 2);
            total = total
                .min(usize::try_from(room).unwrap_or(usize::MAX))
                .max(1);
        }
        let per_peer = settings.max_connections_per_peer.min(total / 2).max(1);
        Caps { total, per_peer }
    }
}

/// RLIMIT_NOFILE after [`raise_file_limit`] (`None`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft open-file limit to the hard one (a process may, unprivileged) and logs
/// both; a limit that cannot be raised is logged and kept.
pub fn raise_file_limit() -> FileLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(
                soft = ?before.current,
                hard = ?before.maximum,
                "cannot raise the soft open-file limit to the hard one: {e}"
            );
        }
    }
    let after = getrlimit(Resource::Nofile);
    let show = |limit: Option<u64>| limit.map_or("unlimited".to_string(), |n| n.to_string());
    tracing::info!(
        soft_before = %show(before.current),
        soft = %show(after.current),
        hard = %show(after.maximum),
        "open-file limit (RLIMIT_NOFILE)"
    );
    FileLimit {
        soft: after.current,
        hard: after.maximum,
    }
}

/// The caps for `settings` under the process's raised file limit, logged and shown in
/// `metrics`; a warning says when they had to be lowered.
pub fn caps_for(settings: &ConnectionSettings, metrics: &Metrics) -> Caps {
    let files = raise_file_limit();
    let caps = Caps::fit(settings, files.soft);
    if caps.total < settings.max_connections {
        tracing::warn!(
            configured = settings.max_connections,
            effective = caps.total,
            file_limit = ?files.soft,
            reserved = RESERVED_FILES,
            "credstore.grpc.maxConnections lowered to fit the open-file limit (raise the hard limit, e.g. LimitNOFILE=, to serve more)"
        );
    }
    if caps.per_peer < settings.max_connections_per_peer {
        tracing::warn!(
            configured = settings.max_connections_per_peer,
            effective = caps.per_peer,
            "credstore.grpc.maxConnectionsPerPeer lowered to half of the connection cap"
        );
    }
    tracing::info!(
        max_connections = caps.total,
        max_connections_per_peer = caps.per_peer,
        "connection caps"
    );
    metrics.connection_caps(caps.total, caps.per_peer);
    caps
}

/// Who a connection is counted against: the peer's IP address; for IPv6 its /64, which
/// one host commonly holds whole. IPv4-mapped IPv6 addresses count as the IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey(IpAddr);

impl PeerKey {
    pub fn of(address: IpAddr) -> PeerKey {
        match address.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                PeerKey(IpAddr::V6(prefix.into()))
            }
            v4 => PeerKey(v4),
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerPeer,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerPeer => "max_connections_per_peer",
        }
    }
}

/// Open connections, in all and per peer. Memory is bounded by the open connections: a
/// peer's entry goes with its last connection.
pub struct Admission {
    caps: Caps,
    open: Mutex<Counts>,
    metrics: Metrics,
}

#[derive(Default)]
struct Counts {
    total: usize,
    peers: HashMap<PeerKey, usize>,
}

/// One admitted connection's place; dropping it frees the place.
pub struct Slot {
    admission: Arc<Admission>,
    peer: PeerKey,
}

impl Admission {
    /// Open connections are shown in `metrics`.
    pub fn new(caps: Caps, metrics: Metrics) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            open: Mutex::new(Counts::default()),
            metrics,
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let peer = PeerKey::of(peer);
        let mut counts = self.counts();
        if counts.total >= self.caps.total {
            return Err(Refusal::MaxConnections);
        }
        let from_peer = counts.peers.entry(peer).or_insert(0);
        if *from_peer >= self.caps.per_peer {
            return Err(Refusal::MaxConnectionsPerPeer);
        }
        *from_peer += 1;
        counts.total += 1;
        self.metrics.connections_open(1);
        Ok(Slot {
            admission: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        self.admission.metrics.connections_open(-1);
        if let Some(from_peer) = counts.peers.get_mut(&self.peer) {
            *from_peer -= 1;
            if *from_peer == 0 {
                counts.peers.remove(&self.peer);
            }
        }
    }
}

/// The request stack one connection feeds (built by `server`): HTTP requests with tonic's
/// body in, responses out. An error it returns is answered as the gRPC status it carries.
pub trait Stack:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error: Into<tonic::codegen::StdError> + Send,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Stack for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error: Into<tonic::codegen::StdError> + Send,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What [`serve`] needs besides the listener.
pub struct Serving<S, E> {
    pub settings: ConnectionSettings,
    pub caps: Caps,
    /// The listener's TLS (`common.security.tlsMode` 1 or 2), or plaintext.
    pub tls: Option<ServerTls>,
    /// The request stack, cloned for every connection.
    pub stack: S,
    /// A value made once per connection, if any, and put into each of its requests'
    /// extensions (the proxy tier's per-connection body budget).
    pub per_connection: E,
    pub metrics: Metrics,
}

/// Accepts and serves connections on `listener` until `shutdown` resolves; then stops
/// accepting (the listener closes), sends every connection GOAWAY, and returns once all of
/// them closed (their requests finished; each is bounded by [`REQUEST_TIMEOUT`]).
pub async fn serve<S, F, X>(
    listener: TcpListener,
    serving: Serving<S, F>,
    shutdown: impl Future<Output = ()>,
) where
    S: Stack,
    F: Fn() -> Option<X>,
    X: Clone + Send + Sync + 'static,
{
    let Serving {
        settings,
        caps,
        tls,
        stack,
        per_connection,
        metrics,
    } = serving;
    let admission = Admission::new(caps, metrics.clone());
    let http2 = Arc::new(connection::http2(&settings));
    // Every connection holds a receiver; `closed()` on the sender waits for the last one.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(%peer, reason = refusal.label(), "connection refused");
                metrics.connection_refused(refusal.label());
                drop(stream);
                continue;
            }
        };
        let connection = Connection {
            settings: settings.clone(),
            http2: http2.clone(),
            stack: stack.clone(),
            extension: per_connection(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
            _slot: slot,
        };
        tokio::spawn(open(connection, stream, peer, tls.clone()));
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
}

/// The next connection, with `TCP_NODELAY` set: Nagle's algorithm holding back a small
/// response until the client's delayed ACK costs ~40 ms per answer on a request/response
/// protocol.
async fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    let _ = stream.set_nodelay(true);
    Ok((stream, peer))
}

/// Runs one connection: handshake under the deadline, then HTTP/2.
async fn open<S: Stack, X: Clone + Send + Sync + 'static>(
    connection: Connection<S, X>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<ServerTls>,
) {
    match tls {
        None => connection.run_plain(stream, peer).await,
        Some(tls) => connection.run_tls(stream, peer, tls).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(Box::new(crate::metrics::Reading::default))
    }

    fn settings(total: usize, per_peer: usize) -> ConnectionSettings {
        ConnectionSettings {
            max_connections: total,
            max_connections_per_peer: per_peer,
            ..ConnectionSettings::default()
        }
    }

    fn check(total: usize, per_peer: usize, files: Option<u64>, expected: (usize, usize)) {
        let caps = Caps::fit(&settings(total, per_peer), files);
        assert_eq!(
            (caps.total, caps.per_peer),
            expected,
            "max {total}, per peer {per_peer}, file limit {files:?}"
        );
    }

    #[test]
    fn caps_fit_under_the_file_limit_and_a_peer_gets_at_most_half() {
        check(10_000, 1_000, None, (10_000, 1_000));
        check(10_000, 1_000, Some(1_048_576), (10_000, 1_000));
        // The machine: a hard limit of 1 024.
        check(10_000, 1_000, Some(1_024), (896, 448));
        check(10_000, 1_000, Some(20_000), (10_000, 1_000));
        check(100, 1_000, None, (100, 50));
        check(10_000, 1_000, Some(100), (50, 25));
        check(1, 1, None, (1, 1));
        check(10, 10, Some(0), (1, 1));
    }

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_its_64() {
        let admission = Admission::new(
            Caps {
                total: 6,
                per_peer: 2,
            },
            metrics(),
        );
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let first = admission.admit(ip("127.0.0.1")).unwrap();
        let _second = admission.admit(ip("127.0.0.1")).unwrap();
        let refused = Some(Refusal::MaxConnectionsPerPeer);
        assert_eq!(admission.admit(ip("127.0.0.1")).err(), refused);
        // The same address mapped into IPv6 is the same peer.
        assert_eq!(admission.admit(ip("::ffff:127.0.0.1")).err(), refused);
        let _other = admission.admit(ip("127.0.0.2")).unwrap();
        drop(first);
        let _again = admission.admit(ip("127.0.0.1")).unwrap();
        // One /64 is one peer.
        let _v6 = admission.admit(ip("2001:db8::1")).unwrap();
        let _v6_too = admission.admit(ip("2001:db8::ffff:2")).unwrap();
        assert_eq!(admission.admit(ip("2001:db8::3")).err(), refused);
        let _next_64 = admission.admit(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(admission.open(), 6);
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refusal::MaxConnections)
        );
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap();
        let (stream, _) = accept(&listener).await.unwrap();
        assert!(
            stream.nodelay().unwrap(),
            "TCP_NODELAY is set on accepted sockets"
        );
    }

    #[test]
    fn a_peer_entry_goes_with_its_last_connection() {
        let admission = Admission::new(
            Caps {
                total: 10_000,
                per_peer: 10,
            },
            metrics(),
        );
        for i in 0..1_000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(admission.admit(address).unwrap());
        }
        assert_eq!(admission.open(), 0);
        assert!(admission.counts().peers.is_empty());
    }
}
