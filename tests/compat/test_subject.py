"""The proxy tier authorizes exactly what the upstream executes (issue 16), against a real
Milvus Lite behind a real credstore: each row of the attack table, sent as an attacker sends
it (raw gRPC with pymilvus's generated stubs), is refused with its code and text, next to a
positive control on the same server, and the upstream is checked directly afterwards to
show that nothing happened there.

| row | attack | refusal |
|-----|--------|---------|
| 1   | body `db_name` naming another database (Query/Insert/Delete/DropCollection) | PERMISSION_DENIED in that database |
| 1b  | database-level acts naming another database in the body | PERMISSION_DENIED |
| 2   | two `dbname` headers | INVALID_ARGUMENT |
| 3   | ShowCollections of another database | cut to the caller's grants there |
| 4   | a grant on an unused name, then an alias of that name | PERMISSION_DENIED (aliases resolve) |
| 5   | a collection-level group re-pointing someone else's alias | PERMISSION_DENIED |
| 6   | ManageOwnership granted in one database, used for the cluster | PERMISSION_DENIED |
| 8   | upstream down | Connect answered by credstore, data calls UNAVAILABLE |

Row 7 (a `dbname` header with bytes 0x80-0xFF) cannot be sent by Python's grpc; it is in
tests/proxy.rs.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Iterator, List, Optional, Tuple

import grpc
import pytest
from pymilvus import MilvusClient
from pymilvus.grpc_gen import common_pb2, milvus_pb2, milvus_pb2_grpc, schema_pb2

from conftest import DENIED, ROOT_PASSWORD, ROOT_USER, T, Etcd, Server, base_config, free_port, pw, raises_rpc, uname
from test_proxy import MilvusLite, rows, start_proxy

ROOT = f"{ROOT_USER}:{ROOT_PASSWORD}"


def call(server: Server, method: str, request, credentials: str,
         metadata: Optional[List[Tuple[str, str]]] = None, timeout: float = 10):
    """One raw MilvusService call through credstore, as `credentials`, with extra headers."""
    with grpc.insecure_channel(f"{server.host}:{server.port}") as channel:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        md = [("authorization", base64.b64encode(credentials.encode()).decode())]
        md += metadata or []
        return getattr(stub, method)(request, metadata=md, timeout=timeout)


def ok(status) -> None:
    """A Milvus `common.Status` (or a response carrying one) that says success."""
    status = getattr(status, "status", status)
    assert status.code == 0 and status.error_code == 0, status


def schema(name: str) -> bytes:
    """A minimal collection schema: an int64 primary key and a 4-dim float vector."""
    fields = [
        schema_pb2.FieldSchema(name="id", data_type=schema_pb2.DataType.Int64, is_primary_key=True),
        schema_pb2.FieldSchema(
            name="vector", data_type=schema_pb2.DataType.FloatVector,
            type_params=[common_pb2.KeyValuePair(key="dim", value="4")],
        ),
    ]
    return schema_pb2.CollectionSchema(name=name, fields=fields).SerializeToString()


def ids(client: MilvusClient, collection: str) -> List[int]:
    return sorted(r["id"] for r in client.query(collection, filter="id >= 0", output_fields=["id"], timeout=T))


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> Iterator[MilvusLite]:
    m = MilvusLite(str(tmp_path_factory.mktemp("subject-lite")))
    try:
        yield m
    finally:
        m.kill()


@pytest.fixture(scope="module")
def tier(etcd: Etcd, tmp_path_factory, lite: MilvusLite) -> Iterator[Server]:
    s = start_proxy(etcd, str(tmp_path_factory.mktemp("subject-tier")), lite)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def direct(lite: MilvusLite) -> Iterator[MilvusClient]:
    """Milvus Lite itself, for setting up data and checking what happened upstream."""
    c = lite.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def admin(tier: Server) -> MilvusClient:
    return MilvusClient(uri=tier.uri, token=ROOT, timeout=T)


def database(direct: MilvusClient, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    direct.create_database(name)
    return name


def collection(direct: MilvusClient, db: str, name: str, n: int = 3) -> str:
    direct.use_database(db)
    try:
        direct.create_collection(name, dimension=4)
        if n:
            direct.insert(name, rows(n))
    finally:
        direct.use_database("default")
    return name


def user_with(admin: MilvusClient, grants: List[Tuple[str, str, str, str]]) -> str:
    """A fresh user whose one role holds `grants` (object type, name, privilege, db)."""
    user, password, role = uname("s"), pw(), uname("r")
    admin.create_user(user, password)
    admin.create_role(role)
    for object_type, name, privilege, db in grants:
        admin.grant_privilege(role, object_type, privilege, name, db_name=db)
    admin.grant_role(user, role)
    return f"{user}:{password}"


def in_db(direct: MilvusClient, db: str):
    class Use:
        def __enter__(self):
            direct.use_database(db)
            return direct

        def __exit__(self, *exc):
            direct.use_database("default")

    return Use()


def test_row1_a_body_database_is_the_database_checked(tier, admin, direct):
    secret = database(direct, "secretdb")
    c = f"c_{uuid.uuid4().hex[:6]}"
    collection(direct, "default", c)
    collection(direct, secret, c, n=5)
    alice = user_with(admin, [("Collection", c, p, "default") for p in ("Query", "Insert", "Delete")]
                      + [("Global", "*", "DropCollection", "default")])
    query = lambda db: milvus_pb2.QueryRequest(  # noqa: E731
        db_name=db, collection_name=c, expr="id >= 0", output_fields=["id"])

    # Positive control: the granted collection, in the granted database.
    answer = call(tier, "Query", query("default"), alice)
    ok(answer)
    assert list(answer.fields_data[0].scalars.long_data.data) == [0, 1, 2]

    # The body names secretdb: that is the database checked, with or without a header.
    for md in ([], [("dbname", "default")]):
        with raises_rpc(DENIED, rf"^PrivilegeQuery: permission deny to {alice.split(':')[0]} in the `{secret}` database$"):
            call(tier, "Query", query(secret), alice, md)
    with raises_rpc(DENIED, rf"^PrivilegeDelete: .* in the `{secret}` database$"):
        call(tier, "Delete", milvus_pb2.DeleteRequest(db_name=secret, collection_name=c, expr="id >= 0"), alice)
    with raises_rpc(DENIED, rf"^PrivilegeInsert: .* in the `{secret}` database$"):
        call(tier, "Insert", milvus_pb2.InsertRequest(db_name=secret, collection_name=c, num_rows=1), alice)
    with raises_rpc(DENIED, rf"in the `{secret}` database$"):
        call(tier, "DropCollection", milvus_pb2.DropCollectionRequest(db_name=secret, collection_name=c), alice)

    # Upstream: secretdb's collection is there with its five rows.
    with in_db(direct, secret):
        assert ids(direct, c) == [0, 1, 2, 3, 4]


def test_row1b_database_acts_reach_only_the_granted_database(tier, admin, direct):
    mine, victim, other = (database(direct, p) for p in ("mydb", "victimdb", "otherdb"))
    keep = collection(direct, other, "keep", n=0)
    grants = [("Global", "*", p, mine)
              for p in ("DropDatabase", "AlterDatabase", "RenameCollection", "CreateCollection")]
    bob = user_with(admin, grants)
    header = [("dbname", mine)]

    # Positive control: creating a collection in the granted database works.
    made = f"made_{uuid.uuid4().hex[:6]}"
    ok(call(tier, "CreateCollection", milvus_pb2.CreateCollectionRequest(
        db_name=mine, collection_name=made, schema=schema(made), shards_num=1), bob, header))
    with in_db(direct, mine):
        assert made in direct.list_collections()

    with raises_rpc(DENIED, rf"^PrivilegeDropDatabase: .* in the `{victim}` database$"):
        call(tier, "DropDatabase", milvus_pb2.DropDatabaseRequest(db_name=victim), bob, header)
    with raises_rpc(DENIED, rf"^PrivilegeAlterDatabase: .* in the `{other}` database$"):
        call(tier, "AlterDatabase", milvus_pb2.AlterDatabaseRequest(
            db_name=other, properties=[common_pb2.KeyValuePair(key="k", value="v")]), bob, header)
    with raises_rpc(DENIED, rf"^PrivilegeRenameCollection: .* in the `{other}` database$"):
        call(tier, "RenameCollection", milvus_pb2.RenameCollectionRequest(
            db_name=other, oldName=keep, newName="renamed"), bob, header)
    with raises_rpc(DENIED, rf"^PrivilegeRenameCollection: .* in the `{other}` database$"):
        call(tier, "RenameCollection", milvus_pb2.RenameCollectionRequest(
            db_name=mine, oldName=made, newName="moved", newDBName=other), bob, header)
    with raises_rpc(DENIED, rf"^PrivilegeCreateCollection: .* in the `{other}` database$"):
        call(tier, "CreateCollection", milvus_pb2.CreateCollectionRequest(
            db_name=other, collection_name="planted", schema=schema("planted"), shards_num=1), bob, header)

    assert victim in direct.list_databases()
    with in_db(direct, other):
        assert direct.list_collections() == [keep]
    with in_db(direct, mine):
        assert direct.list_collections() == [made]


def test_row2_two_dbname_headers_are_refused(tier, admin, direct):
    secret = database(direct, "secretdb")
    c = collection(direct, secret, f"c_{uuid.uuid4().hex[:6]}")
    request = milvus_pb2.QueryRequest(collection_name=c, expr="id >= 0", output_fields=["id"])
    # Positive control: one header names the database.
    ok(call(tier, "Query", request, ROOT, [("dbname", secret)]))
    with raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "^more than one dbname header: send exactly one$"):
        call(tier, "Query", request, ROOT, [("dbname", ""), ("dbname", secret)])


def test_row3_listings_are_cut_in_the_database_milvus_lists(etcd, tmp_path, lite, direct):
    config = base_config(f"compat-subj-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    config["proxy"]["enablePublicPrivilege"] = False
    s = Server(config, str(tmp_path / "tier"), extra_args=("--upstream", lite.uri), name="cut")
    try:
        admin = MilvusClient(uri=s.uri, token=ROOT, timeout=T)
        secret = database(direct, "secretdb")
        hidden = collection(direct, secret, f"hidden_{uuid.uuid4().hex[:6]}", n=0)
        seen = f"seen_{uuid.uuid4().hex[:6]}"
        collection(direct, "default", seen, n=0)
        alice = user_with(admin, [("Collection", seen, "Query", "default")])
        # Positive control: her own database lists what she may see; root sees secretdb's.
        mine = call(s, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), alice)
        assert list(mine.collection_names) == [seen]
        everything = call(s, "ShowCollections", milvus_pb2.ShowCollectionsRequest(db_name=secret), ROOT)
        assert hidden in everything.collection_names
        # secretdb, named in the body or the header: nothing of it is hers.
        for request, md in ((milvus_pb2.ShowCollectionsRequest(db_name=secret), []),
                            (milvus_pb2.ShowCollectionsRequest(), [("dbname", secret)])):
            assert list(call(s, "ShowCollections", request, alice, md).collection_names) == []
        with raises_rpc(grpc.StatusCode.INVALID_ARGUMENT, "more than one dbname header"):
            call(s, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), alice,
                 [("dbname", ""), ("dbname", secret)])
        # ListDatabases: the databases she holds a grant in (Milvus 2.4+); root sees all.
        assert list(call(s, "ListDatabases", milvus_pb2.ListDatabasesRequest(), alice).db_names) == ["default"]
        assert secret in call(s, "ListDatabases", milvus_pb2.ListDatabasesRequest(), ROOT).db_names
    finally:
        s.stop()


def test_row4_a_grant_reaches_the_collection_an_alias_resolves_to(tier, admin, direct):
    secret = collection(direct, "default", f"secret_{uuid.uuid4().hex[:6]}")
    x = f"x_{uuid.uuid4().hex[:6]}"
    alice = user_with(admin, [("Collection", x, "Query", "default"),
                              ("Global", "*", "CreateAlias", "default")])
    query = milvus_pb2.QueryRequest(collection_name=x, expr="id >= 0", output_fields=["id"])

    # She holds CreateAlias on every collection, so she may point her name `x` at `secret`;
    # her Query grant on the name `x` still opens nothing of `secret`.
    ok(call(tier, "CreateAlias", milvus_pb2.CreateAliasRequest(collection_name=secret, alias=x), alice))
    with raises_rpc(DENIED, r"^PrivilegeQuery: permission deny to .* in the `default` database$"):
        call(tier, "Query", query, alice)
    # Positive control: a grant on what `x` resolves to lets the same call through.
    role = admin.describe_user(alice.split(":")[0])["roles"][0]
    admin.grant_privilege(role, "Collection", "Query", secret)
    answer = call(tier, "Query", query, alice)
    assert list(answer.fields_data[0].scalars.long_data.data) == [0, 1, 2]
    # Re-pointing the alias through the tier is seen at once.
    other = collection(direct, "default", f"other_{uuid.uuid4().hex[:6]}")
    ok(call(tier, "AlterAlias", milvus_pb2.AlterAliasRequest(collection_name=other, alias=x), ROOT))
    with raises_rpc(DENIED, r"^PrivilegeQuery: "):
        call(tier, "Query", query, alice)


def test_row5_a_collection_group_does_not_reach_other_collections_aliases(tier, admin, direct):
    hers = collection(direct, "default", f"hers_{uuid.uuid4().hex[:6]}", n=0)
    theirs = collection(direct, "default", f"theirs_{uuid.uuid4().hex[:6]}", n=0)
    shared = f"shared_{uuid.uuid4().hex[:6]}"
    ok(call(tier, "CreateAlias", milvus_pb2.CreateAliasRequest(collection_name=theirs, alias=shared), ROOT))
    user, password, role = uname("carol"), pw(), uname("r")
    admin.create_user(user, password)
    admin.create_role(role)
    admin.grant_privilege_v2(role, "CollectionAdmin", hers, db_name="default")
    admin.grant_role(user, role)
    carol = f"{user}:{password}"

    # Positive control: aliases of her own collection.
    mine = f"mine_{uuid.uuid4().hex[:6]}"
    ok(call(tier, "CreateAlias", milvus_pb2.CreateAliasRequest(collection_name=hers, alias=mine), carol))
    ok(call(tier, "DropAlias", milvus_pb2.DropAliasRequest(alias=mine), carol))

    with raises_rpc(DENIED, r"^PrivilegeCreateAlias: permission deny to "):
        call(tier, "AlterAlias", milvus_pb2.AlterAliasRequest(collection_name=hers, alias=shared), carol)
    with raises_rpc(DENIED, r"^PrivilegeDropAlias: permission deny to "):
        call(tier, "DropAlias", milvus_pb2.DropAliasRequest(alias=shared), carol)
    assert direct.describe_alias(shared)["collection_name"] == theirs


def test_row6_ownership_granted_in_one_database_is_not_cluster_wide(tier, admin, direct):
    edb = database(direct, "edb")
    user, password = uname("dave"), pw()
    admin.create_user(user, password)
    role = uname("r")
    admin.create_role(role)
    admin.grant_privilege(role, "Global", "ManageOwnership", "*", db_name=edb)
    admin.grant_role(user, role)
    dave = f"{user}:{password}"
    to_admin = milvus_pb2.OperateUserRoleRequest(username=user, role_name="admin", type=0)
    with raises_rpc(DENIED, r"^PrivilegeManageOwnership: permission deny to .* in the `default` database$"):
        call(tier, "OperateUserRole", to_admin, dave, [("dbname", edb)])
    assert "admin" not in admin.describe_user(user)["roles"]
    # Positive control: the same privilege at cluster level (no database) is honoured.
    admin.grant_privilege(role, "Global", "ManageOwnership", "*")
    ok(call(tier, "OperateUserRole", to_admin, dave, [("dbname", edb)]))
    assert "admin" in admin.describe_user(user)["roles"]


def test_row8_credstore_answers_connect_when_the_upstream_is_down(etcd, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = base_config(f"compat-down-{uuid.uuid4().hex[:8]}", [etcd.endpoint])
    s = Server(config, str(tmp_path / "down"), extra_args=("--upstream", dead), name="down")
    try:
        client = MilvusClient(uri=s.uri, token=ROOT, timeout=T)  # Connect: answered here
        user = uname("managed")
        client.create_user(user, pw())
        assert user in client.list_users()
        assert call(s, "GetVersion", milvus_pb2.GetVersionRequest(), ROOT).version.startswith("credstore-")
        with raises_rpc(grpc.StatusCode.UNAVAILABLE, "^upstream unavailable"):
            call(s, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), ROOT)
    finally:
        s.stop()


def test_caller_dependent_methods_are_refused_for_everyone(tier):
    with raises_rpc(grpc.StatusCode.UNIMPLEMENTED, "^CreateRowPolicy depends on the caller's identity"):
        call(tier, "CreateRowPolicy", milvus_pb2.CreateRowPolicyRequest(collection_name="c"), ROOT)
    # Positive control on the same server: root's ordinary calls go through.
    ok(call(tier, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), ROOT))


def test_grants_follow_a_collections_life(tier, admin, direct):
    c = collection(direct, "default", f"life_{uuid.uuid4().hex[:6]}")
    eve = user_with(admin, [("Collection", c, "Query", "default")])
    role = admin.describe_user(eve.split(":")[0])["roles"][0]
    query = milvus_pb2.QueryRequest(collection_name=c, expr="id >= 0", output_fields=["id"])
    ok(call(tier, "Query", query, eve))
    # Renamed through the tier: the grant moves with it.
    renamed = f"{c}_r"
    ok(call(tier, "RenameCollection", milvus_pb2.RenameCollectionRequest(oldName=c, newName=renamed), ROOT))
    moved = milvus_pb2.QueryRequest(collection_name=renamed, expr="id >= 0", output_fields=["id"])
    direct.load_collection(renamed)
    ok(call(tier, "Query", moved, eve))
    assert {g["object_name"] for g in admin.describe_role(role)["privileges"]} == {renamed}
    # Dropped through the tier: its grants go; a new collection of the same name inherits none.
    ok(call(tier, "DropCollection", milvus_pb2.DropCollectionRequest(collection_name=renamed), ROOT))
    assert admin.describe_role(role)["privileges"] == []
    collection(direct, "default", renamed)
    ok(call(tier, "Query", moved, ROOT))
    with raises_rpc(DENIED, r"^PrivilegeQuery: "):
        call(tier, "Query", moved, eve)


def test_without_an_upstream_a_forwarded_method_says_how_to_configure_one(server):
    """Issue 21: no upstream configured → UNIMPLEMENTED naming the setting, never an empty
    message; an unknown method is named; owned methods still work on the same server."""
    with raises_rpc(grpc.StatusCode.UNIMPLEMENTED,
                    r"^ShowCollections is served by the upstream Milvus, and none is configured: "
                    r"set credstore\.upstream\.uri \(serve --upstream\)$"):
        call(server, "ShowCollections", milvus_pb2.ShowCollectionsRequest(), ROOT)
    with raises_rpc(grpc.StatusCode.UNIMPLEMENTED, "^credstore does not implement AddUserTags$"):
        call(server, "AddUserTags", milvus_pb2.AddUserTagsRequest(user_name="root"), ROOT)
    # Positive control: the same server answers what it owns.
    assert ROOT_USER in call(server, "ListCredUsers", milvus_pb2.ListCredUsersRequest(), ROOT).usernames
