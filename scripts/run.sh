#!/usr/bin/env bash
# Builds credstore and serves it. With no arguments: the embedded store (./default.etcd),
# listening on 0.0.0.0:19530, user root with password Milvus. Arguments go to `credstore serve`
# (e.g. --config credstore.yaml, --listen 127.0.0.1:19530, --etcd-endpoints 127.0.0.1:2379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec cargo run --release --locked --quiet -- serve "$@"
