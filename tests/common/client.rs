//! The tests' gRPC client: thin wrappers over `credstore::client` (the one place the
//! `authorization` header is attached), and [`Probe`], one connection on which each login
//! sends its own credentials, for tests that check many users or spellings on a replica.

use base64::Engine;
use credstore::client::{Authorization, connect};
use credstore::proto::common::Status;
use credstore::proto::milvus::{
    CreateCredentialRequest, DeleteCredentialRequest, GetVersionRequest, ListCredUsersRequest,
    UpdateCredentialRequest,
};
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

/// CreateCredential as pymilvus sends it (the password in base64).
pub fn create_request(user: &str, password: &str) -> CreateCredentialRequest {
    CreateCredentialRequest {
        username: user.into(),
        password: b64(password),
        ..Default::default()
    }
}

/// Creates `user` with `password` through `client`: the `common.Status` it answered (a gRPC
/// error instead of a status fails the test).
pub async fn create_user(client: &mut Client, user: &str, password: &str) -> Status {
    client
        .create_credential(create_request(user, password))
        .await
        .expect("CreateCredential answers with a status")
        .into_inner()
}

/// UpdateCredential as pymilvus sends it (both passwords in base64).
pub fn update_request(user: &str, old: &str, new: &str) -> UpdateCredentialRequest {
    UpdateCredentialRequest {
        username: user.into(),
        old_password: b64(old),
        new_password: b64(new),
        ..Default::default()
    }
}

/// Changes `user`'s password from `old` to `new` through `client`: the `common.Status` it
/// answered (a gRPC error instead of a status fails the test).
pub async fn change_password(client: &mut Client, user: &str, old: &str, new: &str) -> Status {
    client
        .update_credential(update_request(user, old, new))
        .await
        .expect("UpdateCredential answers with a status")
        .into_inner()
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

/// root's client on one replica, for the writes.
pub struct Admin(pub Client);

/// A unary answer that carries only a `common.Status`.
pub type Reply = Result<Status, tonic::Status>;

impl Admin {
    pub async fn connect(replica: &crate::common::Replica) -> Admin {
        Admin(client(&replica.uri(), "root", "Milvus").await)
    }

    pub async fn create(&mut self, user: &str, password: &str) -> Reply {
        self.0
            .create_credential(create_request(user, password))
            .await
            .map(tonic::Response::into_inner)
    }

    /// root is a super user, so the old password is sent as pymilvus would but not checked.
    pub async fn change(&mut self, user: &str, old: &str, new: &str) -> Reply {
        self.0
            .update_credential(update_request(user, old, new))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn delete(&mut self, user: &str) -> Reply {
        self.0
            .delete_credential(DeleteCredentialRequest {
                username: user.into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn users(&mut self) -> Vec<String> {
        let response = self
            .0
            .list_cred_users(ListCredUsersRequest::default())
            .await
            .expect("ListCredUsers answers")
            .into_inner();
        assert_ok(
            Ok(response.status.clone().unwrap_or_default()),
            "ListCredUsers",
        );
        response.usernames
    }
}

/// Whether a reply is Milvus's success (code 0, error_code 0).
pub fn succeeded(reply: &Reply) -> bool {
    matches!(reply, Ok(status) if status.code == 0 && status.error_code == 0)
}

#[track_caller]
pub fn assert_ok(reply: Reply, what: &str) {
    assert!(succeeded(&reply), "{what}: expected success, got {reply:?}");
}
