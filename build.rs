//! Compiles credstore's own `.proto` files with the pure-Rust `protox`, so building
//! credstore itself needs no system `protoc` (etcd-client's build script still does; see
//! `.cargo/config.toml`). Milvus's wire types (`milvus.proto.*`) first; then credstore's own
//! API (`credstore.v1`), which refers to the Milvus types already generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A directory's mtime moves only when entries come or go: name each file too.
    println!("cargo:rerun-if-changed=proto");
    for entry in std::fs::read_dir("proto")? {
        println!("cargo:rerun-if-changed={}", entry?.path().display());
    }
    let fds = protox::compile(["proto/milvus.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect` constructor would clash with the `Connect` RPC.
        .build_transport(false)
        .compile_fds(fds)?;
    // credstore.v1's files in one pass (one package, one generated module), referring to the
    // Milvus types generated above.
    let fds = protox::compile(
        ["proto/credstore_keys.proto", "proto/credstore_admin.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .extern_path(".milvus.proto.common", "crate::proto::common")
        .compile_fds(fds)?;
    Ok(())
}
