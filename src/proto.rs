//! The generated wire types, built from `proto/` by `build.rs`: Milvus's
//! (`milvus.proto.common`, `milvus.proto.milvus`) and credstore's own API (`credstore.v1`:
//! `CredstoreAdmin`, `ApiKeys`, `Oidc`). Only `service`, the admin client and tests use them;
//! inner modules speak domain types.

#![allow(clippy::all, missing_docs)]

pub mod common {
    tonic::include_proto!("milvus.proto.common");
}

pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}

/// credstore's own API (`credstore.v1`): `CredstoreAdmin`, `ApiKeys`, `Oidc`.
pub mod credstore {
    tonic::include_proto!("credstore.v1");
}
