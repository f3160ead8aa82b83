#!/usr/bin/env bash
# Builds credstore (release, showing cargo's progress) into target/release/credstore and serves
# it: `credstore serve ARGS`. With no arguments: the embedded store in this checkout's
# default.etcd/, listening on 0.0.0.0:19530, user root with password Milvus on a new store.
# Arguments go to `credstore serve` (e.g. --config credstore.yaml, --listen 127.0.0.1:19530,
# --etcd-endpoints 127.0.0.1:2379, --upstream http://127.0.0.1:19531).
# For the admin CLI in another terminal: export PATH="$PWD/target/release:$PATH".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
echo "run.sh: building target/release/credstore (the first build takes several minutes)" >&2
cargo build --release --locked --bin credstore
echo "run.sh: built $PWD/target/release/credstore; serving (Ctrl-C stops it)" >&2
exec target/release/credstore serve "$@"
