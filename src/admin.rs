//! The admin CLI's client side: `credstore user …` and `credstore health` talk to a running
//! server over the same gRPC API pymilvus uses, with the same `authorization` header.

use base64::Engine;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto::common::Status;
use crate::proto::milvus::milvus_service_client::MilvusServiceClient;
use crate::proto::milvus::*;

/// Adds the `authorization` header to every call.
type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = MilvusServiceClient<InterceptedService<Channel, Interceptor>>;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach {uri}: {reason}")]
    Connect { uri: String, reason: String },
    #[error("server refused: {code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("failed (code {code}): {reason}")]
    Status { code: i32, reason: String },
}

/// A connected admin client, authenticating as `user` with `password` (if given).
pub struct Admin {
    client: Client,
}

fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

impl Admin {
    pub async fn connect(
        uri: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<Admin, AdminError> {
        let connect_err = |reason: String| AdminError::Connect {
            uri: uri.to_string(),
            reason,
        };
        let channel = Endpoint::from_shared(uri.to_string())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let header: Option<MetadataValue<_>> = match credentials {
            Some((user, password)) => Some(
                b64(&format!("{user}:{password}"))
                    .parse()
                    .map_err(|_| connect_err("bad credentials".into()))?,
            ),
            None => None,
        };
        let interceptor: Interceptor = Box::new(move |mut request: tonic::Request<()>| {
            if let Some(value) = &header {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            Ok(request)
        });
        Ok(Admin {
            client: MilvusServiceClient::with_interceptor(channel, interceptor),
        })
    }

    pub async fn create_user(&mut self, name: &str, password: &str) -> Result<(), AdminError> {
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
    ) -> Result<(), AdminError> {
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

    pub async fn delete_user(&mut self, name: &str) -> Result<(), AdminError> {
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

    pub async fn list_users(&mut self) -> Result<Vec<String>, AdminError> {
        let response = self
            .client
            .list_cred_users(ListCredUsersRequest::default())
            .await
            .map_err(rpc)?
            .into_inner();
        check(response.status.unwrap_or_default())?;
        Ok(response.usernames)
    }

    /// Whether the server answers at all; UNAUTHENTICATED counts as an answer.
    pub async fn health(&mut self) -> Result<(), AdminError> {
        match self.client.get_version(GetVersionRequest::default()).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(()),
            Err(status) => Err(rpc(status)),
        }
    }
}

fn rpc(status: tonic::Status) -> AdminError {
    AdminError::Rpc {
        code: status.code(),
        message: status.message().to_string(),
    }
}

fn check(status: Status) -> Result<(), AdminError> {
    match (status.code, status.error_code) {
        (0, 0) => Ok(()),
        (code, legacy) => Err(AdminError::Status {
            code: if code != 0 { code } else { legacy },
            reason: status.reason,
        }),
    }
}
