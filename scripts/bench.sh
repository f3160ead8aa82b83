#!/usr/bin/env bash
# Builds the release binary and runs every benchmark scenario in one run, rewriting the
# results section of BENCHMARKS.md. `scripts/bench.sh --quick` is a short smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
python3 scripts/bench.py "$@"
