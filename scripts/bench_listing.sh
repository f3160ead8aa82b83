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

# shellcheck source=scripts/bench_etcd.sh
. scripts/bench_etcd.sh
start_bench_etcd

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
