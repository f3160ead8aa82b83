//! `credstore bench`: a load generator for any Milvus-compatible endpoint (credstore or Milvus
//! itself). N connections × K in-flight requests for a fixed time (or a fixed number of
//! requests), one chosen RPC, and a report of requests/s, latency percentiles and errors by
//! kind. Operators can point it at their own cluster; `scripts/bench.sh` uses it for
//! BENCHMARKS.md, with [`upstream`], an empty `MilvusService` to put behind the proxy tier.

pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::client::{self, Authorization, ClientError};
use crate::proto::common::Status;
use crate::proto::milvus::*;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rpc {
    /// `Connect` as the configured user.
    Connect,
    /// `GetVersion` as the configured user (the cheapest authenticated call).
    GetVersion,
    /// `ListCredUsers` as the configured user.
    ListUsers,
    /// `GetVersion` as `{prefix}{i}` for i in 0..users, round robin (fills the cache).
    LoginUsers,
    /// `CreateCredential` of `{prefix}{i}` for i in 0..users, once each.
    CreateUsers,
    /// Each worker changes its own user's (`{prefix}{worker}`) password back and forth.
    UpdatePassword,
    /// `GetVersion` with a distinct wrong password each time, for existing and unknown users.
    WrongPasswords,
    /// `HasCollection` of `--collection` as the configured user: a call credstore forwards
    /// (authenticated, authorized, then sent upstream), never answers itself.
    HasCollection,
}

/// What to run: also the command line of `credstore bench` (no `Debug`: it holds passwords).
#[derive(Clone, clap::Args)]
pub struct BenchConfig {
    #[arg(long, default_value = "http://127.0.0.1:19530")]
    pub uri: String,
    #[arg(long, value_enum, default_value = "get-version")]
    pub rpc: Rpc,
    /// gRPC connections (HTTP/2 channels).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long = "seconds", default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,
    /// The user of the RPCs that are not per-user.
    #[arg(long, default_value = "root")]
    pub user: String,
    #[arg(
        long,
        env = "CREDSTORE_PASSWORD",
        hide_env_values = true,
        default_value = "Milvus"
    )]
    pub password: String,
    /// Name prefix of the per-user RPCs' users: `{prefix}{i}`.
    #[arg(long, default_value = "bench_")]
    pub prefix: String,
    /// How many per-user users exist (or to create).
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Password of the per-user users.
    #[arg(long, default_value = "bench-password")]
    pub user_password: String,
    /// Stop after this many requests in all (default: run for --seconds; CreateUsers: --users).
    #[arg(long)]
    pub requests: Option<u64>,
    /// The collection `HasCollection` asks about.
    #[arg(long, default_value = "bench")]
    pub collection: String,
    /// For an `https://` --uri.
    #[command(flatten)]
    pub tls: crate::tls::ClientTls,
    /// Open every connection from this local address (plaintext only): `127.0.0.2` makes
    /// the load come from another peer than a run from `127.0.0.1` on the same machine.
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    raw.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{raw:?} is not a number of seconds"))
}

/// The outcome of one run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub rpc: String,
    pub connections: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub requests_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} x{}x{}: {:.0} req/s ok={} p50={}us p99={}us p999={}us max={}us errors={:?} ({:.1}s)",
            self.rpc,
            self.connections,
            self.concurrency,
            self.requests_per_second,
            self.ok,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors,
            self.seconds
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connect(#[from] ClientError),
}

/// Per-worker results.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

/// Runs the benchmark and reports.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let mut channels = Vec::new();
    for _ in 0..config.connections.max(1) {
        channels.push(match config.source_ip {
            Some(source) => client::channel_from(&config.uri, source).await?,
            None => client::channel_tls(&config.uri, &config.tls).await?,
        });
    }
    let config = Arc::new(config);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut workers = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        for k in 0..config.concurrency.max(1) {
            let worker = (c * config.concurrency.max(1) + k) as u64;
            let task = work(
                channel.clone(),
                config.clone(),
                worker,
                next.clone(),
                deadline,
            );
            workers.push(tokio::spawn(task));
        }
    }
    let mut all = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(tally) => {
                all.latencies_us.extend(tally.latencies_us);
                for (kind, n) in tally.errors {
                    *all.errors.entry(kind).or_default() += n;
                }
            }
            // Its requests are lost: the report must not look clean.
            Err(_) => *all.errors.entry("worker failed".into()).or_default() += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(report(&config, all, seconds))
}

fn report(config: &BenchConfig, mut tally: Tally, seconds: f64) -> Report {
    tally.latencies_us.sort_unstable();
    let at = |q: f64| -> u64 {
        match tally.latencies_us.len() {
            0 => 0,
            n => u64::from(tally.latencies_us[((n as f64 * q) as usize).min(n - 1)]),
        }
    };
    let total = tally.latencies_us.len() as u64;
    let errors: u64 = tally.errors.values().sum();
    Report {
        rpc: format!("{:?}", config.rpc),
        connections: config.connections,
        concurrency: config.concurrency,
        seconds,
        ok: total - errors,
        errors: tally.errors,
        requests_per_second: total as f64 / seconds.max(1e-9),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: tally
            .latencies_us
            .last()
            .copied()
            .map(u64::from)
            .unwrap_or(0),
    }
}

fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn with_auth<T>(message: T, authorization: &Authorization) -> tonic::Request<T> {
    authorization.apply(tonic::Request::new(message))
}

/// One in-flight request slot: loops until the deadline (or the work runs out).
async fn work(
    channel: Channel,
    config: Arc<BenchConfig>,
    worker: u64,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> Tally {
    let mut raw = tonic::client::Grpc::new(channel.clone());
    let mut client = client::client(channel, Authorization::none());
    let configured = Authorization::credentials(&config.user, &config.password);
    let mut tally = Tally::default();
    let own_user = format!("{}{worker}", config.prefix);
    let passwords = [
        config.user_password.clone(),
        format!("{}-next", config.user_password),
    ];
    let mut turn = 0usize;
    while Instant::now() < deadline {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let limit = match config.rpc {
            Rpc::CreateUsers => config.requests.or(Some(config.users)),
            _ => config.requests,
        };
        if limit.is_some_and(|limit| i >= limit) {
            break;
        }
        let sent = Instant::now();
        let outcome = match config.rpc {
            Rpc::Connect => {
                let request = with_auth(ConnectRequest::default(), &configured);
                client.connect(request).await.map(|r| r.into_inner().status)
            }
            Rpc::GetVersion => {
                let request = with_auth(GetVersionRequest {}, &configured);
                client
                    .get_version(request)
                    .await
                    .map(|r| r.into_inner().status)
            }
            Rpc::ListUsers => {
                let request = with_auth(ListCredUsersRequest::default(), &configured);
                client
                    .list_cred_users(request)
                    .await
                    .map(|r| r.into_inner().status)
            }
            Rpc::LoginUsers => {
                let user = format!("{}{}", config.prefix, i % config.users.max(1));
                let authorization = Authorization::credentials(&user, &config.user_password);
                let request = with_auth(GetVersionRequest {}, &authorization);
                client
                    .get_version(request)
                    .await
                    .map(|r| r.into_inner().status)
            }
            Rpc::CreateUsers => {
                let body = CreateCredentialRequest {
                    username: format!("{}{i}", config.prefix),
                    password: b64(&config.user_password),
                    ..Default::default()
                };
                let request = with_auth(body, &configured);
                client
                    .create_credential(request)
                    .await
                    .map(|r| Some(r.into_inner()))
            }
            Rpc::UpdatePassword => {
                let (old, new) = (&passwords[turn % 2], &passwords[(turn + 1) % 2]);
                let body = UpdateCredentialRequest {
                    username: own_user.clone(),
                    old_password: b64(old),
                    new_password: b64(new),
                    ..Default::default()
                };
                let request = with_auth(body, &Authorization::credentials(&own_user, old));
                let result = client
                    .update_credential(request)
                    .await
                    .map(|r| Some(r.into_inner()));
                if matches!(&result, Ok(Some(status)) if status.code == 0 && status.error_code == 0)
                {
                    turn += 1;
                }
                result
            }
            Rpc::WrongPasswords => {
                let user = match i % 2 {
                    0 => format!("{}{}", config.prefix, i % config.users.max(1)),
                    _ => format!("nosuchuser{i}"),
                };
                let wrong = Authorization::credentials(&user, &format!("wrong-{worker}-{i}"));
                let request = with_auth(GetVersionRequest {}, &wrong);
                client
                    .get_version(request)
                    .await
                    .map(|r| r.into_inner().status)
            }
            Rpc::HasCollection => has_collection(&mut raw, &config.collection, &configured).await,
        };
        let elapsed = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        tally.latencies_us.push(elapsed);
        if let Some(kind) = error_kind(outcome) {
            *tally.errors.entry(kind).or_default() += 1;
        }
    }
    tally
}

/// `HasCollection`, which credstore's generated client does not have: the same call pymilvus
/// makes, on the raw gRPC client.
async fn has_collection(
    raw: &mut tonic::client::Grpc<Channel>,
    collection: &str,
    authorization: &Authorization,
) -> Result<Option<Status>, tonic::Status> {
    let body = HasCollectionRequest {
        collection_name: collection.to_string(),
        ..Default::default()
    };
    let path =
        http::uri::PathAndQuery::from_static("/milvus.proto.milvus.MilvusService/HasCollection");
    raw.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = ProstCodec::<HasCollectionRequest, BoolResponse>::default();
    raw.unary(with_auth(body, authorization), path, codec)
        .await
        .map(|r| r.into_inner().status)
}

fn error_kind(outcome: Result<Option<Status>, tonic::Status>) -> Option<String> {
    match outcome {
        Ok(None) => None,
        Ok(Some(status)) if status.code == 0 && status.error_code == 0 => None,
        Ok(Some(status)) => Some(format!("status {}", status.code.max(status.error_code))),
        Err(status) => Some(format!("{:?}", status.code())),
    }
}
