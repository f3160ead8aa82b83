"""credstore as the proxy tier in front of a real Milvus Lite (issue 11).

A real `milvus-lite server` (from PyPI, installed by scripts/setup.sh) runs on a free
loopback port; a real `credstore serve --upstream http://...` runs in front of it. pymilvus's
MilvusClient talks to credstore exactly as it would to Milvus: root's data calls are
forwarded, a user without roles is refused before the upstream sees anything, a member of
`admin` passes, bad credentials never get through, and a dead upstream is UNAVAILABLE until
it returns. Milvus Lite has no authentication, so which `authorization` header reaches the
upstream is checked in tests/proxy.rs instead.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import grpc
import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

from conftest import (
    READY_TIMEOUT_S,
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    Etcd,
    Server,
    base_config,
    free_port,
    pw,
    raises_refusal,
    raises_rpc,
    uname,
)

REPO = Path(__file__).resolve().parents[2]
DIM = 4


class MilvusLite:
    """One real `milvus-lite server` on a free loopback port with its own data directory."""

    def __init__(self, data_dir: str, port: Optional[int] = None) -> None:
        exe = REPO / ".venv" / "bin" / "milvus-lite"
        if not exe.exists():
            found = shutil.which("milvus-lite")
            if found is None:
                pytest.fail(
                    "`milvus-lite` is not installed: run scripts/setup.sh "
                    "(tests/compat/requirements.txt lists it)",
                    pytrace=False,
                )
            exe = Path(found)
        self.exe = exe
        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        self.log_path = os.path.join(self.data_dir, f"milvus-lite-{uuid.uuid4().hex[:6]}.log")
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(self.exe), "server",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--host", "127.0.0.1",
                "--port", str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                self._fail(f"milvus-lite exited with {self.proc.returncode}")
            if b"listening on" in Path(self.log_path).read_bytes():
                return
            if time.monotonic() > deadline:
                self._fail(f"milvus-lite did not listen within {READY_TIMEOUT_S} s")
            time.sleep(0.1)

    def _fail(self, why: str) -> None:
        self.kill()
        log = Path(self.log_path).read_bytes().decode("utf-8", "replace")[-4000:]
        pytest.fail(f"{why}\n--- milvus-lite log ---\n{log}", pytrace=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def client(self) -> MilvusClient:
        return MilvusClient(uri=self.uri, timeout=T)


def start_proxy(etcd: Etcd, workdir: str, upstream: MilvusLite) -> Server:
    root = f"compat-proxy-{uuid.uuid4().hex[:8]}"
    config = base_config(root, [etcd.endpoint])
    return Server(
        config, workdir, extra_args=("--upstream", upstream.uri), name="proxy"
    )


@pytest.fixture(scope="module")
def lite() -> Iterator[MilvusLite]:
    d = tempfile.mkdtemp(prefix="credstore-compat-lite-")
    m = MilvusLite(d)
    try:
        yield m
    finally:
        m.kill()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(etcd: Etcd, session_dir: str, lite: MilvusLite) -> Iterator[Server]:
    """credstore (auth on) forwarding to `lite`."""
    s = start_proxy(etcd, os.path.join(session_dir, "proxy"), lite)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def root_client(proxy: Server, clients) -> MilvusClient:
    return clients.make(proxy, token=f"{ROOT_USER}:{ROOT_PASSWORD}")


def rows(n: int, start: int = 0):
    return [{"id": i, "vector": [0.1 * i, 0.2, 0.3, 0.4]} for i in range(start, start + n)]


def new_collection(client: MilvusClient) -> str:
    name = f"c_{uuid.uuid4().hex[:8]}"
    client.create_collection(name, dimension=DIM, timeout=T)
    return name


def count(client: MilvusClient, name: str) -> int:
    return len(client.query(name, filter="id >= 0", output_fields=["id"], timeout=T))


def raw_call(server: Server, method: str, request, credentials: str, timeout: float = 5):
    """One MilvusService call with grpc directly (no pymilvus retries)."""
    with grpc.insecure_channel(f"{server.host}:{server.port}") as channel:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        md = [("authorization", base64.b64encode(credentials.encode()).decode())]
        return getattr(stub, method)(request, metadata=md, timeout=timeout)


def assert_denied(call) -> None:
    """The call is refused with PERMISSION_DENIED (pymilvus passes it up as a grpc error)."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (e.code(), e.details())
        assert "permission deny to" in (e.details() or ""), e.details()
        return
    except MilvusException as e:
        assert "permission deny" in (e.message or ""), e
        return
    pytest.fail("expected PERMISSION_DENIED, but the call succeeded")


def test_root_works_with_data_through_credstore(proxy, lite, root_client):
    name = new_collection(root_client)
    assert root_client.insert(name, rows(10), timeout=T)["insert_count"] == 10
    hits = root_client.search(name, [[0.1, 0.2, 0.3, 0.4]], limit=2, timeout=T)
    assert len(hits[0]) == 2 and hits[0][0]["id"] == 1, hits
    got = root_client.query(name, filter="id < 3", output_fields=["id"], timeout=T)
    assert sorted(r["id"] for r in got) == [0, 1, 2]
    root_client.delete(name, ids=[1], timeout=T)
    assert count(root_client, name) == 9
    assert name in root_client.list_collections(timeout=T)

    # Written through credstore, visible directly upstream.
    direct = lite.client()
    try:
        assert name in direct.list_collections(timeout=T)
        assert count(direct, name) == 9
    finally:
        direct.close()


def test_user_without_roles_is_refused_and_upstream_never_sees_it(
    proxy, lite, root_client, clients
):
    name = new_collection(root_client)
    root_client.insert(name, rows(3), timeout=T)
    user, password = uname("norole"), pw()
    root_client.create_user(user, password, timeout=T)
    me = clients.make(proxy, token=f"{user}:{password}")

    direct = lite.client()
    try:
        before = sorted(direct.list_collections(timeout=T))
        assert_denied(lambda: me.insert(name, rows(5, start=100), timeout=T))
        assert_denied(lambda: me.query(name, filter="id >= 0", timeout=T))
        assert_denied(lambda: me.search(name, [[0.1, 0.2, 0.3, 0.4]], limit=1, timeout=T))
        assert_denied(lambda: me.delete(name, ids=[0], timeout=T))
        # Listing is allowed: with the default `public` grants (IndexDetail on every
        # collection) every user sees every name, as on Milvus 2.3.5.
        assert name in me.list_collections(timeout=T)
        sneaky = f"c_{uuid.uuid4().hex[:8]}"
        assert_denied(lambda: me.create_collection(sneaky, dimension=DIM, timeout=T))
        # Nothing reached the upstream: no new collection, no changed row.
        assert sorted(direct.list_collections(timeout=T)) == before
        assert count(direct, name) == 3
    finally:
        direct.close()

    # The denial has Milvus's text, checked on a raw call.
    with raises_rpc(grpc.StatusCode.PERMISSION_DENIED, r"^PrivilegeQuery: permission deny to "):
        raw_call(
            proxy,
            "Query",
            milvus_pb2.QueryRequest(collection_name=name, expr="id >= 0"),
            f"{user}:{password}",
        )


def test_listing_shows_only_the_collections_the_callers_grants_reach(
    etcd, session_dir, lite, clients
):
    """Without `public`'s default grants, ShowCollections through credstore is cut to the
    collections the caller has some privilege on (Milvus 2.4+ semantics); root and `admin`
    see all; the cut happens in credstore, the upstream lists everything."""
    root = f"compat-list-{uuid.uuid4().hex[:8]}"
    config = base_config(root, [etcd.endpoint])
    config["proxy"]["enablePublicPrivilege"] = False
    s = Server(config, os.path.join(session_dir, "list"), extra_args=("--upstream", lite.uri),
               name="list")
    try:
        admin = clients.make(s, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
        mine, theirs = new_collection(admin), new_collection(admin)
        user, password = uname("lister"), pw()
        admin.create_user(user, password, timeout=T)
        me = clients.make(s, token=f"{user}:{password}")
        assert me.list_collections(timeout=T) == []
        role = uname("r")
        admin.create_role(role, timeout=T)
        admin.grant_privilege(role, "Collection", "Query", mine, timeout=T)
        admin.grant_role(user, role, timeout=T)
        assert me.list_collections(timeout=T) == [mine]
        everything = set(lite.client().list_collections(timeout=T))
        assert {mine, theirs} <= everything
        assert set(admin.list_collections(timeout=T)) == everything
        # Global ShowCollections lists the whole database.
        admin.grant_privilege(role, "Global", "ShowCollections", "*", timeout=T)
        assert set(me.list_collections(timeout=T)) == everything
    finally:
        s.stop()


def test_a_grant_on_one_replica_opens_and_a_revoke_closes_the_other_at_once(
    etcd, session_dir, lite, clients
):
    """Two credstore replicas (one etcd, one root path) in front of the same Milvus Lite:
    grant_privilege answered by A lets the user query through B on the very next call;
    once revoke_privilege returns on A, both replicas refuse, with no wait."""
    root_path = f"compat-two-{uuid.uuid4().hex[:8]}"
    replicas = [
        Server(base_config(root_path, [etcd.endpoint]), os.path.join(session_dir, f"two-{i}"),
               extra_args=("--upstream", lite.uri), name=f"two-{i}")
        for i in range(2)
    ]
    try:
        a, b = (clients.make(r, token=f"{ROOT_USER}:{ROOT_PASSWORD}") for r in replicas)
        name = new_collection(a)
        a.insert(name, rows(3), timeout=T)
        user, password = uname("both"), pw()
        a.create_user(user, password, timeout=T)
        role = uname("q")
        a.create_role(role, timeout=T)
        a.grant_role(user, role, timeout=T)
        on_a, on_b = (clients.make(r, token=f"{user}:{password}") for r in replicas)
        assert_denied(lambda: count(on_b, name))
        a.grant_privilege(role, "Collection", "Query", name, timeout=T)
        assert count(on_b, name) == 3
        b.revoke_privilege(role, "Collection", "Query", name, timeout=T)
        assert_denied(lambda: count(on_a, name))
        assert_denied(lambda: count(on_b, name))
    finally:
        for r in replicas:
            r.stop()


def test_a_member_of_admin_works_with_data(proxy, lite, root_client, clients):
    name = new_collection(root_client)
    user, password = uname("adm"), pw()
    root_client.create_user(user, password, timeout=T)
    root_client.grant_role(user, "admin", timeout=T)
    me = clients.make(proxy, token=f"{user}:{password}")
    assert me.insert(name, rows(4), timeout=T)["insert_count"] == 4
    assert count(me, name) == 4
    assert len(me.search(name, [[0.1, 0.2, 0.3, 0.4]], limit=1, timeout=T)[0]) == 1
    assert name in me.list_collections(timeout=T)


def test_the_version_pymilvus_sees_is_the_upstreams(proxy, lite, root_client, clients):
    # Connect and GetVersion reflect the upstream; any authenticated user may call them.
    direct = MilvusClient(uri=lite.uri, timeout=T).get_server_version()
    assert root_client.get_server_version() == direct
    user, password = uname("ver"), pw()
    root_client.create_user(user, password, timeout=T)
    assert clients.make(proxy, token=f"{user}:{password}").get_server_version() == direct
    assert not direct.startswith("credstore")


def test_bad_credentials_are_unauthenticated_and_not_forwarded(proxy, root_client):
    user, password = uname("bad"), pw()
    root_client.create_user(user, password, timeout=T)
    for credentials in (f"{user}:wrong-{password}", f"nobody_{uuid.uuid4().hex[:6]}:x12345"):
        with raises_refusal(WRONG_PASSWORD):
            raw_call(proxy, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), credentials)
    # The positive control: the same call on the same replica with the user's password.
    answer = raw_call(proxy, "ShowCollections", milvus_pb2.ShowCollectionsRequest(),
                      f"{user}:{password}")
    assert answer.status.code == 0, answer.status


def test_unknown_method_is_unimplemented(proxy):
    with grpc.insecure_channel(f"{proxy.host}:{proxy.port}") as channel:
        call = channel.unary_unary(
            "/milvus.proto.milvus.MilvusService/NoSuchMethod",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        md = [("authorization", base64.b64encode(b"root:Milvus").decode())]
        with raises_rpc(grpc.StatusCode.UNIMPLEMENTED):
            call(b"", metadata=md, timeout=5)


def test_upstream_killed_is_unavailable_and_recovers(etcd, tmp_path, clients):
    lite = MilvusLite(str(tmp_path / "lite"))
    server = start_proxy(etcd, str(tmp_path / "proxy"), lite)
    try:
        root = clients.make(server, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
        name = new_collection(root)
        show = milvus_pb2.ShowCollectionsRequest()
        root_credentials = f"{ROOT_USER}:{ROOT_PASSWORD}"

        lite.kill()
        # credstore's own answer (a dead credstore would say "failed to connect to all
        # addresses"), naming the upstream.
        with raises_rpc(grpc.StatusCode.UNAVAILABLE, f"^upstream unavailable at {lite.uri}"):
            raw_call(server, "ShowCollections", show, root_credentials)
        # credstore itself stays up and keeps serving user management.
        assert ROOT_USER in root.list_users(timeout=T)

        lite.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = raw_call(server, "ShowCollections", show, root_credentials)
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
                assert time.monotonic() < deadline, "no recovery within 30 s"
                time.sleep(0.2)
        assert name in list(answer.collection_names)
    finally:
        server.stop()
        lite.kill()


def _rust_list(source: str, const: str) -> set:
    import re

    m = re.search(rf"pub const {const}: &\[&str\] = &\[(.*?)\];", source, re.S)
    assert m, f"{const} not found in src/proxy/methods.rs"
    return set(re.findall(r'"([A-Za-z0-9]+)"', m.group(1)))


def test_every_milvus_method_is_routed_on_purpose():
    """Each MilvusService method in pymilvus's descriptors is owned by credstore, has a
    privilege rule (methods.tsv), or is listed as unannotated or streaming in
    src/proxy/methods.rs, so a new Milvus RPC is neither forwarded unchecked nor refused
    unnoticed; and those lists name no method Milvus does not have."""
    source = (REPO / "src" / "proxy" / "methods.rs").read_text()
    owned = _rust_list(source, "OWNED")
    unannotated = _rust_list(source, "UNANNOTATED")
    streaming = _rust_list(source, "STREAMING")
    table = (REPO / "src" / "rbac" / "methods.tsv").read_text().splitlines()
    ruled = {line.split("\t")[0] for line in table if line and not line.startswith("#")}
    service = milvus_pb2.DESCRIPTOR.services_by_name["MilvusService"]
    methods = {m.name for m in service.methods}
    assert methods - owned - ruled - unannotated - streaming == set()
    assert (owned | unannotated | streaming) - methods == set()
    assert unannotated & ruled == set()
    streamed = {m.name for m in service.methods if m.client_streaming or m.server_streaming}
    assert streamed == streaming
