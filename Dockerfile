# syntax=docker/dockerfile:1
# credstore: a Milvus-compatible credential store.
#   docker build -t credstore .
#   docker run --rm -p 19530:19530 -v $PWD/deploy/credstore.yaml:/etc/credstore/credstore.yaml:ro \
#     credstore serve --config /etc/credstore/credstore.yaml --listen 0.0.0.0:19530

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
    cargo build --release --locked \
 && install -m 0755 target/release/credstore /usr/local/bin/credstore

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 credstore \
 && useradd --system --uid 10001 --gid credstore --home-dir /var/lib/credstore \
      --shell /usr/sbin/nologin credstore \
 && mkdir -p /etc/credstore /var/lib/credstore \
 && chown credstore:credstore /var/lib/credstore
COPY --from=builder /usr/local/bin/credstore /usr/local/bin/credstore
COPY deploy/credstore.yaml /etc/credstore/credstore.yaml
# Relative paths in the config (the embedded store's data dir) resolve here.
WORKDIR /var/lib/credstore
USER credstore:credstore
EXPOSE 19530
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["credstore", "health", "--uri", "http://127.0.0.1:19530"]
ENTRYPOINT ["credstore"]
CMD ["serve", "--config", "/etc/credstore/credstore.yaml"]
