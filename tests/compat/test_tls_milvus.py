"""TLS compared with a real Milvus 2.3.5 (`milvus-server --tls-mode 2`, the same openssl-made
certificates as test_tls.py), and credstore's proxy tier reaching that Milvus over mutual TLS.

1. The same pymilvus client configurations against Milvus in tlsMode 2 and against credstore
   in tlsMode 2: each connects, or is refused by the TLS layer, alike (client certificate from
   the CA; one-way TLS without a client certificate; a client certificate from another CA;
   plaintext): pymilvus reports the same gRPC error, and a raw handshake ends the same way or
   as TLS_DIFFERENCES says.
2. credstore (plaintext towards pymilvus) forwards to that Milvus over `https` with a client
   certificate and root's token: data written through credstore is read directly from Milvus.
"""

from __future__ import annotations

import re
import shutil
import uuid
from typing import Dict, Iterator, Tuple

import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from conftest import ROOT_PASSWORD, ROOT_USER, T, Server, base_config, grpc_cause
from test_differential import milvus_235
from test_proxy import DIM, count, rows
from test_tls import (  # noqa: F401
    FOREIGN_CLIENT_CERT,
    NO_CLIENT_CERT,
    PLAINTEXT,
    TOKEN,
    certs,
    client,
    handshake,
    https,
    mutual,
    mutual_upstream,
    one_way,
    tls_accepted,
    tls_config,
    tls_refused,
)


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


def tls_outcome(uri: str, **tls) -> Tuple[str, str]:
    """What a client configured with `tls` meets at `uri`: (pymilvus's connect: "accepted" or
    the gRPC code and text behind its failure, the address masked; the end of a raw
    handshake, see test_tls.handshake)."""
    try:
        client(uri, timeout=3, **tls).close()
        connect = "accepted"
    except MilvusException as e:
        rpc = grpc_cause(e)
        assert rpc is not None, e
        connect = f"{rpc.code().name}: {re.sub(r'ipv4:[0-9.]+:[0-9]+', 'ipv4:ADDR', rpc.details())}"
    return connect, handshake(uri, **tls)


# case -> why the end of credstore's TLS handshake differs from Milvus 2.3.5's (pymilvus sees
# the same error from both; both refuse).
TLS_DIFFERENCES: Dict[str, str] = {
    NO_CLIENT_CERT: "rustls answers a missing client certificate with TLS 1.3's "
    "certificate_required alert; Go's crypto/tls (Milvus) with bad_certificate",
    FOREIGN_CLIENT_CERT: "rustls answers a certificate from an unknown CA with unknown_ca; "
    "Go's crypto/tls with bad_certificate",
    PLAINTEXT: "rustls answers bytes that are not TLS with a decode_error alert; Go's crypto/tls "
    "closes the connection without one",
}


def test_pymilvus_meets_credstores_tls_as_milvuss(tls_milvus, etcd, certs, tmp_path):  # noqa: F811
    """The same client configurations against Milvus 2.3.5 and credstore, both tlsMode 2:
    each is accepted, or refused by the TLS layer the same way (the error pymilvus reports
    and the end of a raw handshake), and credstore's refusals are the expected ones."""
    s = Server(tls_config(etcd, certs, 2, tmp_path / "tls"), str(tmp_path / "srv"))
    try:
        # case -> (plaintext?, pymilvus's TLS arguments)
        cases = {
            "client certificate from the CA": (False, mutual(certs)),
            NO_CLIENT_CERT: (False, one_way(certs)),
            FOREIGN_CLIENT_CERT: (False, mutual(certs, prefix="other-")),
            PLAINTEXT: (True, {}),
        }
        at = lambda base, plaintext: base.replace("https://", "http://") if plaintext else base  # noqa: E731
        theirs = {c: tls_outcome(at(tls_milvus, p), **tls) for c, (p, tls) in cases.items()}
        ours = {c: tls_outcome(at(https(s), p), **tls) for c, (p, tls) in cases.items()}
        unexpected = [
            f"{c}:\n    milvus 2.3.5: {theirs[c]}\n    credstore:    {ours[c]}"
            for c in cases
            if theirs[c] != ours[c]
            and not (c in TLS_DIFFERENCES and theirs[c][0] == ours[c][0]
                     and "accepted" not in (theirs[c][1], ours[c][1]))
        ]
        assert not unexpected, "TLS answers differ from Milvus 2.3.5:\n" + "\n".join(unexpected)
        stale = [c for c in TLS_DIFFERENCES if theirs[c] == ours[c]]
        assert not stale, f"no longer different, remove from TLS_DIFFERENCES: {stale}"
        # credstore's own answers, exactly (pymilvus's error and the handshake's end), beside
        # the positive control.
        tls_accepted(https(s), **mutual(certs))
        tls_refused(https(s), NO_CLIENT_CERT, **one_way(certs))
        tls_refused(https(s), FOREIGN_CLIENT_CERT, **mutual(certs, prefix="other-"))
        tls_refused(at(https(s), True), PLAINTEXT)
    finally:
        s.stop()


def test_credstore_forwards_to_milvus_over_mutual_tls(tls_milvus, etcd, certs, tmp_path):  # noqa: F811
    config = base_config(f"compat-tlsup-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    config["credstore"]["upstream"] = mutual_upstream(tls_milvus, certs)
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
