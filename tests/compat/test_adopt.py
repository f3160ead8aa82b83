"""Adopting a running Milvus, proved on data Milvus 2.3.5 itself wrote (the `milvus` package,
authorization on). Through pymilvus, directly on Milvus: users with their passwords, roles,
grants on collections in two databases, a user bound to two roles, a changed password, a
deleted user. Then, as the README's cut-over guide does it:

1. `credstore admin import` from Milvus's own etcd (its embedded etcd's client port) into
   credstore's etcd; `scripts/upstream_identity.py` gives the tier its own Milvus identity
   (not root); credstore in front of that Milvus: every live user logs in with the password
   Milvus knew (the deleted user does not, nor the old password of the changed one); per
   user, the same ten data calls directly on Milvus and through credstore return the same
   results or are refused for the same reason (gRPC code and text; the database Milvus 2.5+
   names in a denial aside); `describe_role` through credstore equals
   Milvus's.
2. Shared mode: credstore on Milvus's own etcd root path in bcrypt mode. Logins and grants
   work through it, no stored value changes (no hash rewritten, nothing written under the
   credential keys), and Milvus keeps verifying its users directly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import grpc
import pytest
from pymilvus import MilvusClient
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

from conftest import (
    REPO, ROOT_PASSWORD, ROOT_USER, T, WRONG_PASSWORD, Etcd, Server, base_config, free_port,
    raises_rpc, to_yaml,
)
from test_differential import milvus_235, normalized, outcome

DIM = 4
UPSTREAM_USER = "credstore_upstream"
UPSTREAM_PASSWORD = "Upstream_" + uuid.uuid4().hex[:12]
# user -> password Milvus knows now (dave is deleted, erin's first password was changed).
USERS = {
    "alice": "alice_pw_1",
    "bob": "bob_pw_22",
    "carol": "carol_pw_3",
    "erin": "erin_pw_new",
}
DELETED = ("dave", "dave_pw_4")
OLD_PASSWORD = ("erin", "erin_pw_old")
# role -> (db, collection, privileges)
ROLES = {
    "reader": ("default", "books", ["Query", "Search"]),
    "writer": ("db2", "papers", ["Insert", "Query", "Search"]),
}
BINDINGS = {"alice": ["reader"], "bob": ["reader", "writer"], "erin": ["writer"]}
# What credstore's public holds besides Milvus 2.3.5's defaults: its own first-start
# defaults are Milvus 2.4's, which add ListAliases (README, "Authorization").
PUBLIC_EXTRA = [("Global", "*", "*", "ListAliases")]


def rows(start: int, n: int) -> List[Dict[str, Any]]:
    return [{"id": start + i, "vector": [0.1 * (i + 1), 0.2, 0.3, 0.4]} for i in range(n)]


def etcd_values(endpoint: str, prefix: str) -> Dict[str, bytes]:
    r = subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "get", "--prefix", prefix, "-w", "json"],
        capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=15, check=True,
    )
    doc = json.loads(r.stdout)
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
        for kv in doc.get("kvs", [])
    }


@pytest.fixture(scope="module")
def milvus(tmp_path_factory) -> Iterator[Tuple[str, str]]:
    """(uri, etcd endpoint) of a Milvus 2.3.5 holding the users, roles and grants above,
    all written by Milvus through pymilvus."""
    base = tmp_path_factory.mktemp("milvus235adopt")
    etcd_port = free_port()
    try:
        with milvus_235(base, etcd_port=etcd_port) as uri:
            root = MilvusClient(uri=uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
            root.create_database("db2")
            root2 = MilvusClient(uri=uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T,
                                 db_name="db2")
            for client, name in ((root, "books"), (root, "spare"), (root2, "papers")):
                client.create_collection(name, dimension=DIM, consistency_level="Strong")
                client.insert(name, rows(0, 5))
            for user, password in [*USERS.items(), DELETED]:
                first = OLD_PASSWORD[1] if user == OLD_PASSWORD[0] else password
                root.create_user(user, first)
            for role, (db, collection, privileges) in ROLES.items():
                root.create_role(role)
                for privilege in privileges:
                    root.grant_privilege(role, "Collection", privilege, collection, db_name=db)
            for user, roles in BINDINGS.items():
                for role in roles:
                    root.grant_role(user, role)
            root.grant_role(DELETED[0], "reader")
            root.update_password(OLD_PASSWORD[0], OLD_PASSWORD[1], USERS[OLD_PASSWORD[0]])
            root.drop_user(DELETED[0])
            yield uri, f"127.0.0.1:{etcd_port}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def login(uri: str, user: str, password: str) -> Tuple[str, str]:
    """("ok", "") or (gRPC code name, text) of one authenticated call (GetVersion)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with grpc.insecure_channel(uri.split("//")[-1]) as channel:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        try:
            stub.GetVersion(milvus_pb2.GetVersionRequest(), metadata=[("authorization", token)],
                            timeout=T)
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""
    return "ok", ""


def assert_logins(uri: str) -> None:
    for user, password in USERS.items():
        assert login(uri, user, password) == ("ok", ""), f"{user} logs in at {uri}"
    for user, password in [DELETED, OLD_PASSWORD, ("alice", "not_alice_pw")]:
        code, text = login(uri, user, password)
        assert (code, text) == ("UNAUTHENTICATED", WRONG_PASSWORD.text), (user, code, text)


def data_calls(uri: str, user: str) -> List[Tuple[str, Callable[[], Any]]]:
    """Ten data calls as `user`: reads and writes in both databases, metadata, a drop."""
    token = f"{user}:{USERS[user]}"
    default = lambda: MilvusClient(uri=uri, token=token, timeout=T)  # noqa: E731
    db2 = lambda: MilvusClient(uri=uri, token=token, timeout=T, db_name="db2")  # noqa: E731
    query = lambda c, name: sorted(r["id"] for r in c.query(name, filter="id < 100",  # noqa: E731
                                                            output_fields=["id"]))
    search = lambda c, name: [h["id"] for h in c.search(name, data=[[0.1, 0.2, 0.3, 0.4]],  # noqa: E731
                                                        limit=3, filter="id < 100")[0]]
    return [
        ("query_books", lambda: query(default(), "books")),
        ("search_books", lambda: search(default(), "books")),
        ("insert_books", lambda: default().insert("books", rows(1000, 1))),
        ("query_papers", lambda: query(db2(), "papers")),
        ("search_papers", lambda: search(db2(), "papers")),
        ("insert_papers", lambda: db2().insert("papers", rows(2000, 1))),
        ("describe_books", lambda: default().describe_collection("books")),
        ("has_papers", lambda: db2().has_collection("papers")),
        ("list_default", lambda: sorted(default().list_collections())),
        ("drop_spare", lambda: default().drop_collection("spare")),
    ]


def answer(name: str, result: Tuple) -> Tuple:
    """A success with its result; a refusal with its gRPC code and text, the database Milvus
    2.5+ and credstore name at the end of a denial dropped (2.3.5 does not name it)."""
    database = "db2" if name.endswith("_papers") else "default"
    return normalized(result, "", database) if result[0] != "ok" else result


def grants_of(client: MilvusClient, role: str, db: str) -> List[Tuple[str, str, str, str]]:
    """`describe_role` in `db` (Milvus 2.3.5 answers db `*` with the `*` grants only; 2.5 and
    credstore with every db's, so each db is asked for)."""
    described = client.describe_role(role, db_name=db)
    return sorted((p["object_type"], p["object_name"], p["db_name"], p["privilege"])
                  for p in described["privileges"])


def import_config(etcd: Etcd, milvus_uri: str) -> Dict[str, Any]:
    config = base_config(f"compat-adopt-{uuid.uuid4().hex[:8]}", [etcd.endpoint],
                         super_users=None)
    config["credstore"]["upstream"] = {"uri": milvus_uri, "token": f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}"}
    return config


def run_import(binary: Path, config: Dict[str, Any], milvus_etcd: str, tmp: Path) -> str:
    path = tmp / "credstore.yaml"
    path.write_text(to_yaml(config) + "\n")
    r = subprocess.run(
        [str(binary), "admin", "import", "--config", str(path), "--from-etcd", milvus_etcd,
         "--from-root-path", "by-dev"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def create_upstream_identity(milvus_uri: str) -> str:
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "upstream_identity.py"), "--uri", milvus_uri],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, MILVUS_ADMIN_PASSWORD=ROOT_PASSWORD,
                 CREDSTORE_UPSTREAM_PASSWORD=UPSTREAM_PASSWORD),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_import_then_credstore_in_front_of_the_same_milvus(milvus, etcd, binary, tmp_path):
    milvus_uri, milvus_etcd = milvus
    config = import_config(etcd, milvus_uri)
    summary = run_import(binary, config, milvus_etcd, tmp_path)
    # 4 live users (root stays credstore's); reader and writer (admin and public exist);
    # 4 bindings; 5 grants of reader and writer + public's ShowCollections (credstore's
    # public already holds DescribeCollection and IndexDetail on db *).
    assert re.fullmatch(
        r"imported 4 users, 2 roles, 4 bindings, 6 grants, 0 privilege groups from by-dev/meta "
        r"at revision \d+; 4 already present; skipped root and 0 bindings "
        r"\(--include-root copies them\)", summary), summary
    again = run_import(binary, config, milvus_etcd, tmp_path)
    assert "imported 0 users, 0 roles, 0 bindings, 0 grants, 0 privilege groups" in again
    assert "nothing changed: 20 already present" in again, again

    identity = create_upstream_identity(milvus_uri)
    assert "Global:ListDatabases" in identity and "Collection:*" in identity, identity
    assert "CreateOwnership" not in identity, "the identity manages no Milvus users"
    s = Server(config, str(tmp_path / "srv"), name="adopted")
    try:
        assert_logins(milvus_uri)
        assert_logins(s.uri)
        for user in USERS:
            direct = {n: answer(n, outcome(c, milvus_uri)) for n, c in data_calls(milvus_uri, user)}
            through = {n: answer(n, outcome(c, s.uri)) for n, c in data_calls(s.uri, user)}
            differ = {n: (direct[n], through[n]) for n in direct if direct[n] != through[n]}
            assert not differ, f"{user} (milvus 2.3.5, credstore): {differ}"
            assert direct["query_books"][0] == ("ok" if user in ("alice", "bob") else "rpc")
            assert direct["insert_papers"][0] == ("ok" if user in ("bob", "erin") else "rpc")
            assert direct["drop_spare"] == (
                "rpc", grpc.StatusCode.PERMISSION_DENIED,
                f"PrivilegeDropCollection: permission deny to {user}",
            ), direct["drop_spare"]
            if user in ("alice", "bob"):
                assert direct["query_books"][1] == [0, 1, 2, 3, 4], direct["query_books"]
        root_direct = MilvusClient(uri=milvus_uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
        root_through = MilvusClient(uri=s.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
        for role, (db, _, privileges) in ROLES.items():
            for asked in ("", "default", "db2"):
                theirs = grants_of(root_direct, role, asked)
                assert grants_of(root_through, role, asked) == theirs, (role, asked)
            assert len(grants_of(root_direct, role, db)) == len(privileges), role
        theirs = set(grants_of(root_direct, "public", "default"))
        ours = set(grants_of(root_through, "public", "default"))
        assert theirs <= ours and sorted(ours - theirs) == PUBLIC_EXTRA, (theirs, ours)
    finally:
        s.stop()


def test_shared_mode_serves_milvus_keyspace_and_rewrites_no_hash(milvus, binary, tmp_path):
    milvus_uri, milvus_etcd = milvus
    credential = "by-dev/meta/root-coord/credential/"
    before = etcd_values(milvus_etcd, credential)
    assert before[credential + "users/alice"].startswith(b'{"encrypted_password":"$2a$04$')
    config = base_config("by-dev", [milvus_etcd], super_users=None)
    config["credstore"]["password"] = {"algorithm": "bcrypt", "bcryptCost": 10}
    # Milvus wrote its own public defaults; credstore adds none to its keyspace.
    config["proxy"]["enablePublicPrivilege"] = False
    create_upstream_identity(milvus_uri)
    config["credstore"]["upstream"] = {"uri": milvus_uri,
                                       "token": f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}"}
    s = Server(config, str(tmp_path / "shared"), name="shared")
    try:
        assert_logins(s.uri)
        for user in ("alice", "bob"):
            through = MilvusClient(uri=s.uri, token=f"{user}:{USERS[user]}", timeout=T)
            assert through.query("books", filter="id < 5", output_fields=["id"])
        carol = MilvusClient(uri=s.uri, token=f"carol:{USERS['carol']}", timeout=T)
        with raises_rpc(grpc.StatusCode.PERMISSION_DENIED, match="PrivilegeQuery"):
            carol.query("books", filter="id < 5", output_fields=["id"])
        # No key Milvus wrote changed: no hash rewritten, no grant or role added to them.
        after = etcd_values(milvus_etcd, credential)
        for key, value in before.items():
            assert after.get(key) == value, f"{key} changed in shared mode"
        # Milvus still verifies its users itself, directly.
        assert_logins(milvus_uri)
    finally:
        s.stop()
