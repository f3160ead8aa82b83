//! The tests' gRPC client: thin wrappers over `credstore::client` (the one place the
//! `authorization` header is attached), and [`Probe`], one connection on which each login
//! sends its own credentials, for tests that check many users or spellings on a replica.

use base64::Engine;
use credstore::client::{Authorization, connect};
use credstore::proto::milvus::GetVersionRequest;
use tonic::Code;
use tonic::transport::Channel;

pub use credstore::client::Client;

/// Base64 as pymilvus encodes passwords in request messages.
pub fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A client sending `authorization` exactly as given (None: no header).
pub async fn client_with_header(uri: &str, header: Option<&str>) -> Client {
    let authorization = match header {
        Some(raw) => Authorization::header(raw).expect("ASCII header"),
        None => Authorization::none(),
    };
    connect(uri, authorization).await.expect("server reachable")
}

/// A client authenticating as `user` with `password`, as pymilvus does.
pub async fn client(uri: &str, user: &str, password: &str) -> Client {
    connect(uri, Authorization::credentials(user, password))
        .await
        .expect("server reachable")
}

/// A connected channel to `uri`.
pub async fn channel(uri: &str) -> Channel {
    credstore::client::channel(uri)
        .await
        .expect("server reachable")
}

/// GetVersion, the cheapest authenticated call, as `user` on `channel`.
pub async fn get_version(
    channel: &Channel,
    user: &str,
    password: &str,
) -> Result<(), tonic::Status> {
    let authorization = Authorization::credentials(user, password);
    credstore::client::client(channel.clone(), authorization)
        .get_version(GetVersionRequest {})
        .await
        .map(|_| ())
}

/// GetVersion as `user` on `channel`: Ok, or the gRPC code it failed with.
pub async fn login(channel: &Channel, user: &str, password: &str) -> Result<(), Code> {
    get_version(channel, user, password)
        .await
        .map_err(|status| status.code())
}

/// What one authenticated request got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Accepted,
    /// UNAUTHENTICATED: the replica says user or password is wrong.
    Rejected,
    /// UNAVAILABLE: the replica will not answer now (re-syncing, etcd away); clients retry.
    Unavailable,
    Other(String),
}

/// One connection to a replica that can send anybody's credentials (a header per request), so
/// a check costs one request and no new connection.
#[derive(Clone)]
pub struct Probe {
    pub name: &'static str,
    channel: Channel,
}

impl Probe {
    pub async fn connect(name: &'static str, replica: &super::Replica) -> Probe {
        Probe {
            name,
            channel: channel(&replica.uri()).await,
        }
    }

    /// GetVersion as `user`, classified.
    pub async fn login(&self, user: &str, password: &str) -> Login {
        match get_version(&self.channel, user, password).await {
            Ok(()) => Login::Accepted,
            Err(status) => match status.code() {
                Code::Unauthenticated => Login::Rejected,
                Code::Unavailable => Login::Unavailable,
                code => Login::Other(format!("{code:?}: {}", status.message())),
            },
        }
    }
}
