"""Audit completeness (issue 17, item 12): every action credstore audits and every reason a
failed login is logged with, read from the audit file of real `credstore serve` processes.

Replica A (audit log on, OIDC on with tests/compat/oidc_issuer.py, a real Milvus Lite
upstream) is driven through pymilvus, raw gRPC with pymilvus's stubs and the admin CLI;
replica B (its own cluster, a squeezed hash pool and failure pace, no OIDC) provides the
reasons that need load. The lists of audited actions and of login-failure reasons are read
from the Rust sources (`audited(...)`/`keys_audited(...)`/`action: "..."`, and the
`as_str` of `audit::LoginFailure` and `auth::bearer::Refusal`), so an action or a reason
added there without a case here fails the test.

What is logged (src/audit.rs for the line format):

- one `"event": "change"` line per user, role, grant, privilege-group, API-key, OIDC and
  unlock request credstore serves, whatever its outcome (`result` is `ok` or the error
  class; `revision` the etcd revision written, null when nothing was), with the caller and
  its address; BackupRBAC too (it exports every hash). `credstore admin reset-root` and
  `credstore admin import` write theirs from their own process (`user` and `peer` null).
- one `"event": "login_failed"` line per refused login (`reason` as fine as the client's
  answer), and one `"event": "lockout"` line per lock a replica's write started.
- Forwarded calls (whatever credstore does not own, sent on to the upstream Milvus) write
  no line of their own, allowed or refused by the proxy's authorization; only a refused
  login on them is logged, as on any call (authentication runs before routing). Reads
  (listing users, roles, grants, groups, keys, OIDC state) write nothing either.

Nothing in the file is a secret: no password, key secret or token appears in it.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import bcrypt
import grpc
from pymilvus import MilvusClient
from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

from conftest import (
    BAD_API_KEY,
    BAD_TOKEN,
    BUSY,
    LOCKED,
    NO_CREDENTIALS,
    REPO,
    ROOT_PASSWORD,
    ROOT_USER,
    THROTTLED,
    T,
    WRONG_PASSWORD,
    Etcd,
    Refusal,
    Server,
    base_config,
    credstore_bin,
    deep_merge,
    pw,
    raises_milvus,
    raises_refusal,
    raises_rpc,
    uname,
)
from oidc_issuer import AUDIENCE, ISSUER, _b64
from test_proxy import assert_denied
from test_proxy import lite  # noqa: F401  (the module-scoped Milvus Lite upstream)

ROOT_TOKEN = f"{ROOT_USER}:{ROOT_PASSWORD}"


# --------------------------------------------------------------------------------------
# what the Rust sources audit
# --------------------------------------------------------------------------------------


def audited_actions() -> set:
    """Every `action` a change line can carry, from the code that writes them."""
    found = set()
    for path in [*(REPO / "src" / "service").glob("*.rs"), REPO / "src" / "server.rs"]:
        text = path.read_text()
        found |= set(re.findall(r"audited\(\s*request,\s*\"(\w+)\"", text))
        found |= set(re.findall(r"\baction: \"(\w+)\"", text))
        # service/audit_target.rs: one `AuditTarget` impl per audited request type.
        found |= set(re.findall(r"const ACTION: &'static str = \"(\w+)\"", text))
    return found


def login_failure_reasons() -> set:
    """Every `reason` a login_failed line can carry."""
    def as_str(path: Path, enum: str) -> set:
        text = path.read_text()
        body = text[text.index(f"impl {enum} {{"):]
        body = body[body.index("pub fn as_str(self)"):]
        body = body[:body.index("\n    }\n")]
        return set(re.findall(rf"{enum}::\w+ => \"(\w+)\"", body))

    return as_str(REPO / "src" / "audit.rs", "LoginFailure") | as_str(
        REPO / "src" / "auth" / "bearer.rs", "Refusal")


# --------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------


class AuditLog:
    """The JSON lines of one audit file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def wait_for(self, what: str, found: Callable[[List[Dict[str, Any]]], bool],
                 within: float = 10) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + within
        while True:
            lines = self.lines()
            if found(lines):
                return lines
            assert time.monotonic() < deadline, f"no {what} in {self.path}:\n" + "\n".join(
                json.dumps(line) for line in lines[-40:])
            time.sleep(0.1)

    def settled(self, within: float = 10) -> int:
        """The number of lines once no new one arrived for 0.3 s (the writer flushes bursts)."""
        deadline = time.monotonic() + within
        count = -1
        while True:
            now = len(self.lines())
            if now == count:
                return count
            assert time.monotonic() < deadline, f"{self.path} keeps growing"
            count = now
            time.sleep(0.3)

    def text(self) -> str:
        return self.path.read_text() if self.path.exists() else ""


def matches(line: Dict[str, Any], **want: Any) -> bool:
    """`line` has every field of `want`; a dict value (`target`) is matched key by key."""
    for key, value in want.items():
        if isinstance(value, dict):
            if not all(line.get(key, {}).get(k) == v for k, v in value.items()):
                return False
        elif line.get(key) != value:
            return False
    return True


def raw(server: Server) -> Callable[..., Any]:
    """A GetVersion call (any authenticated caller may make it) on a fresh raw channel with
    `authorization` = `header` (None: no header)."""

    def call(header: Optional[str], timeout: float = T) -> Any:
        with grpc.insecure_channel(f"{server.host}:{server.port}") as channel:
            stub = milvus_pb2_grpc.MilvusServiceStub(channel)
            md = [] if header is None else [("authorization", header)]
            return stub.GetVersion(milvus_pb2.GetVersionRequest(), metadata=md, timeout=timeout)

    return call


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def stub(server: Server, token: str = ROOT_TOKEN):
    channel = grpc.insecure_channel(f"{server.host}:{server.port}")
    md = [("authorization", b64(token))]
    return channel, milvus_pb2_grpc.MilvusServiceStub(channel), md


def cli(server: Server, *args: str, stdin: Optional[str] = None) -> str:
    r = server.cli(*args, stdin=stdin)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def admin(binary: Path, *args: str, stdin: str = "") -> str:
    r = subprocess.run([str(binary), "admin", *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"admin {args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def jwt_malformed() -> str:
    """Three base64url segments starting like a JWT, with a header whose `kid` is a number."""
    header = _b64(json.dumps({"alg": "RS256", "kid": 7}).encode())
    payload = _b64(json.dumps({"sub": "x"}).encode())
    return f"{header}.{payload}.{_b64(b'sig')}"


# --------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------


def test_every_audited_action_and_failed_login_reason_is_logged(etcd: Etcd, tmp_path, lite,
                                                                 issuer):
    binary = credstore_bin()
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwksUri": issuer.jwks_uri,
            "caPemPath": str(issuer.ca_pem), "jwksRefetchSeconds": 1}
    a_log, b_log = AuditLog(tmp_path / "a-audit.log"), AuditLog(tmp_path / "b-audit.log")
    # A: every other failed-login reason, one after another from this address; its pace is out
    # of the way (the default, 8 at once, would answer `throttled` first: that is B's part).
    a_config = deep_merge(base_config(f"compat-audit-{uuid.uuid4().hex[:8]}", [etcd.endpoint]),
                          {"credstore": {"failedAuthDelayMs": 0, "oidc": oidc,
                                         "audit": {"path": str(a_log.path)},
                                         "lockout": {"peerFailuresPerSecond": 1000}}})
    # B: every login hashes with Milvus-strength argon2id, one verification per address at
    # a time, one failed verification per second (burst four): `busy` and `throttled`.
    b_config = deep_merge(base_config(f"compat-audit-b-{uuid.uuid4().hex[:8]}", [etcd.endpoint]),
                          {"credstore": {
                              "failedAuthDelayMs": 0,
                              "audit": {"path": str(b_log.path)},
                              "password": {"argon2": {"memoryKiB": 19456, "iterations": 2,
                                                      "parallelism": 1},
                                           "maxQueuedHashesPerPeer": 1},
                              "lockout": {"peerFailuresPerSecond": 1},
                          }})
    a = Server(a_config, str(tmp_path / "a"), extra_args=("--upstream", lite.uri), name="audit-a")
    b = Server(b_config, str(tmp_path / "b"), name="audit-b")
    secrets: List[str] = []  # nothing here may appear in an audit file
    changes: List[Dict[str, Any]] = []  # (fields a change line must have)
    try:
        root = MilvusClient(uri=a.uri, token=ROOT_TOKEN, timeout=T, dedicated=True)

        def change(action: str, target: Dict[str, Any], result: str = "ok",
                   user: Optional[str] = ROOT_USER, written: bool = True) -> None:
            want = {"event": "change", "action": action, "target": target, "result": result,
                    "user": user}
            changes.append({"want": want, "written": written})

        # ---- users ----------------------------------------------------------------
        alice, alice_pw, alice_new = uname("alice"), pw("Alice"), pw("AliceNew")
        secrets += [alice_pw, alice_new]
        root.create_user(alice, alice_pw, timeout=T)
        change("CreateCredential", {"user": alice})
        root.update_password(alice, alice_pw, alice_new, timeout=T)
        change("UpdateCredential", {"user": alice, "password": True})
        with raises_milvus(1100, match=f"^user already exists: {alice}: invalid parameter$"):
            root.create_user(alice, pw(), timeout=T)
        change("CreateCredential", {"user": alice}, result="exists", written=False)
        # A refused change is logged with the caller who asked.
        nobody = MilvusClient(uri=a.uri, token=f"{alice}:{alice_new}", timeout=T, dedicated=True)
        with raises_rpc(grpc.StatusCode.PERMISSION_DENIED,
                        f"^PrivilegeCreateOwnership: permission deny to {alice} in the `default` "
                        "database$"):
            nobody.create_user(uname("sneaky"), pw(), timeout=T)
        change("CreateCredential", {}, result="permission_denied", user=alice, written=False)

        # ---- roles, grants, privilege groups -----------------------------------------
        role, group = uname("role"), uname("group")
        root.create_role(role, timeout=T)
        change("CreateRole", {"role": role})
        root.alter_role(role, "audited role", timeout=T)
        change("AlterRole", {"role": role})
        root.grant_role(alice, role, timeout=T)
        change("OperateUserRole", {"user": alice, "role": role, "op": "AddUserToRole"})
        root.grant_privilege(role, "Collection", "Query", "books", timeout=T)
        change("OperatePrivilege", {"role": role, "privilege": "Query", "object": "Collection",
                                    "name": "books", "op": "Grant"})
        root.grant_privilege_v2(role, "Search", "books", db_name="default", timeout=T)
        change("OperatePrivilegeV2", {"role": role, "privilege": "Search", "db": "default",
                                      "collection": "books", "op": "Grant"})
        root.create_privilege_group(group, timeout=T)
        change("CreatePrivilegeGroup", {"group": group})
        root.add_privileges_to_group(group, ["Query"], timeout=T)
        change("OperatePrivilegeGroup", {"group": group, "privileges": ["Query"],
                                         "op": "AddPrivilegesToGroup"})
        root.remove_privileges_from_group(group, ["Query"], timeout=T)
        change("OperatePrivilegeGroup", {"group": group, "privileges": ["Query"],
                                         "op": "RemovePrivilegesFromGroup"})
        root.drop_privilege_group(group, timeout=T)
        change("DropPrivilegeGroup", {"group": group})
        channel, milvus, md = stub(a)
        try:
            backup = milvus.BackupRBAC(milvus_pb2.BackupRBACMetaRequest(), metadata=md, timeout=T)
            assert backup.status.code == 0, backup.status
            change("BackupRBAC", {}, written=False)
            restored = uname("restored")
            meta = milvus_pb2.RBACMeta(roles=[milvus_pb2.RoleEntity(name=restored)])
            answer = milvus.RestoreRBAC(milvus_pb2.RestoreRBACMetaRequest(RBAC_meta=meta),
                                        metadata=md, timeout=T)
            assert answer.code == 0, answer
            change("RestoreRBAC", {"users": 0, "roles": 1, "grants": 0, "groups": 0})
        finally:
            channel.close()
        assert restored in root.list_roles(timeout=T)
        root.revoke_role(alice, role, timeout=T)
        change("OperateUserRole", {"user": alice, "role": role, "op": "RemoveUserFromRole"})
        root.drop_role(role, force_drop=True, timeout=T)
        change("DropRole", {"role": role, "force": True})

        # ---- API keys and OIDC revocations (the CLI, credstore's own services) ----------
        key = cli(a, "apikey", "create", alice).strip()
        secrets.append(key.split("_", 2)[2])
        key_id = key.split("_")[1]
        change("CreateApiKey", {"owner": alice, "id": key_id})
        cli(a, "apikey", "revoke", key_id)
        change("RevokeApiKey", {"id": key_id})
        revoked_jti = f"jti-{uuid.uuid4().hex[:8]}"
        cli(a, "oidc", "revoke", "--jti", revoked_jti)
        change("RevokeTokens", {"jti": revoked_jti, "subject": ""})

        # ---- failed logins on A, each beside the same call succeeding ------------------
        call = raw(a)
        reasons_a: List[str] = []

        def refused(header: Optional[str], refusal: Refusal, reason: str) -> None:
            with raises_refusal(refusal, f"login ({reason})"):
                call(header)
            call(b64(ROOT_TOKEN))  # the positive control on the same replica
            reasons_a.append(reason)

        refused(None, NO_CREDENTIALS, "missing_header")
        refused("***not base64***", BAD_TOKEN, "malformed")
        refused(b64("rootMilvus"), BAD_API_KEY, "malformed")
        refused(b64(f"{alice}:wrong-{alice_new}"), WRONG_PASSWORD, "denied")
        # Five failures lock the (name, address) pair: then the lock answer and a lockout line.
        locked = uname("locked")
        for i in range(5):
            with raises_refusal(WRONG_PASSWORD):
                call(b64(f"{locked}:wrong-{i}"))
        refused(b64(f"{locked}:wrong-5"), LOCKED, "locked")
        cli(a, "user", "unlock", locked)
        change("Unlock", {"user": locked})

        # API keys: every reason a key is refused for.
        control = cli(a, "apikey", "create", alice).strip()
        owner, owner_pw = uname("owner"), pw()
        root.create_user(owner, owner_pw, timeout=T)
        orphan = cli(a, "apikey", "create", owner).strip()
        call(b64(orphan))
        expiring = cli(a, "apikey", "create", alice, "--ttl", "3s").strip()
        expires = time.monotonic() + 3
        call(b64(expiring))  # works before it expires (a loaded machine has 3 s for this)
        secrets += [k.split("_", 2)[2] for k in (control, orphan, expiring)]
        root.drop_user(owner, timeout=T)
        change("DeleteCredential", {"user": owner})
        last = "A" if control[-1] != "A" else "B"
        time.sleep(max(0.0, expires - time.monotonic()) + 1.2)  # whole seconds, then some
        for header, reason in (
            (b64("csk_not-a-key"), "apikey_malformed"),
            (b64(f"csk_{'0' * 16}_{'A' * 43}"), "apikey_unknown"),
            (b64(control[:-1] + last), "apikey_wrong_secret"),
            (b64(expiring), "apikey_expired"),
            (b64(key), "apikey_revoked"),
            (b64(orphan), "apikey_owner_deleted"),
        ):
            refused(header, WRONG_PASSWORD, reason)
            call(b64(control))

        # OIDC tokens: every reason a token is refused for.
        good = issuer.token(sub="carol")
        call(b64(good))
        now = int(time.time())
        issuer.add_key("rsa-x", publish=False)
        issuer.add_key("rsa-9", publish=False)
        for token, reason in (
            (jwt_malformed(), "jwt_malformed"),
            (issuer.unsigned(sub="carol"), "jwt_algorithm_refused"),
            (issuer.token("rsa-9", sub="carol"), "jwt_unknown_kid"),
            (issuer.token("rsa-1", sign_with="rsa-x", sub="carol"), "jwt_bad_signature"),
            (issuer.token(sub="carol", exp=now - 300, iat=now - 900, nbf=now - 900),
             "jwt_expired"),
            (issuer.token(sub="carol", nbf=now + 300, iat=now), "jwt_not_yet_valid"),
            (issuer.token(sub="carol", iss="https://evil.test"), "jwt_wrong_issuer"),
            (issuer.token(sub="carol", aud="someone-else"), "jwt_wrong_audience"),
            (issuer.token(sub="dora", jti=revoked_jti), "jwt_revoked"),
            (issuer.token(sub=None), "jwt_no_username"),
        ):
            secrets.append(token)
            refused(b64(token), WRONG_PASSWORD, reason)
            call(b64(good))

        # ---- forwarded calls and reads write nothing ---------------------------------
        before = a_log.settled()
        collection = f"audited_{uuid.uuid4().hex[:6]}"
        root.create_collection(collection, dimension=4, timeout=T)
        root.insert(collection, [{"id": i, "vector": [0.1, 0.2, 0.3, 0.4]} for i in range(3)],
                    timeout=T)
        root.query(collection, filter="id >= 0", timeout=T)
        plain = MilvusClient(uri=a.uri, token=f"{alice}:{alice_new}", timeout=T, dedicated=True)
        assert_denied(lambda: plain.insert(collection, [{"id": 9, "vector": [0.0] * 4}],
                                           timeout=T))
        root.drop_collection(collection, timeout=T)
        root.list_users(timeout=T)
        root.list_roles(timeout=T)
        root.describe_role("public", timeout=T)
        root.list_privilege_groups(timeout=T)
        cli(a, "apikey", "list")
        cli(a, "oidc", "list")
        # A refused login on a forwarded call is logged like any other.
        forwarded_login = uname("fwd")
        with grpc.insecure_channel(f"{a.host}:{a.port}") as ch:
            with raises_refusal(WRONG_PASSWORD):
                milvus_pb2_grpc.MilvusServiceStub(ch).ShowCollections(
                    milvus_pb2.ShowCollectionsRequest(),
                    metadata=[("authorization", b64(f"{forwarded_login}:x123456"))], timeout=T)
        marker = uname("marker")
        root.create_role(marker, timeout=T)
        lines = a_log.wait_for("the marker", lambda ls: any(
            matches(line, action="CreateRole", target={"role": marker}) for line in ls))
        window = lines[before:]
        assert [(line["event"], line.get("action") or line.get("reason")) for line in window] \
            == [("login_failed", "denied"), ("change", "CreateRole")], (
                "forwarded calls and reads must write nothing:\n"
                + "\n".join(json.dumps(line) for line in window))
        assert window[0]["user"] == forwarded_login
        change("CreateRole", {"role": marker})

        # ---- busy, throttled and jwt_oidc_not_configured on B ------------------------
        b_call = raw(b)
        # Verified (and cached) before B's failure budget is spent: the positive control below
        # then needs no hash, which an address without budget could not get.
        b_call(b64(ROOT_TOKEN))
        results: List[Any] = []
        barrier = threading.Barrier(12)

        def login(i: int) -> None:
            barrier.wait()
            try:
                b_call(b64(f"{uname('busy')}:wrong-{i}"))
                results.append("ok")
            except grpc.RpcError as e:
                results.append(e)

        threads = [threading.Thread(target=login, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        busy = [e for e in results if isinstance(e, grpc.RpcError)
                and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert busy, [getattr(e, "details", lambda: e)() for e in results]
        for e in busy:
            BUSY.check(e.code(), e.details(), "a concurrent login on B")
        # One failed verification a second, four at once: fast failures run out.
        answers = []
        for i in range(8):
            try:
                b_call(b64(f"{uname('paced')}:wrong-{i}"))
            except grpc.RpcError as e:
                answers.append(e)
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    THROTTLED.check(e.code(), e.details(), "a paced login on B")
                    break
                WRONG_PASSWORD.check(e.code(), e.details(), "a paced login on B")
        assert answers and answers[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED, [
            (e.code(), e.details()) for e in answers]
        with raises_refusal(WRONG_PASSWORD):
            b_call(b64(issuer.token(sub="carol")))
        b_call(b64(ROOT_TOKEN))
        reasons_b = ["busy", "throttled", "jwt_oidc_not_configured"]

        # ---- break-glass commands, from their own processes --------------------------
        source = f"compat-audit-src-{uuid.uuid4().hex[:8]}"
        imported = uname("imported")
        hashed = bcrypt.hashpw(b"imported_pw_1", bcrypt.gensalt(10, prefix=b"2a")).decode()
        etcd.put(f"{source}/meta/root-coord/credential/users/{imported}",
                 json.dumps({"encrypted_password": hashed}))
        admin(binary, "import", "--config", a.config_path, "--from-etcd", etcd.endpoint,
              "--from-root-path", source)
        change("Import", {"source": f"{source}/meta", "users": 1}, user=None)
        assert imported in root.list_users(timeout=T)
        new_root = pw("Reset")
        secrets.append(new_root)
        admin(binary, "reset-root", "--config", a.config_path, stdin=new_root + "\n")
        change("ResetRoot", {"user": ROOT_USER}, user=None)

        # ---- every expected line, and nothing left out -------------------------------
        def all_there(ls: List[Dict[str, Any]]) -> bool:
            return all(any(matches(line, **c["want"]) for line in ls) for c in changes) and \
                set(reasons_a) <= {line.get("reason") for line in ls}

        lines = a_log.wait_for("every expected line", all_there)
        for c in changes:
            line = next(line for line in lines if matches(line, **c["want"]))
            if c["want"]["user"] is None:
                assert line["peer"] is None, line
            else:
                assert line["peer"].startswith("127.0.0.1:"), line
            if c["written"]:
                assert isinstance(line["revision"], int) and line["revision"] > 0, line
            else:
                assert line["revision"] is None, line
        lockouts = [line for line in lines if line["event"] == "lockout"]
        assert any(matches(line, user=locked, peer="127.0.0.1", scope="pair", failures=5)
                   for line in lockouts), lockouts
        for line in lines:
            if line["event"] == "login_failed":
                assert line["peer"].startswith("127.0.0.1:"), line
        b_lines = b_log.wait_for("B's reasons", lambda ls: set(reasons_b) <= {
            line.get("reason") for line in ls})

        seen_actions = {c["want"]["action"] for c in changes}
        assert seen_actions == audited_actions(), (
            f"audited but not exercised here: {sorted(audited_actions() - seen_actions)}; "
            f"exercised but not found in the sources: {sorted(seen_actions - audited_actions())}")
        seen_reasons = set(reasons_a) | set(reasons_b)
        assert seen_reasons == login_failure_reasons(), (
            f"reasons not exercised here: {sorted(login_failure_reasons() - seen_reasons)}; "
            f"exercised but not in the sources: {sorted(seen_reasons - login_failure_reasons())}")
        logged = {line["reason"] for line in lines + b_lines if line["event"] == "login_failed"}
        assert seen_reasons <= logged, sorted(seen_reasons - logged)

        text = a_log.text() + b_log.text()
        for secret in secrets:
            assert secret not in text, "a secret reached the audit log"
            assert b64(secret) not in text
    finally:
        for s in (a, b):
            s.stop()
