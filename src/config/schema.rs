//! The file's shape: `Config` and its sections with milvus.yaml's key names, each section's
//! defaults, and the value types the file uses (`Secret`, `StringList`). Only what a key may
//! hold lives here: merging the sources is `sources.rs`, rules across keys `validate.rs`,
//! component settings `derive.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::auth::LockoutPolicy;
use crate::password::{Limits, MIN_ARGON2, MIN_BCRYPT_COST, Secret};
use crate::tls::ClientTls;
use crate::transport::ConnectionSettings;

/// A list given either as a YAML list or as one comma-separated string (entries trimmed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let items = match Raw::deserialize(deserializer)? {
            Raw::One(s) => s.split(',').map(str::to_string).collect(),
            Raw::Many(v) => v,
        };
        Ok(StringList(
            items
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub etcd: EtcdConfig,
    pub proxy: ProxyConfig,
    pub common: CommonConfig,
    /// Milvus's `tls` section: the server's files for `common.security.tlsMode` 1 and 2.
    pub tls: TlsFiles,
    pub credstore: CredstoreConfig,
}

/// `tls.*`: read only when `common.security.tlsMode` is 1 or 2.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct TlsFiles {
    pub server_pem_path: String,
    pub server_key_path: String,
    pub ca_pem_path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct EtcdConfig {
    /// Empty (the default) means the embedded store.
    pub endpoints: StringList,
    pub root_path: String,
    pub meta_sub_path: String,
    /// Accepted for milvus.yaml compatibility; credstore stores nothing there.
    pub kv_sub_path: String,
    #[serde(rename = "use")]
    pub use_: EtcdUse,
    pub data: EtcdData,
    pub ssl: EtcdSsl,
    pub auth: EtcdAuth,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: StringList::default(),
            root_path: "by-dev".into(),
            meta_sub_path: "meta".into(),
            kv_sub_path: "kv".into(),
            use_: EtcdUse::default(),
            data: EtcdData::default(),
            ssl: EtcdSsl::default(),
            auth: EtcdAuth::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdUse {
    /// Use the embedded store even if endpoints are configured.
    pub embed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdData {
    /// Where the embedded store keeps its file (`credstore.redb` inside this directory).
    pub dir: String,
}

impl Default for EtcdData {
    fn default() -> Self {
        EtcdData {
            dir: "default.etcd".into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct EtcdSsl {
    pub enabled: bool,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    #[serde(rename = "tlsCACert")]
    pub tls_ca_cert: Option<String>,
    /// Accepted for milvus.yaml compatibility (which writes `1.3`, a YAML number); rustls
    /// negotiates TLS 1.2 or 1.3.
    #[serde(deserialize_with = "text_or_number")]
    pub tls_min_version: Option<String>,
}

/// A string setting milvus.yaml may write as a bare number (`tlsMinVersion: 1.3`).
fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct EtcdAuth {
    pub enabled: bool,
    pub user_name: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub port: u16,
    pub max_username_length: usize,
    pub min_password_length: usize,
    pub max_password_length: usize,
    /// Most roles, counting `admin` and `public` (Milvus's `proxy.maxRoleNum`).
    pub max_role_num: usize,
    /// Whether `public` gets Milvus's default grants at first start.
    pub enable_public_privilege: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let limits = Limits::default();
        ProxyConfig {
            port: 19530,
            max_username_length: limits.max_username_len,
            min_password_length: limits.min_password_len,
            max_password_length: limits.max_password_len,
            max_role_num: 10,
            enable_public_privilege: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommonConfig {
    pub security: SecurityConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct SecurityConfig {
    /// credstore's default is `true`: a credential store that accepts anyone is no store.
    pub authorization_enabled: bool,
    pub super_users: StringList,
    pub default_root_password: Secret,
    /// When set, `root` passes privilege checks only through its roles, as any user.
    pub root_should_bind_role: bool,
    /// 0 plaintext, 1 server TLS, 2 mutual TLS (files from the `tls` section).
    pub tls_mode: u8,
    /// `common.security.rbac.*`: the built-in privilege groups' overrides.
    pub rbac: RbacConfig,
}

/// `common.security.rbac`: Milvus's overrides of the 9 built-in privilege groups, read only
/// when `overrideBuiltInPrivilegeGroups.enabled` is set. A list left empty keeps the group's
/// default members (Milvus's default value of each key is that list).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct RbacConfig {
    pub override_built_in_privilege_groups: Enabled,
    pub cluster: GroupTiers,
    pub database: GroupTiers,
    pub collection: GroupTiers,
}

/// `{ enabled: bool }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Enabled {
    pub enabled: bool,
}

/// `readonly` / `readwrite` / `admin` of one level (cluster, database, collection).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupTiers {
    pub readonly: GroupMembers,
    pub readwrite: GroupMembers,
    pub admin: GroupMembers,
}

/// `privileges`: a comma list (or YAML list) of privilege names, API spelling.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupMembers {
    pub privileges: StringList,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            authorization_enabled: true,
            super_users: StringList::default(),
            default_root_password: Secret::new("Milvus"),
            root_should_bind_role: false,
            tls_mode: 0,
            rbac: RbacConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct CredstoreConfig {
    /// Address to listen on when `--listen` is not given; the port is `proxy.port`.
    pub listen_host: String,
    pub password: PasswordConfig,
    pub cache: CacheConfig,
    pub session: SessionConfig,
    /// How long a credential write waits for every live replica to apply it; 0 (the default)
    /// means the session TTL plus half of it (at least 2 s more), so a replica cut off from
    /// etcd is dropped (its lease expires) before a writer gives up.
    pub ack_timeout_ms: u64,
    /// Deadline of each etcd request.
    pub etcd_timeout_ms: u64,
    /// A failed authentication is answered after this long (throttles password guessing and
    /// floods of bad logins at no CPU cost).
    pub failed_auth_delay_ms: u64,
    /// The Milvus that calls credstore does not own are forwarded to (the proxy tier).
    pub upstream: UpstreamConfig,
    /// Metrics and health probes over HTTP.
    pub http: HttpConfig,
    /// How a replica stops (SIGTERM).
    pub shutdown: ShutdownConfig,
    /// The audit log of changes and failed logins.
    pub audit: AuditConfig,
    /// OIDC single sign-on: JWTs from one issuer as pymilvus's `token`.
    pub oidc: OidcConfig,
    /// Locks after repeated failed logins (issue 18).
    pub lockout: LockoutConfig,
    /// The gRPC port's connections: time limits and caps.
    pub grpc: GrpcConfig,
}

impl Default for CredstoreConfig {
    fn default() -> Self {
        CredstoreConfig {
            listen_host: "0.0.0.0".into(),
            password: PasswordConfig::default(),
            cache: CacheConfig::default(),
            session: SessionConfig::default(),
            ack_timeout_ms: 0,
            etcd_timeout_ms: 5_000,
            failed_auth_delay_ms: 250,
            upstream: UpstreamConfig::default(),
            http: HttpConfig::default(),
            shutdown: ShutdownConfig::default(),
            audit: AuditConfig::default(),
            oidc: OidcConfig::default(),
            lockout: LockoutConfig::default(),
            grpc: GrpcConfig::default(),
        }
    }
}

/// `credstore.oidc.*`: off while `issuer` is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct OidcConfig {
    /// The `iss` tokens must carry; empty turns OIDC off.
    pub issuer: String,
    /// The `aud` tokens must carry (one of theirs).
    pub audience: String,
    /// The issuer's keys: `https://…` (verified against `caPemPath`) or `file:///…`.
    pub jwks_uri: String,
    /// The CA that signed the JWKS server's certificate (no system roots are trusted).
    pub ca_pem_path: String,
    /// The claim whose value (after `userPrefix`) is the caller's name.
    pub username_claim: String,
    /// The claim (a string or a list of strings) mapped to roles by `roleMapping`.
    pub roles_claim: String,
    /// Claim value → credstore role; values not listed grant nothing.
    pub role_mapping: std::collections::BTreeMap<String, String>,
    /// Put before every OIDC name; must hold a character no local user name can, so an
    /// identity from the issuer can never be a local user.
    pub user_prefix: String,
    /// Tolerance of `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The JWKS is fetched again for an unknown `kid` at most this often.
    pub jwks_refetch_seconds: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_uri: String::new(),
            ca_pem_path: String::new(),
            username_claim: "sub".into(),
            roles_claim: "groups".into(),
            role_mapping: Default::default(),
            user_prefix: "oidc:".into(),
            leeway_seconds: 30,
            jwks_refetch_seconds: 10,
        }
    }
}

/// `credstore.lockout.*`: failed logins counted per (user name, peer address) and per user
/// name across replicas; see `auth::LockoutPolicy` (whose defaults these are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct LockoutConfig {
    pub enabled: bool,
    /// Failures of one user name from one address that lock that pair.
    pub threshold: u32,
    /// Failures of one user name from any addresses that lock the name (never root's).
    pub account_threshold: u32,
    /// How long a lock lasts.
    pub duration_seconds: u64,
    /// A count lapses this long after its newest failure.
    pub reset_seconds: u64,
    /// Failed verifications (any name) one client address may cost a replica per second, four
    /// times that at once; beyond it RESOURCE_EXHAUSTED until it has some left. 0: unpaced.
    pub peer_failures_per_second: u32,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        let policy = LockoutPolicy::default();
        LockoutConfig {
            enabled: policy.enabled,
            threshold: policy.threshold,
            account_threshold: policy.account_threshold,
            duration_seconds: policy.duration.as_secs(),
            reset_seconds: policy.reset.as_secs(),
            peer_failures_per_second: policy.peer_failures_per_second,
        }
    }
}

/// `credstore.grpc`: the gRPC port's connections (`transport::ConnectionSettings`, whose
/// defaults these are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct GrpcConfig {
    /// TLS and the HTTP/2 preface must be complete within this long.
    pub handshake_timeout_ms: u64,
    /// A connection without a stream for this long gets GOAWAY.
    pub idle_timeout_seconds: u64,
    /// HTTP/2 PINGs this often; a peer not answering within the timeout is closed.
    pub keepalive_interval_seconds: u64,
    pub keepalive_timeout_seconds: u64,
    /// Connections open at once, in all and from one peer (lowered to fit the file limit).
    pub max_connections: u64,
    pub max_connections_per_peer: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        let d = ConnectionSettings::default();
        GrpcConfig {
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
            idle_timeout_seconds: d.idle_timeout.as_secs(),
            keepalive_interval_seconds: d.keepalive_interval.as_secs(),
            keepalive_timeout_seconds: d.keepalive_timeout.as_secs(),
            max_connections: d.max_connections as u64,
            max_connections_per_peer: d.max_connections_per_peer as u64,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Where the audit log's JSON lines go: a file (appended to, reopened on SIGHUP), `-` for
    /// stderr, empty for none.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct HttpConfig {
    /// Port of the metrics and health endpoints (`/metrics`, `/healthz`, `/readyz`), on the
    /// gRPC listener's host; 0 serves none. 9091 is Milvus's own.
    pub port: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { port: 9091 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ShutdownConfig {
    /// On SIGTERM, how long the replica keeps serving while it reports NOT_SERVING (gRPC
    /// health) and 503 (`/readyz`), so load balancers stop sending before it stops.
    pub drain_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_ms: 2_000 }
    }
}

/// The algorithm new password hashes are written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    #[default]
    Argon2id,
    /// For etcd shared with Milvus itself, which can only read bcrypt.
    Bcrypt,
}

/// `credstore.upstream`: where forwarded calls go and how. `Debug` never shows the token (a
/// [`Secret`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// `http://host:port` of the upstream Milvus; empty: no upstream (those calls stay
    /// UNIMPLEMENTED).
    pub uri: String,
    /// `user:password` credstore presents upstream; empty: no `authorization` header.
    pub token: Secret,
    /// Largest request or response message forwarded (Milvus's gRPC default: 256 MiB).
    pub max_message_bytes: u64,
    /// Deadline of a forwarded call whose client sent no `grpc-timeout`.
    pub timeout_ms: u64,
    /// For an `https://` upstream.
    pub tls: UpstreamTls,
    /// Request bodies this replica holds at once, and one connection holds at once.
    pub max_in_flight_bytes: u64,
    pub max_in_flight_bytes_per_connection: u64,
    /// A forwarded request's body must be complete within this long.
    pub body_timeout_ms: u64,
}

/// `credstore.upstream.tls.*`: how credstore verifies an `https://` upstream, and the
/// certificate it presents when the upstream requires one (Milvus's tlsMode 2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct UpstreamTls {
    pub ca_pem_path: String,
    pub server_name: String,
    pub client_pem_path: String,
    pub client_key_path: String,
}

impl UpstreamTls {
    fn client(&self) -> ClientTls {
        let path = |p: &str| (!p.trim().is_empty()).then(|| PathBuf::from(p.trim()));
        ClientTls {
            ca_pem_path: path(&self.ca_pem_path),
            server_name: (!self.server_name.trim().is_empty())
                .then(|| self.server_name.trim().to_string()),
            client_pem_path: path(&self.client_pem_path),
            client_key_path: path(&self.client_key_path),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            uri: String::new(),
            token: Secret::default(),
            max_message_bytes: 256 * 1024 * 1024,
            // Below the server's 60 s per-request limit, so the caller sees this deadline.
            timeout_ms: 55_000,
            tls: UpstreamTls::default(),
            max_in_flight_bytes: 1024 * 1024 * 1024,
            // One largest message per connection; a quarter of the replica's budget.
            max_in_flight_bytes_per_connection: 256 * 1024 * 1024,
            body_timeout_ms: 30_000,
        }
    }
}

impl UpstreamConfig {
    /// The proxy tier's view of this section.
    pub fn options(&self) -> crate::proxy::Upstream {
        crate::proxy::Upstream {
            uri: self.uri.trim().to_string(),
            token: self.token.clone(),
            max_message_bytes: bytes(self.max_message_bytes),
            default_timeout: Duration::from_millis(self.timeout_ms),
            tls: self.tls.client(),
            max_in_flight_bytes: bytes(self.max_in_flight_bytes),
            max_in_flight_bytes_per_connection: bytes(self.max_in_flight_bytes_per_connection),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
        }
    }
}

fn bytes(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct PasswordConfig {
    /// `argon2id` (default) or `bcrypt` (for etcd shared with Milvus itself).
    pub algorithm: HashAlgorithm,
    pub argon2: Argon2Config,
    pub bcrypt_cost: u32,
    /// Permits parameters below OWASP's minimum. For tests only; logged loudly.
    pub allow_weak_parameters: bool,
    /// Hash computations running at once; 0 means one per CPU core.
    pub max_concurrent_hashes: usize,
    /// Hash computations allowed to wait for a slot; beyond that, RESOURCE_EXHAUSTED.
    pub max_queued_hashes: usize,
    /// Verifications one peer address may hold admitted (running or waiting); beyond that
    /// its logins get RESOURCE_EXHAUSTED while other addresses still get slots.
    pub max_queued_hashes_per_peer: usize,
    /// CPU priority of the hashing threads (Linux nice, 0..=19): higher yields the CPU to
    /// cached logins and other requests when hashing competes with them.
    pub hash_niceness: i32,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            algorithm: HashAlgorithm::default(),
            argon2: Argon2Config::default(),
            bcrypt_cost: MIN_BCRYPT_COST,
            allow_weak_parameters: false,
            max_concurrent_hashes: 0,
            max_queued_hashes: 256,
            max_queued_hashes_per_peer: 32,
            hash_niceness: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    #[serde(rename = "memoryKiB")]
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    /// OWASP's first recommendation, as `password` defines it.
    fn default() -> Self {
        let (memory_kib, iterations, parallelism) = MIN_ARGON2;
        Argon2Config {
            memory_kib,
            iterations,
            parallelism,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct CacheConfig {
    /// Most users whose verified password a replica remembers.
    pub capacity: u64,
    /// Forget a verified password after this long; 0 keeps it until invalidated or evicted.
    pub ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 100_000,
            ttl_seconds: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct SessionConfig {
    /// Lease time-to-live of a replica's session in etcd.
    pub ttl_seconds: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { ttl_seconds: 10 }
    }
}
