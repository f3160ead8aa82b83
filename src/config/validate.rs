//! The rules that span keys or bound values, each error naming its key; run once by
//! `Config::load`, so a `Config` in hand is valid and `derive.rs` only converts.

use crate::password::{MAX_BCRYPT_COST, MAX_STORED_ARGON2};

use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
}
