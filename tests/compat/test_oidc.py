"""OIDC single sign-on through the real pymilvus `MilvusClient(uri, token=<jwt>)` (issue 19).

A local issuer (tests/compat/oidc_issuer.py: real RSA, EC and Ed25519 keys, its JWKS served
over HTTPS with a test CA) signs the tokens; two real `credstore serve` replicas (one etcd)
stand in front of one real Milvus Lite and verify them. A token acts as `oidc:<sub>` with the
roles its `groups` map to; tokens that are expired, not yet valid, for another audience or
issuer, badly signed, `alg: none`, HMAC-signed with the public key, or from an unknown `kid`
are refused with UNAUTHENTICATED and the text of a wrong password, each beside a token that
works on the same replica; a revocation on A is in force on B when the command returns; a
JWKS rotation is picked up without a restart.
"""

from __future__ import annotations

import time
import uuid
from typing import Dict, Iterator

import grpc
import pytest

from conftest import ROOT_PASSWORD, ROOT_USER, T, ReplicaPair
from oidc_issuer import AUDIENCE, ISSUER
from test_apikeys import DENIED_TEXT, assert_refused, assert_works, client, cli_ok
from test_proxy import assert_denied, count, new_collection, rows
from test_proxy import lite  # noqa: F401  (the module-scoped Milvus Lite upstream)

ROOT_TOKEN = f"{ROOT_USER}:{ROOT_PASSWORD}"


@pytest.fixture
def pair(etcd, tmp_path, lite, issuer) -> Iterator[ReplicaPair]:
    reader = f"reader_{uuid.uuid4().hex[:6]}"
    oidc = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwksUri": issuer.jwks_uri,
        "caPemPath": str(issuer.ca_pem),
        "roleMapping": {"readers": reader, "admins": "admin"},
        "jwksRefetchSeconds": 1,
    }
    p = ReplicaPair(etcd, tmp_path, lite.uri, "oidc", {"credstore": {"oidc": oidc}})
    p.reader = reader  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop()


def test_a_token_acts_with_its_mapped_roles_through_two_replicas(pair, issuer):
    root = client(pair.a, ROOT_TOKEN)
    name = new_collection(root)
    root.insert(name, rows(3), timeout=T)
    root.create_role(pair.reader, timeout=T)
    root.grant_privilege(pair.reader, "Collection", "Query", name, timeout=T)

    # RS256, ES256 and EdDSA tokens all work; `readers` maps to the role, `other` to nothing.
    for kid in ("rsa-1", "ec-1", "ed-1"):
        token = issuer.token(kid, sub="alice", groups=["readers", "other"])
        alice = client(pair.b, token)
        assert count(alice, name) == 3, kid
        assert_denied(lambda: alice.insert(name, rows(1, start=50), timeout=T))
    assert count(root, name) == 3, "the refused inserts never reached the upstream"

    # No mapped group: only `public`, which cannot query.
    nobody = client(pair.b, issuer.token(sub="nobody", groups=["other"]))
    assert_denied(lambda: count(nobody, name))
    # `admins` maps to admin: the identity manages users, and is no local user itself.
    boss = client(pair.b, issuer.token(sub="boss", groups=["admins"]))
    users = boss.list_users(timeout=T)
    assert ROOT_USER in users and not any(u.startswith("oidc:") for u in users)

    listed = cli_ok(pair.b, "oidc", "list")
    assert f"seen\toidc:alice\t{pair.reader}\t" in listed, listed
    assert "seen\toidc:boss\tadmin\t" in listed, listed


def test_bad_tokens_are_refused_beside_a_good_one(pair, issuer):
    good = issuer.token(sub="carol")
    assert_works(pair.b, good)
    now = int(time.time())
    issuer.add_key("rsa-x", publish=False)
    issuer.add_key("rsa-9", publish=False)
    cases: Dict[str, str] = {
        "jwt_expired": issuer.token(sub="carol", exp=now - 300, iat=now - 900, nbf=now - 900),
        "jwt_not_yet_valid": issuer.token(sub="carol", nbf=now + 300, iat=now),
        "jwt_wrong_audience": issuer.token(sub="carol", aud="someone-else"),
        "jwt_wrong_issuer": issuer.token(sub="carol", iss="https://evil.test"),
        "jwt_bad_signature": issuer.token("rsa-1", sign_with="rsa-x", sub="carol"),
        "jwt_algorithm_refused": issuer.unsigned(sub="carol"),
        "jwt_unknown_kid": issuer.token("rsa-9", sub="carol"),
    }
    hmac_token = issuer.hmac_with_public_key("rsa-1", sub="carol")
    for reason, token in list(cases.items()) + [("jwt_algorithm_refused", hmac_token)]:
        assert_refused(pair.b, token)
        assert_works(pair.b, good)
    pair.wait_for_reasons(list(cases))


def test_a_revocation_on_a_is_in_force_on_b_when_it_returns(pair, issuer):
    control = issuer.token(sub="dora")
    assert_works(pair.b, control)
    by_jti = issuer.token(sub="erik", jti="jti-to-revoke")
    assert_works(pair.b, by_jti)
    cli_ok(pair.a, "oidc", "revoke", "--jti", "jti-to-revoke")
    assert_refused(pair.b, by_jti)
    assert_works(pair.b, control)

    old = issuer.token(sub="frank")
    assert_works(pair.b, old)
    cli_ok(pair.a, "oidc", "revoke", "--subject", "frank")
    assert_refused(pair.b, old)
    assert_works(pair.b, control)
    # Tokens the subject gets after the revocation work.
    later = int(time.time()) + 3
    fresh = issuer.token(sub="frank", iat=later)
    assert_works(pair.b, fresh)
    listed = cli_ok(pair.a, "oidc", "list")
    assert "revoked\tjti\tjti-to-revoke\t" in listed and "revoked\tsubject\tfrank\t" in listed

    # Only root and admin may revoke: an unknown caller is refused at login.
    refused = pair.a.cli("oidc", "revoke", "--subject", "dora", user="nobody_x", password="x12345")
    assert refused.returncode != 0
    assert refused.stderr == ("credstore: server refused: Unauthenticated: auth check failure, "
                              "please check username and password are correct\n"), refused.stderr
    # A user who logs in, without root or the admin role, is refused by authorization.
    client(pair.a, ROOT_TOKEN).create_user("plain_revoker", "x123456", timeout=T)
    denied = pair.a.cli("oidc", "revoke", "--subject", "dora", user="plain_revoker",
                        password="x123456")
    assert denied.returncode != 0
    assert denied.stderr == ("credstore: server refused: PermissionDenied: RevokeTokens: "
                             "permission deny to plain_revoker: only root and members of admin "
                             "may revoke tokens\n"), denied.stderr
    assert_works(pair.b, control)


def test_a_jwks_rotation_is_picked_up_without_a_restart(pair, issuer):
    old = issuer.token("rsa-1", sub="gina")
    assert_works(pair.b, old)
    # The issuer rotates: a new key is published and the old one withdrawn.
    issuer.add_key("rsa-2")
    issuer.withdraw("rsa-1")
    rotated = issuer.token("rsa-2", sub="gina")
    deadline = time.monotonic() + 15
    while True:
        try:
            assert_works(pair.b, rotated)
            break
        except grpc.RpcError as e:
            # Refused until the replica refetches (at most once per jwksRefetchSeconds).
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED and e.details() == DENIED_TEXT, e
            assert time.monotonic() < deadline, "the rotated key was never picked up"
            time.sleep(0.3)
    # The withdrawn key's tokens, cached or new, no longer pass.
    assert_refused(pair.b, old)
    assert_refused(pair.b, issuer.token("rsa-1", sub="gina"))
    assert_works(pair.b, rotated)


def test_made_up_tokens_are_paced_per_address_and_a_cached_token_still_works(pair, issuer):
    """Each badly signed token costs a signature check: an address is allowed PACE_BURST such
    failures at once, then gets RESOURCE_EXHAUSTED before any check, while a token it already
    used (cached) keeps working."""
    from test_apikeys import PACE_BURST, answers

    good = issuer.token(sub="gina")
    assert_works(pair.b, good)
    issuer.add_key("rsa-forger", publish=False)
    forged = [issuer.token("rsa-1", sign_with="rsa-forger", sub=f"g{i}") for i in range(30)]
    got = answers(pair.b, forged)
    assert got[:PACE_BURST] == ["UNAUTHENTICATED"] * PACE_BURST, got
    assert "RESOURCE_EXHAUSTED" in got[PACE_BURST:], got
    assert_works(pair.b, good)
