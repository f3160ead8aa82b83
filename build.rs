//! Compiles credstore's own `.proto` files with the pure-Rust `protox`, so building
//! credstore itself needs no system `protoc` (etcd-client's build script still does; see
//! `.cargo/config.toml`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["proto/milvus.proto", "proto/credstore_keys.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect` constructor would clash with the `Connect` RPC.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
