#!/usr/bin/env bash
# Installs what the tests need, then runs every check and test: formatting, clippy, the Rust
# unit and integration tests (real etcd processes), and the pymilvus compatibility suite
# (real `credstore serve` processes). This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
echo "== pymilvus compatibility (tests/compat)"
CREDSTORE_BIN="$PWD/target/debug/credstore" .venv/bin/python -m pytest tests/compat -q -p no:cacheprovider
