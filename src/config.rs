//! Configuration with milvus.yaml's key names (`etcd.*`, `proxy.*`, `common.security.*`) plus
//! credstore's own `credstore.*` section. Sources, later ones winning: defaults, a YAML file,
//! environment variables named Milvus's way (key path upper-cased, dots to underscores:
//! `ETCD_ENDPOINTS`, `COMMON_SECURITY_AUTHORIZATIONENABLED`), command-line flags.
//!
//! The environment is passed in as a value, never read here, so tests need no `set_var`.
//! An unknown key or a bad value is an error naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::password::{HashScheme, Limits};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("config key {key}: {reason}")]
    Key { key: String, reason: String },
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
    pub credstore: CredstoreConfig,
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
    /// Accepted for milvus.yaml compatibility; rustls negotiates TLS 1.2 or 1.3.
    pub tls_min_version: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct EtcdAuth {
    pub enabled: bool,
    pub user_name: Option<String>,
    pub password: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct ProxyConfig {
    pub port: u16,
    pub max_username_length: usize,
    pub min_password_length: usize,
    pub max_password_length: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let limits = Limits::default();
        ProxyConfig {
            port: 19530,
            max_username_length: limits.max_username_len,
            min_password_length: limits.min_password_len,
            max_password_length: limits.max_password_len,
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
    pub default_root_password: String,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            authorization_enabled: true,
            super_users: StringList::default(),
            default_root_password: "Milvus".into(),
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
    /// How long a credential write waits for every live replica to apply it.
    pub ack_timeout_ms: u64,
    /// Deadline of each etcd request.
    pub etcd_timeout_ms: u64,
    /// A failed authentication is answered after this long (throttles password guessing and
    /// floods of bad logins at no CPU cost).
    pub failed_auth_delay_ms: u64,
    /// The Milvus that calls credstore does not own are forwarded to (the proxy tier).
    pub upstream: UpstreamConfig,
}

impl Default for CredstoreConfig {
    fn default() -> Self {
        CredstoreConfig {
            listen_host: "0.0.0.0".into(),
            password: PasswordConfig::default(),
            cache: CacheConfig::default(),
            session: SessionConfig::default(),
            ack_timeout_ms: 5_000,
            etcd_timeout_ms: 5_000,
            failed_auth_delay_ms: 250,
            upstream: UpstreamConfig::default(),
        }
    }
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
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            uri: String::new(),
            token: String::new(),
            max_message_bytes: 256 * 1024 * 1024,
            // Below the server's 60 s per-request limit, so the caller sees this deadline.
            timeout_ms: 55_000,
        }
    }
}

impl UpstreamConfig {
    /// The proxy tier's view of this section.
    pub fn options(&self) -> crate::proxy::Upstream {
        crate::proxy::Upstream {
            uri: self.uri.trim().to_string(),
            token: self.token.clone(),
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            default_timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("uri", &self.uri)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("max_message_bytes", &self.max_message_bytes)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "camelCase")]
pub struct PasswordConfig {
    /// `argon2id` (default) or `bcrypt` (for etcd shared with Milvus itself).
    pub algorithm: String,
    pub argon2: Argon2Config,
    pub bcrypt_cost: u32,
    /// Permits parameters below OWASP's minimum. For tests only; logged loudly.
    pub allow_weak_parameters: bool,
    /// Hash computations running at once; 0 means one per CPU core.
    pub max_concurrent_hashes: usize,
    /// Hash computations allowed to wait for a slot; beyond that, RESOURCE_EXHAUSTED.
    pub max_queued_hashes: usize,
    /// CPU priority of the hashing threads (Linux nice, 0..=19): higher yields the CPU to
    /// cached logins and other requests when hashing competes with them.
    pub hash_niceness: i32,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            algorithm: "argon2id".into(),
            argon2: Argon2Config::default(),
            bcrypt_cost: 10,
            allow_weak_parameters: false,
            max_concurrent_hashes: 0,
            max_queued_hashes: 256,
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
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
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
        let mut tree = match file {
            Some(path) => read_yaml(path)?,
            None => Value::Object(Default::default()),
        };
        let defaults = serde_json::to_value(Config::default()).expect("default config serializes");
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
        if self.credstore.session.ttl_seconds < 2 {
            return bad("credstore.session.ttlSeconds", "must be at least 2");
        }
        let scheme = self.hash_scheme()?;
        if let Err(e) = scheme.check_strength(self.credstore.password.allow_weak_parameters) {
            return bad("credstore.password", &e.to_string());
        }
        Ok(())
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
    pub fn hash_scheme(&self) -> Result<HashScheme, ConfigError> {
        let p = &self.credstore.password;
        match p.algorithm.as_str() {
            "argon2id" => Ok(HashScheme::Argon2id {
                memory_kib: p.argon2.memory_kib,
                iterations: p.argon2.iterations,
                parallelism: p.argon2.parallelism,
            }),
            "bcrypt" => Ok(HashScheme::Bcrypt {
                cost: p.bcrypt_cost,
            }),
            other => Err(ConfigError::Key {
                key: "credstore.password.algorithm".into(),
                reason: format!("unknown algorithm {other:?}; expected argon2id or bcrypt"),
            }),
        }
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
        Duration::from_millis(self.credstore.ack_timeout_ms)
    }

    pub fn embedded_path(&self) -> PathBuf {
        Path::new(&self.etcd.data.dir).join("credstore.redb")
    }
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let value: Value = serde_saphyr::from_str(&text).map_err(|e| ConfigError::Yaml {
        path: path.into(),
        reason: e.to_string(),
    })?;
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        other => Ok(other),
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
    fn defaults_are_milvus_and_embedded() {
        let config = Config::load(None, [], &Overrides::default()).unwrap();
        assert!(config.embedded());
        assert_eq!(config.meta_root(), "by-dev/meta");
        assert_eq!(config.proxy.port, 19530);
        assert!(config.common.security.authorization_enabled);
        assert_eq!(config.common.security.default_root_password, "Milvus");
        assert_eq!(config.limits(), Limits::default());
        assert_eq!(
            config.default_listen().unwrap().to_string(),
            "0.0.0.0:19530"
        );
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
        assert_eq!(config.common.security.default_root_password, "123456");
        assert_eq!(config.proxy.port, 19600);
    }

    #[test]
    fn the_compose_config_is_valid_and_production_grade() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/credstore.yaml");
        let config = Config::load(Some(&path), [], &Overrides::default()).unwrap();
        assert_eq!(config.etcd.endpoints.0, ["etcd:2379"]);
        assert!(!config.embedded());
        assert!(config.common.security.authorization_enabled);
        assert_eq!(config.hash_scheme().unwrap(), HashScheme::default());
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
    fn bad_input_names_the_key() {
        check_error(
            "etcd:\n  endpointz: [a]\n",
            &[],
            "unknown field `endpointz`",
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
    fn weak_parameters_need_the_explicit_switch() {
        let yaml = "credstore:\n  password:\n    allowWeakParameters: true\n    argon2: {memoryKiB: 64, iterations: 1}\n";
        let config = load(yaml, &[]).unwrap();
        assert_eq!(
            config.hash_scheme().unwrap(),
            HashScheme::Argon2id {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1
            }
        );
    }
}
