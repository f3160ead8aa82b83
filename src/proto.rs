//! The generated Milvus wire types (`milvus.proto.common`, `milvus.proto.milvus`), built from
//! `proto/` by `build.rs`. Only `service`, the admin client and tests use them; inner modules
//! speak domain types.

#![allow(clippy::all, missing_docs)]

pub mod common {
    tonic::include_proto!("milvus.proto.common");
}

pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}
