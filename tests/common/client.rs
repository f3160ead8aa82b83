//! The tests' gRPC client: a tonic `MilvusServiceClient` that sends the `authorization`
//! header the way pymilvus does (base64 of `user:password`), or exactly as a test gives it.

use base64::Engine;
use credstore::proto::milvus::milvus_service_client::MilvusServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Client = MilvusServiceClient<InterceptedService<Channel, Interceptor>>;

pub fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A client sending `authorization` exactly as given (None: no header).
pub async fn client_with_header(uri: &str, header: Option<&str>) -> Client {
    let channel = Channel::from_shared(uri.to_string())
        .expect("a valid server URI")
        .connect()
        .await
        .expect("server reachable");
    let header: Option<tonic::metadata::MetadataValue<_>> =
        header.map(|h| h.parse().expect("ASCII header"));
    let interceptor: Interceptor = Box::new(move |mut request| {
        if let Some(value) = &header {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    });
    MilvusServiceClient::with_interceptor(channel, interceptor)
}

/// A client authenticating as `user` with `password`, as pymilvus does.
pub async fn client(uri: &str, user: &str, password: &str) -> Client {
    client_with_header(uri, Some(&b64(&format!("{user}:{password}")))).await
}
