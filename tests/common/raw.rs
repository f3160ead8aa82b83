//! A raw HTTP/2 client (the `h2` crate) for tests that must misbehave where a gRPC client
//! cannot: open a call and withhold its body, reset streams at will, watch a connection
//! get GOAWAY. gRPC's framing and statuses are written and read by hand here.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use prost::bytes::Bytes;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tonic::codegen::http;

/// One HTTP/2 connection; the connection is driven by a task until it ends.
pub struct RawConnection {
    address: SocketAddr,
    send: SendRequest<Bytes>,
    driver: JoinHandle<Result<(), h2::Error>>,
}

/// A call opened on a [`RawConnection`]: its answer to come and its body to send.
pub struct RawCall {
    pub response: ResponseFuture,
    pub body: SendStream<Bytes>,
}

impl RawConnection {
    /// Connects from 127.0.0.1 and completes the HTTP/2 handshake.
    pub async fn connect(address: SocketAddr) -> RawConnection {
        RawConnection::connect_from([127, 0, 0, 1].into(), address).await
    }

    /// Connects from the loopback address `local` (any 127.x.y.z on Linux).
    pub async fn connect_from(local: IpAddr, address: SocketAddr) -> RawConnection {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.bind(SocketAddr::new(local, 0)).expect("bind");
        let stream = socket.connect(address).await.expect("server reachable");
        let (send, connection) = h2::client::handshake(stream)
            .await
            .expect("HTTP/2 handshake");
        let driver = tokio::spawn(connection);
        RawConnection {
            address,
            send,
            driver,
        }
    }

    /// Opens a unary call of `MilvusService/{method}` as `user`/`password`; its body is the
    /// caller's to send (or not).
    pub async fn open(
        &mut self,
        method: &str,
        user: &str,
        password: &str,
    ) -> Result<RawCall, h2::Error> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let request = http::Request::post(format!(
            "http://{}/milvus.proto.milvus.MilvusService/{method}",
            self.address
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", token)
        .body(())
        .expect("a request");
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await?;
        let (response, body) = self.send.send_request(request, false)?;
        Ok(RawCall { response, body })
    }

    /// Whether the connection has ended (GOAWAY and close, or an error).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Waits for the connection to end; how it ended.
    pub async fn closed(self) -> Result<(), h2::Error> {
        drop(self.send);
        self.driver.await.expect("the connection task")
    }
}

/// gRPC's frame header announcing a message of `length` bytes.
pub fn grpc_header(length: u32) -> Bytes {
    let mut header = vec![0u8];
    header.extend_from_slice(&length.to_be_bytes());
    Bytes::from(header)
}

/// An `InsertRequest` into collection `c` carrying about `size` bytes of opaque field data
/// (credstore reads only the names; the upstream answers UNIMPLEMENTED without decoding).
pub fn insert_message(size: usize) -> Vec<u8> {
    let mut message = vec![0x1a, 0x01, b'c']; // collection_name = "c"
    let mut length = size;
    message.push(0x2a); // fields_data, length-delimited
    while length >= 0x80 {
        message.push((length as u8) | 0x80);
        length >>= 7;
    }
    message.push(length as u8);
    message.resize(message.len() + size, 0);
    message
}

/// The gRPC status of a call's answer: code and (percent-decoded) message, from the headers
/// of a trailers-only answer or from the trailers.
pub async fn grpc_status(response: ResponseFuture) -> Result<(i32, String), h2::Error> {
    let response = response.await?;
    if let Some(status) = status_of(response.headers()) {
        return Ok(status);
    }
    let mut body: RecvStream = response.into_body();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(status_of(&trailers).unwrap_or((-1, "no grpc-status".into())))
}

fn status_of(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
