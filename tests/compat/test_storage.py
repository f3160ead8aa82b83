"""What lands in etcd (Milvus's key layout, never a plaintext password), hashes written by
Milvus itself (bcrypt) being accepted and upgraded, restarts, the embedded store, and two
replicas sharing one etcd."""

import base64
import hashlib
import json
import threading
import time

import bcrypt

from conftest import (
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    base_config,
    pw,
    raises_milvus,
    raises_refusal,
    uname,
    users_prefix,
)

ALLOWED_USER_FIELDS = {"encrypted_password", "description", "time_tick"}


def _forms(user: str, secret: str):
    """Every encoding of a secret that must never be stored or logged."""
    raw = secret.encode("utf-8")
    yield "plaintext", raw
    yield "base64", base64.b64encode(raw)
    yield "base64 user:password", base64.b64encode(f"{user}:{secret}".encode())
    yield "hex", raw.hex().encode()
    # Milvus's own cache verifier, hex(sha256(password + username)): cache-only in Milvus.
    yield "sha256 verifier", hashlib.sha256(raw + user.encode()).hexdigest().encode()


def _user_json(etcd, server, name):
    raw = etcd.get(users_prefix(server) + name)
    assert raw is not None, f"no etcd key {users_prefix(server) + name}"
    doc = json.loads(raw)
    assert isinstance(doc, dict), raw
    return doc


def test_etcd_holds_no_plaintext_password(server, etcd, root, clients):
    secrets = {}
    a, a_pw = uname(), "plain-" + pw()
    b, b_pw = uname(), "ünï:cödé-" + pw()
    c, c_old = uname(), pw()
    for n, p in ((a, a_pw), (b, b_pw), (c, c_old)):
        root.create_user(n, p, timeout=T)
        secrets.setdefault(n, []).append(p)
    c_new = pw()
    root.update_password(c, c_old, c_new, timeout=T)
    secrets[c].append(c_new)
    # Logins, successful and failed, must not leave anything behind either.
    assert clients.can_connect(server, f"{a}:{a_pw}")
    wrong = "wrong-" + pw()
    assert not clients.can_connect(server, f"{b}:{wrong}")
    secrets[b].append(wrong)

    everything = etcd.get_prefix("")  # the whole keyspace, not just this server's root
    assert everything, "etcd is empty?"
    for user, pws in secrets.items():
        for p in pws:
            for label, needle in _forms(user, p):
                for k, v in everything.items():
                    assert needle not in v, f"{label} of a password of {user} found in value of {k}"
                    assert needle not in k.encode(), f"{label} of a password found in key {k}"

    for n in (a, b, c):
        doc = _user_json(etcd, server, n)
        assert set(doc) <= ALLOWED_USER_FIELDS, f"unexpected fields in users/{n}: {doc}"
        phc = doc.get("encrypted_password", "")
        assert phc.startswith("$argon2id$"), doc
        # The configured (test) parameters are the ones used.
        assert "m=64,t=1,p=1" in phc, phc
        assert n not in json.dumps(doc), f"the username is stored in the value: {doc}"

    # An update really replaces the stored hash.
    before = _user_json(etcd, server, c)["encrypted_password"]
    root.update_password(c, c_new, pw(), timeout=T)
    assert _user_json(etcd, server, c)["encrypted_password"] != before


def test_server_log_holds_no_password(server, root, clients):
    name, password = uname(), "logme-" + pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    wrong = "wronglog-" + pw()
    assert not clients.can_connect(server, f"{name}:{wrong}")
    new = "newlog-" + pw()
    root.update_password(name, password, new, timeout=T)
    time.sleep(0.2)  # let the stderr reader catch up
    log = server.log_text().encode("utf-8")
    for p in (password, wrong, new):
        for label, needle in _forms(name, p):
            assert needle not in log, f"{label} of a password appears in the server log"


def test_root_bootstrap_and_builtin_roles_in_etcd(server, etcd):
    doc = _user_json(etcd, server, ROOT_USER)
    assert doc.get("encrypted_password", "").startswith(("$argon2id$", "$2a$", "$2b$")), doc
    meta = f"{server.root_path}/meta/root-coord/credential/"
    roles = etcd.get_prefix(meta + "roles/")
    assert meta + "roles/admin" in roles and meta + "roles/public" in roles, sorted(roles)


def test_role_binding_uses_milvus_layout(server, etcd, root):
    name = uname()
    root.create_user(name, pw(), timeout=T)
    root.grant_role(name, "admin", timeout=T)
    key = f"{server.root_path}/meta/root-coord/credential/user-role-mapping/{name}/admin"
    assert etcd.get(key) is not None, f"missing {key}"
    root.drop_user(name, timeout=T)
    assert etcd.get(users_prefix(server) + name) is None
    left = etcd.get_prefix(
        f"{server.root_path}/meta/root-coord/credential/user-role-mapping/{name}/"
    )
    assert not left, f"role bindings survived the user: {sorted(left)}"


def _wait_for(pred, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def test_bcrypt_hash_written_by_milvus(server, etcd, root, clients):
    name, password = uname("mv"), pw()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10, prefix=b"2a")).decode()
    assert hashed.startswith("$2a$10$")
    key = users_prefix(server) + name
    etcd.put(key, json.dumps({"encrypted_password": hashed, "description": "from milvus"}))

    assert name in root.list_users(timeout=T)
    # A wrong password neither logs in nor rewrites the stored hash.
    assert not clients.can_connect(server, f"{name}:wrong-{password}")
    assert _user_json(etcd, server, name)["encrypted_password"] == hashed

    assert clients.can_connect(server, f"{name}:{password}")
    # The next successful login upgraded the hash to the configured algorithm.
    upgraded = _wait_for(
        lambda: _user_json(etcd, server, name)["encrypted_password"].startswith("$argon2id$")
    )
    doc = _user_json(etcd, server, name)
    assert upgraded, f"bcrypt hash was not rehashed to argon2id within 5 s: {doc}"
    assert doc.get("description") == "from milvus", f"rehash lost the description: {doc}"
    assert root.describe_user(name, timeout=T).get("description") == "from milvus"

    # Still the same password, before and after the upgrade; still refused when wrong.
    assert clients.can_connect(server, f"{name}:{password}")
    assert not clients.can_connect(server, f"{name}:wrong-{password}")
    me = clients.make(server, user=name, password=password)
    new = pw()
    me.update_password(name, password, new, timeout=T)
    assert clients.can_connect(server, f"{name}:{new}")


def test_bcrypt_2b_and_a_direct_etcd_password_change(server, etcd, root, clients):
    """A hash changed behind the server's back (e.g. by a Milvus rootcoord sharing the
    etcd) is honoured: the old password stops working, the new one works."""
    name, first = uname("mv"), pw()
    root.create_user(name, first, timeout=T)
    assert clients.can_connect(server, f"{name}:{first}")  # cached now, if there is a cache
    second = pw()
    hashed = bcrypt.hashpw(second.encode(), bcrypt.gensalt(10, prefix=b"2b")).decode()
    etcd.put(users_prefix(server) + name, json.dumps({"encrypted_password": hashed}))
    assert _wait_for(lambda: not clients.can_connect(server, f"{name}:{first}")), (
        "old password still accepted 5 s after the etcd value changed"
    )
    assert clients.can_connect(server, f"{name}:{second}")


def test_user_deleted_in_etcd_is_refused(server, etcd, root, clients):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    etcd.ctl("del", users_prefix(server) + name)
    assert _wait_for(lambda: not clients.can_connect(server, f"{name}:{password}")), (
        "deleted user still accepted 5 s after its etcd key was removed"
    )


def test_restart_keeps_users_and_ignores_default_root_password(start_server, clients, etcd):
    root_path = f"compat-restart-{uname()}"
    s1 = start_server(root_path=root_path)
    r1 = clients.make(s1)
    name, password = uname(), pw()
    r1.create_user(name, password, timeout=T)
    # The guide: change root's password after the first start.
    new_root = "NewRoot_" + pw()
    r1.update_password(ROOT_USER, ROOT_PASSWORD, new_root, timeout=T)
    assert not clients.can_connect(s1, f"{ROOT_USER}:{ROOT_PASSWORD}")
    assert clients.can_connect(s1, f"{ROOT_USER}:{new_root}")
    rc = s1.stop()
    assert rc == 0, f"SIGTERM should shut down cleanly, exit code {rc}\n{s1.log_text()[-3000:]}"

    cfg = base_config(root_path, [etcd.endpoint])
    cfg["common"]["security"]["defaultRootPassword"] = "Other_123"
    s2 = start_server(config=cfg)
    assert clients.can_connect(s2, f"{ROOT_USER}:{new_root}")
    assert not clients.can_connect(s2, f"{ROOT_USER}:{ROOT_PASSWORD}")
    assert not clients.can_connect(s2, f"{ROOT_USER}:Other_123")
    assert clients.can_connect(s2, f"{name}:{password}")


def test_embedded_store_persists_across_restarts(start_server, clients, tmp_path):
    data_dir = str(tmp_path / "embedded-data")
    cfg = base_config(f"compat-emb-{uname()}", [])
    cfg["etcd"]["use"] = {"embed": True}
    cfg["etcd"]["data"] = {"dir": data_dir}
    s1 = start_server(config=cfg)
    r1 = clients.make(s1)
    name, password = uname(), pw()
    r1.create_user(name, password, timeout=T)
    assert clients.can_connect(s1, f"{name}:{password}")
    with raises_milvus(1100):
        r1.create_user(name, pw(), timeout=T)
    rc = s1.stop()
    assert rc == 0, f"SIGTERM should shut down cleanly, exit code {rc}\n{s1.log_text()[-3000:]}"

    s2 = start_server(config=cfg)
    assert clients.can_connect(s2, f"{name}:{password}")
    assert name in clients.make(s2).list_users(timeout=T)


def test_two_replicas_share_one_etcd(start_server, clients, orm):
    root_path = f"compat-pair-{uname()}"
    a = start_server(root_path=root_path)
    b = start_server(root_path=root_path)
    ra, rb = clients.make(a), clients.make(b)

    name, old = uname(), pw()
    ra.create_user(name, old, timeout=T)
    assert name in rb.list_users(timeout=T)
    assert clients.can_connect(b, f"{name}:{old}")  # B has now verified (and cached) it
    on_b = clients.make(b, user=name, password=old)
    on_b.describe_user(name, timeout=T)

    new = pw()
    ra.update_password(name, old, new, timeout=T)
    # Acknowledged revocation: right after the call returns, B refuses the old password.
    assert not clients.can_connect(b, f"{name}:{old}")
    with raises_refusal(WRONG_PASSWORD):
        on_b.describe_user(name, timeout=T)
    assert clients.can_connect(b, f"{name}:{new}")

    with raises_milvus(1100, match="already exists"):
        rb.create_user(name, pw(), timeout=T)

    on_b2 = clients.make(b, user=name, password=new)
    ra.drop_user(name, timeout=T)
    assert not clients.can_connect(b, f"{name}:{new}")
    with raises_refusal(WRONG_PASSWORD):
        on_b2.describe_user(name, timeout=T)
    assert name not in rb.list_users(timeout=T)


def test_concurrent_creates_on_two_replicas_one_wins(start_server, clients):
    root_path = f"compat-race-{uname()}"
    a = start_server(root_path=root_path)
    b = start_server(root_path=root_path)
    ra, rb = clients.make(a), clients.make(b)

    for _ in range(5):
        name = uname("race")
        pa, pb = pw("A"), pw("B")
        results = {}
        barrier = threading.Barrier(2)

        def create(label, client, password):
            barrier.wait()
            try:
                client.create_user(name, password, timeout=T)
                results[label] = "ok"
            except Exception as e:  # noqa: BLE001 -- recorded and asserted below
                results[label] = e

        ts = [threading.Thread(target=create, args=("a", ra, pa)),
              threading.Thread(target=create, args=("b", rb, pb))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        oks = [k for k, v in results.items() if v == "ok"]
        assert len(oks) == 1, f"exactly one create must win: {results}"
        loser = results["b" if oks == ["a"] else "a"]
        assert getattr(loser, "code", None) == 1100, f"loser should get 1100: {loser!r}"
        winner_pw = pa if oks == ["a"] else pb
        loser_pw = pb if oks == ["a"] else pa
        for s in (a, b):
            assert clients.can_connect(s, f"{name}:{winner_pw}")
            assert not clients.can_connect(s, f"{name}:{loser_pw}")
