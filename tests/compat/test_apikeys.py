"""API keys through the real pymilvus `MilvusClient(uri, token=<key>)` (issue 19).

Two real `credstore serve` replicas (one etcd, one root path) stand in front of one real
Milvus Lite. Keys are made with the admin CLI (`credstore apikey create|list|revoke`) on
replica A and used through replica B: a key acts as its owner, limited to its listed roles;
an expired key, a key revoked on A (refused on B the moment the command returns), the key of
a deleted owner and a key with a wrong secret are refused with UNAUTHENTICATED and the text of
a wrong password, each beside a key that works on the same replica. The audit log says why.
The store holds no secret.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Iterator, List

import grpc
import pytest
from pymilvus import MilvusClient
from pymilvus.grpc_gen import milvus_pb2

from conftest import (
    ROOT_PASSWORD,
    ROOT_USER,
    THROTTLED,
    T,
    ReplicaPair,
    Server,
    pw,
    raises_rpc,
    uname,
)
from test_proxy import assert_denied, count, new_collection, raw_call, rows
from test_proxy import lite  # noqa: F401  (the module-scoped Milvus Lite upstream)

DENIED_TEXT = "auth check failure, please check username and password are correct"
ROOT_TOKEN = f"{ROOT_USER}:{ROOT_PASSWORD}"


@pytest.fixture
def pair(etcd, tmp_path, lite) -> Iterator[ReplicaPair]:
    p = ReplicaPair(etcd, tmp_path, lite.uri, "keys")
    try:
        yield p
    finally:
        p.stop()


def cli_ok(server: Server, *args: str, user: str = ROOT_USER,
           password: str = ROOT_PASSWORD) -> str:
    r = server.cli(*args, user=user, password=password)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def create_key(server: Server, owner: str, *extra: str, user: str = ROOT_USER,
               password: str = ROOT_PASSWORD) -> str:
    out = cli_ok(server, "apikey", "create", owner, *extra, user=user, password=password)
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("csk_"), out
    return lines[0]


def key_id(key: str) -> str:
    return key.split("_")[1]


def client(server: Server, token: str) -> MilvusClient:
    return MilvusClient(uri=server.uri, token=token, timeout=T, dedicated=True)


def assert_refused(server: Server, token: str) -> None:
    """UNAUTHENTICATED with the text of a wrong password, on a raw call (no retries)."""
    with raises_rpc(grpc.StatusCode.UNAUTHENTICATED, f"^{DENIED_TEXT}$"):
        raw_call(server, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), token)


def assert_works(server: Server, token: str) -> None:
    """The positive control: the same call through the same replica succeeds."""
    answer = raw_call(server, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), token)
    assert answer.status.code == 0, answer.status


def test_a_key_acts_as_its_owner_limited_to_its_roles(pair):
    root = client(pair.a, ROOT_TOKEN)
    name = new_collection(root)
    root.insert(name, rows(3), timeout=T)
    alice, secret = uname("alice"), pw()
    root.create_user(alice, secret, timeout=T)
    for role, privilege in (("reader", "Query"), ("writer", "Insert")):
        role = f"{role}_{uuid.uuid4().hex[:6]}"
        root.create_role(role, timeout=T)
        root.grant_privilege(role, "Collection", privilege, name, timeout=T)
        root.grant_role(alice, role, timeout=T)
        if privilege == "Query":
            reader = role
    full = create_key(pair.a, alice, "--description", "all of alice's roles")
    limited = create_key(pair.a, alice, "--role", reader)

    # Through replica B: the full key queries and inserts, as alice would.
    as_full = client(pair.b, full)
    assert count(as_full, name) == 3
    assert as_full.insert(name, rows(2, start=10), timeout=T)["insert_count"] == 2
    assert_denied(lambda: as_full.create_collection(f"c_{uuid.uuid4().hex[:8]}", dimension=4,
                                                    timeout=T))
    # Owned calls act as alice too: she may describe herself.
    assert as_full.describe_user(alice, timeout=T)["user_name"] == alice

    # The limited key queries (positive control) but may not insert: only `reader` counts.
    as_limited = client(pair.b, limited)
    assert count(as_limited, name) == 5
    assert_denied(lambda: as_limited.insert(name, rows(1, start=20), timeout=T))
    assert count(root, name) == 5, "the refused insert never reached the upstream"

    # A key limited to `admin` of root acts as admin; root's unlimited key as root.
    admin_key = create_key(pair.a, ROOT_USER, "--role", "admin")
    assert alice in client(pair.b, admin_key).list_users(timeout=T)


def test_expired_revoked_orphaned_and_wrong_keys_are_refused_on_the_other_replica(pair):
    root = client(pair.a, ROOT_TOKEN)
    bob, carol = uname("bob"), uname("carol")
    for user in (bob, carol):
        root.create_user(user, pw(), timeout=T)
    control = create_key(pair.a, carol)
    assert_works(pair.b, control)

    # Revoked on A: B refuses it the moment the command returns.
    revoked = create_key(pair.a, carol)
    assert_works(pair.b, revoked)
    cli_ok(pair.a, "apikey", "revoke", key_id(revoked))
    assert_refused(pair.b, revoked)
    assert_works(pair.b, control)

    # The owner deleted on A: B refuses the owner's (cached) key at once.
    orphan = create_key(pair.a, bob)
    assert_works(pair.b, orphan)
    root.drop_user(bob, timeout=T)
    assert_refused(pair.b, orphan)
    assert_works(pair.b, control)

    # A wrong secret for a real id.
    last = "A" if control[-1] != "A" else "B"
    assert_refused(pair.b, control[:-1] + last)
    assert_works(pair.b, control)

    # Expired: refused once its lifetime is over, cached or not.
    expiring = create_key(pair.a, carol, "--ttl", "2s")
    assert_works(pair.b, expiring)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert_works(pair.b, expiring)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
            assert e.details() == DENIED_TEXT, e.details()
            break
        assert time.monotonic() < deadline, "a 2 s key still worked after 10 s"
        time.sleep(0.2)
    assert_works(pair.b, control)

    pair.wait_for_reasons(["apikey_revoked", "apikey_owner_deleted", "apikey_wrong_secret",
                           "apikey_expired"])


def test_who_may_manage_keys_and_what_is_stored(pair, etcd):
    root = client(pair.a, ROOT_TOKEN)
    dave, dave_pw = uname("dave"), pw()
    erin, erin_pw = uname("erin"), pw()
    root.create_user(dave, dave_pw, timeout=T)
    root.create_user(erin, erin_pw, timeout=T)
    role = f"r_{uuid.uuid4().hex[:6]}"
    root.create_role(role, timeout=T)
    root.grant_role(dave, role, timeout=T)

    # A user may make keys for themselves, with roles among their own...
    own = create_key(pair.a, dave, "--role", role, user=dave, password=dave_pw)
    assert_works(pair.b, own)
    # ...but not for another user, nor with a role they do not hold.
    other = pair.a.cli("apikey", "create", erin, user=dave, password=dave_pw)
    assert other.returncode != 0 and "PermissionDenied" in other.stderr, other.stderr
    assert "permission deny" in other.stderr
    foreign = pair.a.cli("apikey", "create", dave, "--role", "admin", user=dave, password=dave_pw)
    assert foreign.returncode != 0 and "PermissionDenied" in foreign.stderr, foreign.stderr

    # Listing: one line per key, never a secret; dave sees his own keys only.
    mine = cli_ok(pair.a, "apikey", "list", user=dave, password=dave_pw)
    assert [l.split("\t")[0] for l in mine.splitlines()] == [key_id(own)], mine
    fields = mine.splitlines()[0].split("\t")
    assert fields[1:3] == [dave, role] and fields[-1] == "active", fields
    assert own.split("_")[2] not in mine
    theirs = pair.a.cli("apikey", "list", erin, user=dave, password=dave_pw)
    assert theirs.returncode != 0 and "PermissionDenied" in theirs.stderr, theirs.stderr
    everything = cli_ok(pair.b, "apikey", "list")
    assert key_id(own) in everything

    # A key with a role list can make keys only with a role list.
    unlimited = pair.a.cli("apikey", "create", dave, user=dave, password=dave_pw)
    assert unlimited.returncode == 0, unlimited.stderr
    by_key = raw_keys_call(pair.a, own, owner=dave)
    assert by_key.code() == grpc.StatusCode.INVALID_ARGUMENT, by_key
    assert "must list its roles" in by_key.details()

    # The store holds only a keyed hash: neither the key nor its secret is anywhere in etcd.
    stored = etcd.get_prefix(f"{pair.a.root_path}/")
    secret = own.split("_", 2)[2]
    for value in stored.values():
        assert secret.encode() not in value and own.encode() not in value
    record = json.loads(stored[f"{pair.a.root_path}/meta/root-coord/credstore/auth/apikeys/{key_id(own)}"])
    assert record["hash"].startswith("hmac-sha256$") and record["owner"] == dave, record
    # Beside Milvus's keys, never among them: nothing under root-coord/credential/ names it.
    assert not any("/root-coord/credential/" in k and key_id(own) in k for k in stored)

    # Revoking another user's key is refused; the owner may revoke their own.
    denied = pair.a.cli("apikey", "revoke", key_id(own), user=erin, password=erin_pw)
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr
    cli_ok(pair.a, "apikey", "revoke", key_id(own), user=dave, password=dave_pw)
    assert_refused(pair.b, own)
    listed = cli_ok(pair.a, "apikey", "list", dave)
    assert any(l.startswith(key_id(own)) and l.endswith("revoked") for l in listed.splitlines())


def raw_keys_call(server: Server, token: str, owner: str) -> grpc.RpcError:
    """CreateApiKey without roles, authenticated by `token`; returns the refusal."""
    import base64

    # A hand-encoded CreateApiKeyRequest{owner=1}: credstore.v1 is not in pymilvus.
    body = b"\x0a" + bytes([len(owner)]) + owner.encode()
    with grpc.insecure_channel(f"{server.host}:{server.port}") as channel:
        call = channel.unary_unary(
            "/credstore.v1.ApiKeys/CreateApiKey",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        md = [("authorization", base64.b64encode(token.encode()).decode())]
        try:
            call(body, metadata=md, timeout=5)
        except grpc.RpcError as e:
            return e
    pytest.fail("CreateApiKey without roles by a limited key succeeded")


# Failed verifications one address may cost a replica at once: the default pace
# (credstore.lockout.peerFailuresPerSecond 2) times four.
PACE_BURST = 8


def answers(server: Server, tokens: List[str]) -> List[str]:
    """Each token's answer to one raw ShowCollections: "ok", or the refusal's code name."""
    out = []
    for token in tokens:
        try:
            raw_call(server, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), token)
            out.append("ok")
        except grpc.RpcError as e:
            out.append(e.code().name)
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert e.details() == THROTTLED.text, e.details()
            else:
                assert e.details() == DENIED_TEXT, (e.code(), e.details())
    return out


def test_made_up_keys_are_paced_per_address_and_a_cached_key_still_works(pair):
    """Each made-up key costs the replica a store read: an address is allowed PACE_BURST such
    failures at once (credstore.lockout.peerFailuresPerSecond 2, 4x as a burst), then gets
    RESOURCE_EXHAUSTED before any read, while a key it already used (cached) keeps working."""
    alice, secret = uname("alice"), pw()
    client(pair.a, ROOT_TOKEN).create_user(alice, secret, timeout=T)
    own = create_key(pair.a, alice)
    assert_works(pair.b, own)
    made_up = [f"csk_{os.urandom(8).hex()}_{'A' * 43}" for _ in range(30)]
    got = answers(pair.b, made_up)
    assert got[:PACE_BURST] == ["UNAUTHENTICATED"] * PACE_BURST, got
    assert "RESOURCE_EXHAUSTED" in got[PACE_BURST:], got
    assert_works(pair.b, own)
    # Another replica keeps its own pace: the same address is not paced there.
    assert answers(pair.a, made_up[:1]) == ["UNAUTHENTICATED"]
