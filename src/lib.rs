//! credstore: a Milvus-compatible credential store. Many stateless replicas serve the
//! user/role part of Milvus's gRPC API; etcd (or an embedded store) holds the only truth.
//! See `ARCHITECTURE.md` for the map; modules are listed here in reading order.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod bench;
pub mod catalog;
pub mod client;
pub mod coherence;
pub mod config;
pub mod hash_pool;
pub mod http;
pub mod import;
pub mod meta;
pub mod metrics;
pub mod password;
pub mod proto;
pub mod proxy;
pub mod rbac;
pub mod server;
pub mod service;
pub mod tls;
pub mod transport;
