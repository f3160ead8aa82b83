"""What must fail when authorization is on: wrong, missing, revoked and stale credentials.

pymilvus turns any gRPC error on Connect into MilvusException(code=2, "Fail connecting
to server ..."); on later calls UNAUTHENTICATED reaches the user as a raw grpc.RpcError.
"""

import base64

import grpc
import pytest
from pymilvus import MilvusClient, connections, utility

from conftest import (
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    b64,
    raises_milvus,
    raises_rpc,
    pw,
    uname,
)

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def test_wrong_root_password_orm(server, orm):
    with raises_milvus(2):
        orm.connect(server, ROOT_USER, "not-Milvus")


def test_wrong_root_password_client(server, clients):
    with raises_milvus(2):
        clients.make(server, token=f"{ROOT_USER}:wrong-password")
    with raises_milvus(2):
        clients.make(server, user=ROOT_USER, password="wrong-password")


def test_unknown_user_cannot_connect(server, orm, clients):
    with raises_milvus(2):
        orm.connect(server, uname("nobody"), "some-password")
    with raises_milvus(2):
        clients.make(server, token=f"{uname('nobody')}:some-password")


def test_missing_credentials_orm(server, orm):
    with raises_milvus(2):
        orm.connect(server, user=None, password=None)
    # A user name without a password sends no authorization header either.
    with raises_milvus(2):
        orm.connect(server, user=ROOT_USER, password=None)


def test_missing_credentials_client(server, clients):
    with raises_milvus(2):
        MilvusClient(uri=server.uri, timeout=T, dedicated=True)


def test_token_without_colon_is_refused(server, clients):
    """A token with no ':' is an API key in Milvus; with no API-key verifier it fails."""
    with raises_milvus(2):
        clients.make(server, token="rootMilvus")
    with raises_milvus(2):
        clients.make(server, token=ROOT_PASSWORD)


def test_empty_password_is_refused(server, clients):
    with raises_milvus(2):
        clients.make(server, token=f"{ROOT_USER}:")


def test_password_is_case_sensitive_and_exact(server, root, clients):
    name, password = uname(), "CaseSensitive_" + pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    for wrong in (password.lower(), password.upper(), password + " ", " " + password,
                  password[:-1], password + "x"):
        assert not clients.can_connect(server, f"{name}:{wrong}"), wrong


def test_user_name_is_case_sensitive(server, root, clients):
    name, password = uname("Mixed"), pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    assert not clients.can_connect(server, f"{name.lower()}:{password}")


def test_deleted_user_cannot_connect_or_call(server, root, clients, orm):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    me = clients.make(server, user=name, password=password)
    alias = orm.connect(server, name, password)
    me.describe_user(name, timeout=T)  # works while the user exists

    root.drop_user(name, timeout=T)

    assert not clients.can_connect(server, f"{name}:{password}")
    assert not orm.can_connect(server, name, password)
    # Connections opened before the delete are refused from the next call on.
    with raises_rpc(UNAUTH, match="auth check failure"):
        me.describe_user(name, timeout=T)
    with raises_rpc(UNAUTH):
        utility.list_user(name, False, using=alias, timeout=T)


def test_old_password_fails_new_works(server, root, clients):
    name, old = uname(), pw()
    root.create_user(name, old, timeout=T)
    assert clients.can_connect(server, f"{name}:{old}")  # warms any cache
    new = pw()
    root.update_password(name, old, new, timeout=T)
    assert not clients.can_connect(server, f"{name}:{old}")
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
            with raises_rpc(UNAUTH, match="please check username and password are correct"):
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
                with raises_rpc(UNAUTH, match="please check username and password are correct"):
                    call(user, f"wrong-{i}")
        locked = "login attempts for this user from this address are locked .*retry in [0-9]+ s"
        with raises_rpc(UNAUTH, match=locked):
            call(name, password)
        with raises_rpc(UNAUTH, match=locked):
            call(ghost, password)
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
    with raises_rpc(
        UNAUTH, match="auth check failure, please check username and password are correct"
    ):
        me.describe_user(name, timeout=T)


def test_garbage_authorization_header_is_unauthenticated(server):
    """A raw gRPC call (below pymilvus) with a header that is not base64."""
    channel = grpc.insecure_channel(f"{server.host}:{server.port}")
    try:
        call = channel.unary_unary(
            "/milvus.proto.milvus.MilvusService/ListCredUsers",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for header in ("***not base64***", base64.b64encode(b"root:wrong").decode()):
            with raises_rpc(UNAUTH):
                call(b"", metadata=[("authorization", header)], timeout=T)
        with raises_rpc(UNAUTH):
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
