"""What must fail when authorization is on: wrong, missing, revoked and stale credentials.

pymilvus turns any gRPC error on Connect into MilvusException(code=2, "Fail connecting
to server ..."), a dead server's too: every refused connect here is checked on the gRPC
answer behind it (conftest's `refused`, `can_connect`: code and text), beside a connect
that works on the same server. On later calls UNAUTHENTICATED reaches the user as a raw
grpc.RpcError.
"""

import base64
import re
import signal

import grpc
import pytest
from pymilvus import connections, utility

from conftest import (
    BAD_API_KEY,
    BAD_TOKEN,
    LOCKED,
    NO_CREDENTIALS,
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    b64,
    raises_refusal,
    raises_rpc,
    pw,
    uname,
)

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def test_wrong_root_password_orm(server, orm):
    orm.refused(server, ROOT_USER, "not-Milvus", WRONG_PASSWORD)
    assert orm.can_connect(server, ROOT_USER, ROOT_PASSWORD)


def test_wrong_root_password_client(server, clients):
    clients.refused(server, WRONG_PASSWORD, token=f"{ROOT_USER}:wrong-password")
    clients.refused(server, WRONG_PASSWORD, user=ROOT_USER, password="wrong-password")
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_unknown_user_cannot_connect(server, orm, clients):
    """An unknown name gets the wrong-password answer (no enumeration)."""
    orm.refused(server, uname("nobody"), "some-password", WRONG_PASSWORD)
    clients.refused(server, WRONG_PASSWORD, token=f"{uname('nobody')}:some-password")
    assert orm.can_connect(server, ROOT_USER, ROOT_PASSWORD)


def test_missing_credentials_orm(server, orm):
    orm.refused(server, None, None, NO_CREDENTIALS)
    # A user name without a password sends no authorization header either.
    orm.refused(server, ROOT_USER, None, NO_CREDENTIALS)
    assert orm.can_connect(server, ROOT_USER, ROOT_PASSWORD)


def test_missing_credentials_client(server, clients):
    clients.refused(server, NO_CREDENTIALS, anonymous=True)
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_token_without_colon_is_refused(server, clients):
    """A token with no ':' is an API key in Milvus; one that is not credstore's key format
    gets Milvus's API-key answer."""
    clients.refused(server, BAD_API_KEY, token="rootMilvus")
    clients.refused(server, BAD_API_KEY, token=ROOT_PASSWORD)
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_empty_password_is_refused(server, clients):
    clients.refused(server, WRONG_PASSWORD, token=f"{ROOT_USER}:")
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_password_is_case_sensitive_and_exact(server, root, clients):
    name, password = uname(), "CaseSensitive_" + pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    for wrong in (password.lower(), password.upper(), password + " ", " " + password,
                  password[:-1], password + "x"):
        assert not clients.can_connect(server, f"{name}:{wrong}", WRONG_PASSWORD), wrong
        # Six failures would lock the name from this address (threshold 5): each variant
        # must meet the password check, not the lock.
        unlocked = server.cli("user", "unlock", name)
        assert unlocked.returncode == 0, unlocked.stderr
    assert clients.can_connect(server, f"{name}:{password}")


def test_user_name_is_case_sensitive(server, root, clients):
    name, password = uname("Mixed"), pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    assert not clients.can_connect(server, f"{name.lower()}:{password}", WRONG_PASSWORD)


def test_deleted_user_cannot_connect_or_call(server, root, clients, orm):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    me = clients.make(server, user=name, password=password)
    alias = orm.connect(server, name, password)
    me.describe_user(name, timeout=T)  # works while the user exists

    root.drop_user(name, timeout=T)

    assert not clients.can_connect(server, f"{name}:{password}", WRONG_PASSWORD)
    assert not orm.can_connect(server, name, password, WRONG_PASSWORD)
    # Connections opened before the delete are refused from the next call on.
    with raises_rpc(UNAUTH, match=f"^{WRONG_PASSWORD.text}$"):
        me.describe_user(name, timeout=T)
    with raises_rpc(UNAUTH, match=f"^{WRONG_PASSWORD.text}$"):
        utility.list_user(name, False, using=alias, timeout=T)
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_old_password_fails_new_works(server, root, clients):
    name, old = uname(), pw()
    root.create_user(name, old, timeout=T)
    assert clients.can_connect(server, f"{name}:{old}")  # warms any cache
    new = pw()
    root.update_password(name, old, new, timeout=T)
    assert not clients.can_connect(server, f"{name}:{old}", WRONG_PASSWORD)
    assert clients.can_connect(server, f"{name}:{new}")


def _raw_call(server):
    """GetVersion on a raw channel (below pymilvus), one request per call: the lockout
    counts requests, and pymilvus may send more than one per connection attempt."""
    channel = grpc.insecure_channel(f"{server.host}:{server.port}")
    call = channel.unary_unary(
        "/milvus.proto.milvus.MilvusService/GetVersion",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return channel, lambda user, password: call(
        b"", metadata=[("authorization", b64(f"{user}:{password}"))], timeout=T
    )


def test_failed_logins_below_the_threshold_do_not_lock_out_the_right_password(server, root):
    """credstore.lockout.threshold (5): four wrong passwords from one address leave the
    right one working from there."""
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    channel, call = _raw_call(server)
    try:
        for i in range(4):
            with raises_refusal(WRONG_PASSWORD):
                call(name, f"wrong-{i}")
        call(name, password)
    finally:
        channel.close()


def test_five_failed_logins_lock_out_the_address_with_the_lock_answer(server, root, clients):
    """The fifth failure from one address locks that (name, address) pair: the right
    password, never verified on this server, is refused with UNAUTHENTICATED saying the
    attempts are locked and for how long; a name that does not exist gets the same answer
    (no enumeration); another user still logs in from the same address."""
    name, password, ghost = uname(), pw(), uname("ghost")
    root.create_user(name, password, timeout=T)
    other, other_password = uname(), pw()
    root.create_user(other, other_password, timeout=T)
    channel, call = _raw_call(server)
    try:
        for user in (name, ghost):
            for i in range(5):
                with raises_refusal(WRONG_PASSWORD):
                    call(user, f"wrong-{i}")
        locked = "login attempts for this user from this address are locked .*retry in [0-9]+ s"
        for user in (name, ghost):
            with raises_refusal(LOCKED) as refusal:
                call(user, password)
            assert re.search(locked, refusal["exc"].details()), refusal["exc"].details()
        call(other, other_password)
    finally:
        channel.close()
    assert clients.can_connect(server, f"{other}:{other_password}")


def test_wrong_password_error_is_unauthenticated_not_retried(server, root, clients):
    """On a non-Connect call the refusal is the raw UNAUTHENTICATED RpcError with Milvus's
    text; a retryable code (UNAVAILABLE, ...) would make pymilvus spin until timeout."""
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    me = clients.make(server, token=f"{name}:{password}")
    root.update_password(name, password, pw(), timeout=T)
    with raises_refusal(WRONG_PASSWORD):
        me.describe_user(name, timeout=T)
    assert root.describe_user(name, timeout=T)["user_name"] == name


def test_garbage_authorization_header_is_unauthenticated(server):
    """A raw gRPC call (below pymilvus) with a header that is not base64."""
    channel = grpc.insecure_channel(f"{server.host}:{server.port}")
    try:
        call = channel.unary_unary(
            "/milvus.proto.milvus.MilvusService/ListCredUsers",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for header, refusal in (("***not base64***", BAD_TOKEN),
                                (base64.b64encode(b"root:wrong").decode(), WRONG_PASSWORD)):
            with raises_refusal(refusal):
                call(b"", metadata=[("authorization", header)], timeout=T)
        with raises_refusal(NO_CREDENTIALS):
            call(b"", timeout=T)  # no header at all
        ok = call(b"", metadata=[("authorization", base64.b64encode(b"root:Milvus").decode())],
                  timeout=T)
        assert b"root" in ok
    finally:
        channel.close()


def test_unimplemented_rpc_is_unimplemented(server, clients):
    """Anything outside the user/role API must be gRPC UNIMPLEMENTED, which pymilvus does
    not retry (an UNAVAILABLE here would hang the caller for minutes)."""
    c = clients.make(server)
    with pytest.raises(Exception) as ei:
        c.list_collections(timeout=T)
    e = ei.value
    code = e.code() if isinstance(e, grpc.RpcError) else getattr(e, "code", None)
    assert code == grpc.StatusCode.UNIMPLEMENTED, repr(e)


def test_get_server_version(server, clients, orm):
    c = clients.make(server)
    v = c.get_server_version(timeout=T)
    assert isinstance(v, str) and v, v
    alias = orm.connect(server)
    assert utility.get_server_version(using=alias, timeout=T)
    assert connections.has_connection(alias)


def test_the_refusal_checks_fail_when_the_server_is_down(start_server, orm, clients):
    """The helpers every negative check above goes through cannot pass against a server
    that does not answer: paused (SIGSTOP: connections open, nothing answers, the deadline
    passes), then killed (connections refused). The same checks pass while it serves."""
    s = start_server()
    channel = grpc.insecure_channel(f"{s.host}:{s.port}")
    call = channel.unary_unary(
        "/milvus.proto.milvus.MilvusService/ListCredUsers",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    checks = {
        "Clients.refused": lambda: clients.refused(s, WRONG_PASSWORD, token="root:wrong"),
        "Orm.refused": lambda: orm.refused(s, None, None, NO_CREDENTIALS),
        "Clients.can_connect": lambda: clients.can_connect(s, "root:wrong"),
        "Orm.can_connect": lambda: orm.can_connect(s, ROOT_USER, "wrong"),
        "raises_refusal": lambda: _raw_refusal(call),
    }
    try:
        for name, check in checks.items():
            assert check() in (None, False), name  # serving: every check passes
        assert clients.can_connect(s, f"{ROOT_USER}:{ROOT_PASSWORD}")
        s.proc.send_signal(signal.SIGSTOP)
        try:
            # One pymilvus check (its Connect waits T seconds) and the raw call.
            for name in ("Clients.refused", "raises_refusal"):
                with pytest.raises(pytest.fail.Exception, match="server unreachable: not a refusal"):
                    checks[name]()
        finally:
            s.proc.send_signal(signal.SIGCONT)
        s.proc.kill()
        s.proc.wait(10)
        for name, check in checks.items():
            with pytest.raises(pytest.fail.Exception, match="server unreachable: not a refusal"):
                check()
        # The admin CLI's refusal checks compare its whole stderr with the server's answer
        # ("credstore: server refused: ..."); a dead server gets another line.
        dead = s.cli("user", "list", password="wrong")
        assert dead.returncode != 0
        assert dead.stderr == f"credstore: cannot reach {s.uri}: transport error\n", dead.stderr
    finally:
        channel.close()


def _raw_refusal(call) -> None:
    with raises_refusal(WRONG_PASSWORD):
        call(b"", metadata=[("authorization", b64("root:wrong"))], timeout=2)
