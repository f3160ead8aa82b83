#!/usr/bin/env python3
"""Runs credstore's benchmark scenarios side by side in one run and writes BENCHMARKS.md.

Starts its own etcd (Debian's etcd-server) and release `credstore serve` processes on free
loopback ports, drives them with `credstore bench` (the shipped load generator), and prints
the tables. Ratios are measured within one run because these machines are shared and noisy.
Usage: scripts/bench.sh (builds first), or python3 scripts/bench.py [--quick].
"""
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("CREDSTORE_BIN", str(ROOT / "target" / "release" / "credstore"))
QUICK = "--quick" in sys.argv
SECONDS = 2 if QUICK else 5
SCALE_USERS = 2_000 if QUICK else 100_000
WORK = Path(tempfile.mkdtemp(prefix="credstore-bench-"))
CHILDREN = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd():
    client, peer = free_port(), free_port()
    data = WORK / f"etcd-{client}"
    proc = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", str(data),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"b=http://127.0.0.1:{peer}", "--quota-backend-bytes", str(4 << 30)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    CHILDREN.append(proc)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", client), timeout=0.2) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if b"true" in s.recv(4096):
                    return f"127.0.0.1:{client}"
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("etcd did not start")


class Server:
    """A `credstore serve` process; records its stderr."""

    def __init__(self, endpoint, root, auth=True, weak=False, extra=""):
        path = WORK / f"cfg-{free_port()}.yaml"
        password = ("  password:\n    allowWeakParameters: true\n    argon2: {memoryKiB: 64, iterations: 1}\n"
                    if weak else "")
        path.write_text(
            f"etcd:\n  endpoints: \"{endpoint}\"\n  rootPath: {root}\n"
            f"common:\n  security:\n    authorizationEnabled: {'true' if auth else 'false'}\n"
            f"credstore:\n  http:\n    port: 0\n{password}{extra}")
        self.started = time.time()
        self.proc = subprocess.Popen([BIN, "serve", "--config", str(path), "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "RUST_LOG": "info"})
        CHILDREN.append(self.proc)
        self.log = []
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"ready on (\S+)", line)
                if m:
                    self.uri = f"http://{m.group(1)}"
                    self.ready_after = time.time() - self.started
                    ready.set()
        self.thread = threading.Thread(target=drain, daemon=True)
        self.thread.start()
        if not ready.wait(120):
            raise SystemExit("credstore did not start:\n" + "".join(self.log))

    def rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.thread.join(5)
        text = "".join(self.log)
        m = re.search(r"peak_hashes=(\d+)", text)
        return int(m.group(1)) if m else None


def bench(uri, rpc, seconds=SECONDS, connections=2, concurrency=8, **kw):
    args = [BIN, "bench", "--uri", uri, "--rpc", rpc, "--seconds", str(seconds),
            "--connections", str(connections), "--concurrency", str(concurrency), "--json"]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def errors(report):
    return ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"


def ms(us):
    return f"{us / 1000:.2f}"


def auth_overhead(endpoint):
    on = Server(endpoint, "bench-on", auth=True)
    off = Server(endpoint, "bench-off", auth=False)
    bench(on.uri, "get-version", seconds=1)  # warm root's cache entry
    rounds = {"on": [], "off": []}
    for _ in range(5):
        rounds["off"].append(bench(off.uri, "get-version"))
        rounds["on"].append(bench(on.uri, "get-version"))
    on.stop()
    off.stop()
    med = {k: (statistics.median(r["requests_per_second"] for r in v), statistics.median(r["p99_us"] for r in v),
               statistics.median(r["p50_us"] for r in v)) for k, v in rounds.items()}
    med["rounds"] = [(round(off["requests_per_second"]), round(on["requests_per_second"]))
                     for off, on in zip(rounds["off"], rounds["on"])]
    return med


def storm(endpoint):
    extra = "  password:\n    maxConcurrentHashes: 1\n    maxQueuedHashes: 32\n"
    server = Server(endpoint, "bench-storm", extra=extra)
    bench(server.uri, "create-users", seconds=60, connections=1, concurrency=2, users=20, prefix="storm_")
    bench(server.uri, "get-version", seconds=1)
    alone = bench(server.uri, "get-version", connections=1, concurrency=4)
    result = {}

    def attack():
        result["storm"] = bench(server.uri, "wrong-passwords", connections=4, concurrency=64, users=20, prefix="storm_")
    t = threading.Thread(target=attack)
    t.start()
    time.sleep(0.3)
    loaded = bench(server.uri, "get-version", connections=1, concurrency=4, seconds=SECONDS - 0.6)
    t.join()
    peak = server.stop()
    return alone, loaded, result["storm"], peak


def acknowledged_updates(endpoint):
    rows = []
    for weak in (False, True):
        for replicas in (1, 3):
            root = f"bench-ack-{'weak' if weak else 'prod'}-{replicas}"
            servers = [Server(endpoint, root, weak=weak) for _ in range(replicas)]
            bench(servers[0].uri, "create-users", seconds=60, connections=1, concurrency=1, users=4, prefix="upd_",
                  user_password="bench-password")
            report = bench(servers[0].uri, "update-password", connections=1, concurrency=1, users=4, prefix="upd_",
                           seconds=SECONDS * 2)
            rows.append((weak, replicas, report))
            for s in servers:
                s.stop()
    return rows


def scale(endpoint):
    root = "bench-scale"
    filler = Server(endpoint, root, weak=True)
    t0 = time.time()
    created = bench(filler.uri, "create-users", seconds=3600, connections=4, concurrency=16, users=SCALE_USERS,
                    prefix="u", user_password="scale-password")
    fill_seconds = time.time() - t0
    filler.stop()
    fresh = Server(endpoint, root, weak=True, extra="  cache:\n    capacity: 200000\n")
    ready = fresh.ready_after
    rss_empty = fresh.rss_mib()
    listing = bench(fresh.uri, "list-users", seconds=SECONDS, connections=1, concurrency=1)
    # A latency of failed listings would measure nothing: every reply must have succeeded.
    if listing["errors"] or not listing["ok"]:
        raise SystemExit(f"ListCredUsers over {SCALE_USERS} users failed: {errors(listing)}")
    logins = bench(fresh.uri, "login-users", seconds=3600, connections=4, concurrency=16, users=SCALE_USERS,
                   prefix="u", user_password="scale-password", requests=SCALE_USERS)
    # One pass over every user fills the cache; the report's count tells how many ran.
    rss_full = fresh.rss_mib()
    fresh.stop()
    return created, fill_seconds, ready, listing, logins, rss_empty, rss_full


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    if not Path(BIN).exists():
        raise SystemExit(f"{BIN} missing: run scripts/bench.sh (it builds the release binary)")
    endpoint = start_etcd()
    print("auth overhead ...", flush=True)
    med = auth_overhead(endpoint)
    print("storm ...", flush=True)
    alone, loaded, storm_report, peak = storm(endpoint)
    print("acknowledged updates ...", flush=True)
    acks = acknowledged_updates(endpoint)
    print("scale ...", flush=True)
    created, fill_seconds, ready, listing, logins, rss_empty, rss_full = scale(endpoint)

    tput = med["on"][0] / med["off"][0]
    p99 = med["on"][1] / med["off"][1]
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu_name()}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
        f"{time.strftime('%Y-%m-%d')}{' (quick run)' if QUICK else ''}. Client and servers share the machine.",
        "",
        "### Authentication overhead (GetVersion, 2 connections × 8 in flight, median of 5 interleaved rounds)",
        "",
        "| server | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| authorization disabled | {med['off'][0]:.0f} | {ms(med['off'][2])} | {ms(med['off'][1])} |",
        f"| authorization enabled, warm cache | {med['on'][0]:.0f} | {ms(med['on'][2])} | {ms(med['on'][1])} |",
        f"| **ratio (enabled / disabled)** | **{tput:.3f}** (target ≥ 0.95) | | **{p99:.3f}** (target ≤ 1.10) |",
        "",
        "Each round's req/s (disabled, enabled): " + ", ".join(f"({a}, {b})" for a, b in med["rounds"])
        + ". The spread between rounds of the same server shows the machine's noise.",
        "",
        "### Wrong-password storm while valid cached traffic runs (maxConcurrentHashes 1, maxQueuedHashes 32)",
        "",
        "| traffic | req/s | p50 ms | p99 ms | max ms | answers |",
        "|---|---|---|---|---|---|",
        f"| valid, alone | {alone['requests_per_second']:.0f} | {ms(alone['p50_us'])} | {ms(alone['p99_us'])} | {ms(alone['max_us'])} | {alone['ok']} ok, errors {errors(alone)} |",
        f"| valid, during storm | {loaded['requests_per_second']:.0f} | {ms(loaded['p50_us'])} | {ms(loaded['p99_us'])} | {ms(loaded['max_us'])} | {loaded['ok']} ok, errors {errors(loaded)} |",
        f"| storm: 256 in flight, distinct wrong passwords, half for unknown users | {storm_report['requests_per_second']:.0f} | {ms(storm_report['p50_us'])} | {ms(storm_report['p99_us'])} | {ms(storm_report['max_us'])} | {errors(storm_report)}; {storm_report['ok']} accepted |",
        "",
        f"Valid traffic kept **{loaded['requests_per_second'] / alone['requests_per_second']:.0%}** of its unloaded throughput "
        f"(target ≥ 50 %), p99 **{ms(loaded['p99_us'])} ms** (target < 10 ms). Most hash computations seen running at once: "
        f"**{peak}** (bound 1).",
        "",
        "### Acknowledged UpdateCredential (one at a time, so latency is not queueing)",
        "",
        "| hashing | replicas | updates/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for weak, replicas, r in acks:
        label = "weak (test params, ≈0 ms)" if weak else "argon2id m=19456 t=2 p=1"
        lines.append(f"| {label} | {replicas} | {r['requests_per_second']:.1f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {errors(r)} |")
    prod = {rep: r for weak, rep, r in acks if not weak}
    weak = {rep: r for w, rep, r in acks if w}
    lines += [
        "",
        "Each update verifies the old password and hashes the new one (two argon2id computations), writes etcd "
        "with a compare-and-swap, then waits until every replica's session shows the write applied. "
        f"Hashing's share of the p50 ≈ production − weak: {ms(prod[1]['p50_us'] - weak[1]['p50_us'])} ms with 1 replica, "
        f"{ms(prod[3]['p50_us'] - weak[3]['p50_us'])} ms with 3; the rest (write + acknowledgement) is "
        f"{ms(weak[1]['p50_us'])} ms with 1 replica and {ms(weak[3]['p50_us'])} ms with 3.",
        "",
        f"### Scale: {SCALE_USERS} users in etcd",
        "",
        "| measure | value |",
        "|---|---|",
        f"| filling etcd through CreateCredential (weak hashing, 64 in flight) | {created['ok']} created in {fill_seconds:.1f} s, errors {errors(created)} |",
        f"| replica start to ready (does not read users) | {ready:.2f} s |",
        f"| ListCredUsers over {SCALE_USERS} users: p50 / p99 ({listing['ok']} replies, errors {errors(listing)}) | {ms(listing['p50_us'])} / {ms(listing['p99_us'])} ms |",
        f"| logins of every user once (fills the cache) | {logins['ok']} ok, {logins['requests_per_second']:.0f}/s, errors {errors(logins)} |",
        f"| resident memory: ready / after {logins['ok']} cached logins | {rss_empty:.1f} MiB / {rss_full:.1f} MiB (target < 100 MB) |",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "BENCHMARKS.md"
    head = out.read_text().split("<!-- results -->")[0] if out.exists() else "# Benchmarks\n\n"
    out.write_text(head + "<!-- results -->\n\n" + text + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                child.kill()
        shutil.rmtree(WORK, ignore_errors=True)
