//! The client side of the gRPC API, for the admin CLI (`credstore user …`, `credstore health`),
//! `credstore bench` and the Rust tests: a channel, the `authorization` header (attached in one
//! place, [`Authorization::apply`]) and an authorized `MilvusServiceClient`; [`Admin`] wraps the
//! user, role and grant RPCs (and credstore's own `Unlock`), [`Keys`] credstore's own API-key
//! and OIDC services; [`read_secret`] reads a password from a prompt or standard input, so the
//! CLI never needs one on its command line (where `ps` shows it).

use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto::common::Status;
use crate::proto::credstore::UnlockRequest;
use crate::proto::credstore::api_keys_client::ApiKeysClient;
use crate::proto::credstore::credstore_admin_client::CredstoreAdminClient;
use crate::proto::credstore::oidc_client::OidcClient;
use crate::proto::credstore::{
    ApiKeyInfo, CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest, ListOidcRequest,
    ListOidcResponse, RevokeApiKeyRequest, RevokeTokensRequest,
};
use crate::proto::milvus::milvus_service_client::MilvusServiceClient;
use crate::proto::milvus::*;
use crate::tls::{ClientTls, TlsError};

/// A `MilvusServiceClient` that sends its [`Authorization`] with every call.
pub type Client = MilvusServiceClient<InterceptedService<Channel, Authorization>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the authorization header must be visible ASCII")]
    BadHeader,
    #[error("server refused: {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("failed (code {code}): {reason}")]
    Status { code: i32, reason: String },
    #[error("cannot read a password: {0}")]
    Input(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS options were given but the URI is not https://")]
    TlsWithoutHttps,
    #[error("a source address works with http:// URIs only")]
    SourceWithTls,
    #[error("the server is not ready: {0}")]
    NotReady(String),
    #[error(
        "{uri} answered with a TLS alert: the server speaks TLS; use an https:// URI (and --ca-pem)"
    )]
    ServerSpeaksTls { uri: String },
}

/// The `authorization` header pymilvus sends: base64 of `user:password` (or none).
/// `Debug` never shows it.
#[derive(Clone, Default)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl Authorization {
    /// No header: for servers with authorization disabled, and for health checks.
    pub fn none() -> Authorization {
        Authorization(None)
    }

    /// `user` with `password`, as pymilvus encodes them.
    pub fn credentials(user: &str, password: &str) -> Authorization {
        let encoded = b64(&format!("{user}:{password}"));
        // Base64 is visible ASCII, always a valid header value.
        Authorization(encoded.parse().ok())
    }

    /// A token without a colon (an API key or a JWT), as pymilvus sends
    /// `MilvusClient(token=…)`: base64 of the token itself.
    pub fn token(token: &str) -> Authorization {
        Authorization(b64(token).parse().ok())
    }

    /// A header exactly as given (tests send malformed ones).
    pub fn header(raw: &str) -> Result<Authorization, ClientError> {
        raw.parse()
            .map(|value| Authorization(Some(value)))
            .map_err(|_| ClientError::BadHeader)
    }

    /// Puts the header on `request`: the one place it is attached.
    pub fn apply<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Authorization(<redacted>)"),
            None => f.write_str("Authorization(none)"),
        }
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        Ok(self.apply(request))
    }
}

/// A connected plaintext HTTP/2 channel to `uri` (connect timeout 5 s).
pub async fn channel(uri: &str) -> Result<Channel, ClientError> {
    channel_tls(uri, &ClientTls::default()).await
}

/// A connected HTTP/2 channel to `uri`, over TLS with `tls` when `uri` is `https://`
/// (connect timeout 5 s).
pub async fn channel_tls(uri: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    let connect_err = |source| ClientError::Connect {
        uri: uri.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if uri.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.tonic_config()?)
            .map_err(connect_err)?;
    } else if tls.is_set() {
        return Err(ClientError::TlsWithoutHttps);
    }
    endpoint.connect().await.map_err(connect_err)
}

/// How long [`preflight`] waits for a server's first answer.
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(3);

/// Before the admin CLI's first call: finds a refusal at the TLS layer — a plaintext client
/// at a TLS server, a TLS client at a plaintext one, a client certificate missing or not
/// trusted — on a connection of its own, and reports it in fixed words. Without this the
/// CLI printed whatever its HTTP/2 stack saw first (an h2 protocol error, a transport error
/// or a cancelled call, depending on timing). One extra connection per command; servers
/// that cannot be reached or stay silent are left to the real connection to report.
async fn preflight(uri: &str, tls: &ClientTls) -> Result<(), ClientError> {
    let Ok(parsed) = uri.parse::<tonic::codegen::http::Uri>() else {
        return Ok(()); // the channel reports a malformed URI
    };
    let Some(host) = parsed.host() else {
        return Ok(());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if uri.starts_with("https://") {
        let port = parsed.port_u16().unwrap_or(443);
        return Ok(tls.probe(host, port, PREFLIGHT_PATIENCE).await?);
    }
    let port = parsed.port_u16().unwrap_or(80);
    if speaks_tls(host, port).await {
        return Err(ClientError::ServerSpeaksTls {
            uri: uri.to_string(),
        });
    }
    Ok(())
}

/// Whether the server at `host:port` answers the HTTP/2 preface with a TLS record (a TLS
/// server's alert: content type 21, version 3.x) within [`PREFLIGHT_PATIENCE`].
async fn speaks_tls(host: &str, port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        tcp.write_all(crate::tls::HTTP2_PREFACE).await.ok()?;
        let mut first = [0u8; 2];
        tcp.read_exact(&mut first).await.ok()?;
        Some(first)
    };
    matches!(
        tokio::time::timeout(PREFLIGHT_PATIENCE, answer).await,
        Ok(Some([0x15, 0x03]))
    )
}

/// A connected plaintext HTTP/2 channel to `uri` whose TCP connection leaves from the local
/// address `source` (`127.0.0.2` on loopback, say): how tests and `credstore bench
/// --source-ip` act as another peer, which the server tells apart by that address only.
pub async fn channel_from(uri: &str, source: IpAddr) -> Result<Channel, ClientError> {
    if uri.starts_with("https://") {
        return Err(ClientError::SourceWithTls);
    }
    let connect_err = |source| ClientError::Connect {
        uri: uri.to_string(),
        source,
    };
    let endpoint = Endpoint::from_shared(uri.to_string())
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(5));
    let connector = tower::service_fn(move |target: tonic::codegen::http::Uri| async move {
        let host = target.host().unwrap_or("127.0.0.1");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = target.port_u16().unwrap_or(80);
        let address = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
        let socket = match source {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(connect_err)
}

/// A client on `channel` sending `authorization` with every call.
pub fn client(channel: Channel, authorization: Authorization) -> Client {
    MilvusServiceClient::with_interceptor(channel, authorization)
}

/// Connects to `uri` and returns a client sending `authorization` with every call.
pub async fn connect(uri: &str, authorization: Authorization) -> Result<Client, ClientError> {
    Ok(client(channel(uri).await?, authorization))
}

fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Reads a secret: from the terminal without echo (after printing `prompt` on stderr) when
/// standard input is one, else one line of standard input (without its line ending).
pub fn read_secret(prompt: &str) -> Result<String, ClientError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_line(&mut stdin.lock()).map_err(ClientError::Input);
    }
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{prompt}");
    let _ = stderr.flush();
    let secret = without_echo(|| read_line(&mut stdin.lock()));
    let _ = writeln!(stderr);
    secret.map_err(ClientError::Input)
}

/// One line, without its `\n` or `\r\n`; end of input with nothing read is an error.
fn read_line(input: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "standard input ended before a password",
        ));
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Runs `read` with the terminal's echo off, restoring it afterwards.
fn without_echo<T>(read: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin)?;
    let mut quiet = original.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    let result = read();
    tcsetattr(&stdin, OptionalActions::Now, &original)?;
    result
}

/// Whether the server at `uri` is ready: the standard `grpc.health.v1.Health` check (no
/// credentials) says SERVING, i.e. the replica is registered, trusts its cache and is not
/// shutting down. For probes that must take a replica out of rotation, not just see it alive.
pub async fn ready(uri: &str, tls: &ClientTls) -> Result<(), ClientError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    preflight(uri, tls).await?;
    let mut health = HealthClient::new(channel_tls(uri, tls).await?);
    let answer = health
        .check(HealthCheckRequest::default())
        .await
        .map_err(rpc)?
        .into_inner();
    match answer.status() {
        ServingStatus::Serving => Ok(()),
        other => Err(ClientError::NotReady(other.as_str_name().to_string())),
    }
}

/// One privilege on one object, as `OperatePrivilege` (Milvus's `grant_privilege`) names it.
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    pub role: &'a str,
    /// `Global`, `Collection` or `User`.
    pub object_type: &'a str,
    /// The object's name, or `*` for every object of that type.
    pub object_name: &'a str,
    /// Milvus's privilege name (`Search`, `Insert`, `CreateCollection`, `*`, …).
    pub privilege: &'a str,
    /// The database (`default` when empty).
    pub db: &'a str,
}

/// The user and role RPCs the admin CLI needs, over an authorized [`Client`].
pub struct Admin {
    client: Client,
    /// credstore's own API on the same channel.
    admin: CredstoreAdminClient<InterceptedService<Channel, Authorization>>,
}

impl Admin {
    pub async fn connect(uri: &str, authorization: Authorization) -> Result<Admin, ClientError> {
        Admin::connect_tls(uri, &ClientTls::default(), authorization).await
    }

    /// As [`Admin::connect`], over TLS with `tls` when `uri` is `https://`.
    pub async fn connect_tls(
        uri: &str,
        tls: &ClientTls,
        authorization: Authorization,
    ) -> Result<Admin, ClientError> {
        preflight(uri, tls).await?;
        let channel = channel_tls(uri, tls).await?;
        Ok(Admin {
            client: client(channel.clone(), authorization.clone()),
            admin: CredstoreAdminClient::with_interceptor(channel, authorization),
        })
    }

    /// Lifts every login lock of `name` on every replica (root or admin); returns whether
    /// anything was locked.
    pub async fn unlock(&mut self, name: &str) -> Result<bool, ClientError> {
        let request = UnlockRequest {
            user_name: name.into(),
        };
        let response = self.admin.unlock(request).await.map_err(rpc)?.into_inner();
        check(response.status.unwrap_or_default())?;
        Ok(response.was_locked)
    }

    pub async fn create_user(&mut self, name: &str, password: &str) -> Result<(), ClientError> {
        let request = CreateCredentialRequest {
            username: name.into(),
            password: b64(password),
            ..Default::default()
        };
        check(
            self.client
                .create_credential(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    pub async fn change_password(
        &mut self,
        name: &str,
        old: Option<&str>,
        new: &str,
    ) -> Result<(), ClientError> {
        let request = UpdateCredentialRequest {
            username: name.into(),
            old_password: b64(old.unwrap_or_default()),
            new_password: b64(new),
            ..Default::default()
        };
        check(
            self.client
                .update_credential(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    pub async fn delete_user(&mut self, name: &str) -> Result<(), ClientError> {
        let request = DeleteCredentialRequest {
            username: name.into(),
            ..Default::default()
        };
        check(
            self.client
                .delete_credential(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    pub async fn list_users(&mut self) -> Result<Vec<String>, ClientError> {
        let response = self
            .client
            .list_cred_users(ListCredUsersRequest::default())
            .await
            .map_err(rpc)?
            .into_inner();
        check(response.status.unwrap_or_default())?;
        Ok(response.usernames)
    }

    pub async fn create_role(&mut self, role: &str) -> Result<(), ClientError> {
        let request = CreateRoleRequest {
            entity: Some(RoleEntity {
                name: role.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        check(
            self.client
                .create_role(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    /// Drops `role`, which must have no grants.
    pub async fn drop_role(&mut self, role: &str) -> Result<(), ClientError> {
        self.drop_role_as(role, false).await
    }

    /// Drops `role` and its grants (Milvus's `force_drop`).
    pub async fn force_drop_role(&mut self, role: &str) -> Result<(), ClientError> {
        self.drop_role_as(role, true).await
    }

    async fn drop_role_as(&mut self, role: &str, force_drop: bool) -> Result<(), ClientError> {
        let request = DropRoleRequest {
            role_name: role.into(),
            force_drop,
            ..Default::default()
        };
        check(
            self.client
                .drop_role(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    /// Every role's name.
    pub async fn list_roles(&mut self) -> Result<Vec<String>, ClientError> {
        let response = self
            .client
            .select_role(SelectRoleRequest::default())
            .await
            .map_err(rpc)?
            .into_inner();
        check(response.status.unwrap_or_default())?;
        Ok(response
            .results
            .into_iter()
            .filter_map(|result| result.role.map(|role| role.name))
            .collect())
    }

    /// Grants `grant.privilege` (Milvus's name: `Search`, `Insert`, `*`, …) on an object.
    pub async fn grant_privilege(&mut self, grant: &Grant<'_>) -> Result<(), ClientError> {
        self.operate_privilege(grant, OperatePrivilegeType::Grant)
            .await
    }

    pub async fn revoke_privilege(&mut self, grant: &Grant<'_>) -> Result<(), ClientError> {
        self.operate_privilege(grant, OperatePrivilegeType::Revoke)
            .await
    }

    async fn operate_privilege(
        &mut self,
        grant: &Grant<'_>,
        operation: OperatePrivilegeType,
    ) -> Result<(), ClientError> {
        let request = OperatePrivilegeRequest {
            entity: Some(GrantEntity {
                role: Some(RoleEntity {
                    name: grant.role.into(),
                    ..Default::default()
                }),
                object: Some(ObjectEntity {
                    name: grant.object_type.into(),
                }),
                object_name: grant.object_name.into(),
                grantor: Some(GrantorEntity {
                    privilege: Some(PrivilegeEntity {
                        name: grant.privilege.into(),
                    }),
                    ..Default::default()
                }),
                db_name: grant.db.into(),
            }),
            r#type: operation as i32,
            ..Default::default()
        };
        check(
            self.client
                .operate_privilege(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    /// Gives `user` the role `role`.
    pub async fn add_user_to_role(&mut self, user: &str, role: &str) -> Result<(), ClientError> {
        self.operate_user_role(user, role, OperateUserRoleType::AddUserToRole)
            .await
    }

    /// Takes the role `role` from `user`.
    pub async fn remove_user_from_role(
        &mut self,
        user: &str,
        role: &str,
    ) -> Result<(), ClientError> {
        self.operate_user_role(user, role, OperateUserRoleType::RemoveUserFromRole)
            .await
    }

    async fn operate_user_role(
        &mut self,
        user: &str,
        role: &str,
        operation: OperateUserRoleType,
    ) -> Result<(), ClientError> {
        let request = OperateUserRoleRequest {
            username: user.into(),
            role_name: role.into(),
            r#type: operation as i32,
            ..Default::default()
        };
        check(
            self.client
                .operate_user_role(request)
                .await
                .map_err(rpc)?
                .into_inner(),
        )
    }

    /// Whether the server answers at all; UNAUTHENTICATED counts as an answer.
    pub async fn health(&mut self) -> Result<(), ClientError> {
        match self.client.get_version(GetVersionRequest::default()).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(()),
            Err(status) => Err(rpc(status)),
        }
    }
}

/// credstore's own services — API keys and OIDC revocation (`credstore.v1`) — over an
/// authorized channel, for `credstore apikey …` / `credstore oidc …` and the tests.
pub struct Keys {
    keys: ApiKeysClient<InterceptedService<Channel, Authorization>>,
    oidc: OidcClient<InterceptedService<Channel, Authorization>>,
}

impl Keys {
    /// Connects to `uri` (over TLS with `tls` when it is `https://`).
    pub async fn connect_tls(
        uri: &str,
        tls: &ClientTls,
        authorization: Authorization,
    ) -> Result<Keys, ClientError> {
        preflight(uri, tls).await?;
        let channel = channel_tls(uri, tls).await?;
        Ok(Keys {
            keys: ApiKeysClient::with_interceptor(channel.clone(), authorization.clone()),
            oidc: OidcClient::with_interceptor(channel, authorization),
        })
    }

    /// Creates a key for `owner`; the answer holds the whole key, shown this once.
    pub async fn create(
        &mut self,
        owner: &str,
        roles: &[String],
        ttl_seconds: u64,
        description: &str,
    ) -> Result<CreateApiKeyResponse, ClientError> {
        let request = CreateApiKeyRequest {
            owner: owner.into(),
            roles: roles.to_vec(),
            ttl_seconds,
            description: description.into(),
        };
        Ok(self
            .keys
            .create_api_key(request)
            .await
            .map_err(rpc)?
            .into_inner())
    }

    /// The keys of `owner` (every key the caller may see when empty).
    pub async fn list(&mut self, owner: &str) -> Result<Vec<ApiKeyInfo>, ClientError> {
        let request = ListApiKeysRequest {
            owner: owner.into(),
        };
        Ok(self
            .keys
            .list_api_keys(request)
            .await
            .map_err(rpc)?
            .into_inner()
            .keys)
    }

    /// Revokes key `id`; when this returns, no live replica accepts it.
    pub async fn revoke(&mut self, id: &str) -> Result<(), ClientError> {
        let request = RevokeApiKeyRequest { id: id.into() };
        self.keys.revoke_api_key(request).await.map_err(rpc)?;
        Ok(())
    }

    /// Revokes the token `jti`, or every token of `subject` issued before now; returns the
    /// revocation's time (seconds since the epoch).
    pub async fn revoke_tokens(&mut self, jti: &str, subject: &str) -> Result<i64, ClientError> {
        let request = RevokeTokensRequest {
            jti: jti.into(),
            subject: subject.into(),
        };
        let answer = self.oidc.revoke_tokens(request).await.map_err(rpc)?;
        Ok(answer.into_inner().revoked_unix)
    }

    /// The OIDC revocations in force and the identities the answering replica saw recently.
    pub async fn list_oidc(&mut self) -> Result<ListOidcResponse, ClientError> {
        let answer = self.oidc.list_oidc(ListOidcRequest {}).await.map_err(rpc)?;
        Ok(answer.into_inner())
    }
}

fn rpc(status: tonic::Status) -> ClientError {
    ClientError::Rpc {
        code: status.code(),
        message: status.message().to_string(),
    }
}

fn check(status: Status) -> Result<(), ClientError> {
    match (status.code, status.error_code) {
        (0, 0) => Ok(()),
        (code, legacy) => Err(ClientError::Status {
            code: if code != 0 { code } else { legacy },
            reason: status.reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_line(input: &str, expected: Option<&str>) {
        let got = read_line(&mut input.as_bytes()).ok();
        assert_eq!(got.as_deref(), expected, "{input:?}");
    }

    #[test]
    fn secrets_are_read_one_line_at_a_time() {
        check_line("pw\n", Some("pw"));
        check_line("pw\r\nnext\n", Some("pw"));
        check_line("last", Some("last"));
        check_line(" spaced \n", Some(" spaced "));
        check_line("\n", Some(""));
        check_line("", None);
        let mut two = "first\nsecond\n".as_bytes();
        assert_eq!(read_line(&mut two).unwrap(), "first");
        assert_eq!(read_line(&mut two).unwrap(), "second");
    }

    #[test]
    fn the_header_is_attached_and_never_shown() {
        let auth = Authorization::credentials("root", "Milvus");
        let request = auth.apply(tonic::Request::new(()));
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "cm9vdDpNaWx2dXM="
        );
        assert_eq!(format!("{auth:?}"), "Authorization(<redacted>)");
        let none = Authorization::none().apply(tonic::Request::new(()));
        assert!(none.metadata().get("authorization").is_none());
        assert!(matches!(
            Authorization::header("bad\nvalue"),
            Err(ClientError::BadHeader)
        ));
    }
}
