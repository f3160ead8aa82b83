"""TLS compared with a real Milvus 2.3.5 (`milvus-server --tls-mode 2`, the same openssl-made
certificates as test_tls.py), and credstore's proxy tier reaching that Milvus over mutual TLS.

1. The same pymilvus client configurations against Milvus in tlsMode 2 and against credstore
   in tlsMode 2: each connects, or is refused, alike (client certificate from the CA; one-way
   TLS without a client certificate; a client certificate from another CA; plaintext).
2. credstore (plaintext towards pymilvus) forwards to that Milvus over `https` with a client
   certificate and root's token: data written through credstore is read directly from Milvus.
"""

from __future__ import annotations

import shutil
import uuid
from typing import Iterator

import pytest
from pymilvus import MilvusClient

from conftest import ROOT_PASSWORD, ROOT_USER, T, Server, base_config
from test_differential import milvus_235
from test_proxy import DIM, count, rows
from test_tls import TOKEN, certs, https, mutual, one_way, refused, tls_config  # noqa: F401


@pytest.fixture(scope="module")
def tls_milvus(certs, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """`https://127.0.0.1:PORT` of a Milvus 2.3.5 in tlsMode 2."""
    base = tmp_path_factory.mktemp("milvus235tls")
    tls = ("--tls-mode", "2", "--server-pem-path", str(certs / "server.pem"),
           "--server-key-path", str(certs / "server.key"), "--ca-pem-path", str(certs / "ca.pem"))
    try:
        with milvus_235(base, tls, scheme="https", **mutual(certs)) as uri:
            yield uri
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_pymilvus_meets_credstores_tls_as_milvuss(tls_milvus, etcd, certs, tmp_path):  # noqa: F811
    s = Server(tls_config(etcd, certs, 2, tmp_path / "tls"), str(tmp_path / "srv"))
    try:
        plain = lambda uri: uri.replace("https://", "http://")  # noqa: E731
        cases = {
            "client certificate from the CA": (lambda uri: refused(uri, **mutual(certs))),
            "one-way, no client certificate": (lambda uri: refused(uri, **one_way(certs))),
            "client certificate from another CA":
                (lambda uri: refused(uri, **mutual(certs, prefix="other-"))),
            "plaintext": (lambda uri: refused(plain(uri))),
        }
        outcomes = {name: (check(tls_milvus), check(https(s))) for name, check in cases.items()}
        differ = {n: o for n, o in outcomes.items() if o[0] != o[1]}
        assert not differ, f"refused? (milvus 2.3.5, credstore): {differ}"
        assert outcomes["client certificate from the CA"] == (False, False)
        assert outcomes["plaintext"] == (True, True)
    finally:
        s.stop()


def test_credstore_forwards_to_milvus_over_mutual_tls(tls_milvus, etcd, certs, tmp_path):  # noqa: F811
    config = base_config(f"compat-tlsup-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    config["credstore"]["upstream"] = {
        "uri": tls_milvus,
        "token": TOKEN,
        "tls": {
            "caPemPath": str(certs / "ca.pem"),
            "serverName": "localhost",
            "clientPemPath": str(certs / "client.pem"),
            "clientKeyPath": str(certs / "client.key"),
        },
    }
    s = Server(config, str(tmp_path / "srv"))
    direct = MilvusClient(uri=tls_milvus, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T,
                          **mutual(certs))
    name = f"tls_{uuid.uuid4().hex[:8]}"
    try:
        through = MilvusClient(uri=s.uri, token=TOKEN, timeout=T)
        # pymilvus sees Milvus's version through credstore (Connect/GetVersion reflected).
        assert through.get_server_version() == direct.get_server_version()
        through.create_collection(name, dimension=DIM, consistency_level="Strong")
        through.insert(name, rows(4))
        assert count(direct, name) == 4
        assert count(through, name) == 4
    finally:
        direct.drop_collection(name)
        s.stop()
