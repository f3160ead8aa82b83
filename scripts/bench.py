#!/usr/bin/env python3
"""Runs credstore's benchmark scenarios side by side in one run and writes BENCHMARKS.md.

Starts its own etcd (Debian's etcd-server) and release `credstore serve` processes on free
loopback ports, drives them with `credstore bench` (the shipped load generator), and prints
the tables. Ratios are measured within one run because these machines are shared and noisy.
Usage: scripts/bench.sh (builds first), or python3 scripts/bench.py [--quick] [--only NAME,...]
(NAME: auth, storm, logins, acks, scale, proxy, tail, milvus; with --only the tables are printed
and BENCHMARKS.md is left alone). CREDSTORE_BASELINE_BIN=PATH (an older credstore binary, e.g.
main's) adds a "before" row to the logins scenario; the load generator is always this build's.

The proxy-tier scenarios put `credstore bench-upstream` (an empty tonic MilvusService with fixed
replies) behind a credstore replica; the peer comparison starts Milvus 2.3.5 from `.venv`
(`milvus-server`, installed by scripts/setup.sh) with authorization on.
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
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))  # where bench.sh's cargo build wrote
BIN = os.environ.get("CREDSTORE_BIN", str(TARGET / "release" / "credstore"))
QUICK = "--quick" in sys.argv
ONLY = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else None
SECONDS = 2 if QUICK else 5
SCALE_USERS = 2_000 if QUICK else 100_000
ROUNDS = 2 if QUICK else 5
AUTH_ROUNDS = 2 if QUICK else 11  # the overhead scenario's pairs: its effect (~2 %) is below one round's noise
SERIAL_REQUESTS = 2_000 if QUICK else 20_000  # per round of the concurrency-1 proxy runs
MILVUS = ROOT / ".venv" / "bin" / "milvus-server"
BASELINE = os.environ.get("CREDSTORE_BASELINE_BIN")
LOGIN_USERS = 10  # uncached logins from 127.0.0.1 during the logins scenario's storm
STORM_WARMUP = 3  # seconds of the logins scenario's storm before anything is measured
ATTACKER = "127.0.0.2"  # the storm's source address (credstore bench --source-ip)
WORK = Path(tempfile.mkdtemp(prefix="credstore-bench-"))
CHILDREN = []
GROUPS = []  # process groups to kill at exit (Milvus and its children)
TICK = os.sysconf("SC_CLK_TCK")


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


class Process:
    """A credstore binary process that logs `ready on ADDRESS`; records its stderr."""

    def __init__(self, args, binary=None):
        self.started = time.time()
        self.proc = subprocess.Popen([binary or BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
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
        deadline = time.time() + 120
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.thread.join(5)
                raise SystemExit(f"credstore {args[0]} did not start:\n" + "".join(self.log))

    def cpu_seconds(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.thread.join(5)
        return "".join(self.log)


class Server(Process):
    """A `credstore serve` process."""

    def __init__(self, endpoint, root, auth=True, weak=False, extra="", binary=None):
        path = WORK / f"cfg-{free_port()}.yaml"
        password = ("  password:\n    allowWeakParameters: true\n    argon2: {memoryKiB: 64, iterations: 1}\n"
                    if weak else "")
        path.write_text(
            f"etcd:\n  endpoints: \"{endpoint}\"\n  rootPath: {root}\n"
            f"common:\n  security:\n    authorizationEnabled: {'true' if auth else 'false'}\n"
            f"credstore:\n  http:\n    port: 0\n{password}{extra}")
        super().__init__(["serve", "--config", str(path), "--listen", "127.0.0.1:0"], binary=binary)

    def rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        m = re.search(r"peak_hashes=(\d+)", super().stop())
        return int(m.group(1)) if m else None


def bench(uri, rpc, seconds=SECONDS, connections=2, concurrency=8, **kw):
    args = [BIN, "bench", "--uri", uri, "--rpc", rpc, "--seconds", str(seconds),
            "--connections", str(connections), "--concurrency", str(concurrency), "--json"]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def setup(uri, rpc, **kw):
    """A preparatory run (creating users, warming caches): any error ends the benchmark."""
    report = bench(uri, rpc, **kw)
    if report["errors"] or not report["ok"]:
        raise SystemExit(f"setup {rpc} against {uri} failed: {errors(report)}")
    return report


def cpu_seconds(pid):
    """utime + stime of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measured(uri, rpc, processes, **kw):
    """A bench run and the CPU each of `processes` ({name: Process}) and the load generator
    used during it, in µs per request (requests: every answer, errors included)."""
    before = {name: proc.cpu_seconds() for name, proc in processes.items()}
    client_before = os.times()
    report = bench(uri, rpc, **kw)
    client_after = os.times()
    total = max(1, report["ok"] + sum(report["errors"].values()))
    cpu = {name: (proc.cpu_seconds() - before[name]) * 1e6 / total for name, proc in processes.items()}
    cpu["client"] = ((client_after.children_user + client_after.children_system)
                     - (client_before.children_user + client_before.children_system)) * 1e6 / total
    report["cpu_us"] = cpu
    report["total"] = total
    return report


def errors(report):
    return ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"


def ms(us):
    return f"{us / 1000:.2f}"


def auth_overhead(endpoint):
    on = Server(endpoint, "bench-on", auth=True)
    off = Server(endpoint, "bench-off", auth=False)
    bench(on.uri, "get-version", seconds=1)  # warm root's cache entry
    rounds = {"on": [], "off": []}
    for r in range(AUTH_ROUNDS):
        # Alternating which goes first: a drift of the machine's load favours neither.
        for name, server in ((("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))):
            rounds[name].append(measured(server.uri, "get-version", {"server": server}))
    on.stop()
    off.stop()
    med = {k: (statistics.median(r["requests_per_second"] for r in v), statistics.median(r["p99_us"] for r in v),
               statistics.median(r["p50_us"] for r in v), median_cpu(v, "server")) for k, v in rounds.items()}
    med["rounds"] = [(round(off["requests_per_second"]), round(on["requests_per_second"]))
                     for off, on in zip(rounds["off"], rounds["on"])]
    med["cpu_rounds"] = [(off["cpu_us"]["server"], on["cpu_us"]["server"])
                         for off, on in zip(rounds["off"], rounds["on"])]
    # Each round's enabled / disabled, measured back to back: the machine's drift cancels.
    med["pair_tput"] = statistics.median(b / a for a, b in med["rounds"])
    med["pair_cpu"] = statistics.median(b / a for a, b in med["cpu_rounds"])
    return med


def storm(endpoint):
    extra = "  password:\n    maxConcurrentHashes: 1\n    maxQueuedHashes: 32\n"
    server = Server(endpoint, "bench-storm", extra=extra)
    alone, loaded, attack = storm_against(server.uri)
    peak = server.stop()
    return alone, loaded, attack, peak


def storm_against(uri, source=None):
    """Valid cached GetVersion (1 × 4 in flight) alone, then during 256 in-flight wrong passwords
    (from the address `source`, when given)."""
    setup(uri, "create-users", seconds=60, connections=1, concurrency=2, users=20, prefix="storm_")
    setup(uri, "get-version", seconds=1)
    alone = bench(uri, "get-version", connections=1, concurrency=4)
    result = {}
    attacker = {"source_ip": source} if source else {}

    def attack():
        result["storm"] = bench(uri, "wrong-passwords", connections=4, concurrency=64, users=20, prefix="storm_",
                                **attacker)
    t = threading.Thread(target=attack)
    t.start()
    time.sleep(0.3)
    loaded = bench(uri, "get-version", connections=1, concurrency=4, seconds=SECONDS - 0.6)
    t.join()
    return alone, loaded, result["storm"]


def logins(endpoint, configs=None):
    """Production hashing, defaults otherwise: valid cached GetVersion from 127.0.0.1 alone and
    during 256 in-flight wrong passwords from 127.0.0.2 (half for 20 existing users, half for
    distinct unknown names), plus LOGIN_USERS uncached logins from 127.0.0.1 during the storm.
    ROUNDS rounds per server, alone and during alternating (a round's kept share is its during
    over its alone); each round's logins use users not logged in before. Rows: a baseline binary
    (CREDSTORE_BASELINE_BIN, if given), this build with the lockout off (fair hashing alone),
    this build with its defaults (fair hashing and lockout)."""
    if configs is None:
        configs = []
        if BASELINE:
            configs.append(("before: CREDSTORE_BASELINE_BIN (one shared hash queue, no lockout)", BASELINE, ""))
        configs.append(("fair hashing, lockout off", None, "  lockout:\n    enabled: false\n"))
        configs.append(("fair hashing and lockout (defaults)", None, ""))
    rows = []
    for i, (label, binary, extra) in enumerate(configs):
        server = Server(endpoint, f"bench-logins-{i}", extra=extra, binary=binary)
        uri = server.uri
        setup(uri, "create-users", seconds=120, connections=1, concurrency=2, users=20, prefix="storm_")
        for r in range(ROUNDS):
            setup(uri, "create-users", seconds=120, connections=1, concurrency=2, users=LOGIN_USERS,
                  prefix=f"fresh{r}_")
        setup(uri, "get-version", seconds=1)
        rounds = [login_round(uri, r) for r in range(ROUNDS)]
        server.stop()
        rows.append((label, rounds))
    return rows


def login_round(uri, r):
    """One round of the logins scenario: (alone, during, storm, fresh logins)."""
    alone = bench(uri, "get-version", connections=1, concurrency=4, seconds=SECONDS - 1)
    result = {}

    def attack():
        result["storm"] = bench(uri, "wrong-passwords", connections=4, concurrency=64, users=20,
                                prefix="storm_", source_ip=ATTACKER, seconds=STORM_WARMUP + SECONDS + 1)

    def fresh():
        result["fresh"] = bench(uri, "login-users", connections=1, concurrency=1, users=LOGIN_USERS,
                                prefix=f"fresh{r}_", requests=LOGIN_USERS, seconds=SECONDS)
    threads = [threading.Thread(target=attack), threading.Thread(target=fresh)]
    threads[0].start()
    time.sleep(STORM_WARMUP)
    threads[1].start()
    loaded = bench(uri, "get-version", connections=1, concurrency=4, seconds=SECONDS - 1)
    for t in threads:
        t.join()
    return alone, loaded, result["storm"], result["fresh"]


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

def proxy_tier(endpoint):
    """The same forwarded call (HasCollection as root) straight to the empty tonic upstream and
    through a credstore replica in front of it: at concurrency 1 (added latency, CPU per
    request) and at 64 in flight (throughput, tails), rounds interleaved."""
    upstream = Process(["bench-upstream", "--listen", "127.0.0.1:0"])
    tier = Server(endpoint, "bench-proxy", extra=f"  upstream:\n    uri: {upstream.uri}\n")
    paths = {"direct": (upstream.uri, {"upstream": upstream}),
             "through": (tier.uri, {"credstore": tier, "upstream": upstream})}
    for uri, _ in paths.values():
        setup(uri, "has-collection", seconds=1, connections=1, concurrency=1)
    serial = {name: [] for name in paths}
    saturated = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, (uri, procs) in paths.items():
            serial[name].append(measured(uri, "has-collection", procs, seconds=3600, connections=1, concurrency=1,
                                         requests=SERIAL_REQUESTS))
        for name, (uri, procs) in paths.items():
            saturated[name].append(measured(uri, "has-collection", procs, connections=4, concurrency=16))
    tier.stop()
    upstream.stop()
    return serial, saturated


def client_side_tails(endpoint):
    """GetVersion at 64 in flight: credstore answering itself (authorization on, no upstream)
    vs the empty tonic server, rounds interleaved."""
    upstream = Process(["bench-upstream", "--listen", "127.0.0.1:0"])
    server = Server(endpoint, "bench-tail")
    servers = {"empty": upstream, "credstore": server}
    for proc in servers.values():
        setup(proc.uri, "get-version", seconds=1)
    rounds = {name: [] for name in servers}
    for _ in range(ROUNDS):
        for name, proc in servers.items():
            rounds[name].append(measured(proc.uri, "get-version", {name: proc}, connections=4, concurrency=16))
    server.stop()
    upstream.stop()
    return rounds


class Milvus:
    """Milvus 2.3.5 standalone from `.venv` with authorization on, every port a free one
    (its embedded etcd moved by ETCD_CONFIG_PATH), stopped by process group."""

    def __init__(self):
        wait_for_free_port(9091)  # its metrics port, which it cannot be told to move
        base = WORK / "milvus"
        base.mkdir()
        client_port, peer_port, proxy_port = free_port(), free_port(), free_port()
        etcd_config = base / "etcd.yaml"
        etcd_config.write_text(
            f"listen-client-urls: http://127.0.0.1:{client_port}\n"
            f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
            f"data-dir: {base}/data/etcd-data\n")
        args = [str(MILVUS), "--data", str(base / "data"), "--authorization-enabled", "true",
                "--proxy-port", str(proxy_port), "--etcd-port", str(client_port)]
        for flag in ("--root-coord-port", "--proxy-internal-port", "--query-coord-port", "--query-node-port",
                     "--index-coord-port", "--index-node-port", "--data-coord-port", "--data-node-port"):
            args += [flag, str(free_port())]
        self.log_path = base / "milvus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env={**os.environ, "ETCD_CONFIG_PATH": str(etcd_config)},
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        GROUPS.append(self.proc.pid)
        self.uri = f"http://127.0.0.1:{proxy_port}"
        started = time.time()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("milvus-server exited:\n" + self.log_path.read_text(errors="replace")[-3000:])
            if time.time() - started > 300:
                raise SystemExit("milvus-server did not answer within 300 s")
            if answers(self.uri):
                break
            time.sleep(2)
        self.ready_after = time.time() - started

    def stop(self):
        kill_group(self.proc.pid)
        self.proc.wait(30)
        GROUPS.remove(self.proc.pid)


def answers(uri):
    """One authenticated GetVersion succeeds (a refused connection is a failed bench run)."""
    args = [BIN, "bench", "--uri", uri, "--rpc", "get-version", "--connections", "1", "--concurrency", "1",
            "--requests", "1", "--json"]
    run = subprocess.run(args, capture_output=True, text=True)
    return run.returncode == 0 and json.loads(run.stdout.strip().splitlines()[-1])["ok"] == 1


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for_free_port(port, seconds=900):
    deadline = time.time() + seconds
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                return
            except OSError:
                if time.time() > deadline:
                    raise SystemExit(f"port {port} stayed busy (another Milvus running?)")
        print(f"port {port} is busy (another Milvus?); waiting", flush=True)
        time.sleep(10)


def milvus_peer(endpoint):
    """credstore (defaults, production argon2id, authorization on) vs Milvus 2.3.5
    (authorization on): GetVersion/Connect throughput in interleaved rounds, then the
    wrong-password storm against each."""
    milvus = Milvus()
    server = Server(endpoint, "bench-peer")
    targets = {"credstore": server.uri, "milvus": milvus.uri}
    for uri in targets.values():
        setup(uri, "get-version", seconds=1)
    calls = {}
    for rpc in ("get-version", "connect"):
        calls[rpc] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, uri in targets.items():
                calls[rpc][name].append(bench(uri, rpc))
    storms = {name: storm_against(uri, source=ATTACKER) for name, uri in targets.items()}
    server.stop()
    ready_after = milvus.ready_after
    milvus.stop()
    return calls, storms, ready_after


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def auth_section(endpoint):
    med = auth_overhead(endpoint)
    tput = med["on"][0] / med["off"][0]
    p99 = med["on"][1] / med["off"][1]
    return [
        f"### Authentication overhead (GetVersion, 2 connections × 8 in flight, median of {AUTH_ROUNDS} interleaved rounds)",
        "",
        "| server | req/s | p50 ms | p99 ms | server CPU µs/request |",
        "|---|---|---|---|---|",
        f"| authorization disabled | {med['off'][0]:.0f} | {ms(med['off'][2])} | {ms(med['off'][1])} | {med['off'][3]:.1f} |",
        f"| authorization enabled, warm cache | {med['on'][0]:.0f} | {ms(med['on'][2])} | {ms(med['on'][1])} | {med['on'][3]:.1f} |",
        f"| **ratio (enabled / disabled)** | **{tput:.3f}** (target ≥ 0.95) | | **{p99:.3f}** (target ≤ 1.10) "
        f"| **{med['on'][3] - med['off'][3]:+.1f}** |",
        f"| **median of the rounds' own ratios** | **{med['pair_tput']:.3f}** (target ≥ 0.98) | | "
        f"| **{med['pair_cpu']:.3f}** |",
        "",
        "Each round's req/s (disabled, enabled): " + ", ".join(f"({a}, {b})" for a, b in med["rounds"])
        + "; server CPU µs/request: " + ", ".join(f"({a:.1f}, {b:.1f})" for a, b in med["cpu_rounds"])
        + ". The spread between rounds of the same server shows the machine's noise; CPU per request "
        "(utime + stime of the server over the requests of a round, 10 ms ticks) is the steadier measure.",
    ]


def storm_section(endpoint):
    alone, loaded, storm_report, peak = storm(endpoint)
    return [
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
    ]


def logins_section(endpoint, configs=None):
    rows = logins(endpoint, configs)
    lines = [
        f"### Logins under a wrong-password storm from another address (production argon2id, median of {ROUNDS} rounds)",
        "",
        f"256 wrong passwords in flight from {ATTACKER} (4 connections × 64, each distinct, half for 20 existing "
        "users and half for distinct unknown names); valid cached GetVersion from 127.0.0.1 at 1 connection × 4; "
        f"{LOGIN_USERS} logins of users not yet cached, one at a time, from 127.0.0.1 during the storm. Both are "
        f"measured from {STORM_WARMUP} s into the storm: its steady state, after the first failures (the lockout's "
        f"thresholds, the pace's burst) have been spent. Each of {ROUNDS} rounds measures the valid traffic alone "
        f"({SECONDS - 1} s), then during the storm ({SECONDS - 1} s); kept: the median of the rounds' during / alone.",
        "",
        "| server | valid alone req/s | valid during storm req/s | kept (each round) | valid p99 ms | uncached logins: ok, p50 / max ms, errors | storm req/s | storm answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rounds in rows:
        kept = [loaded["requests_per_second"] / max(1e-9, alone["requests_per_second"])
                for alone, loaded, _, _ in rounds]
        fresh = [f for _, _, _, f in rounds]
        storms = [s for _, _, s, _ in rounds]
        ok = sum(f["ok"] for f in fresh)
        lines.append(
            f"| {label} | {median([a for a, _, _, _ in rounds], 'requests_per_second'):.0f} "
            f"| {median([l for _, l, _, _ in rounds], 'requests_per_second'):.0f} "
            f"| **{statistics.median(kept):.0%}** ({', '.join(f'{k:.0%}' for k in kept)}) "
            f"| {ms(median([l for _, l, _, _ in rounds], 'p99_us'))} "
            f"| {ok} of {LOGIN_USERS * len(rounds)}, {ms(median(fresh, 'p50_us'))} / {ms(max(f['max_us'] for f in fresh))}, "
            f"{all_errors(fresh)} | {median(storms, 'requests_per_second'):.0f} | {all_errors(storms)}; "
            f"{sum(s['ok'] for s in storms)} accepted |")
    return lines


def acks_section(endpoint):
    acks = acknowledged_updates(endpoint)
    lines = [
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
    return lines + [
        "",
        "Each update verifies the old password and hashes the new one (two argon2id computations), writes etcd "
        "with a compare-and-swap, then waits until every replica's session shows the write applied. "
        f"Hashing's share of the p50 ≈ production − weak: {ms(prod[1]['p50_us'] - weak[1]['p50_us'])} ms with 1 replica, "
        f"{ms(prod[3]['p50_us'] - weak[3]['p50_us'])} ms with 3; the rest (write + acknowledgement) is "
        f"{ms(weak[1]['p50_us'])} ms with 1 replica and {ms(weak[3]['p50_us'])} ms with 3.",
    ]


def scale_section(endpoint):
    created, fill_seconds, ready, listing, logins, rss_empty, rss_full = scale(endpoint)
    return [
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


def median(reports, key):
    return statistics.median(r[key] for r in reports)


def median_cpu(reports, name):
    return statistics.median(r["cpu_us"].get(name, 0.0) for r in reports)


def all_errors(reports):
    merged = {}
    for r in reports:
        for kind, n in r["errors"].items():
            merged[kind] = merged.get(kind, 0) + n
    return ", ".join(f"{k}: {v}" for k, v in merged.items()) or "none"


def proxy_sections(endpoint):
    serial, saturated = proxy_tier(endpoint)
    d, t = serial["direct"], serial["through"]
    added = {q: median(t, f"{q}_us") - median(d, f"{q}_us") for q in ("p50", "p99", "p999")}
    tier_cpu = median_cpu(t, "credstore")
    names = {"direct": "direct to the empty upstream", "through": "through credstore"}
    lines = [
        f"### Proxy tier: added latency at concurrency 1 (HasCollection as root, 1 connection × 1 in flight, "
        f"{SERIAL_REQUESTS} requests per round, median of {ROUNDS} interleaved rounds)",
        "",
        "| path | req/s | p50 µs | p99 µs | p999 µs | CPU µs/request: credstore | upstream | load generator | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, reports in serial.items():
        cs = f"{median_cpu(reports, 'credstore'):.1f}" if name == "through" else "—"
        lines.append(
            f"| {names[name]} | {median(reports, 'requests_per_second'):.0f} | {median(reports, 'p50_us'):.0f} "
            f"| {median(reports, 'p99_us'):.0f} | {median(reports, 'p999_us'):.0f} | {cs} "
            f"| {median_cpu(reports, 'upstream'):.1f} | {median_cpu(reports, 'client'):.1f} | {all_errors(reports)} |")
    lines += [
        f"| **added by the tier** | | **{added['p50']:+.0f}** (goal ≤ 100) | {added['p99']:+.0f} | {added['p999']:+.0f} "
        f"| **{tier_cpu:.1f}** (goal ≤ 20) | | | |",
        "",
        "Each round's p50 µs (direct, through): "
        + ", ".join(f"({a['p50_us']}, {b['p50_us']})" for a, b in zip(d, t))
        + "; credstore CPU µs/request per round: " + ", ".join(f"{r['cpu_us']['credstore']:.1f}" for r in t) + ".",
        "",
    ]
    d, t = saturated["direct"], saturated["through"]
    lines += [
        f"### Proxy tier: throughput at saturation (HasCollection as root, 4 connections × 16 in flight, "
        f"{SECONDS} s rounds, median of {ROUNDS} interleaved rounds)",
        "",
        "| path | req/s | p50 ms | p99 ms | p999 ms | max ms | CPU µs/request: credstore | upstream | load generator | cores busy | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, reports in saturated.items():
        cpu = {k: median_cpu(reports, k) for k in ("credstore", "upstream", "client")}
        busy = median(reports, "requests_per_second") * sum(cpu.values()) / 1e6
        cs = f"{cpu['credstore']:.1f}" if name == "through" else "—"
        lines.append(
            f"| {names[name]} | {median(reports, 'requests_per_second'):.0f} | {ms(median(reports, 'p50_us'))} "
            f"| {ms(median(reports, 'p99_us'))} | {ms(median(reports, 'p999_us'))} | {ms(max(r['max_us'] for r in reports))} "
            f"| {cs} | {cpu['upstream']:.1f} | {cpu['client']:.1f} | {busy:.2f} | {all_errors(reports)} |")
    cpu_d = sum(median_cpu(d, k) for k in ("upstream", "client"))
    cpu_t = sum(median_cpu(t, k) for k in ("credstore", "upstream", "client"))
    ratio = median(t, "requests_per_second") / median(d, "requests_per_second")
    lines += [
        f"| **ratio (through / direct)** | **{ratio:.2f}** | | | | | | | | | |",
        "",
        "Each round's req/s (direct, through): "
        + ", ".join(f"({a['requests_per_second']:.0f}, {b['requests_per_second']:.0f})" for a, b in zip(d, t)) + ".",
        f"CPU per request summed over the three processes: {cpu_d:.1f} µs direct, {cpu_t:.1f} µs through credstore "
        f"(credstore's share {median_cpu(t, 'credstore') / cpu_t:.0%}); a CPU-bound run on 2 cores can at most reach "
        f"2 s / that: {2e6 / cpu_d:.0f} and {2e6 / cpu_t:.0f} req/s.",
    ]
    return lines, saturated


def tail_section(endpoint, saturated):
    client_side = client_side_tails(endpoint)
    rows = [
        ("client side (GetVersion, answered by the server itself)", "empty tonic MilvusService", client_side["empty"]),
        ("", "credstore (authorization on, no upstream)", client_side["credstore"]),
        ("upstream side (HasCollection, forwarded)", "empty tonic MilvusService, direct", saturated["direct"]),
        ("", "credstore in front of the same server", saturated["through"]),
    ]
    lines = [
        f"### Tail latency at 64 in flight vs an empty tonic MilvusService (4 connections × 16, {SECONDS} s rounds, "
        f"median of {ROUNDS} interleaved rounds; max: the worst of all rounds)",
        "",
        "| side | server | req/s | p50 ms | p99 ms | p999 ms | max ms | p999 / empty's | p999 / p50 | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (side, label, reports) in enumerate(rows):
        base = rows[i - i % 2][2]
        ratio = median(reports, "p999_us") / max(1, median(base, "p999_us"))
        mark = f"**{ratio:.2f}** (goal ≤ 1.5)" if i % 2 else "1"
        lines.append(
            f"| {side} | {label} | {median(reports, 'requests_per_second'):.0f} | {ms(median(reports, 'p50_us'))} "
            f"| {ms(median(reports, 'p99_us'))} | {ms(median(reports, 'p999_us'))} | {ms(max(r['max_us'] for r in reports))} "
            f"| {mark} | {median(reports, 'p999_us') / max(1, median(reports, 'p50_us')):.1f} | {all_errors(reports)} |")
    lines += [
        "",
        "Each round's p999 ms, client side (empty, credstore): "
        + ", ".join(f"({ms(a['p999_us'])}, {ms(b['p999_us'])})" for a, b in zip(client_side["empty"], client_side["credstore"]))
        + "; upstream side (direct, through): "
        + ", ".join(f"({ms(a['p999_us'])}, {ms(b['p999_us'])})" for a, b in zip(saturated["direct"], saturated["through"]))
        + ".",
    ]
    return lines


def milvus_section(endpoint):
    calls, storms, ready_after = milvus_peer(endpoint)
    lines = [
        f"### credstore vs Milvus 2.3.5, authorization on (2 connections × 8 in flight, {SECONDS} s rounds, "
        f"median of {ROUNDS} interleaved rounds)",
        "",
        "| RPC | credstore req/s | p50 ms | p99 ms | errors | Milvus req/s | p50 ms | p99 ms | errors | credstore / Milvus |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rpc, by in calls.items():
        c, m = by["credstore"], by["milvus"]
        lines.append(
            f"| {rpc} | {median(c, 'requests_per_second'):.0f} | {ms(median(c, 'p50_us'))} | {ms(median(c, 'p99_us'))} "
            f"| {all_errors(c)} | {median(m, 'requests_per_second'):.0f} | {ms(median(m, 'p50_us'))} "
            f"| {ms(median(m, 'p99_us'))} | {all_errors(m)} "
            f"| **{median(c, 'requests_per_second') / max(1e-9, median(m, 'requests_per_second')):.2f}** |")
    lines += [
        "",
        f"Milvus 2.3.5 standalone (`milvus-server` from PyPI, embedded etcd and storage) answered after {ready_after:.0f} s "
        "and idles in the background during every row of this section, credstore's too.",
        "",
        "### Wrong-password storm: credstore (defaults) vs Milvus 2.3.5",
        "",
        f"256 wrong passwords in flight from {ATTACKER} (4 connections × 64, each distinct, half for 20 existing users "
        "and half for unknown ones) while valid cached GetVersion runs from 127.0.0.1 at 1 connection × 4 in flight.",
        "",
        "| server | valid alone req/s | valid during storm req/s (kept) | valid p99 ms alone / during | storm req/s | storm p50 / p99 ms | storm answers | accepted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (alone, loaded, attack) in storms.items():
        label = ("credstore (defaults: maxConcurrentHashes = cores, maxQueuedHashes 256, maxQueuedHashesPerPeer 32, "
                 "lockout on, failedAuthDelayMs 250, argon2id)"
                 if name == "credstore" else "Milvus 2.3.5 (defaults: no bound, no delay)")
        lines.append(
            f"| {label} | {alone['requests_per_second']:.0f} (errors {errors(alone)}) "
            f"| {loaded['requests_per_second']:.0f} (**{loaded['requests_per_second'] / max(1e-9, alone['requests_per_second']):.0%}**; errors {errors(loaded)}) "
            f"| {ms(alone['p99_us'])} / **{ms(loaded['p99_us'])}** | {attack['requests_per_second']:.0f} "
            f"| {ms(attack['p50_us'])} / {ms(attack['p99_us'])} | {errors(attack)} | {attack['ok']} |")
    return lines


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def selected(name):
    return ONLY is None or name in ONLY


def main():
    global BIN
    if not Path(BIN).exists():
        raise SystemExit(f"{BIN} missing: run scripts/bench.sh (it builds the release binary)")
    # A snapshot: a build finishing during the run (a shared target directory) cannot swap it.
    BIN = str(shutil.copy2(BIN, WORK / "credstore"))
    endpoint = start_etcd()
    load_start = loadavg()
    sections = []
    for name, label, run in (("auth", "auth overhead", auth_section), ("storm", "storm", storm_section),
                             ("logins", "logins under a storm", logins_section),
                             ("acks", "acknowledged updates", acks_section), ("scale", "scale", scale_section)):
        if selected(name):
            print(f"{label} ...", flush=True)
            sections.append(run(endpoint))
    saturated = None
    if selected("proxy") or selected("tail"):
        print("proxy tier ...", flush=True)
        lines, saturated = proxy_sections(endpoint)
        if selected("proxy"):
            sections.append(lines)
    if selected("tail"):
        print("tail latency ...", flush=True)
        sections.append(tail_section(endpoint, saturated))
    if selected("milvus"):
        print("credstore vs Milvus 2.3.5 ...", flush=True)
        sections.append(milvus_section(endpoint))

    header = [
        f"Machine: {os.cpu_count()} cores ({cpu_name()}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
        f"{time.strftime('%Y-%m-%d')}{' (quick run)' if QUICK else ''}. Client and servers share the machine. "
        f"Load average (1, 5, 15 min) at the start: {load_start}; at the end: {loadavg()} "
        "(other engineers' builds share the 2 cores).",
    ]
    text = "\n\n".join("\n".join(section) for section in [header, *sections])
    print(text)
    if ONLY is not None:
        print("\n--only: BENCHMARKS.md left as it is")
        return
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
        for group in GROUPS:
            kill_group(group)
        shutil.rmtree(WORK, ignore_errors=True)
