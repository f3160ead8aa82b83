//! Each component's settings derived from a valid `Config`, typed (`store()`, `hash_pool()`,
//! `authenticator()`, `coherence(id, address)`, `connections()`, …), so `server` only wires
//! and no component reads the file. Component defaults stay with the component.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::{AuthenticatorConfig, JwksSource, LockoutPolicy, OidcSettings};
use crate::coherence::CoherenceConfig;
use crate::meta::{EtcdOptions, EtcdTls};
use crate::password::{HashScheme, Limits, Password};
use crate::rbac::BuiltinGroups;
use crate::tls::{ServerFiles, TlsMode};
use crate::transport::ConnectionSettings;

use super::*;

impl Config {
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

/// The store to open. `Debug` shows no secret (`EtcdOptions` redacts them).
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// A redb file for a single process.
    Embedded { path: PathBuf },
    /// An etcd cluster: endpoints, etcd's own authentication, TLS files read, request deadline.
    Etcd(EtcdOptions),
}
