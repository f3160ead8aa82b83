# Sourced by the scale benchmarks (scripts/bench_import.sh, scripts/bench_listing.sh), never
# run: starts one throwaway etcd for them. After `start_bench_etcd`, `$client_port` is its
# client port and `$data` a temporary directory (the etcd data under `$data/etcd`, its log in
# `$data/etcd.log`); an EXIT trap stops etcd and removes `$data`. Owns nothing else: what the
# benchmark writes and measures stays in its own script.

command -v etcd >/dev/null || { echo "etcd is not on PATH: run scripts/setup.sh" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts etcd on two free loopback ports with an 8 GiB backend quota (the default 2 GiB
# is too small for a million users) and waits up to 10 s for /health.
start_bench_etcd() {
    data=$(mktemp -d)
    client_port=$(free_port)
    peer_port=$(free_port)
    etcd_pid=""
    trap stop_bench_etcd EXIT
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
}

stop_bench_etcd() {
    local status=$?
    if [ -n "$etcd_pid" ]; then
        kill "$etcd_pid" 2>/dev/null || true
        wait "$etcd_pid" 2>/dev/null || true
    fi
    rm -rf "$data"
    exit "$status"
}
