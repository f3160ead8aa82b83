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
//! [`Config::coherence`], [`Config::limits`], [`Config::connections`], …), so `server` wires
//! (the few switches it reads as fields are listed in ARCHITECTURE.md). This module sits above
//! the components (it names their settings types); none of them reads it. The password
//! defaults and minimums are `password`'s constants, not repeated here. Secrets (the etcd
//! password, the default root password, the upstream token: `password::Secret`; a TLS key)
//! are redacted in `Debug`.
//!
//! The module is split by concern: `schema.rs` (the sections and their defaults: the file's
//! shape), `sources.rs` (defaults ← file ← environment ← flags, merged as one tree),
//! `validate.rs` (every rule that names a key, run once after loading) and `derive.rs` (each
//! component's settings, typed). Every public name is re-exported here: callers say
//! `config::Config`, never the file a type lives in.

mod derive;
mod schema;
mod sources;
mod validate;

pub use crate::hash_pool::HashPoolConfig;
pub use crate::password::Secret;
pub use derive::StoreConfig;
pub use schema::*;
pub use sources::Overrides;

use std::path::PathBuf;

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

#[cfg(test)]
mod tests;
