//! `MetaKv` on a real etcd cluster through `etcd-client`. Owns connection options (endpoints,
//! etcd auth, TLS) and the translation between etcd's types and ours; knows nothing of users.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient,
    PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchClient, WatchOptions, WatchStream,
};

use crate::meta::lease::Lease;

use crate::meta::{
    Compare, Event, EventKind, KeyValue, MetaError, MetaKv, Op, Read, Revision, Txn, TxnOutcome,
    Watch, WatchMessage, prefix_end,
};

/// The largest gRPC message the KV and watch clients accept or send. tonic's default of
/// 4 MiB is below what etcd legitimately answers: one watch response replays up to 1000
/// revisions, each up to etcd's `--max-request-bytes` (1.5 MiB by default), and a replay
/// over the limit failed the same way on every reopen, wedging the watch for good.
/// Listings are paged (see [`PAGE_BYTES`]), so they stay far below it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The most keys one range request of `list`/`list_keys` asks for. Every page is read at
/// the first page's revision, so a listing is one consistent snapshot however long it is.
/// Pages are large because etcd 3.4 walks the whole rest of the range's index for every
/// page: a million keys listed 10 000 at a time took 13–37 s, 100 000 at a time 3–4 s
/// (BENCHMARKS.md, "Listing at scale").
pub const DEFAULT_PAGE_SIZE: usize = 100_000;

/// About how many bytes one page should carry: after the first page (at most
/// [`FIRST_PAGE`] keys) the page size follows the average size of the keys and values seen,
/// so neither the client nor etcd ever builds a response much larger than this.
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// The most keys in the first page of a listing, before any size is known.
const FIRST_PAGE: usize = 1_000;

/// How often a listing starts over when etcd compacted its revision between two pages.
const LISTING_ATTEMPTS: usize = 3;

/// How to reach etcd. `Debug` never shows the password or the TLS key.
#[derive(Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// etcd's own authentication (user, password).
    pub auth: Option<(String, String)>,
    /// PEM contents: CA certificate, and an optional client certificate + key for mTLS.
    pub tls: Option<EtcdTls>,
    /// Deadline of each unary request.
    pub request_timeout: Duration,
}

/// PEM contents for etcd over TLS. `Debug` shows the sizes of the certificates, never the key.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client_cert_key_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| (user, "<redacted>")),
            )
            .field("tls", &self.tls)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pem = |bytes: &Vec<u8>| format!("<{} bytes>", bytes.len());
        f.debug_struct("EtcdTls")
            .field("ca_pem", &pem(&self.ca_pem))
            .field(
                "client_cert_key_pem",
                &self
                    .client_cert_key_pem
                    .as_ref()
                    .map(|(cert, key)| (pem(cert), format!("<redacted {} bytes>", key.len()))),
            )
            .finish()
    }
}

/// One page of a listing read at one revision (see [`EtcdKv::page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub kvs: Vec<KeyValue>,
    /// The revision every key of the page was read at.
    pub revision: Revision,
    /// Whether keys under the prefix follow the page's last key.
    pub more: bool,
}

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    /// `client`'s KV and watch clients with [`MAX_MESSAGE_BYTES`] limits.
    kv: KvClient,
    watch: WatchClient,
    page_size: usize,
    /// Told how long each get, list (all its pages) and txn took; set once, shared by clones.
    latency: Arc<OnceLock<LatencyObserver>>,
}

/// Called with a request's kind (`get`, `list`, `txn`) and how long it took, failures included.
pub type LatencyObserver = Box<dyn Fn(&'static str, Duration) + Send + Sync>;

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
        let kv = EtcdKv {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            client,
            page_size: DEFAULT_PAGE_SIZE,
            latency: Arc::default(),
        };
        // The client connects lazily; one request proves etcd is there.
        kv.client.clone().status().await.map_err(map_err)?;
        Ok(kv)
    }

    /// The same handle reading listings `page_size` keys per request (at least 1).
    /// Reports every request's latency to `observer` (the first observer set stays).
    pub fn observe_latency(&self, observer: LatencyObserver) {
        let _ = self.latency.set(observer);
    }

    /// `result`, after telling the observer that `op` took since `started`.
    fn observed<T>(&self, op: &'static str, started: Instant, result: T) -> T {
        if let Some(observer) = self.latency.get() {
            observer(op, started.elapsed());
        }
        result
    }

    pub fn with_page_size(mut self, page_size: usize) -> EtcdKv {
        self.page_size = page_size.max(1);
        self
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

/// Errors that mean the request never left this process: a refused connection, or hyper
/// cancelling a request still queued on a connection that closed (a killed member) — hyper
/// reports a request already written and then cut off differently ("connection closed before
/// message completed", "connection reset"), and those are not resent.
fn never_sent(err: &etcd_client::Error) -> bool {
    let text = err.to_string();
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("operation was canceled")
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

/// etcd answered that the revision asked for is compacted away.
fn is_compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// The answer was over the client's message limit (too many large values in one page).
fn is_too_large(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("too large"))
}

impl EtcdKv {
    /// One range read, resent if it never reached etcd.
    async fn range(
        &self,
        key: impl Into<Vec<u8>> + Clone,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        retry_unsent(|| {
            let (mut kv, key, options) = (self.kv.clone(), key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    /// Every key under `prefix`, read in pages of at most `page_size` keys and about
    /// [`PAGE_BYTES`], all pages at the revision of the first. A compaction of that
    /// revision mid-way starts the listing over (a few times, then it is an error); a page
    /// over the message limit is asked for again in halves.
    async fn list_paged<T>(
        &self,
        prefix: &str,
        keys_only: bool,
        convert: impl Fn(&etcd_client::KeyValue) -> T,
    ) -> Result<Read<Vec<T>>, MetaError> {
        let end = prefix_end(prefix);
        let mut attempt = 0;
        'listing: loop {
            attempt += 1;
            let mut start = match prefix.is_empty() {
                true => vec![0],
                false => prefix.as_bytes().to_vec(),
            };
            let mut at: Option<Revision> = None;
            let mut page = self.page_size.min(FIRST_PAGE);
            let mut out = Vec::new();
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(i64::try_from(page).unwrap_or(i64::MAX));
                if keys_only {
                    options = options.with_keys_only();
                }
                if let Some(revision) = at {
                    options = options.with_revision(revision);
                }
                let response = match self.range(start.clone(), Some(options)).await {
                    Ok(response) => response,
                    Err(e) if is_too_large(&e) && page > 1 => {
                        page /= 2;
                        continue;
                    }
                    Err(e) if is_compacted(&e) && at.is_some() => {
                        if attempt < LISTING_ATTEMPTS {
                            tracing::debug!(prefix, "listing's revision compacted; starting over");
                            continue 'listing;
                        }
                        return Err(MetaError::Etcd(format!(
                            "listing {prefix}: etcd compacted the listing's revision \
                             {attempt} times while it was being read: {e}"
                        )));
                    }
                    Err(e) => return Err(map_err(e)),
                };
                let revision = *at.get_or_insert(header_revision(response.header()));
                let more = response.more();
                let kvs = response.kvs();
                if let Some(last) = kvs.last() {
                    start = last.key().to_vec();
                    start.push(0);
                }
                let empty = kvs.is_empty();
                let bytes: usize = kvs
                    .iter()
                    .map(|kv| kv.key().len() + kv.value().len() + 32)
                    .sum();
                if let Some(average) = bytes.checked_div(kvs.len()) {
                    page = (PAGE_BYTES / average.max(1)).clamp(1, self.page_size);
                }
                out.extend(kvs.iter().map(&convert));
                if !more || empty {
                    return Ok(Read {
                        value: out,
                        revision,
                    });
                }
            }
        }
    }
}

impl EtcdKv {
    /// At most `limit` keys under `prefix` that sort after `after` (from the first when
    /// `None`), read at revision `at` (the current one when `None`; the page says which it
    /// was). A long keyspace is read page by page at the first page's revision, so memory
    /// follows the page, not the keyspace. A revision etcd has compacted is an error that
    /// says so.
    pub async fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        at: Option<Revision>,
        limit: usize,
    ) -> Result<Page, MetaError> {
        let start = match after {
            Some(key) => {
                let mut start = key.as_bytes().to_vec();
                start.push(0);
                start
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(i64::try_from(limit.max(1)).unwrap_or(i64::MAX));
        if let Some(revision) = at {
            options = options.with_revision(revision);
        }
        let started = Instant::now();
        let response = self.range(start, Some(options)).await;
        let response = self
            .observed("list", started, response)
            .map_err(|e| compacted_or(e, prefix, at))?;
        Ok(Page {
            kvs: response.kvs().iter().map(to_kv).collect(),
            revision: header_revision(response.header()),
            more: response.more(),
        })
    }

    /// Every key under each of `prefixes` (at most [`crate::meta::MAX_TXN_OPS`]), all read at
    /// revision `at` in one request (a read-only transaction). A compacted `at` is an error.
    pub async fn list_each_at(
        &self,
        prefixes: &[String],
        at: Revision,
    ) -> Result<Vec<Vec<KeyValue>>, MetaError> {
        let ops: Vec<TxnOp> = prefixes
            .iter()
            .map(|prefix| {
                let options = GetOptions::new().with_prefix().with_revision(at);
                TxnOp::get(prefix.as_str(), Some(options))
            })
            .collect();
        let responses = self.read_txn(ops).await.map_err(|e| {
            let first = prefixes.first().map(String::as_str).unwrap_or_default();
            compacted_or(e, first, Some(at))
        })?;
        Ok(responses
            .into_iter()
            .map(|(kvs, _)| kvs.iter().map(to_kv).collect())
            .collect())
    }

    /// Runs range operations as one read-only transaction; each answer's key-values and the
    /// transaction's revision.
    async fn read_txn(
        &self,
        ops: Vec<TxnOp>,
    ) -> Result<Vec<(Vec<etcd_client::KeyValue>, Revision)>, etcd_client::Error> {
        let request = EtcdTxn::new().and_then(ops);
        let started = Instant::now();
        let response = retry_unsent(|| {
            let (mut kv, request) = (self.kv.clone(), request.clone());
            async move { kv.txn(request).await }
        })
        .await;
        let response = self.observed("get", started, response)?;
        let revision = header_revision(response.header());
        Ok(response
            .op_responses()
            .into_iter()
            .map(|answer| match answer {
                etcd_client::TxnOpResponse::Get(get) => (get.kvs().to_vec(), revision),
                _ => (Vec::new(), revision),
            })
            .collect())
    }
}

/// A read at a compacted revision says so (with the prefix and revision); anything else is
/// mapped as usual.
fn compacted_or(err: etcd_client::Error, prefix: &str, at: Option<Revision>) -> MetaError {
    match (is_compacted(&err), at) {
        (true, Some(revision)) => MetaError::Etcd(format!(
            "reading {prefix} at revision {revision}: etcd has compacted that revision"
        )),
        _ => map_err(err),
    }
}

impl MetaKv for EtcdKv {
    async fn get(&self, key: &str) -> Result<Read<Option<KeyValue>>, MetaError> {
        let started = Instant::now();
        let response = self.range(key, None).await;
        let response = self.observed("get", started, response).map_err(map_err)?;
        Ok(Read {
            value: response.kvs().first().map(to_kv),
            revision: header_revision(response.header()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Read<Vec<KeyValue>>, MetaError> {
        let started = Instant::now();
        let listed = self.list_paged(prefix, false, to_kv).await;
        self.observed("list", started, listed)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Read<Vec<String>>, MetaError> {
        let started = Instant::now();
        let listed = self
            .list_paged(prefix, true, |kv| {
                String::from_utf8_lossy(kv.key()).into_owned()
            })
            .await;
        self.observed("list", started, listed)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Read<Vec<Option<KeyValue>>>, MetaError> {
        let ops = keys
            .iter()
            .map(|key| TxnOp::get(key.as_str(), None))
            .collect();
        let answers = self.read_txn(ops).await.map_err(map_err)?;
        let revision = answers.first().map(|(_, r)| *r).unwrap_or_default();
        let value = answers
            .iter()
            .map(|(kvs, _)| kvs.first().map(to_kv))
            .collect();
        Ok(Read { value, revision })
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
        let started = Instant::now();
        let response = retry_unsent(|| {
            let (mut kv, request) = (self.kv.clone(), request.clone());
            async move { kv.txn(request).await }
        })
        .await;
        let response = self.observed("txn", started, response).map_err(map_err)?;
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
            let (mut watch, options) = (self.watch.clone(), options.clone());
            async move { watch.watch(prefix, Some(options)).await }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_neither_the_password_nor_the_key() {
        let options = EtcdOptions {
            endpoints: vec!["e:2379".into()],
            auth: Some(("etcd-user".into(), "etcd-secret-pw".into())),
            tls: Some(EtcdTls {
                ca_pem: b"CA-PEM".to_vec(),
                client_cert_key_pem: Some((b"CERT-PEM".to_vec(), b"PRIVATE-KEY-PEM".to_vec())),
            }),
            request_timeout: Duration::from_secs(5),
        };
        for shown in [format!("{options:?}"), format!("{options:#?}")] {
            for secret in ["etcd-secret-pw", "PRIVATE-KEY-PEM"] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
            assert!(
                shown.contains("etcd-user") && shown.contains("e:2379"),
                "{shown}"
            );
        }
    }
}
