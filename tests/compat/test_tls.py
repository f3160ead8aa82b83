"""TLS like Milvus (issue 12, item 1; the upstream half of issue 11).

Certificates are made here with the `openssl` command line: a CA, a server certificate
for `localhost`/127.0.0.1 signed by it, a client certificate signed by it, and a second,
unrelated CA with its own server and client certificates. Real `credstore serve` processes
run with `common.security.tlsMode` 1 and 2, and the real pymilvus connects with exactly the
arguments Milvus's documentation gives (`server_pem_path` + `server_name` for mode 1;
`client_pem_path`, `client_key_path`, `ca_pem_path` for mode 2). Checked: plaintext clients
are refused under TLS, a client certificate from another CA is refused in mode 2, a
certificate rotation (SIGHUP, or just new files) takes effect for new connections while an
open connection keeps working, the admin CLI and `credstore bench` speak TLS, and credstore
reaches an `https://` upstream that requires a client certificate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator

import grpc
import pytest
from pymilvus import MilvusClient

from conftest import (
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    Refusal,
    Server,
    base_config,
    credstore_bin,
    pw,
    refused,
    retarget,
    to_yaml,
    uname,
)
from test_proxy import DIM, MilvusLite, count, rows

TOKEN = f"{ROOT_USER}:{ROOT_PASSWORD}"


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        cwd=d,
    )


def make_leaf(d: Path, ca: str, name: str, usage: str) -> None:
    """`name`.pem/.key signed by `ca`, for `usage` serverAuth or clientAuth."""
    ext = d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name,
        cwd=d,
    )


@pytest.fixture(scope="module")
def certs() -> Iterator[Path]:
    """ca/server/client, and other-ca/other-server/other-client from an unrelated CA."""
    d = Path(tempfile.mkdtemp(prefix="credstore-compat-tls-"))
    try:
        for ca, prefix in (("ca", ""), ("other-ca", "other-")):
            make_ca(d, ca)
            make_leaf(d, ca, f"{prefix}server", "serverAuth")
            make_leaf(d, ca, f"{prefix}client", "clientAuth")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tls_config(etcd, certs: Path, mode: int, served: Path) -> Dict:
    """A server config with tlsMode `mode`, serving the files in `served` (copies, so a
    test may rotate them)."""
    served.mkdir(parents=True, exist_ok=True)
    for name in ("server.pem", "server.key", "ca.pem"):
        shutil.copy(certs / name, served / name)
    config = base_config(f"compat-tls-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    config["common"]["security"]["tlsMode"] = mode
    config["tls"] = {
        "serverPemPath": str(served / "server.pem"),
        "serverKeyPath": str(served / "server.key"),
        "caPemPath": str(served / "ca.pem"),
    }
    return config


def https(server: Server) -> str:
    return f"https://127.0.0.1:{server.port}"


def client(uri: str, timeout: float = T, **tls) -> MilvusClient:
    return MilvusClient(uri=uri, token=TOKEN, timeout=timeout, dedicated=True, **tls)


# How a TLS refusal looks, as (what pymilvus's Connect fails with: gRPC C-core's UNAVAILABLE
# text, a regex; what a raw TLS handshake from Python's ssl module ends with). A dead or hung
# server gives neither: "Connection refused" or a deadline.
UNTRUSTED_SERVER = "untrusted server certificate"
NO_CLIENT_CERT = "no client certificate"
FOREIGN_CLIENT_CERT = "client certificate from another CA"
PLAINTEXT = "plaintext client"
TLS_REFUSALS = {
    # The client refuses the server's certificate during the handshake.
    UNTRUSTED_SERVER: (
        r"failed to connect to all addresses; last error: UNKNOWN: ipv4:[0-9.:]+: Tls handshake "
        r"failed \(TSI_PROTOCOL_FAILURE\): SSL_ERROR_SSL: .*CERTIFICATE_VERIFY_FAILED.*",
        "CERTIFICATE_VERIFY_FAILED",
    ),
    # TLS 1.3: the server's alert arrives after the client's Finished, as the first record
    # the client reads (C-core then reports it as undecryptable data).
    NO_CLIENT_CERT: (
        r"failed to connect to all addresses; last error: UNAVAILABLE: ipv4:[0-9.:]+: Unwrap "
        r"failed \(TSI_DATA_CORRUPTED\)",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    ),
    FOREIGN_CLIENT_CERT: (
        r"failed to connect to all addresses; last error: UNAVAILABLE: ipv4:[0-9.:]+: Unwrap "
        r"failed \(TSI_DATA_CORRUPTED\)",
        "TLSV1_ALERT_UNKNOWN_CA",
    ),
    # The server answers the HTTP/2 preface with a fatal TLS alert and closes.
    PLAINTEXT: (
        r"failed to connect to all addresses; last error: UNAVAILABLE: ipv4:[0-9.:]+: "
        r"Socket closed",
        "fatal alert decode_error",
    ),
}

# The admin CLI's answers when the TLS layer refused it, one fixed text per cause ("cannot
# reach URI" when nothing answered): the CLI probes the handshake on a connection of its own
# before its first call (src/client.rs, `preflight`), so the text no longer depends on when
# the server's alert arrives.
def cli_plaintext_at_tls(uri: str) -> str:
    return (f"credstore: {uri} answered with a TLS alert: the server speaks TLS; use an "
            "https:// URI (and --ca-pem)\n")


def cli_handshake_failed(uri: str, reason: str) -> str:
    host = uri.split("//")[-1]
    return f"credstore: TLS: handshake with {host} failed: {reason}\n"


CLI_NO_CLIENT_CERT = "the server requires a client certificate (--client-pem, --client-key)"
CLI_FOREIGN_CLIENT_CERT = "the server does not trust the CA of this client's certificate"
CLI_NOT_TLS = ("the server closed the connection during the handshake (a plaintext server? "
               "then use an http:// URI)")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ALERTS = {10: "unexpected_message", 40: "handshake_failure", 42: "bad_certificate",
          48: "unknown_ca", 50: "decode_error", 70: "protocol_version", 80: "internal_error"}


def handshake(uri: str, **tls) -> str:
    """A raw handshake with Python's ssl module, configured as pymilvus is by `tls` (no
    `tls`: plaintext, the HTTP/2 preface): "accepted", or how the server or the client
    refused it (an ssl reason such as TLSV1_ALERT_UNKNOWN_CA; for a plaintext client "fatal
    alert NAME", "closed without an alert" or what it answered). A refused connection or a
    silent server raises: never a refusal."""
    host, port = uri.split("//")[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.settimeout(5)
        if not tls:
            raw.sendall(HTTP2_PREFACE + bytes(9))
            answer = raw.recv(64)
            if not answer:
                return "closed without an alert"
            if answer[:3] not in (b"\x15\x03\x01", b"\x15\x03\x03") or len(answer) < 7:
                return f"answered {answer[:16]!r}"
            level = "fatal" if answer[5] == 2 else "warning"
            return f"{level} alert {ALERTS.get(answer[6], answer[6])}"
        ca = tls.get("ca_pem_path") or tls["server_pem_path"]
        context = ssl.create_default_context(cafile=ca)
        context.set_alpn_protocols(["h2"])
        if tls.get("client_pem_path") and not tls.get("server_pem_path"):
            context.load_cert_chain(tls["client_pem_path"], tls["client_key_path"])
        try:
            with context.wrap_socket(raw, server_hostname=tls.get("server_name", "localhost")) as t:
                # TLS 1.3: a refused client certificate is an alert after our Finished.
                t.sendall(HTTP2_PREFACE + bytes(9))
                t.settimeout(1)
                try:
                    t.recv(64)
                except (socket.timeout, TimeoutError):
                    pass
        except ssl.SSLError as e:
            return e.reason or str(e)
    return "accepted"


def tls_refused(uri: str, why: str, **tls) -> None:
    """A pymilvus client configured with `tls` is refused by the TLS layer for `why` (see
    TLS_REFUSALS), beside its raw handshake failing the same way."""
    text, reason = TLS_REFUSALS[why]
    refused(lambda: client(retarget(uri), timeout=3, **tls),
            Refusal(why, grpc.StatusCode.UNAVAILABLE, text), f"TLS connect ({why})")
    assert handshake(uri, **tls) == reason, f"{why}: expected the handshake to end with {reason}"


def tls_accepted(uri: str, **tls) -> None:
    """The positive control: the same server accepts a client configured with `tls`."""
    client(uri, timeout=3, **tls).close()
    assert handshake(uri, **tls) == "accepted"


def _wait_lines(path: Path, n: int, within: float = 10) -> list:
    deadline = time.monotonic() + within
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def one_way(certs: Path, ca: str = "ca.pem") -> Dict:
    return {"server_pem_path": str(certs / ca), "server_name": "localhost"}


def mutual(certs: Path, prefix: str = "", ca: str = "ca.pem") -> Dict:
    return {
        "client_pem_path": str(certs / f"{prefix}client.pem"),
        "client_key_path": str(certs / f"{prefix}client.key"),
        "ca_pem_path": str(certs / ca),
        "server_name": "localhost",
    }


def mutual_upstream(uri: str, certs: Path) -> Dict:
    """`credstore.upstream` for an upstream at `uri` over mutual TLS, as root."""
    return {
        "uri": uri,
        "token": TOKEN,
        "tls": {
            "caPemPath": str(certs / "ca.pem"),
            "serverName": "localhost",
            "clientPemPath": str(certs / "client.pem"),
            "clientKeyPath": str(certs / "client.key"),
        },
    }


def cli_tls(certs: Path, client_cert: bool = False) -> list:
    args = ["--ca-pem", str(certs / "ca.pem"), "--server-name", "localhost"]
    if client_cert:
        args += ["--client-pem", str(certs / "client.pem"), "--client-key", str(certs / "client.key")]
    return args


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDSTORE_")}
    env["CREDSTORE_PASSWORD"] = ROOT_PASSWORD
    return subprocess.run(
        [str(server.bin), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_mode_1_serves_pymilvus_and_refuses_plaintext(etcd, certs, tmp_path):
    config = tls_config(etcd, certs, 1, tmp_path / "tls")
    audit = tmp_path / "audit.log"
    config["credstore"]["audit"] = {"path": str(audit)}
    config["credstore"]["failedAuthDelayMs"] = 0
    s = Server(config, str(tmp_path / "srv"))
    try:
        assert "(authorization true, TLS)" in s.log_text()
        c = client(https(s), **one_way(certs))
        name, secret = uname("tls"), pw("Tls")
        c.create_user(name, secret, timeout=T)
        assert name in c.list_users(timeout=T)
        # The user logs in over TLS too.
        client(https(s), **one_way(certs)).close()
        # The audit trail knows the peer of a TLS connection.
        refused(lambda: MilvusClient(uri=retarget(https(s)), token=f"{name}:wrong-pw",
                                     timeout=3, dedicated=True, **one_way(certs)),
                WRONG_PASSWORD)
        lines = [json.loads(l) for l in _wait_lines(audit, 2)]
        created = next(l for l in lines if l.get("action") == "CreateCredential")
        failed = next(l for l in lines if l["event"] == "login_failed")
        assert created["peer"].startswith("127.0.0.1:"), created
        assert failed["peer"].startswith("127.0.0.1:") and failed["user"] == name, failed
        tls_refused(s.uri, PLAINTEXT)
        tls_refused(https(s), UNTRUSTED_SERVER, **one_way(certs, "other-ca.pem"))
        tls_accepted(https(s), **one_way(certs))
        # The admin CLI and the load generator speak TLS.
        listed = cli(s, "user", "list", "--uri", https(s), *cli_tls(certs))
        assert listed.returncode == 0 and name in listed.stdout.split(), listed.stderr
        health = cli(s, "health", "--uri", https(s), *cli_tls(certs))
        assert health.returncode == 0, health.stderr
        # Plaintext reaches the TLS listener and is refused there (a dead server: "cannot
        # reach URI").
        plain = cli(s, "health", "--uri", s.uri)
        assert plain.returncode != 0
        assert plain.stderr == cli_plaintext_at_tls(s.uri), plain.stderr
        bench = cli(
            s, "bench", "--uri", https(s), *cli_tls(certs), "--rpc", "get-version",
            "--connections", "1", "--concurrency", "2", "--requests", "200", "--json",
        )
        assert bench.returncode == 0, bench.stderr
        assert '"errors":{}' in bench.stdout.replace(" ", ""), bench.stdout
        c.close()
    finally:
        s.stop()


def test_mode_2_requires_a_client_certificate_from_the_ca(etcd, certs, tmp_path):
    s = Server(tls_config(etcd, certs, 2, tmp_path / "tls"), str(tmp_path / "srv"))
    try:
        assert "(authorization true, mutual TLS)" in s.log_text()
        c = client(https(s), **mutual(certs))
        assert ROOT_USER in c.list_users(timeout=T)
        c.close()
        # server_pem_path wins in pymilvus: one-way TLS, no client certificate.
        tls_refused(https(s), NO_CLIENT_CERT, **one_way(certs))
        # A client certificate from an unrelated CA (the client trusts our CA for the server).
        tls_refused(https(s), FOREIGN_CLIENT_CERT, **mutual(certs, prefix="other-"))
        tls_refused(s.uri, PLAINTEXT)
        tls_accepted(https(s), **mutual(certs))
        ok = cli(s, "user", "list", "--uri", https(s), *cli_tls(certs, client_cert=True))
        assert ok.returncode == 0 and ROOT_USER in ok.stdout.split(), ok.stderr
        bare = cli(s, "user", "list", "--uri", https(s), *cli_tls(certs))
        assert bare.returncode != 0
        assert bare.stderr == cli_handshake_failed(https(s), CLI_NO_CLIENT_CERT), bare.stderr
        foreign = cli(s, "user", "list", "--uri", https(s), *cli_tls(certs),
                      "--client-pem", str(certs / "other-client.pem"),
                      "--client-key", str(certs / "other-client.key"))
        assert foreign.returncode != 0
        assert foreign.stderr == cli_handshake_failed(https(s), CLI_FOREIGN_CLIENT_CERT), \
            foreign.stderr
        plain = cli(s, "user", "list", "--uri", s.uri)
        assert plain.returncode != 0
        assert plain.stderr == cli_plaintext_at_tls(s.uri), plain.stderr
    finally:
        s.stop()


def wait_for_log(s: Server, pattern: str, times: int, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while len(re.findall(pattern, s.log_text())) < times:
        assert time.monotonic() < deadline, f"no {pattern!r} ×{times} in the log:\n{s.log_text()}"
        time.sleep(0.1)


def rotate(served: Path, certs: Path, prefix: str) -> None:
    """Replaces the served certificate and key as an operator would (write, then rename)."""
    for name in ("server.pem", "server.key"):
        staged = served / f".{name}.new"
        shutil.copy(certs / f"{prefix}{name}", staged)
        os.replace(staged, served / name)


def test_rotation_on_sighup_and_on_file_change_keeps_open_connections(etcd, certs, tmp_path):
    served = tmp_path / "tls"
    s = Server(tls_config(etcd, certs, 1, served), str(tmp_path / "srv"))
    try:
        before = client(https(s), **one_way(certs))
        assert ROOT_USER in before.list_users(timeout=T)
        # Rotate to a certificate from the other CA; SIGHUP.
        rotate(served, certs, "other-")
        s.proc.send_signal(signal.SIGHUP)
        wait_for_log(s, "TLS certificates reloaded", 1)
        assert ROOT_USER in before.list_users(timeout=T), "the open connection was dropped"
        after = client(https(s), **one_way(certs, "other-ca.pem"))
        assert ROOT_USER in after.list_users(timeout=T)
        tls_refused(https(s), UNTRUSTED_SERVER, **one_way(certs))
        tls_accepted(https(s), **one_way(certs, "other-ca.pem"))
        # Back to the first certificate, without a signal: the file watch picks it up.
        rotate(served, certs, "")
        wait_for_log(s, "TLS certificates reloaded", 2)
        again = client(https(s), **one_way(certs))
        assert ROOT_USER in again.list_users(timeout=T)
        assert ROOT_USER in before.list_users(timeout=T)
        # A broken rotation keeps the working certificate.
        (served / "server.pem").write_text("not a certificate\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_for_log(s, "TLS certificates not reloaded", 1)
        assert s.alive()
        client(https(s), **one_way(certs)).close()
        for c in (before, after, again):
            c.close()
    finally:
        s.stop()


def test_a_broken_tls_setting_stops_start_up_naming_the_key(etcd, certs, tmp_path):
    config = tls_config(etcd, certs, 2, tmp_path / "tls")
    del config["tls"]["caPemPath"]
    assert "tls.caPemPath" in refused_start(config, tmp_path)


def refused_start(config: Dict, tmp_path: Path) -> str:
    """Starts `credstore serve` on `config`, expects it to exit with an error; its stderr."""
    path = tmp_path / "bad.yaml"
    path.write_text(to_yaml(config) + "\n")
    done = subprocess.run(
        [str(credstore_bin()), "serve", "--config", str(path), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_upstream_over_mutual_tls(etcd, certs, tmp_path):
    """pymilvus → credstore B (plaintext) → https → credstore A (tlsMode 2) → milvus-lite.
    B verifies A's certificate and presents a client certificate; the data calls go through
    both tiers."""
    lite = MilvusLite(str(tmp_path / "lite"))
    inner = outer = None
    try:
        inner = Server(
            tls_config(etcd, certs, 2, tmp_path / "tls"), str(tmp_path / "inner"),
            extra_args=("--upstream", lite.uri), name="inner",
        )
        config = base_config(f"compat-tls-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
        config["credstore"]["upstream"] = mutual_upstream(https(inner), certs)
        outer = Server(config, str(tmp_path / "outer"), name="outer")
        c = MilvusClient(uri=outer.uri, token=TOKEN, timeout=T, dedicated=True)
        name = f"c_{uuid.uuid4().hex[:8]}"
        c.create_collection(name, dimension=DIM, timeout=T)
        c.insert(name, rows(5), timeout=T)
        assert count(c, name) == 5
        assert count(lite.client(), name) == 5
        c.close()
    finally:
        for s in (outer, inner):
            if s is not None:
                s.stop()
        lite.kill()


def test_an_upstream_tls_setting_without_https_is_refused(etcd, certs, tmp_path):
    config = base_config(f"compat-tls-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    config["credstore"]["upstream"] = {
        "uri": "http://127.0.0.1:1",
        "tls": {"caPemPath": str(certs / "ca.pem")},
    }
    assert "credstore.upstream.tls" in refused_start(config, tmp_path)


def test_a_tls_cli_at_a_plaintext_server_is_told_so(server, certs):
    """The other mismatch: the CLI speaks TLS to a plaintext server, beside the plaintext
    call that works on the same server."""
    ok = cli(server, "health", "--uri", server.uri)
    assert ok.returncode == 0, ok.stderr
    at = server.uri.replace("http://", "https://")
    r = cli(server, "health", "--uri", at, *cli_tls(certs))
    assert r.returncode != 0
    assert r.stderr == cli_handshake_failed(at, CLI_NOT_TLS), r.stderr
