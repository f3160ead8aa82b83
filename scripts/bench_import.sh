#!/usr/bin/env bash
# Import at scale (issue 20): starts one etcd, writes a Milvus keyspace straight into it under
# `src-N/meta` — N users (one bcrypt hash as Milvus writes it), 1 000 roles, N bindings (each
# user bound to one role) and N grants (each role Query on N/1000 collections: a grantee key
# with Milvus's md5 id and one privilege key) — and runs the release `credstore admin import`
# into `dst-N` of the same etcd under /usr/bin/time -v, twice: the copy, then a second run
# that changes nothing. Prints the summary line, wall time and peak RSS of each run, for each
# N given (default 100000); see "Import at scale" in BENCHMARKS.md.
#
#   cargo build --release --locked && scripts/bench_import.sh [N ...]   e.g. 10000 100000
#
# The etcd data (a few hundred MiB for N = 100000) lives in a temporary directory, removed at
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000)
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*000$ ]] || { echo "not a positive multiple of 1000: $n" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (Debian: apt-get install time)" >&2; exit 2; }
binary=target/release/credstore
[ -x "$binary" ] || { echo "$binary is missing: cargo build --release --locked" >&2; exit 2; }

# shellcheck source=scripts/bench_etcd.sh
. scripts/bench_etcd.sh
start_bench_etcd

# Writes the source keyspace through etcd's JSON gateway: 128 puts per transaction (etcd's
# --max-txn-ops), 8 transactions in flight.
write_keyspace() {
    python3 - "$client_port" "$1" <<'EOF'
import base64, hashlib, json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

port, n = sys.argv[1], int(sys.argv[2])
meta = f"src-{n}/meta/root-coord/credential"
hash_ = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
roles, per_role = 1000, n // 1000

def keys():
    for r in range(roles):
        yield f"{meta}/roles/role{r:04}", ""
    for u in range(n):
        yield f"{meta}/users/user{u:07}", json.dumps({"encrypted_password": hash_})
        yield f"{meta}/user-role-mapping/user{u:07}/role{u % roles:04}", ""
    for r in range(roles):
        for c in range(per_role):
            relative = f"root-coord/credential/grantee-privileges/role{r:04}/Collection/default.coll{c:05}"
            grantee_id = hashlib.md5(relative.encode()).hexdigest()[8:24]
            yield f"src-{n}/meta/{relative}", grantee_id
            yield f"{meta}/grantee-id/{grantee_id}/PrivilegeQuery", "root"

def b64(text):
    return base64.b64encode(text.encode()).decode()

def send(batch):
    body = json.dumps({"success": [{"requestPut": {"key": b64(k), "value": b64(v)}} for k, v in batch]})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/txn", body.encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()

def batches():
    batch = []
    for kv in keys():
        batch.append(kv)
        if len(batch) == 128:
            yield batch
            batch = []
    if batch:
        yield batch

total, pending = 0, []
with ThreadPoolExecutor(8) as pool:
    for batch in batches():
        pending.append(pool.submit(send, batch))
        total += len(batch)
        if len(pending) >= 16:
            pending.pop(0).result()
    for future in pending:
        future.result()
print(f"wrote {total} keys: {n} users, {roles} roles, {n} bindings, {n} grants")
EOF
}

# One import under /usr/bin/time -v: its summary line, wall time and peak RSS.
run_import() {
    local n=$1 label=$2
    /usr/bin/time -v "$binary" admin import --config "$data/credstore-$n.yaml" \
        --from-etcd "127.0.0.1:$client_port" --from-root-path "src-$n" \
        >"$data/out" 2>"$data/time" || { cat "$data/out" "$data/time" >&2; exit 1; }
    local wall rss
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$data/time")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$data/time")
    echo "IMPORT n=$n $label: wall $wall, peak RSS $((rss / 1024)) MiB"
    echo "  $(cat "$data/out")"
}

echo "machine: $(nproc) cores, $(etcd --version | head -1), $(date -u +%Y-%m-%d), load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${sizes[@]}"; do
    cat >"$data/credstore-$n.yaml" <<EOF
etcd:
  endpoints: ["127.0.0.1:$client_port"]
  rootPath: dst-$n
credstore:
  http:
    port: 0
EOF
    started=$(date +%s.%N)
    write_keyspace "$n"
    echo "  (written in $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s)"
    run_import "$n" "first run"
    run_import "$n" "second run"
done
echo "etcd data: $(du -sh "$data/etcd" | cut -f1)"
