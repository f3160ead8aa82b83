//! [`Forwarder`]: sends one unary `MilvusService` call upstream over a single pooled tonic
//! `Channel` (HTTP/2, multiplexed) and returns the upstream's answer as it came.
//!
//! What crosses: the request bytes; the `dbname` the caller was authorized in (always, and
//! only that one); of the client's other metadata only [`FORWARDED_HEADERS`] (request ids,
//! pymilvus's connection identifier, trace context) — never its `authorization` (credstore's
//! own token replaces it; none when it is empty), `-bin` headers, or anything Milvus trusts
//! from internal callers; and the deadline: the client's `grpc-timeout`, or the configured
//! default when it sent none, both sent upstream and enforced here. What comes back: the answer bytes, headers and
//! trailers (as response metadata), or the upstream's status with its message, details and
//! metadata. A transport failure (refused, reset, no connection) is UNAVAILABLE, which
//! pymilvus retries; dropping the call (the client cancelled) resets the upstream stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use prost::bytes::Bytes;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tower::Service;

use crate::proxy::codec::RawCodec;
use crate::proxy::methods::SERVICE;
use crate::proxy::{ProxyError, Upstream};

/// Calls in flight upstream at once, over the one connection; more wait in the channel's
/// queue. Milvus's own proxy allows far more streams; this bounds what one replica holds.
const MAX_IN_FLIGHT: usize = 1024;

/// The client headers forwarded as they came (first value, ASCII only): everything else is
/// dropped. `dbname` is not among them: the forwarder sets it to the authorized database.
pub const FORWARDED_HEADERS: &[&str] = &[
    "client-request-id",
    "client-request-unixmsec",
    "identifier",
    "traceparent",
    "tracestate",
];

/// The forwarding client; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: tonic::client::Grpc<Link>,
    token: Option<AsciiMetadataValue>,
    default_timeout: Duration,
}

impl Forwarder {
    /// A forwarder for `config.uri` (which must be set). Connects lazily: credstore starts,
    /// and keeps serving user management, while the upstream is away.
    pub fn new(config: &Upstream) -> Result<Forwarder, ProxyError> {
        let uri = config.uri.trim();
        let https = uri.starts_with("https://");
        if !https && !uri.starts_with("http://") {
            return Err(ProxyError::Uri {
                uri: uri.to_string(),
                reason: "must start with http:// or https://".into(),
            });
        }
        if !https && config.tls.is_set() {
            return Err(ProxyError::TlsWithoutHttps {
                uri: uri.to_string(),
            });
        }
        let mut endpoint = Endpoint::from_shared(uri.to_string()).map_err(|e| ProxyError::Uri {
            uri: uri.to_string(),
            reason: e.to_string(),
        })?;
        if https {
            let tls = config.tls.tonic_config().map_err(ProxyError::Tls)?;
            endpoint = endpoint.tls_config(tls).map_err(|e| ProxyError::Uri {
                uri: uri.to_string(),
                reason: e.to_string(),
            })?;
        }
        // Transport decisions (STYLE 22): no Nagle on the dialled socket (a proxy must not add
        // ~40 ms tails); a connect that fails fast so callers get UNAVAILABLE and retry; HTTP/2
        // keep-alive so a dead upstream is noticed between calls; adaptive flow-control windows
        // for messages of hundreds of MB; bounded calls in flight.
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .http2_adaptive_window(true)
            .concurrency_limit(MAX_IN_FLIGHT)
            .connect_lazy();
        let max = config.max_message_bytes;
        let link = Link {
            channel,
            uri: Arc::from(uri),
        };
        let client = tonic::client::Grpc::new(link)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let token = match config.token.is_empty() {
            true => None,
            false => {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(config.token.expose());
                Some(
                    AsciiMetadataValue::try_from(encoded)
                        .map_err(|_| ProxyError::Token("cannot be sent as a header".into()))?,
                )
            }
        };
        Ok(Forwarder {
            client,
            token,
            default_timeout: config.default_timeout.max(Duration::from_millis(1)),
        })
    }

    /// Forwards `request` as `method`, to act in database `db` (the one it was authorized
    /// in), and returns the upstream's answer.
    pub async fn forward(
        &self,
        method: &str,
        db: &str,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        let path = http::uri::PathAndQuery::try_from(format!("/{SERVICE}/{method}"))
            .map_err(|_| Status::unimplemented(format!("no such method {method:?}")))?;
        let (incoming, _extensions, body) = request.into_parts();
        let timeout = incoming
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(self.default_timeout);
        let mut metadata = forwarded_metadata(&incoming);
        let db = AsciiMetadataValue::try_from(db)
            .map_err(|_| Status::invalid_argument(format!("invalid database name {db:?}")))?;
        metadata.insert("dbname", db);
        if let Some(token) = &self.token {
            metadata.insert("authorization", token.clone());
        }
        let mut outgoing = Request::from_parts(metadata, Default::default(), body);
        outgoing.set_timeout(timeout);
        let mut client = self.client.clone();
        let call = async {
            client.ready().await?;
            client.unary(outgoing, path, RawCodec).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(mut response)) => {
                strip(
                    response.metadata_mut(),
                    &["grpc-encoding", "grpc-accept-encoding", "content-type"],
                );
                Ok(response)
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the upstream did not answer {method} within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// The allowlisted client headers ([`FORWARDED_HEADERS`]), first value each.
fn forwarded_metadata(incoming: &MetadataMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for name in FORWARDED_HEADERS {
        if let Some(value) = incoming.get(*name) {
            metadata.insert(*name, value.clone());
        }
    }
    metadata
}

fn strip(metadata: &mut MetadataMap, names: &[&str]) {
    for name in names {
        metadata.remove(*name);
    }
}

/// gRPC's `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The channel, with every transport failure turned into UNAVAILABLE (tonic would report a
/// refused connection as UNKNOWN "transport error", which pymilvus does not retry).
#[derive(Clone)]
pub struct Link {
    channel: Channel,
    /// The upstream's URI, named in every "unreachable" answer.
    uri: Arc<str>,
}

impl Service<http::Request<tonic::body::Body>> for Link {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let uri = &self.uri;
        self.channel.poll_ready(cx).map_err(|e| unavailable(uri, e))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let call = self.channel.call(request);
        let uri = self.uri.clone();
        Box::pin(async move { call.await.map_err(|e| unavailable(&uri, e)) })
    }
}

/// Whether `status` says the upstream could not be reached (this module's UNAVAILABLE).
pub fn unreachable(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with(UNREACHABLE)
}

/// How every "the upstream could not be reached" answer starts.
const UNREACHABLE: &str = "upstream unavailable";

fn unavailable(uri: &str, e: tonic::transport::Error) -> Status {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    // The channel enforces the `grpc-timeout` it sends: that is the caller's deadline
    // passing, not the upstream going away (and pymilvus must not retry it).
    let mut cause = source;
    while let Some(error) = cause {
        if error.is::<tonic::TimeoutExpired>() {
            return Status::deadline_exceeded("the upstream did not answer within the deadline");
        }
        cause = error.source();
    }
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !reason.contains(&cause_text) {
            reason = format!("{reason}: {cause_text}");
        }
        source = cause.source();
    }
    tracing::debug!(%reason, "upstream unavailable");
    Status::unavailable(format!("{UNREACHABLE} at {uri}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::Secret;
    use crate::tls::ClientTls;

    #[test]
    fn only_allowlisted_headers_cross() {
        let mut incoming = MetadataMap::new();
        for (k, v) in [
            ("authorization", "cm9vdDpNaWx2dXM="),
            ("dbname", "secretdb"),
            ("sourceid", "-1"),
            ("client-request-id", "abc"),
            ("identifier", "42"),
            ("x-anything", "1"),
        ] {
            incoming.append(k, v.parse().unwrap());
        }
        incoming.append("client-request-id", "second".parse().unwrap());
        incoming.append_bin(
            "authorization-bin",
            tonic::metadata::BinaryMetadataValue::from_bytes(b"x"),
        );
        let out = forwarded_metadata(&incoming);
        let kept: Vec<_> = out
            .iter()
            .map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    format!("{}={}", k.as_str(), v.to_str().unwrap())
                }
                tonic::metadata::KeyAndValueRef::Binary(k, _) => k.as_str().to_string(),
            })
            .collect();
        assert_eq!(kept, ["client-request-id=abc", "identifier=42"]);
    }

    #[test]
    fn grpc_timeouts() {
        let check = |v: &str, d: Option<Duration>| assert_eq!(parse_grpc_timeout(v), d, "{v}");
        check("10S", Some(Duration::from_secs(10)));
        check("1500m", Some(Duration::from_millis(1500)));
        check("2M", Some(Duration::from_secs(120)));
        check("1H", Some(Duration::from_secs(3600)));
        check("99999999u", Some(Duration::from_micros(99_999_999)));
        check("7n", Some(Duration::from_nanos(7)));
        check("S", None);
        check("10", None);
        check("123456789S", None);
        check("10s", None);
        check("1é", None);
        check("-1S", None);
    }

    #[test]
    fn uris_and_tokens() {
        let config = |uri: &str| Upstream {
            uri: uri.into(),
            token: Secret::default(),
            max_message_bytes: 1 << 20,
            max_in_flight_bytes: 1 << 30,
            max_in_flight_bytes_per_connection: 1 << 28,
            body_timeout: Duration::from_secs(30),
            default_timeout: Duration::from_secs(1),
            tls: ClientTls::default(),
        };
        // https needs the CA that signed the upstream's certificate.
        assert!(matches!(
            Forwarder::new(&config("https://m:443")),
            Err(ProxyError::Tls(_))
        ));
        let with_ca = Upstream {
            tls: ClientTls {
                ca_pem_path: Some("/nonexistent/ca.pem".into()),
                ..ClientTls::default()
            },
            ..config("http://m:19530")
        };
        assert!(matches!(
            Forwarder::new(&with_ca),
            Err(ProxyError::TlsWithoutHttps { .. })
        ));
        assert!(matches!(
            Forwarder::new(&config("m:19530")),
            Err(ProxyError::Uri { .. })
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // connect_lazy needs a runtime for its background task.
        let _guard = rt.enter();
        let forwarder = Forwarder::new(&Upstream {
            token: Secret::new("root:Milvus"),
            ..config("http://127.0.0.1:1")
        })
        .unwrap();
        assert_eq!(forwarder.token.unwrap(), "cm9vdDpNaWx2dXM=");
    }
}
