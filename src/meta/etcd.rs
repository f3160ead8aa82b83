//! `MetaKv` on a real etcd cluster through `etcd-client`. Owns connection options (endpoints,
//! etcd auth, TLS) and the translation between etcd's types and ours; knows nothing of users.

use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions, WatchStream,
};

use crate::meta::lease::Lease;

use crate::meta::{
    Compare, Event, EventKind, KeyValue, MetaError, MetaKv, Op, Read, Revision, Txn, TxnOutcome,
    Watch, WatchMessage,
};

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// etcd's own authentication (user, password).
    pub auth: Option<(String, String)>,
    /// PEM contents: CA certificate, and an optional client certificate + key for mTLS.
    pub tls: Option<EtcdTls>,
    /// Deadline of each unary request.
    pub request_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client_cert_key_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
}

impl EtcdKv {
    /// Connects and checks that etcd answers.
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdKv, MetaError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            // Every request (watches and lease keep-alives included) is refused by a member
            // that has lost its leader, instead of being served from a stale, isolated member.
            .with_require_leader(true);
        if let Some((user, password)) = &options.auth {
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let mut endpoints = options.endpoints.clone();
        if let Some(tls) = &options.tls {
            let mut tls_options =
                TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client_cert_key_pem {
                tls_options = tls_options.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls_options);
            endpoints = endpoints.iter().map(|e| with_scheme(e, "https")).collect();
        } else {
            endpoints = endpoints.iter().map(|e| with_scheme(e, "http")).collect();
        }
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(map_err)?;
        let kv = EtcdKv { client };
        // The client connects lazily; one request proves etcd is there.
        kv.client.clone().status().await.map_err(map_err)?;
        Ok(kv)
    }

    /// The underlying client, for tests that drive etcd directly (compaction). The server
    /// itself goes through `MetaKv` and `Leases` only.
    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

fn with_scheme(endpoint: &str, scheme: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("{scheme}://{endpoint}")
    }
}

/// Sorts etcd's errors into "etcd is not reachable" (retryable) and everything else.
pub(crate) fn map_err(err: etcd_client::Error) -> MetaError {
    use tonic::Code;
    match err {
        etcd_client::Error::GRpcStatus(status)
            if matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ) =>
        {
            MetaError::Unavailable(status.message().to_string())
        }
        etcd_client::Error::TransportError(e) => MetaError::Unavailable(e.to_string()),
        etcd_client::Error::IoError(e) => MetaError::Unavailable(e.to_string()),
        other => MetaError::Etcd(other.to_string()),
    }
}

/// Runs `call` again (up to 4 more times) when it failed before reaching etcd — a refused
/// connection to one dead member of a cluster. Such a request did nothing, so even a
/// transaction is safe to resend; etcd-client's balancer then picks another member.
async fn retry_unsent<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if attempt < 4 && never_sent(&e) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
            }
            other => return other,
        }
    }
}

fn never_sent(err: &etcd_client::Error) -> bool {
    let text = err.to_string();
    text.contains("tcp connect error") || text.contains("Connection refused")
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map(|h| h.revision()).unwrap_or_default()
}

impl EtcdKv {
    /// One range read, resent if it never reached etcd.
    async fn range(
        &self,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, MetaError> {
        retry_unsent(|| {
            let (mut client, options) = (self.client.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
        .map_err(map_err)
    }
}

impl MetaKv for EtcdKv {
    async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, MetaError> {
        let response = self.range(key, None).await?;
        Ok(Read {
            value: response.kvs().first().map(to_kv),
            revision: header_revision(response.header()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Read<Vec<KeyValue>>, MetaError> {
        let response = self
            .range(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(Read {
            value: response.kvs().iter().map(to_kv).collect(),
            revision: header_revision(response.header()),
        })
    }

    async fn list_keys(&self, prefix: &str) -> Result<Read<Vec<String>>, MetaError> {
        let response = self
            .range(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let keys = response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        Ok(Read {
            value: keys,
            revision: header_revision(response.header()),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => {
                    EtcdCompare::create_revision(key.as_str(), CompareOp::Equal, 0)
                }
                Compare::ModRevision(key, rev) => {
                    EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(key.as_str(), value.clone(), None),
                Op::Delete(key) => TxnOp::delete(key.as_str(), None),
                Op::DeletePrefix(prefix) => {
                    TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let request = EtcdTxn::new().when(compares).and_then(ops);
        let response = retry_unsent(|| {
            let (mut client, request) = (self.client.clone(), request.clone());
            async move { client.txn(request).await }
        })
        .await
        .map_err(map_err)?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, MetaError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let stream = retry_unsent(|| {
            let (mut client, options) = (self.client.clone(), options.clone());
            async move { client.watch(prefix, Some(options)).await }
        })
        .await
        .map_err(map_err)?;
        Ok(Watch::Etcd(EtcdWatch {
            stream,
            from,
            synced: false,
            created_at: None,
            answers: 0,
        }))
    }
}

/// An etcd watch stream, translated into [`WatchMessage`]s.
///
/// Progress is reported only once the watch has caught up: etcd 3.4 answers a progress
/// request with the store's current revision even while it is still replaying history to
/// this watch, which would claim changes as applied before their events arrived.
pub struct EtcdWatch {
    stream: WatchStream,
    /// The start revision asked for.
    from: Revision,
    /// Whether every change up to the creation revision has been delivered.
    synced: bool,
    /// The store revision when etcd created the watch.
    created_at: Option<Revision>,
    /// Responses received, including those not passed on (a sign of life while replaying).
    answers: u64,
}

impl EtcdWatch {
    pub(crate) async fn next(&mut self) -> Result<WatchMessage, MetaError> {
        loop {
            let Some(response) = self.stream.message().await.map_err(map_err)? else {
                return Err(MetaError::WatchClosed);
            };
            self.answers += 1;
            // etcd 3.4 reports a compacted start revision as a cancel with compact_revision set.
            if response.compact_revision() > 0 {
                return Ok(WatchMessage::Compacted {
                    compact_revision: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(MetaError::Etcd(format!(
                    "watch canceled: {}",
                    response.cancel_reason()
                )));
            }
            let revision = header_revision(response.header());
            if response.created() {
                self.created_at = Some(revision);
                self.synced = self.from > revision;
            }
            if response.events().is_empty() {
                match response.created() || !self.synced {
                    true => continue,
                    false => return Ok(WatchMessage::Progress { revision }),
                }
            }
            // Every event of this watch up to the newest one in the batch has been delivered.
            let revision = response
                .events()
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| kv.mod_revision())
                .max()
                .unwrap_or(revision);
            if self.created_at.is_some_and(|created| revision >= created) {
                self.synced = true;
            }
            let events = response
                .events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    let kind = match e.event_type() {
                        etcd_client::EventType::Put => EventKind::Put,
                        etcd_client::EventType::Delete => EventKind::Delete,
                    };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    Some(Event {
                        kind,
                        key,
                        value: kv.value().to_vec(),
                        revision: kv.mod_revision(),
                    })
                })
                .collect();
            return Ok(WatchMessage::Events { events, revision });
        }
    }

    pub(crate) async fn request_progress(&mut self) -> Result<(), MetaError> {
        self.stream.request_progress().await.map_err(map_err)
    }

    pub(crate) fn answers(&self) -> u64 {
        self.answers
    }
}

/// Leases on etcd (see `meta::lease`).
impl EtcdKv {
    pub(crate) async fn lease_grant(&self, ttl: Duration) -> Result<Lease, MetaError> {
        let seconds = ttl.as_secs().max(1) as i64;
        let response = retry_unsent(|| {
            let mut client = self.client.clone();
            async move { client.lease_grant(seconds, None).await }
        })
        .await
        .map_err(map_err)?;
        Ok(Lease::new(
            response.id(),
            Duration::from_secs(seconds as u64),
        ))
    }

    pub(crate) async fn lease_keep_alive(&self, lease: &Lease) -> Result<bool, MetaError> {
        // etcd-client sends one keep-alive and reads its answer before returning; an expired
        // lease comes back as an error, not as a TTL of 0.
        match self.client.clone().lease_keep_alive(lease.id()).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    pub(crate) async fn lease_put(
        &self,
        lease: &Lease,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Revision, MetaError> {
        let options = PutOptions::new().with_lease(lease.id());
        let response = retry_unsent(|| {
            let (mut client, value, options) =
                (self.client.clone(), value.clone(), options.clone());
            async move { client.put(key, value, Some(options)).await }
        })
        .await
        .map_err(map_err)?;
        Ok(header_revision(response.header()))
    }

    pub(crate) async fn lease_revoke(&self, lease: &Lease) -> Result<(), MetaError> {
        lease.mark_revoked();
        match self.client.clone().lease_revoke(lease.id()).await {
            Ok(_) => Ok(()),
            // Already gone (expired): nothing left to end.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(e)),
        }
    }
}
