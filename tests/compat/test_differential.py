"""Against a real Milvus 2.3.5 standalone (the `milvus` PyPI package, authorization on):

1. differential: the same user, role and grant calls against Milvus and against credstore,
   compared answer by answer (success or failure, `code`, legacy `error_code`, text); every
   difference that remains is listed in DIFFERENCES with its reason (and in the README), any
   other difference fails the test;
2. the proxy tier in front of it: credstore presents root's token upstream, a credstore-only
   user works through credstore and cannot log in to Milvus, a denied call never reaches it;
   the same user's data calls directly and through credstore return the same rows, hits and
   schema, or are refused for the same reason (code and text), PROXY_DIFFERENCES aside.

Both failing is a difference too, unless the reasons match: a listed difference pins
credstore's exact answer, and pymilvus's connect failure (code 2) is compared on the gRPC
answer behind it.

Milvus's embedded etcd is moved off 2379/2380 with ETCD_CONFIG_PATH, every port is a free one,
and the process is stopped by pid (SIGKILL after a short grace: its graceful stop is long).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

from conftest import (
    DENIED,
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    free_port,
    grpc_cause,
    raises_rpc,
    refused,
    retarget,
)

REPO = Path(__file__).resolve().parents[2]
MILVUS = REPO / ".venv" / "bin" / "milvus-server"

# step -> (why credstore answers differently from Milvus 2.3.5, credstore's answer). Both still
# fail (or both succeed) and the answer is pinned: only code, legacy code or text differ, as
# said, and a change on either side fails the test.
DIFFERENCES = {
    "create_user_dup": (
        "credstore follows Milvus 2.5: code 1100 and the text ends in ': invalid parameter'; "
        "2.3/2.4 answer 65535",
        ("err", 1100, 29, "user already exists: alice: invalid parameter", None),
    ),
    "create_user_badname": (
        "Milvus 2.3.5 prints the byte with a Go formatting bug ('%!s(uint8=49)'); credstore "
        "prints the character",
        ("err", 1100, 5, "invalid user name 1bad, the first character must be a letter, but "
         "got 1: invalid parameter", None),
    ),
    "create_role_dup": (
        "Milvus 2.3 prints the role as a protobuf struct ('[name:\"reader\"]')",
        ("err", 65535, 35, "role [reader] already exists", None),
    ),
    "create_role_bad": (
        "credstore states the whole role-name rule in one sentence; Milvus 2.3.5 names the "
        "first character's byte values ('[expected=95][actual=49]'); same code 1100",
        ("err", 1100, 5, "role name 1bad must start with '_' or a letter and contain only "
         "letters, numbers, '_' or '$': invalid parameter", None),
    ),
    "grant_priv_unknown": (
        "credstore follows Milvus 2.5's rootcoord text, which names the object",
        ("err", 65535, 41, "not found the privilege name[Nope] in object[Global]", None),
    ),
    "grant_priv_badobj": (
        "credstore follows Milvus 2.5's rootcoord text for an unknown object type",
        ("err", 65535, 41, "the object entity in the request is nil or invalid", None),
    ),
    "alice_list_users": (
        "Milvus 2.5+ names the database in the denial text",
        ("rpc", DENIED, "PrivilegeSelectOwnership: permission deny to alice in the `default` "
         "database"),
    ),
    "alice_grant": (
        "Milvus 2.5+ names the database in the denial text",
        ("rpc", DENIED, "PrivilegeManageOwnership: permission deny to alice in the `default` "
         "database"),
    ),
}


def outcome(call: Callable[[], Any], uri: str) -> Tuple:
    """What a user sees: ('ok', result), ('err', code, error_code, text, behind) or ('rpc',
    code, text). `behind` is the gRPC answer pymilvus raised its error from (code name and
    text; None when the server answered with a status): pymilvus's connect failure (code 2)
    is the same for a refusal and a dead server, the answer behind it is not."""
    try:
        result = call()
    except MilvusException as e:
        text = (e.message or "").replace(uri.split("//")[-1], "<server>")
        cause = grpc_cause(e)
        behind = None if cause is None else (cause.code().name, cause.details())
        return ("err", e.code, getattr(e, "compatible_code", None), text, behind)
    except grpc.RpcError as e:
        return ("rpc", e.code(), e.details())
    return ("ok", result)


def steps(uri: str) -> List[Tuple[str, Callable[[], Any]]]:
    root = MilvusClient(uri=uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    alice = lambda: MilvusClient(uri=uri, token="alice:password1", timeout=T)  # noqa: E731
    return [
        ("create_user", lambda: root.create_user("alice", "password1")),
        ("create_user_dup", lambda: root.create_user("alice", "password1")),
        ("create_user_badname", lambda: root.create_user("1bad", "password1")),
        ("create_user_shortpw", lambda: root.create_user("bob", "pw")),
        ("create_role", lambda: root.create_role("reader")),
        ("create_role_dup", lambda: root.create_role("reader")),
        ("create_role_bad", lambda: root.create_role("1bad")),
        ("grant_role", lambda: root.grant_role("alice", "reader")),
        ("grant_role_missing_role", lambda: root.grant_role("alice", "nope")),
        ("grant_role_missing_user", lambda: root.grant_role("nobody", "reader")),
        ("revoke_role_missing_role", lambda: root.revoke_role("alice", "nope")),
        ("revoke_role_not_held", lambda: root.revoke_role("alice", "admin")),
        ("grant_priv", lambda: root.grant_privilege("reader", "Collection", "Search", "c1")),
        ("grant_priv_again", lambda: root.grant_privilege("reader", "Collection", "Search", "c1")),
        ("grant_priv_unknown", lambda: root.grant_privilege("reader", "Global", "Nope", "*")),
        ("grant_priv_badobj", lambda: root.grant_privilege("reader", "Database", "Search", "*")),
        ("grant_priv_missing_role",
         lambda: root.grant_privilege("nope", "Global", "CreateOwnership", "*")),
        ("grant_global", lambda: root.grant_privilege("reader", "Global", "CreateOwnership", "*")),
        ("describe_role", lambda: root.describe_role("reader")),
        ("describe_missing_role", lambda: root.describe_role("nope")),
        ("list_roles", lambda: sorted(root.list_roles())),
        ("describe_user", lambda: root.describe_user("alice")),
        ("describe_missing_user", lambda: root.describe_user("nobody")),
        ("drop_role_with_grants", lambda: root.drop_role("reader")),
        ("revoke_priv", lambda: root.revoke_privilege("reader", "Collection", "Search", "c1")),
        ("revoke_priv_missing",
         lambda: root.revoke_privilege("reader", "Collection", "Search", "c1")),
        ("drop_admin", lambda: root.drop_role("admin")),
        ("drop_missing_role", lambda: root.drop_role("nope")),
        ("drop_root", lambda: root.drop_user("root")),
        ("wrong_old_password", lambda: root.update_password("alice", "wrongpass", "password2")),
        ("alice_create_user", lambda: alice().create_user("carl", "password1")),
        ("alice_list_users", lambda: alice().list_users()),
        ("alice_describe_self", lambda: alice().describe_user("alice")),
        ("alice_grant",
         lambda: alice().grant_privilege("reader", "Global", "CreateOwnership", "*")),
        ("revoke_global", lambda: root.revoke_privilege("reader", "Global", "CreateOwnership", "*")),
        ("drop_role_force", lambda: root.drop_role("reader", force_drop=True)),
        ("drop_user", lambda: root.drop_user("alice")),
        ("drop_missing_user", lambda: root.drop_user("nobody")),
        ("bad_login",
         lambda: MilvusClient(uri=uri, token="alice:wrong", timeout=T).list_users()),
    ]


def run_all(uri: str) -> Dict[str, Tuple]:
    return {name: outcome(call, uri) for name, call in steps(uri)}


@contextlib.contextmanager
def milvus_235(base: Path, extra_args: Tuple[str, ...] = (), scheme: str = "http",
               etcd_port: Optional[int] = None, **client_kwargs: Any) -> Iterator[str]:
    """A running Milvus 2.3.5 standalone with authorization on, data under `base`; yields its
    `scheme://127.0.0.1:PORT`. `extra_args` go to milvus-server (e.g. --tls-mode 2);
    `etcd_port` is its embedded etcd's client port (a free one when None; etcd keeps its data
    under `base`); `client_kwargs` are what pymilvus needs to reach it (certificates)."""
    assert MILVUS.exists(), (
        f"{MILVUS} is missing: scripts/setup.sh installs the `milvus` 2.3.5 package into .venv"
    )
    client_port, peer_port, proxy_port = etcd_port or free_port(), free_port(), free_port()
    etcd_config = base / "etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer_port}\n"
        f"data-dir: {base}/data/etcd-data\n"
    )
    args = [
        str(MILVUS), "--data", str(base / "data"), "--authorization-enabled", "true",
        "--proxy-port", str(proxy_port), "--etcd-port", str(client_port), *extra_args,
    ]
    for flag in ("--root-coord-port", "--proxy-internal-port", "--query-coord-port",
                 "--query-node-port", "--index-coord-port", "--index-node-port",
                 "--data-coord-port", "--data-node-port"):
        args += [flag, str(free_port())]
    env = dict(os.environ, ETCD_CONFIG_PATH=str(etcd_config))
    log = open(base / "milvus.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = f"{scheme}://127.0.0.1:{proxy_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"milvus-server exited: {(base / 'milvus.log').read_text()[-2000:]}"
            try:
                MilvusClient(uri=uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=5,
                             **client_kwargs).list_users()
                break
            except Exception:  # noqa: BLE001 — not up yet
                assert time.monotonic() < deadline, "milvus-server did not answer within 180 s"
                time.sleep(2)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """(uri, data dir) of a running Milvus 2.3.5 standalone."""
    base = tmp_path_factory.mktemp("milvus235")
    try:
        with milvus_235(base) as uri:
            yield uri, base / "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def milvus(milvus_server) -> str:
    return milvus_server[0]


def test_user_role_and_grant_answers_match_milvus_2_3_5(milvus, start_server):
    # Milvus's defaults: no super users (root needs the old password like anyone).
    credstore = start_server(super_users=None, overrides={"credstore": {"failedAuthDelayMs": 0}})
    theirs = run_all(milvus)
    ours = run_all(credstore.uri)
    unexpected = []
    for name, _ in steps(milvus):
        a, b = theirs[name], ours[name]
        if a == b:
            continue
        if name in DIFFERENCES and a[:1] == b[:1] and b == DIFFERENCES[name][1]:
            continue
        unexpected.append(f"{name}:\n    milvus 2.3.5: {a}\n    credstore:    {b}")
    assert not unexpected, "answers differ from Milvus 2.3.5:\n" + "\n".join(unexpected)
    # The listed differences are real: a fixed one must leave the list.
    stale = [n for n in DIFFERENCES if theirs[n] == ours[n]]
    assert not stale, f"no longer different, remove from DIFFERENCES: {stale}"


def test_credstore_in_front_of_milvus_2_3_5(milvus, start_server):
    """The proxy tier on a real Milvus with authentication, configured as docker-compose.yml
    configures it (`serve --upstream URI`, root's token in credstore.upstream.token): credstore
    presents root's token upstream; a credstore-only user works through credstore and cannot
    log in to Milvus. The token may come from CREDSTORE_UPSTREAM_TOKEN instead."""
    upstream = {"token": f"{ROOT_USER}:{ROOT_PASSWORD}"}
    s = start_server(
        super_users=None,
        overrides={"credstore": {"upstream": upstream}},
        extra_args=("--upstream", milvus),
    )
    root = MilvusClient(uri=s.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    root.create_user("proxied", "password1")
    root.create_user("nobody_special", "password1")
    root.grant_role("proxied", "admin")
    proxied = MilvusClient(uri=s.uri, token="proxied:password1", timeout=T)
    proxied.create_collection("through_credstore", dimension=4)
    assert "through_credstore" in proxied.list_collections()
    direct_root = MilvusClient(uri=milvus, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    assert "through_credstore" in direct_root.list_collections(), "written upstream"
    assert "proxied" not in direct_root.list_users(), "credstore's users stay in credstore"
    refused(lambda: MilvusClient(uri=retarget(milvus), token="proxied:password1", timeout=T),
            WRONG_PASSWORD, "login to Milvus 2.3.5")
    plain = MilvusClient(uri=s.uri, token="nobody_special:password1", timeout=T)
    with raises_rpc(grpc.StatusCode.PERMISSION_DENIED, match="PrivilegeDropCollection"):
        plain.drop_collection("through_credstore")
    assert "through_credstore" in direct_root.list_collections(), "the upstream never saw it"
    proxied.drop_collection("through_credstore")
    assert "through_credstore" not in direct_root.list_collections()

    # The token from the environment, which keeps it out of the config file.
    from_env = start_server(
        super_users=None,
        env={"CREDSTORE_UPSTREAM_TOKEN": f"{ROOT_USER}:{ROOT_PASSWORD}"},
        extra_args=("--upstream", milvus),
    )
    root_env = MilvusClient(uri=from_env.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    root_env.create_collection("token_from_env", dimension=4)
    assert "token_from_env" in direct_root.list_collections(), "written upstream"
    root_env.drop_collection("token_from_env")


def test_the_milvus_yaml_milvus_ships_loads(milvus_server, etcd, binary, tmp_path):
    """The milvus.yaml the milvus 2.3.5 package writes on first start, with only the etcd
    settings and the port changed (plus credstore's own section for a free metrics port),
    starts credstore: other components' keys are ignored, credstore's are read."""
    shipped = (milvus_server[1] / "configs" / "milvus.yaml").read_text()
    port = free_port()
    lines, section = [], ""
    for line in shipped.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.rstrip()[:-1]
        if section == "etcd" and line.startswith("  endpoints:"):
            line = f"  endpoints: {etcd.endpoint}"
        elif section == "etcd" and line.startswith("    embed:"):
            line = "    embed: false  # credstore: the shared etcd, not its embedded store"
        elif section == "proxy" and line.startswith("  port:"):
            line = f"  port: {port}"
        lines.append(line)
    authorization = "authorizationEnabled: true" in shipped
    config = tmp_path / "milvus.yaml"
    config.write_text("\n".join(lines) + "\ncredstore:\n  listenHost: 127.0.0.1\n  http:\n    port: 0\n")
    log = open(tmp_path / "credstore.log", "wb")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "credstore.log").read_text()[-3000:]
            try:
                users = MilvusClient(uri=uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=5).list_users()
                break
            except Exception:  # noqa: BLE001 — not up yet
                assert time.monotonic() < deadline, (tmp_path / "credstore.log").read_text()[-3000:]
                time.sleep(0.5)
        assert ROOT_USER in users
        # credstore read the file's common.security.authorizationEnabled.
        text = (tmp_path / "credstore.log").read_text()
        assert f"authorization {str(authorization).lower()}" in text, text[-2000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


# step -> (why the proxy tier's answer differs from Milvus 2.3.5's for the same user and grants,
# credstore's answer after `normalized`), pinned as in DIFFERENCES.
PROXY_DIFFERENCES: Dict[str, Tuple[str, Tuple]] = {
    "list_databases": (
        "credstore lists the databases the caller holds a grant in, as Milvus 2.4+ does; "
        "Milvus 2.3.5 refuses a user without PrivilegeListDatabases",
        ("ok", ["default"]),
    ),
    "load_state": (
        "GetLoadState needs PrivilegeGetLoadState in Milvus 2.4+ (credstore's methods.tsv), "
        "PrivilegeLoad in 2.3.5",
        ("rpc", DENIED, "PrivilegeGetLoadState: permission deny to viewer"),
    ),
}

# Milvus 2.5+ (and credstore) name the database at the end of a denial; 2.3.5 does not.
DENIAL_IN_DATABASE = r"^(Privilege\w+: permission deny to \w+) in the `{}` database$"


def rows_of(result: Any) -> List[Tuple]:
    """Query/get rows as sorted tuples of (field, value) (the order of fields in a row is not
    part of the answer), floats rounded to 5 places."""
    def value(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 5)
        if isinstance(v, list):
            return tuple(value(x) for x in v)
        return v
    return sorted(tuple(sorted((k, value(v)) for k, v in row.items())) for row in result)


def hits_of(result: Any) -> List[List[Tuple]]:
    """Search hits per query: (id, distance rounded to 5 places, returned fields)."""
    return [[(h["id"], round(h["distance"], 5), tuple(sorted(h["entity"].items())))
             for h in hits] for hits in result]


def schema_of(described: Dict[str, Any]) -> Dict[str, Any]:
    """describe_collection without what differs by collection (name, id, timestamps)."""
    dropped = {"collection_name", "collection_id", "created_timestamp", "update_timestamp"}
    return {k: v for k, v in described.items() if k not in dropped}


def data_steps(uri: str, name: str) -> List[Tuple[str, Callable[[], Any]]]:
    """Data calls of a user whose only role holds Query and Search on collection `name`, each
    returning what the user gets (rows, hits, schema), not just that it worked."""
    viewer = lambda: MilvusClient(uri=uri, token="viewer:password1", timeout=T)  # noqa: E731
    vector = [[0.1, 0.2, 0.3, 0.4]]
    return [
        ("query_granted",
         lambda: rows_of(viewer().query(name, filter="id >= 0", output_fields=["id", "vector"]))),
        ("count_granted",
         lambda: viewer().query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]),
        ("search_granted",
         lambda: hits_of(viewer().search(name, data=vector, limit=2, output_fields=["id"]))),
        ("get_granted", lambda: rows_of(viewer().get(name, ids=[1, 2]))),
        ("insert_not_granted", lambda: viewer().insert(name, [{"id": 9, "vector": [0.0] * 4}])),
        ("delete_not_granted", lambda: viewer().delete(name, ids=[0])),
        ("drop_not_granted", lambda: viewer().drop_collection(name)),
        ("create_not_granted", lambda: viewer().create_collection("viewer_made", dimension=4)),
        ("describe_collection", lambda: schema_of(viewer().describe_collection(name))),
        ("has_collection", lambda: viewer().has_collection(name)),
        ("list_collections", lambda: sorted(viewer().list_collections())),
        ("list_databases", lambda: sorted(viewer().list_databases())),
        ("flush_not_granted", lambda: viewer().flush(name)),
        ("stats_not_granted", lambda: viewer().get_collection_stats(name)),
        ("load_state", lambda: viewer().get_load_state(name)),
    ]


def prepare_viewer(root: MilvusClient, name: str) -> None:
    # Strong consistency: a query right after the insert sees the rows (Bounded may not).
    root.create_collection(name, dimension=4, consistency_level="Strong")
    root.insert(name, [{"id": i, "vector": [0.1 * i, 0.2, 0.3, 0.4]} for i in range(3)])
    root.create_user("viewer", "password1")
    root.create_role("viewer_role")
    root.grant_privilege("viewer_role", "Collection", "Query", name)
    root.grant_privilege("viewer_role", "Collection", "Search", name)
    root.grant_role("viewer", "viewer_role")


def normalized(answer: Tuple, collection: str, database: str = "default") -> Tuple:
    """An answer with `collection` written as <collection> and a denial's 2.5-style suffix
    naming `database` dropped, so the two sides (two collections on one Milvus) compare."""
    mask = (lambda t: t.replace(collection, "<collection>")) if collection else (lambda t: t)
    if answer[0] == "rpc":
        code, text = answer[1], mask(answer[2] or "")
        m = re.match(DENIAL_IN_DATABASE.format(re.escape(database)), text)
        return ("rpc", code, m.group(1) if m else text)
    if answer[0] == "err":
        return answer[:3] + (mask(answer[3]),) + answer[4:]
    return answer


def test_data_calls_through_credstore_are_authorized_as_milvus_2_3_5_does(milvus, start_server):
    """The same user with the same grants, directly on Milvus (its own RBAC) and through
    credstore (credstore's RBAC, root's token upstream): each data call returns the same rows,
    hits, schema or listing, or is refused for the same reason (gRPC code and text, the
    collection's name and 2.5's database suffix aside); PROXY_DIFFERENCES pins the rest."""
    root_direct = MilvusClient(uri=milvus, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    s = start_server(
        super_users=None,
        overrides={"credstore": {"upstream": {"token": f"{ROOT_USER}:{ROOT_PASSWORD}"}}},
        extra_args=("--upstream", milvus),
    )
    root_proxied = MilvusClient(uri=s.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    prepare_viewer(root_direct, "viewed_direct")
    prepare_viewer(root_proxied, "viewed_proxied")
    try:
        theirs = {n: normalized(outcome(c, milvus), "viewed_direct")
                  for n, c in data_steps(milvus, "viewed_direct")}
        ours = {n: normalized(outcome(c, s.uri), "viewed_proxied")
                for n, c in data_steps(s.uri, "viewed_proxied")}
        unexpected = [
            f"{n}:\n    milvus 2.3.5: {theirs[n]}\n    credstore:    {ours[n]}"
            for n in theirs
            if theirs[n] != ours[n]
            and not (n in PROXY_DIFFERENCES and ours[n] == PROXY_DIFFERENCES[n][1])
        ]
        assert not unexpected, "answers differ from Milvus 2.3.5:\n" + "\n".join(unexpected)
        stale = [n for n in PROXY_DIFFERENCES if theirs[n] == ours[n]]
        assert not stale, f"no longer different, remove from PROXY_DIFFERENCES: {stale}"
        # The comparison compared data: the granted reads returned the three rows.
        assert ours["count_granted"] == ("ok", 3), ours["count_granted"]
        assert sorted(dict(r)["id"] for r in ours["query_granted"][1]) == [0, 1, 2], ours
        assert sorted(dict(ours["query_granted"][1][0])) == ["id", "vector"], ours
        assert [h[0] for h in ours["search_granted"][1][0]] == [1, 2], ours["search_granted"]
    finally:
        for name in ("viewed_direct", "viewed_proxied"):
            with contextlib.suppress(Exception):
                root_direct.drop_collection(name)
        with contextlib.suppress(Exception):
            root_direct.drop_user("viewer")


def test_a_body_database_escapes_milvus_grants_but_not_credstores(milvus, start_server):
    """Row 1 and 1b of issue 16 on the real Milvus 2.3.5. Milvus itself authorizes the
    `dbname` header's database and executes the body's `db_name`: alice, granted Query on
    `default.c` only, reads `secretdb.c` straight from Milvus. Through credstore in front of
    the same Milvus, with the same grants, the body's database is the one checked: refused,
    beside a positive control, and nothing happens upstream."""
    direct = MilvusClient(uri=milvus, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T)
    tag = uuid.uuid4().hex[:6]
    secret, victim, mine = f"secretdb_{tag}", f"victimdb_{tag}", f"mydb_{tag}"
    for db in (secret, victim, mine):
        direct.create_database(db)
    rows = lambda start: [{"id": i, "vector": [0.1, 0.2, 0.3, 0.4]} for i in range(start, start + 3)]  # noqa: E731
    in_db = lambda db: MilvusClient(uri=milvus, token=f"{ROOT_USER}:{ROOT_PASSWORD}",  # noqa: E731
                                    timeout=T, db_name=db)
    for db, start in (("default", 0), (secret, 100)):
        in_db(db).create_collection(f"c_{tag}", dimension=4, consistency_level="Strong")
        in_db(db).insert(f"c_{tag}", rows(start))

    def grant_alice(client: MilvusClient, password: str) -> str:
        client.create_user(f"alice_{tag}", password)
        client.create_role(f"reader_{tag}")
        client.grant_privilege(f"reader_{tag}", "Collection", "Query", f"c_{tag}", db_name="default")
        for p in ("DropDatabase", "CreateCollection"):
            client.grant_privilege(f"reader_{tag}", "Global", p, "*", db_name=mine)
        client.grant_role(f"alice_{tag}", f"reader_{tag}")
        return f"alice_{tag}:{password}"

    def query_once(uri: str, credentials: str, db: str):
        with grpc.insecure_channel(uri.split("//")[-1]) as channel:
            stub = milvus_pb2_grpc.MilvusServiceStub(channel)
            md = [("authorization", base64.b64encode(credentials.encode()).decode())]
            request = milvus_pb2.QueryRequest(db_name=db, collection_name=f"c_{tag}", expr="id >= 0",
                                              output_fields=["id"], consistency_level=0)
            answer = stub.Query(request, metadata=md, timeout=T)
            assert answer.status.code == 0, answer.status
            return sorted(answer.fields_data[0].scalars.long_data.data)

    def query(uri: str, credentials: str, db: str):
        if uri != milvus:
            return query_once(uri, credentials, db)
        # Milvus's proxy learns new users and grants asynchronously: retry for a while.
        deadline = time.monotonic() + 30
        while True:
            try:
                found = query_once(uri, credentials, db)
                if found or time.monotonic() > deadline:
                    return found
            except (grpc.RpcError, AssertionError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def drop_database(uri: str, credentials: str, db: str):
        with grpc.insecure_channel(uri.split("//")[-1]) as channel:
            stub = milvus_pb2_grpc.MilvusServiceStub(channel)
            md = [("authorization", base64.b64encode(credentials.encode()).decode()), ("dbname", mine)]
            return stub.DropDatabase(milvus_pb2.DropDatabaseRequest(db_name=db), metadata=md, timeout=T)

    alice_direct = grant_alice(direct, "password1")
    s = start_server(
        super_users=None,
        overrides={"credstore": {"upstream": {"token": f"{ROOT_USER}:{ROOT_PASSWORD}"}}},
        extra_args=("--upstream", milvus),
    )
    alice_tier = grant_alice(MilvusClient(uri=s.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T),
                             "password2")
    try:
        # Milvus 2.3.5 has the hole: the grant on default.c reads secretdb.c.
        assert query(milvus, alice_direct, "default") == [0, 1, 2]
        assert query(milvus, alice_direct, secret) == [100, 101, 102]
        # credstore: the positive control, then the same attack refused.
        assert query(s.uri, alice_tier, "default") == [0, 1, 2]
        with raises_rpc(grpc.StatusCode.PERMISSION_DENIED,
                        rf"^PrivilegeQuery: permission deny to alice_{tag} in the `{secret}` database$"):
            query(s.uri, alice_tier, secret)
        # Row 1b: DropDatabase granted in mydb, aimed at victimdb by the body.
        with raises_rpc(grpc.StatusCode.PERMISSION_DENIED,
                        rf"^PrivilegeDropDatabase: permission deny to alice_{tag} in the `{victim}` database$"):
            drop_database(s.uri, alice_tier, victim)
        assert victim in direct.list_databases(), "the upstream never saw the drop"
        # Milvus 2.3.5 itself executes the same request: it checks the header's database.
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(grpc.RpcError):
                if drop_database(milvus, alice_direct, victim).code == 0:
                    break
            assert time.monotonic() < deadline, "Milvus 2.3.5 did not execute the drop"
            time.sleep(0.5)
        assert victim not in direct.list_databases(), "Milvus 2.3.5 dropped it"
    finally:
        for db in (secret, victim, mine):
            with contextlib.suppress(Exception):
                for c in in_db(db).list_collections():
                    in_db(db).drop_collection(c)
                direct.drop_database(db)
        with contextlib.suppress(Exception):
            direct.drop_collection(f"c_{tag}")
