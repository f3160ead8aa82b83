#!/usr/bin/env bash
# Listing at scale (issue 9.12): starts one etcd with a raised backend quota, writes N users
# straight into it under Milvus's layout and lists them through credstore's paged EtcdKv,
# for each N given (default: 100000 1000000). Prints one LISTING line per N with the time
# and the peak RSS of the listing; see "Listing at scale" in BENCHMARKS.md.
#
#   scripts/bench_listing.sh [N ...]        e.g. scripts/bench_listing.sh 100000
#   CREDSTORE_LISTING_PAGE=1000 scripts/bench_listing.sh 100000   # another page size
#
# A million users take a few minutes to write and about 1 GiB of etcd data (in a temporary
# directory, removed at exit).
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "not a positive number of users: $n" >&2; exit 2; }
done
command -v etcd >/dev/null || { echo "etcd is not on PATH: run scripts/setup.sh" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

data=$(mktemp -d)
client_port=$(free_port)
peer_port=$(free_port)
etcd_pid=""
cleanup() {
    local status=$?
    if [ -n "$etcd_pid" ]; then
        kill "$etcd_pid" 2>/dev/null || true
        wait "$etcd_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
    exit "$status"
}
trap cleanup EXIT

etcd --name bench --data-dir "$data/etcd" \
    --listen-client-urls "http://127.0.0.1:$client_port" \
    --advertise-client-urls "http://127.0.0.1:$client_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "bench=http://127.0.0.1:$peer_port" \
    --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
    >"$data/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$client_port/health" 2>/dev/null | grep -q true && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$client_port/health" | grep -q true \
    || { echo "etcd did not start; its log:" >&2; cat "$data/etcd.log" >&2; exit 1; }

echo "machine: $(nproc) cores, $(etcd --version | head -1), $(date -u +%Y-%m-%d)"
for n in "${sizes[@]}"; do
    if ! CREDSTORE_LISTING_USERS="$n" CREDSTORE_LISTING_ETCD="127.0.0.1:$client_port" \
        cargo test --release --locked --test listing_scale -- --nocapture >"$data/run-$n.log" 2>&1; then
        cat "$data/run-$n.log" >&2
        echo "the listing of $n users FAILED" >&2
        exit 1
    fi
    grep -E '^(LISTING|wrote|etcd already)' "$data/run-$n.log"
    echo "etcd data after $n users: $(du -sh "$data/etcd" | cut -f1)"
done
