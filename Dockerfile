# syntax=docker/dockerfile:1
# credstore: a Milvus-compatible credential store and authenticating proxy tier.
#   docker build -t credstore .
#   docker run --rm -p 19530:19530 -e ETCD_ENDPOINTS=ETCD_HOST:2379 \
#     credstore serve --config /etc/credstore/credstore.yaml --upstream http://MILVUS_HOST:19530
# The final image is distroless (glibc, libgcc, CA certificates; no shell, no package manager)
# plus the binary: 35–45 MB in all (an estimate; no engine runs where this is built).
# tests/deploy.rs checks the flags and config keys used here against the test suite. It reads
# FROM, USER, COPY, ENTRYPOINT, CMD and HEALTHCHECK line by line: keep each on one line, the
# commands in exec form (["…"]).

FROM rust:1.90-bookworm AS builder
# etcd-client's build script needs a protoc. The repo's .cargo/config.toml points PROTOC at a
# locally installed protox (.tools/, not in the image); an explicit environment variable wins
# over Cargo's [env] table, so the system protoc is used here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
ENV PROTOC=/usr/bin/protoc
WORKDIR /src
# Only what the build needs (no target/, .venv/, .tools/ from the host).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY tests ./tests
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked \
 && install -m 0755 target/release/credstore /usr/local/bin/credstore

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/credstore /usr/local/bin/credstore
COPY deploy/credstore.yaml /etc/credstore/credstore.yaml
# The nonroot user's home (writable): relative paths in the config (the embedded store's data
# dir) resolve here.
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 19530 9091
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["credstore", "health", "--ready", "--uri", "http://127.0.0.1:19530"]
ENTRYPOINT ["credstore"]
CMD ["serve", "--config", "/etc/credstore/credstore.yaml"]
