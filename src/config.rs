//! Configuration with milvus.yaml's key names (`etcd.*`, `proxy.*`, `common.security.*`) plus
//! credstore's own `credstore.*` section. Sources, later ones winning: defaults, a YAML file,
//! environment variables named Milvus's way (key path upper-cased, dots to underscores:
//! `ETCD_ENDPOINTS`, `COMMON_SECURITY_AUTHORIZATIONENABLED`), command-line flags.
//!
//! The environment is passed in as a value, never read here, so tests need no `set_var`.
//! A whole milvus.yaml loads: keys of Milvus's sections that credstore does not use are
//! ignored (listed once at debug level); an unknown key inside credstore's own `credstore:`
//! section, or a bad value anywhere, is an error naming the key.
//!
//! `Config` is the file's shape; each component's settings are derived from it here, typed
//! and checked once ([`Config::store`], [`Config::hash_pool`], [`Config::authenticator`],
//! [`Config::coherence`], [`Config::limits`], [`Config::connections`], …), so `server` only
//! wires. This module sits above the components (it names their settings types); none of
//! them reads it. The password defaults and minimums are `password`'s constants, not
//! repeated here. Secrets (the etcd
//! password, the default root password, a TLS key) are redacted in `Debug`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::auth::{AuthenticatorConfig, JwksSource, LockoutPolicy, OidcSettings};
use crate::coherence::CoherenceConfig;
use crate::meta::{EtcdOptions, EtcdTls};
use crate::password::{
    HashScheme, Limits, MAX_BCRYPT_COST, MAX_STORED_ARGON2, MIN_ARGON2, MIN_BCRYPT_COST, Password,
};
use crate::rbac::BuiltinGroups;
use crate::tls::{ClientTls, ServerFiles, TlsMode};
use crate::transport::ConnectionSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("config key {key}: {reason}")]
    Key { key: String, reason: String },
    #[error("config key {key}: cannot read {path}: {source}")]
    File {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A configured secret: read from the file or the environment like any string, but `Debug`
/// prints `<redacted>`, so a logged or printed config never shows it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// `credstore.upstream`: where forwarded calls go and how. `Debug` never shows the token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// `http://host:port` of the upstream Milvus; empty: no upstream (those calls stay
    /// UNIMPLEMENTED).
    pub uri: String,
    /// `user:password` credstore presents upstream; empty: no `authorization` header.
    pub token: String,
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
            token: String::new(),
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

impl std::fmt::Debug for UpstreamConfig {
    /// The proxy tier's view, which hides the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UpstreamConfig")
            .field(&self.options())
            .finish()
    }
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

/// Values given on the command line; they beat the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub etcd_endpoints: Option<String>,
}

impl Config {
    /// Loads defaults ← `file` ← `env` (pairs of name and value) ← `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                parse_yaml(&text, path)?
            }
            None => Value::Object(Default::default()),
        };
        Config::from_tree(tree, env, overrides)
    }

    /// Loads defaults ← `tree` (the file, parsed) ← `env` ← `overrides`, then validates.
    fn from_tree(
        mut tree: Value,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let defaults = serde_json::to_value(Config::default()).expect("default config serializes");
        let mut ignored = Vec::new();
        ignore_foreign_keys(&mut tree, &defaults, "", &mut ignored);
        if !ignored.is_empty() {
            tracing::debug!(keys = ?ignored, "ignoring milvus.yaml keys credstore does not use");
        }
        let mut leaves = Vec::new();
        leaf_paths(&defaults, String::new(), &mut leaves);
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        for (path, default) in &leaves {
            if let Some(raw) = env.get(&env_name(path)) {
                set_path(&mut tree, path, coerce(default, raw));
            }
        }
        if let Some(endpoints) = &overrides.etcd_endpoints {
            set_path(
                &mut tree,
                "etcd.endpoints",
                Value::String(endpoints.clone()),
            );
        }
        remove_nulls(&mut tree);
        let config: Config =
            serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                reason: reason.into(),
            })
        };
        let limits = self.limits();
        if limits.min_password_len == 0 || limits.min_password_len > limits.max_password_len {
            return bad(
                "proxy.minPasswordLength",
                "must be at least 1 and at most proxy.maxPasswordLength",
            );
        }
        if limits.max_username_len == 0 {
            return bad("proxy.maxUsernameLength", "must be at least 1");
        }
        if self.etcd.auth.enabled
            && (self.etcd.auth.user_name.is_none() || self.etcd.auth.password.is_none())
        {
            return bad("etcd.auth", "enabled needs userName and password");
        }
        if self.etcd.ssl.enabled && self.etcd.ssl.tls_ca_cert.is_none() {
            return bad(
                "etcd.ssl.tlsCACert",
                "required when etcd.ssl.enabled is true",
            );
        }
        if !(0..=19).contains(&self.credstore.password.hash_niceness) {
            return bad(
                "credstore.password.hashNiceness",
                "must be between 0 and 19",
            );
        }
        if self.credstore.password.max_queued_hashes_per_peer == 0 {
            return bad(
                "credstore.password.maxQueuedHashesPerPeer",
                "must be at least 1",
            );
        }
        let lockout = &self.credstore.lockout;
        for (key, value) in [
            ("threshold", u64::from(lockout.threshold)),
            ("accountThreshold", u64::from(lockout.account_threshold)),
            ("durationSeconds", lockout.duration_seconds),
            ("resetSeconds", lockout.reset_seconds),
        ] {
            if value == 0 {
                return bad(
                    &format!("credstore.lockout.{key}"),
                    "must be at least 1 (credstore.lockout.enabled: false turns lockout off)",
                );
            }
        }
        if self.credstore.session.ttl_seconds < 2 {
            return bad("credstore.session.ttlSeconds", "must be at least 2");
        }
        let ack = self.credstore.ack_timeout_ms;
        if ack != 0 && ack <= self.credstore.session.ttl_seconds.saturating_mul(1000) {
            return bad(
                "credstore.ackTimeoutMs",
                "must exceed credstore.session.ttlSeconds (a write waits for a cut-off replica's lease to expire); leave it unset for the session TTL plus a margin",
            );
        }
        let allow_weak = self.credstore.password.allow_weak_parameters;
        if let Err(e) = self.hash_scheme().check_strength(allow_weak) {
            return bad("credstore.password", &e.to_string());
        }
        // Hashes above what `PasswordHash::parse` accepts could be written but never verified.
        let password = &self.credstore.password;
        let (m, t, p) = MAX_STORED_ARGON2;
        for (key, value, max) in [
            ("memoryKiB", password.argon2.memory_kib, m),
            ("iterations", password.argon2.iterations, t),
            ("parallelism", password.argon2.parallelism, p),
        ] {
            if value > max {
                return bad(
                    &format!("credstore.password.argon2.{key}"),
                    &format!("must be at most {max}, or credstore could not read its own hashes"),
                );
            }
        }
        if self.credstore.password.bcrypt_cost > MAX_BCRYPT_COST {
            return bad(
                "credstore.password.bcryptCost",
                &format!("must be at most {MAX_BCRYPT_COST}"),
            );
        }
        self.validate_connections()?;
        self.root_password()?;
        self.builtin_groups()?;
        self.server_tls()?;
        self.oidc()?;
        Ok(())
    }

    /// The OIDC settings, or `None` while `credstore.oidc.issuer` is empty.
    pub fn oidc(&self) -> Result<Option<OidcSettings>, ConfigError> {
        let o = &self.credstore.oidc;
        let issuer = o.issuer.trim();
        if issuer.is_empty() {
            return Ok(None);
        }
        let bad = |key: &str, reason: String| ConfigError::Key {
            key: format!("credstore.oidc.{key}"),
            reason,
        };
        let required = |key: &str, value: &str| match value.trim() {
            "" => Err(bad(
                key,
                "required when credstore.oidc.issuer is set".into(),
            )),
            value => Ok(value.to_string()),
        };
        let audience = required("audience", &o.audience)?;
        let uri = required("jwksUri", &o.jwks_uri)?;
        let jwks = if let Some(path) = uri.strip_prefix("file://") {
            JwksSource::File(PathBuf::from(path))
        } else if let Some(rest) = uri.strip_prefix("https://") {
            let (authority, path) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, "/"),
            };
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    port.parse::<u16>()
                        .map_err(|_| bad("jwksUri", format!("{port:?} is not a port")))?,
                ),
                None => (authority, 443),
            };
            if host.is_empty() {
                return Err(bad("jwksUri", "has no host".into()));
            }
            let ca = required("caPemPath", &o.ca_pem_path)?;
            JwksSource::Https {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                path: path.to_string(),
                ca_pem: PathBuf::from(ca),
            }
        } else {
            return Err(bad(
                "jwksUri",
                "must be https://… (with caPemPath) or file://…".into(),
            ));
        };
        let prefix = &o.user_prefix;
        if !prefix
            .chars()
            .any(|c| !c.is_ascii_alphanumeric() && c != '_')
        {
            return Err(bad(
                "userPrefix",
                format!(
                    "{prefix:?} must hold a character no user name can (such as ':'), so an OIDC identity can never be a local user"
                ),
            ));
        }
        for (key, value) in [
            ("usernameClaim", &o.username_claim),
            ("rolesClaim", &o.roles_claim),
        ] {
            required(key, value)?;
        }
        for (claim, role) in &o.role_mapping {
            crate::catalog::RoleName::parse(role)
                .map_err(|e| bad(&format!("roleMapping.{claim}"), e))?;
        }
        Ok(Some(OidcSettings {
            issuer: issuer.to_string(),
            audience,
            jwks,
            username_claim: o.username_claim.trim().to_string(),
            roles_claim: o.roles_claim.trim().to_string(),
            role_mapping: o
                .role_mapping
                .iter()
                .map(|(claim, role)| (claim.clone(), role.trim().to_string()))
                .collect(),
            user_prefix: prefix.clone(),
            leeway_seconds: o.leeway_seconds,
            refetch_every: Duration::from_secs(o.jwks_refetch_seconds),
        }))
    }

    /// `credstore.grpc.*` and the body limits of `credstore.upstream.*`.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let grpc = &self.credstore.grpc;
        for (key, value) in [
            ("handshakeTimeoutMs", grpc.handshake_timeout_ms),
            ("idleTimeoutSeconds", grpc.idle_timeout_seconds),
            ("keepaliveIntervalSeconds", grpc.keepalive_interval_seconds),
            ("keepaliveTimeoutSeconds", grpc.keepalive_timeout_seconds),
            ("maxConnections", grpc.max_connections),
            ("maxConnectionsPerPeer", grpc.max_connections_per_peer),
        ] {
            if value == 0 {
                return Err(ConfigError::Key {
                    key: format!("credstore.grpc.{key}"),
                    reason: "must be at least 1".into(),
                });
            }
        }
        let upstream = &self.credstore.upstream;
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Key {
                key: format!("credstore.upstream.{key}"),
                reason: reason.into(),
            })
        };
        if upstream.body_timeout_ms == 0 {
            return bad("bodyTimeoutMs", "must be at least 1");
        }
        if upstream.max_in_flight_bytes_per_connection > upstream.max_in_flight_bytes {
            return bad(
                "maxInFlightBytesPerConnection",
                "must be at most credstore.upstream.maxInFlightBytes",
            );
        }
        if upstream.max_message_bytes > upstream.max_in_flight_bytes_per_connection {
            return bad(
                "maxMessageBytes",
                "must be at most credstore.upstream.maxInFlightBytesPerConnection (a larger message could never be held)",
            );
        }
        Ok(())
    }

    /// The gRPC port's connection settings (`credstore.grpc`).
    pub fn connections(&self) -> ConnectionSettings {
        let grpc = &self.credstore.grpc;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        ConnectionSettings {
            handshake_timeout: Duration::from_millis(grpc.handshake_timeout_ms),
            idle_timeout: Duration::from_secs(grpc.idle_timeout_seconds),
            keepalive_interval: Duration::from_secs(grpc.keepalive_interval_seconds),
            keepalive_timeout: Duration::from_secs(grpc.keepalive_timeout_seconds),
            max_connections: count(grpc.max_connections),
            max_connections_per_peer: count(grpc.max_connections_per_peer),
        }
    }

    /// The listener's TLS files, or `None` for plaintext (`common.security.tlsMode` 0).
    /// Their contents are read when the server starts (and on every reload).
    pub fn server_tls(&self) -> Result<Option<ServerFiles>, ConfigError> {
        let mode = self.common.security.tls_mode;
        if mode == 0 {
            return Ok(None);
        }
        if mode > 2 {
            return Err(ConfigError::Key {
                key: "common.security.tlsMode".into(),
                reason: "must be 0 (plaintext), 1 (server TLS) or 2 (mutual TLS)".into(),
            });
        }
        let path = |key: &str, value: &str| match value.trim() {
            "" => Err(ConfigError::Key {
                key: key.into(),
                reason: format!(
                    "required with common.security.tlsMode {}",
                    self.common.security.tls_mode
                ),
            }),
            path => Ok(PathBuf::from(path)),
        };
        let tls = &self.tls;
        let cert = path("tls.serverPemPath", &tls.server_pem_path)?;
        let key = path("tls.serverKeyPath", &tls.server_key_path)?;
        let mode = match mode {
            1 => TlsMode::Server,
            _ => TlsMode::Mutual {
                ca: path("tls.caPemPath", &tls.ca_pem_path)?,
            },
        };
        Ok(Some(ServerFiles { mode, cert, key }))
    }

    /// The built-in privilege groups: Milvus's defaults, each replaced by its
    /// `common.security.rbac.<level>.<tier>.privileges` when
    /// `common.security.rbac.overrideBuiltInPrivilegeGroups.enabled` is set and the list is not
    /// empty. An unknown privilege name is an error naming the key.
    pub fn builtin_groups(&self) -> Result<BuiltinGroups, ConfigError> {
        let mut groups = BuiltinGroups::default();
        let rbac = &self.common.security.rbac;
        if !rbac.override_built_in_privilege_groups.enabled {
            return Ok(groups);
        }
        let levels = [
            ("cluster", "Cluster", &rbac.cluster),
            ("database", "Database", &rbac.database),
            ("collection", "Collection", &rbac.collection),
        ];
        for (level, group_level, tiers) in levels {
            let tiers = [
                ("readonly", "ReadOnly", &tiers.readonly),
                ("readwrite", "ReadWrite", &tiers.readwrite),
                ("admin", "Admin", &tiers.admin),
            ];
            for (tier, group_tier, members) in tiers {
                if members.privileges.0.is_empty() {
                    continue;
                }
                let group = format!("{group_level}{group_tier}");
                groups
                    .set(&group, &members.privileges.0)
                    .map_err(|e| ConfigError::Key {
                        key: format!("common.security.rbac.{level}.{tier}.privileges"),
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(groups)
    }

    /// Milvus's name and password limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_username_len: self.proxy.max_username_length,
            min_password_len: self.proxy.min_password_length,
            max_password_len: self.proxy.max_password_length,
        }
    }

    /// The scheme new hashes are written with.
    pub fn hash_scheme(&self) -> HashScheme {
        let p = &self.credstore.password;
        match p.algorithm {
            HashAlgorithm::Argon2id => HashScheme::Argon2id {
                memory_kib: p.argon2.memory_kib,
                iterations: p.argon2.iterations,
                parallelism: p.argon2.parallelism,
            },
            HashAlgorithm::Bcrypt => HashScheme::Bcrypt {
                cost: p.bcrypt_cost,
            },
        }
    }

    /// The hash pool's settings; `maxConcurrentHashes: 0` becomes one thread per CPU core.
    pub fn hash_pool(&self) -> HashPoolConfig {
        let p = &self.credstore.password;
        let concurrent = match p.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        HashPoolConfig {
            scheme: self.hash_scheme(),
            concurrent,
            queued: p.max_queued_hashes,
            per_peer: p.max_queued_hashes_per_peer,
            niceness: p.hash_niceness,
        }
    }

    /// Forget a verified password after this long (`None`: only when invalidated or evicted).
    pub fn cache_ttl(&self) -> Option<Duration> {
        match self.credstore.cache.ttl_seconds {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    /// The authenticator's settings (authorization switch, super users, cache).
    pub fn authenticator(&self) -> AuthenticatorConfig {
        AuthenticatorConfig {
            enabled: self.common.security.authorization_enabled,
            super_users: self.common.security.super_users.0.clone(),
            limits: self.limits(),
            cache_capacity: self.credstore.cache.capacity,
            cache_ttl: self.cache_ttl(),
            lockout: self.lockout(),
        }
    }

    /// `credstore.lockout.*` as the authenticator's lockout policy.
    pub fn lockout(&self) -> LockoutPolicy {
        let l = &self.credstore.lockout;
        LockoutPolicy {
            enabled: l.enabled,
            threshold: l.threshold,
            account_threshold: l.account_threshold,
            duration: Duration::from_secs(l.duration_seconds),
            reset: Duration::from_secs(l.reset_seconds),
            peer_failures_per_second: l.peer_failures_per_second,
        }
    }

    /// Coherence's settings for the replica named `replica_id` that clients reach at
    /// `address` (both known only once the server has bound its listener).
    pub fn coherence(&self, replica_id: String, address: SocketAddr) -> CoherenceConfig {
        CoherenceConfig {
            replica_id,
            address: address.to_string(),
            session_ttl: self.session_ttl(),
            ack_timeout: self.ack_timeout(),
        }
    }

    /// Lease time-to-live of this replica's session.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.credstore.session.ttl_seconds)
    }

    /// Which store to open; for etcd, its options with the TLS files read.
    pub fn store(&self) -> Result<StoreConfig, ConfigError> {
        if self.embedded() {
            return Ok(StoreConfig::Embedded {
                path: Path::new(&self.etcd.data.dir).join("credstore.redb"),
            });
        }
        let etcd = &self.etcd;
        let read = |key: &'static str, path: &str| {
            std::fs::read(path).map_err(|source| ConfigError::File {
                key,
                path: path.to_string(),
                source,
            })
        };
        let tls = match (etcd.ssl.enabled, etcd.ssl.tls_ca_cert.as_deref()) {
            (false, _) => None,
            (true, None) => {
                return Err(ConfigError::Key {
                    key: "etcd.ssl.tlsCACert".into(),
                    reason: "required when etcd.ssl.enabled is true".into(),
                });
            }
            (true, Some(ca)) => {
                let ca_pem = read("etcd.ssl.tlsCACert", ca)?;
                let client_cert_key_pem = match (&etcd.ssl.tls_cert, &etcd.ssl.tls_key) {
                    (Some(cert), Some(key)) => Some((
                        read("etcd.ssl.tlsCert", cert)?,
                        read("etcd.ssl.tlsKey", key)?,
                    )),
                    _ => None,
                };
                Some(EtcdTls {
                    ca_pem,
                    client_cert_key_pem,
                })
            }
        };
        let auth = match (etcd.auth.enabled, &etcd.auth.user_name, &etcd.auth.password) {
            (true, Some(user), Some(password)) => Some((user.clone(), password.expose().into())),
            _ => None,
        };
        Ok(StoreConfig::Etcd(EtcdOptions {
            endpoints: etcd.endpoints.0.clone(),
            auth,
            tls,
            request_timeout: Duration::from_millis(self.credstore.etcd_timeout_ms),
        }))
    }

    /// `common.security.defaultRootPassword`, checked against the password rules.
    pub fn root_password(&self) -> Result<Password, ConfigError> {
        let raw = self.common.security.default_root_password.expose();
        Password::new(raw.as_bytes().to_vec(), &self.limits()).map_err(|e| ConfigError::Key {
            key: "common.security.defaultRootPassword".into(),
            reason: e.to_string(),
        })
    }

    /// Whether the embedded store is used (no endpoints, or `etcd.use.embed`).
    pub fn embedded(&self) -> bool {
        self.etcd.use_.embed || self.etcd.endpoints.0.is_empty()
    }

    /// `{etcd.rootPath}/{etcd.metaSubPath}`
    pub fn meta_root(&self) -> String {
        format!(
            "{}/{}",
            self.etcd.root_path.trim_end_matches('/'),
            self.etcd.meta_sub_path.trim_matches('/')
        )
    }

    pub fn default_listen(&self) -> Result<SocketAddr, ConfigError> {
        let host = &self.credstore.listen_host;
        let text = match host.contains(':') {
            true => format!("[{host}]:{}", self.proxy.port),
            false => format!("{host}:{}", self.proxy.port),
        };
        text.parse().map_err(|_| ConfigError::Key {
            key: "credstore.listenHost".into(),
            reason: format!("{host:?} is not an IP address"),
        })
    }

    pub fn failed_auth_delay(&self) -> Duration {
        Duration::from_millis(self.credstore.failed_auth_delay_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        match self.credstore.ack_timeout_ms {
            0 => {
                let ttl = Duration::from_secs(self.credstore.session.ttl_seconds);
                ttl + (ttl / 2).max(Duration::from_secs(2))
            }
            ms => Duration::from_millis(ms),
        }
    }
}

/// The hash pool's settings (see `hash_pool::HashPool::new`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPoolConfig {
    /// The scheme new hashes are written with.
    pub scheme: HashScheme,
    /// Hashing threads.
    pub concurrent: usize,
    /// Computations allowed to wait for a thread.
    pub queued: usize,
    /// Computations one peer address may hold (running or waiting).
    pub per_peer: usize,
    /// CPU priority of the hashing threads.
    pub niceness: i32,
}

/// The store to open. `Debug` shows no secret (`EtcdOptions` redacts them).
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// A redb file for a single process.
    Embedded { path: PathBuf },
    /// An etcd cluster: endpoints, etcd's own authentication, TLS files read, request deadline.
    Etcd(EtcdOptions),
}

/// The YAML text of the file at `path` as a JSON tree; an empty file is an empty map.
fn parse_yaml(text: &str, path: &Path) -> Result<Value, ConfigError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.into(),
        source: Box::new(source),
    })?;
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        other => Ok(other),
    }
}

/// Drops the keys of `tree` that the defaults do not have — other Milvus components' settings
/// in a shared milvus.yaml — except inside `credstore:`, where an unknown key is a mistake the
/// deserializer then reports. Dropped key paths are pushed to `ignored`.
fn ignore_foreign_keys(tree: &mut Value, known: &Value, prefix: &str, ignored: &mut Vec<String>) {
    let (Value::Object(map), Value::Object(known)) = (tree, known) else {
        return;
    };
    map.retain(|key, _| {
        let keep = known.contains_key(key) || (prefix.is_empty() && key == "credstore");
        if !keep {
            ignored.push(format!("{prefix}{key}"));
        }
        keep
    });
    for (key, child) in map.iter_mut() {
        if prefix.is_empty() && key == "credstore" {
            continue;
        }
        if let Some(known_child) = known.get(key) {
            ignore_foreign_keys(child, known_child, &format!("{prefix}{key}."), ignored);
        }
    }
}

/// A key written with no value (`credstore:` alone) means "the default", as in milvus.yaml.
fn remove_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(remove_nulls);
    }
}

/// Every leaf key path of the defaults, e.g. `common.security.authorizationEnabled`.
fn leaf_paths(value: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, path, out);
            }
        }
        leaf => out.push((prefix, leaf.clone())),
    }
}

/// Milvus's environment name for a key path.
fn env_name(path: &str) -> String {
    path.to_ascii_uppercase().replace('.', "_")
}

/// Reads an environment value as the type of the key's default (a bool stays a bool,
/// a password of digits stays a string).
fn coerce(default: &Value, raw: &str) -> Value {
    let parsed = match default {
        Value::Bool(_) => raw.trim().parse::<bool>().ok().map(Value::Bool),
        Value::Number(_) => raw.trim().parse::<u64>().ok().map(Value::from),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&path), env, &Overrides::default())
    }

    #[test]
    fn oidc_settings_are_checked_and_named_by_key() {
        let base = "credstore:\n  oidc:\n    issuer: https://idp\n    audience: cs\n";
        let check = |extra: &str, expected: Result<JwksSource, &str>| {
            let got = load(&format!("{base}{extra}"), &[]).map(|c| c.oidc().unwrap().unwrap().jwks);
            match (got, expected) {
                (Ok(jwks), Ok(want)) => assert_eq!(jwks, want, "{extra}"),
                (Err(e), Err(key)) => assert!(e.to_string().contains(key), "{extra}: {e}"),
                (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
            }
        };
        check(
            "    jwksUri: file:///etc/jwks.json\n",
            Ok(JwksSource::File("/etc/jwks.json".into())),
        );
        check(
            "    jwksUri: https://idp.example:8443/certs\n    caPemPath: /ca.pem\n",
            Ok(JwksSource::Https {
                host: "idp.example".into(),
                port: 8443,
                path: "/certs".into(),
                ca_pem: "/ca.pem".into(),
            }),
        );
        check(
            "    jwksUri: https://idp/certs\n",
            Err("credstore.oidc.caPemPath"),
        );
        check(
            "    jwksUri: http://idp/certs\n",
            Err("credstore.oidc.jwksUri"),
        );
        check("", Err("credstore.oidc.jwksUri"));
        check(
            "    jwksUri: file:///j\n    userPrefix: oidc_\n",
            Err("credstore.oidc.userPrefix"),
        );
        check(
            "    jwksUri: file:///j\n    roleMapping: {g: \"not a role\"}\n",
            Err("credstore.oidc.roleMapping.g"),
        );
        assert_eq!(
            load("", &[]).unwrap().oidc().unwrap(),
            None,
            "off by default"
        );
        let on = load(&format!("{base}    jwksUri: file:///j\n"), &[]).unwrap();
        let settings = on.oidc().unwrap().unwrap();
        assert_eq!(
            (
                settings.username_claim.as_str(),
                settings.roles_claim.as_str()
            ),
            ("sub", "groups")
        );
        assert_eq!(
            (settings.user_prefix.as_str(), settings.leeway_seconds),
            ("oidc:", 30)
        );
    }

    #[test]
    fn builtin_groups_are_overridden_by_milvus_keys() {
        use crate::rbac::Privilege;
        let names = |groups: &BuiltinGroups, group: &str| -> Vec<&'static str> {
            let members = groups.members(group).expect("a built-in group");
            members.iter().map(|p| p.api_name()).collect()
        };
        let defaults = BuiltinGroups::default();
        let overrides = "common:\n  security:\n    rbac:\n      cluster:\n        readonly:\n          privileges: ListDatabases, SelectUser\n      collection:\n        admin:\n          privileges: [Query, Search]\n";
        // Without the switch, the lists are ignored (as Milvus does).
        let off = load(overrides, &[]).unwrap().builtin_groups().unwrap();
        assert_eq!(off, defaults);
        let on =
            format!("{overrides}      overrideBuiltInPrivilegeGroups:\n        enabled: true\n");
        let groups = load(&on, &[]).unwrap().builtin_groups().unwrap();
        assert_eq!(
            names(&groups, "ClusterReadOnly"),
            ["ListDatabases", "SelectUser"]
        );
        assert_eq!(names(&groups, "CollectionAdmin"), ["Query", "Search"]);
        // Groups not overridden keep Milvus's defaults.
        assert_eq!(
            groups.members("ClusterAdmin"),
            defaults.members("ClusterAdmin")
        );
        assert!(
            groups
                .members("ClusterReadWrite")
                .unwrap()
                .contains(&Privilege::from_api("FlushAll").unwrap())
        );
        // Through the environment too, with Milvus's variable names.
        let env = [
            (
                "COMMON_SECURITY_RBAC_OVERRIDEBUILTINPRIVILEGEGROUPS_ENABLED",
                "true",
            ),
            (
                "COMMON_SECURITY_RBAC_DATABASE_READWRITE_PRIVILEGES",
                "ShowCollections,AlterDatabase",
            ),
        ];
        let from_env = load("", &env).unwrap().builtin_groups().unwrap();
        assert_eq!(
            names(&from_env, "DatabaseReadWrite"),
            ["ShowCollections", "AlterDatabase"]
        );
        // An unknown privilege stops start-up with an error naming the key.
        let bad = format!(
            "{on}      database:\n        admin:\n          privileges: CreateCollection, Bogus\n"
        );
        let err = load(&bad, &[]).unwrap_err().to_string();
        assert!(
            err.contains("common.security.rbac.database.admin.privileges") && err.contains("Bogus"),
            "{err}"
        );
    }

    #[test]
    fn ack_timeout_outlasts_the_session_ttl() {
        let derived = |yaml: &str| load(yaml, &[]).unwrap().ack_timeout();
        assert_eq!(derived(""), Duration::from_secs(15));
        assert_eq!(
            derived("credstore:\n  session:\n    ttlSeconds: 60\n"),
            Duration::from_secs(90)
        );
        assert_eq!(
            derived("credstore:\n  session:\n    ttlSeconds: 2\n"),
            Duration::from_secs(4)
        );
        assert_eq!(
            derived("credstore:\n  ackTimeoutMs: 20000\n"),
            Duration::from_secs(20)
        );
        let err = load("credstore:\n  ackTimeoutMs: 5000\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("credstore.ackTimeoutMs")
                && text.contains("credstore.session.ttlSeconds"),
            "{text}"
        );
    }

    #[test]
    fn defaults_are_milvus_and_embedded() {
        let config = Config::load(None, [], &Overrides::default()).unwrap();
        assert!(config.embedded());
        assert_eq!(config.meta_root(), "by-dev/meta");
        assert_eq!(config.proxy.port, 19530);
        assert!(config.common.security.authorization_enabled);
        assert_eq!(
            config.common.security.default_root_password.expose(),
            "Milvus"
        );
        assert_eq!(config.limits(), Limits::default());
        assert_eq!(
            config.default_listen().unwrap().to_string(),
            "0.0.0.0:19530"
        );
    }

    #[test]
    fn tls_modes_and_their_files() {
        assert_eq!(Config::default().server_tls().unwrap(), None);
        let err = load("common:\n  security:\n    tlsMode: 3\n", &[]).unwrap_err();
        assert!(err.to_string().contains("common.security.tlsMode"), "{err}");
        let err = load("common:\n  security:\n    tlsMode: 1\n", &[]).unwrap_err();
        assert!(err.to_string().contains("tls.serverPemPath"), "{err}");
        let one_way = "common:\n  security:\n    tlsMode: 1\ntls:\n  serverPemPath: s.pem\n  serverKeyPath: s.key\n";
        let files = load(one_way, &[]).unwrap().server_tls().unwrap().unwrap();
        assert_eq!(files.mode, TlsMode::Server);
        assert_eq!(files.cert, PathBuf::from("s.pem"));
        // Mode 2 also needs the CA; the environment sets the mode like any key.
        let err = load(one_way, &[("COMMON_SECURITY_TLSMODE", "2")]).unwrap_err();
        assert!(err.to_string().contains("tls.caPemPath"), "{err}");
        let mutual = format!("{one_way}  caPemPath: ca.pem\n");
        let files = load(&mutual, &[("COMMON_SECURITY_TLSMODE", "2")]).unwrap();
        let files = files.server_tls().unwrap().unwrap();
        let ca = PathBuf::from("ca.pem");
        assert_eq!(files.mode, TlsMode::Mutual { ca });
        // Milvus's shipped defaults with tlsMode 0 are read and unused.
        let shipped = "common:\n  security:\n    tlsMode: 0\ntls:\n  serverPemPath: configs/cert/server.pem\n";
        assert_eq!(load(shipped, &[]).unwrap().server_tls().unwrap(), None);
    }

    #[test]
    fn upstream_tls_settings() {
        let yaml = "credstore:\n  upstream:\n    uri: https://milvus:19530\n    tls:\n      caPemPath: ca.pem\n      serverName: milvus\n";
        let tls = load(yaml, &[]).unwrap().credstore.upstream.options().tls;
        assert_eq!(tls.ca_pem_path, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("milvus"));
        assert_eq!(tls.client_pem_path, None);
        let err = load("credstore:\n  upstream:\n    tls:\n      caPem: x\n", &[]).unwrap_err();
        assert!(err.to_string().contains("credstore.upstream.tls"), "{err}");
    }

    #[test]
    fn milvus_yaml_keys_and_list_forms() {
        let config = load(
            "etcd:\n  endpoints: 'a:2379, b:2379'\n  rootPath: x\ncommon:\n  security:\n    superUsers: root, foo\n    authorizationEnabled: false\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.etcd.endpoints.0, ["a:2379", "b:2379"]);
        assert_eq!(config.common.security.super_users.0, ["root", "foo"]);
        assert!(!config.common.security.authorization_enabled);
        assert_eq!(config.meta_root(), "x/meta");
        let listed = load(
            "etcd:\n  endpoints: [c:1, d:2]\ncommon:\n  security:\n    superUsers: [' a ']\n",
            &[],
        )
        .unwrap();
        assert_eq!(listed.etcd.endpoints.0, ["c:1", "d:2"]);
        assert_eq!(listed.common.security.super_users.0, ["a"]);
    }

    #[test]
    fn environment_overrides_the_milvus_way() {
        let config = load(
            "common:\n  security:\n    authorizationEnabled: true\n",
            &[
                ("COMMON_SECURITY_AUTHORIZATIONENABLED", "false"),
                ("ETCD_ENDPOINTS", "e1:2379,e2:2379"),
                ("COMMON_SECURITY_DEFAULTROOTPASSWORD", "123456"),
                ("PROXY_PORT", "19600"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert!(!config.common.security.authorization_enabled);
        assert_eq!(config.etcd.endpoints.0, ["e1:2379", "e2:2379"]);
        assert_eq!(
            config.common.security.default_root_password.expose(),
            "123456"
        );
        assert_eq!(config.proxy.port, 19600);
    }

    #[test]
    fn the_compose_config_is_valid_and_production_grade() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/credstore.yaml");
        let config = Config::load(Some(&path), [], &Overrides::default()).unwrap();
        assert_eq!(config.etcd.endpoints.0, ["etcd:2379"]);
        assert!(!config.embedded());
        assert!(config.common.security.authorization_enabled);
        assert_eq!(config.hash_scheme(), HashScheme::default());
        assert!(!config.credstore.password.allow_weak_parameters);
    }

    #[test]
    fn empty_sections_mean_defaults() {
        let config = load("credstore:\netcd:\n  ssl:\n    tlsCert:\n", &[]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn flags_beat_environment() {
        let env = [("ETCD_ENDPOINTS".to_string(), "env:1".to_string())];
        let overrides = Overrides {
            etcd_endpoints: Some("flag:2".into()),
        };
        let config = Config::load(None, env, &overrides).unwrap();
        assert_eq!(config.etcd.endpoints.0, ["flag:2"]);
    }

    fn check_error(yaml: &str, env: &[(&str, &str)], expected: &str) {
        let err = load(yaml, env).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }

    #[test]
    fn foreign_keys_of_a_milvus_yaml_are_ignored() {
        let yaml = "autoIndex:\n  enable: false\netcd:\n  endpoints: 10.0.0.1:2379\n  rootPath: prod\n  kvSubPath: kv\n  log:\n    level: info\nproxy:\n  port: 19531\n  http:\n    enabled: true\n  maxTaskNum: 1024\ncommon:\n  security:\n    authorizationEnabled: true\n    tlsMode: 0\n  retentionDuration: 432000\nqueryNode:\n  port: 21123\n";
        let config = load(yaml, &[]).expect("a milvus.yaml with other components' keys loads");
        assert_eq!(config.etcd.root_path, "prod");
        assert_eq!(config.proxy.port, 19531);
        assert!(config.common.security.authorization_enabled);
    }

    #[test]
    fn bad_input_names_the_key() {
        check_error(
            "credstore:\n  cachez: 1\n",
            &[],
            "config key credstore.cachez: unknown field `cachez`",
        );
        check_error(
            "credstore:\n  password:\n    algorithmz: bcrypt\n",
            &[],
            "unknown field `algorithmz`",
        );
        check_error("proxy:\n  port: banana\n", &[], "config key proxy.port");
        check_error("", &[("PROXY_PORT", "99999")], "config key proxy.port");
        check_error(
            "",
            &[("COMMON_SECURITY_AUTHORIZATIONENABLED", "maybe")],
            "common.security.authorizationEnabled",
        );
        check_error(
            "credstore:\n  password:\n    argon2:\n      memoryKiB: 64\n",
            &[],
            "credstore.password",
        );
        check_error(
            "credstore:\n  password:\n    algorithm: md5\n",
            &[],
            "credstore.password.algorithm",
        );
        check_error("etcd: [\n", &[], "not valid YAML");
        check_error(
            "etcd:\n  ssl:\n    enabled: true\n",
            &[],
            "etcd.ssl.tlsCACert",
        );
    }

    #[test]
    fn upstream_keys_and_a_hidden_token() {
        let config = load(
            "credstore:\n  upstream:\n    uri: http://m:19530\n    maxMessageBytes: 1024\n",
            &[
                ("CREDSTORE_UPSTREAM_TOKEN", "root:s3cret"),
                ("CREDSTORE_UPSTREAM_TIMEOUTMS", "1500"),
            ],
        )
        .unwrap();
        let options = config.credstore.upstream.options();
        assert_eq!(options.uri, "http://m:19530");
        assert_eq!(options.token, "root:s3cret");
        assert_eq!(options.max_message_bytes, 1024);
        assert_eq!(options.default_timeout, Duration::from_millis(1500));
        for debug in [format!("{config:?}"), format!("{options:?}")] {
            assert!(!debug.contains("s3cret"), "{debug}");
        }
        let defaults = Config::default().credstore.upstream;
        assert_eq!(defaults.max_message_bytes, 256 << 20);
        assert!(defaults.uri.is_empty());
    }

    #[test]
    fn connection_and_body_limits() {
        let defaults = Config::default();
        assert_eq!(defaults.connections(), ConnectionSettings::default());
        let upstream = defaults.credstore.upstream.options();
        assert_eq!(upstream.max_in_flight_bytes, 1 << 30);
        assert_eq!(upstream.max_in_flight_bytes_per_connection, 256 << 20);
        assert_eq!(upstream.body_timeout, Duration::from_secs(30));
        let config = load(
            "credstore:\n  grpc:\n    handshakeTimeoutMs: 1500\n    maxConnectionsPerPeer: 7\n  upstream:\n    maxMessageBytes: 1024\n    maxInFlightBytes: 4096\n    maxInFlightBytesPerConnection: 2048\n    bodyTimeoutMs: 900\n",
            &[("CREDSTORE_GRPC_IDLETIMEOUTSECONDS", "12")],
        )
        .unwrap();
        let connections = config.connections();
        assert_eq!(connections.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(connections.idle_timeout, Duration::from_secs(12));
        assert_eq!(connections.max_connections_per_peer, 7);
        assert_eq!(connections.max_connections, 10_000);
        let upstream = config.credstore.upstream.options();
        assert_eq!(
            (
                upstream.max_in_flight_bytes,
                upstream.max_in_flight_bytes_per_connection
            ),
            (4096, 2048)
        );
        assert_eq!(upstream.body_timeout, Duration::from_millis(900));
        for (yaml, key) in [
            (
                "grpc:\n    maxConnections: 0",
                "credstore.grpc.maxConnections",
            ),
            (
                "grpc:\n    handshakeTimeoutMs: 0",
                "credstore.grpc.handshakeTimeoutMs",
            ),
            (
                "grpc:\n    idleTimeoutSecond: 5",
                "credstore.grpc.idleTimeoutSecond",
            ),
            (
                "upstream:\n    bodyTimeoutMs: 0",
                "credstore.upstream.bodyTimeoutMs",
            ),
            (
                "upstream:\n    maxInFlightBytes: 1000",
                "credstore.upstream.maxInFlightBytesPerConnection",
            ),
            (
                "upstream:\n    maxInFlightBytesPerConnection: 1000",
                "credstore.upstream.maxMessageBytes",
            ),
        ] {
            check_error(&format!("credstore:\n  {yaml}\n"), &[], key);
        }
    }

    #[test]
    fn weak_parameters_need_the_explicit_switch() {
        let yaml = "credstore:\n  password:\n    allowWeakParameters: true\n    argon2: {memoryKiB: 64, iterations: 1}\n";
        let config = load(yaml, &[]).unwrap();
        assert_eq!(
            config.hash_scheme(),
            HashScheme::Argon2id {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1
            }
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
        );
        std::fs::write(&ca, "CA-PEM").unwrap();
        std::fs::write(&cert, "CERT-PEM").unwrap();
        std::fs::write(&key, "PRIVATE-KEY-PEM").unwrap();
        let yaml = format!(
            "etcd:\n  endpoints: e:2379\n  auth: {{enabled: true, userName: u, password: etcd-secret-pw}}\n  ssl: {{enabled: true, tlsCACert: '{}', tlsCert: '{}', tlsKey: '{}'}}\ncommon:\n  security:\n    defaultRootPassword: root-secret-pw\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let config = load(&yaml, &[]).unwrap();
        let store = config.store().unwrap();
        for shown in [
            format!("{config:?}"),
            format!("{store:?}"),
            format!("{store:#?}"),
        ] {
            for secret in ["etcd-secret-pw", "root-secret-pw", "PRIVATE-KEY-PEM"] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
        }
        let StoreConfig::Etcd(options) = store else {
            panic!("etcd configured");
        };
        assert_eq!(options.auth, Some(("u".into(), "etcd-secret-pw".into())));
        let tls = options.tls.expect("TLS configured");
        assert_eq!(tls.ca_pem, b"CA-PEM");
        assert_eq!(
            tls.client_cert_key_pem.map(|(_, key)| key),
            Some(b"PRIVATE-KEY-PEM".to_vec())
        );
    }

    #[test]
    fn derived_settings() {
        let config = load(
            "credstore:\n  cache: {ttlSeconds: 30}\n  session: {ttlSeconds: 4}\n  password: {algorithm: bcrypt, bcryptCost: 11, maxConcurrentHashes: 3, maxQueuedHashes: 7, hashNiceness: 5}\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.hash_scheme(), HashScheme::Bcrypt { cost: 11 });
        assert_eq!(
            config.hash_pool(),
            HashPoolConfig {
                scheme: HashScheme::Bcrypt { cost: 11 },
                concurrent: 3,
                queued: 7,
                per_peer: 32,
                niceness: 5
            }
        );
        assert_eq!(config.cache_ttl(), Some(Duration::from_secs(30)));
        assert_eq!(config.session_ttl(), Duration::from_secs(4));
        let auth = config.authenticator();
        assert!(auth.enabled);
        assert_eq!(auth.super_users, Vec::<String>::new());
        assert_eq!(auth.limits, Limits::default());
        assert_eq!(auth.cache_capacity, 100_000);
        assert_eq!(auth.cache_ttl, Some(Duration::from_secs(30)));
        let address = "127.0.0.1:19530".parse().unwrap();
        let coherence = config.coherence("r-1".into(), address);
        assert_eq!(coherence.replica_id, "r-1");
        assert_eq!(coherence.address, "127.0.0.1:19530");
        assert_eq!(coherence.session_ttl, Duration::from_secs(4));
        assert_eq!(coherence.ack_timeout, config.ack_timeout());
        assert_eq!(Config::default().cache_ttl(), None);
        assert!(Config::default().hash_pool().concurrent >= 1);
        let StoreConfig::Embedded { path } = Config::default().store().unwrap() else {
            panic!("embedded by default");
        };
        assert_eq!(path, Path::new("default.etcd/credstore.redb"));
        let env = [("CREDSTORE_PASSWORD_ALGORITHM", "bcrypt")];
        assert_eq!(
            load("", &env).unwrap().credstore.password.algorithm,
            HashAlgorithm::Bcrypt
        );
    }

    #[test]
    fn hash_parameters_credstore_could_not_read_back_are_refused() {
        let (m, t, p) = MAX_STORED_ARGON2;
        let argon2 = |m: u32, t: u32, p: u32| {
            format!(
                "credstore:\n  password:\n    argon2: {{memoryKiB: {m}, iterations: {t}, parallelism: {p}}}\n"
            )
        };
        assert!(
            load(&argon2(m, t, p), &[]).is_ok(),
            "the largest readable is accepted"
        );
        check_error(
            &argon2(m + 1, t, p),
            &[],
            "credstore.password.argon2.memoryKiB",
        );
        check_error(
            &argon2(m, t + 1, p),
            &[],
            "credstore.password.argon2.iterations",
        );
        check_error(
            &argon2(m, t, p + 1),
            &[],
            "credstore.password.argon2.parallelism",
        );
        check_error(
            "credstore:\n  password: {algorithm: bcrypt, bcryptCost: 32}\n",
            &[],
            "credstore.password.bcryptCost",
        );
        let defaults = Config::default().credstore.password;
        assert_eq!(defaults.bcrypt_cost, MIN_BCRYPT_COST);
        assert_eq!(
            (
                defaults.argon2.memory_kib,
                defaults.argon2.iterations,
                defaults.argon2.parallelism
            ),
            MIN_ARGON2
        );
    }

    #[test]
    fn unreadable_files_and_bad_root_passwords_name_the_key() {
        let config = load(
            "etcd:\n  endpoints: e:1\n  ssl: {enabled: true, tlsCACert: /nonexistent/ca.pem}\n",
            &[],
        )
        .unwrap();
        let err = config.store().unwrap_err().to_string();
        assert!(
            err.starts_with("config key etcd.ssl.tlsCACert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        check_error(
            "common:\n  security:\n    defaultRootPassword: abc\n",
            &[],
            "config key common.security.defaultRootPassword: invalid password length",
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// The whole of `load` after reading the file.
        fn load_text(text: &str, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
            let tree = parse_yaml(text, Path::new("c.yaml"))?;
            Config::from_tree(tree, env, &Overrides::default())
        }

        /// Every key path credstore knows, with its default.
        fn known_leaves() -> Vec<(String, Value)> {
            let defaults = serde_json::to_value(Config::default()).unwrap();
            let mut leaves = Vec::new();
            leaf_paths(&defaults, String::new(), &mut leaves);
            leaves
        }

        /// YAML-ish text: nested maps and lists of short keys and scalars, so the parser gets
        /// past the first line; known key names are mixed in so values reach the typed layer.
        fn yamlish() -> impl Strategy<Value = String> {
            let known: Vec<String> = known_leaves()
                .iter()
                .flat_map(|(path, _)| path.split('.').map(str::to_string).collect::<Vec<_>>())
                .collect();
            let key = prop_oneof![
                proptest::sample::select(known),
                "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
            ];
            let scalar = prop_oneof![
                "[ -~]{0,12}",
                any::<i64>().prop_map(|n| n.to_string()),
                Just("true".to_string()),
                Just("~".to_string()),
                Just("[a, b]".to_string()),
                Just("{x: 1}".to_string()),
            ];
            let line = (0usize..4, key, scalar, any::<bool>()).prop_map(|(depth, key, v, open)| {
                let indent = "  ".repeat(depth);
                match open {
                    true => format!("{indent}{key}:\n"),
                    false => format!("{indent}{key}: {v}\n"),
                }
            });
            proptest::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
        }

        #[test]
        fn deep_nesting_is_an_error_not_a_crash() {
            for text in [
                "[".repeat(100_000),
                "{a: ".repeat(50_000),
                "- ".repeat(50_000),
            ] {
                assert!(load_text(&text, Vec::new()).is_err());
            }
        }

        proptest! {
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
                let _ = load_text(&text, Vec::new());
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let text = String::from_utf8_lossy(&bytes);
                let _ = load_text(&text, Vec::new());
            }

            #[test]
            fn yaml_shaped_text_never_panics(text in yamlish()) {
                let _ = load_text(&text, Vec::new());
            }

            #[test]
            fn arbitrary_environment_values_never_panic(
                picks in proptest::collection::vec((any::<prop::sample::Index>(), "\\PC{0,20}"), 0..6)
            ) {
                let leaves = known_leaves();
                let env = picks
                    .into_iter()
                    .map(|(i, v)| (env_name(&i.get(&leaves).0), v))
                    .collect();
                let _ = load_text("", env);
            }

            #[test]
            fn an_unknown_key_is_named(
                at in any::<prop::sample::Index>(),
                key in "[a-z][a-zA-Z0-9]{0,10}",
            ) {
                // A section of credstore's own config, and a key that is not one of its
                // fields (Milvus's sections ignore such keys: `foreign_keys_are_ignored`).
                let sections = ["credstore", "credstore.password", "credstore.cache", "credstore.upstream"];
                let section = *at.get(&sections);
                let known = known_leaves();
                let taken = known.iter().any(|(path, _)| {
                    let rest = match section {
                        "" => Some(path.as_str()),
                        s => path.strip_prefix(s).and_then(|r| r.strip_prefix('.')),
                    };
                    rest.and_then(|r| r.split('.').next()) == Some(key.as_str())
                });
                prop_assume!(!taken);
                let mut text = String::new();
                let mut indent = String::new();
                for part in section.split('.').filter(|p| !p.is_empty()) {
                    text.push_str(&format!("{indent}{part}:\n"));
                    indent.push_str("  ");
                }
                text.push_str(&format!("{indent}{key}: 1\n"));
                let err = load_text(&text, Vec::new()).unwrap_err().to_string();
                prop_assert!(err.contains(&format!("unknown field `{key}`")), "{}", err);
                let prefix = match section {
                    "" => format!("config key {key}: "),
                    s => format!("config key {s}.{key}: "),
                };
                prop_assert!(err.starts_with(&prefix), "{} should start with {}", err, prefix);
            }
        }
    }
}
