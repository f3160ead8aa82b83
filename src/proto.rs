//! The generated wire types — Milvus's (`milvus.proto.common`, `milvus.proto.milvus`) and
//! credstore's own (`credstore.v1`: API keys, OIDC revocation) — built from
//! `proto/` by `build.rs`. Only `service`, the admin client and tests use them; inner modules
//! speak domain types.

#![allow(clippy::all, missing_docs)]

pub mod common {
    tonic::include_proto!("milvus.proto.common");
}

pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}

pub mod credstore {
    tonic::include_proto!("credstore.v1");
}
