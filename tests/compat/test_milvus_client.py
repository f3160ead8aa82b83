"""The same user flows through MilvusClient, with token="user:password" and with
user=/password=, plus describe_user, update_user and the built-in roles."""

from pymilvus import utility

from conftest import (
    DENIED,
    ROOT_PASSWORD,
    ROOT_USER,
    T,
    WRONG_PASSWORD,
    raises_milvus,
    raises_refusal,
    raises_rpc,
    pw,
    uname,
)


def test_root_with_token_and_with_user_password(server, clients):
    by_token = clients.make(server, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    by_pair = clients.make(server, user=ROOT_USER, password=ROOT_PASSWORD)
    assert ROOT_USER in by_token.list_users(timeout=T)
    assert ROOT_USER in by_pair.list_users(timeout=T)


def test_create_describe_list_drop(server, root, clients):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    assert name in root.list_users(timeout=T)

    d = root.describe_user(name, timeout=T)
    assert d.get("user_name") == name, d
    assert tuple(d.get("roles", ("<missing>",))) == (), d

    me = clients.make(server, user=name, password=password)
    assert me.describe_user(name, timeout=T).get("user_name") == name  # self is allowed

    root.drop_user(name, timeout=T)
    assert name not in root.list_users(timeout=T)
    assert root.describe_user(name, timeout=T) == {}  # empty results, not an error
    assert not clients.can_connect(server, f"{name}:{password}")


def test_describe_missing_user_is_empty(root):
    assert root.describe_user(uname("ghost"), timeout=T) == {}


def test_update_password_through_client(server, root, clients):
    name, old = uname(), pw()
    root.create_user(name, old, timeout=T)
    me = clients.make(server, token=f"{name}:{old}")

    new = pw()
    me.update_password(name, old, new, timeout=T)
    assert clients.can_connect(server, f"{name}:{new}")
    assert not clients.can_connect(server, f"{name}:{old}")
    # The client did not switch its credentials, so its old password is now refused.
    with raises_refusal(WRONG_PASSWORD):
        me.describe_user(name, timeout=T)


def test_update_password_reset_connection(server, root, clients):
    name, old = uname(), pw()
    root.create_user(name, old, timeout=T)
    me = clients.make(server, user=name, password=old)
    new = pw()
    me.update_password(name, old, new, reset_connection=True, timeout=T)
    # reset_connection=True switches the client to name:new, so it keeps working.
    assert me.describe_user(name, timeout=T).get("user_name") == name


def test_update_password_wrong_old_is_1400(server, root, clients):
    name, old = uname(), pw()
    root.create_user(name, old, timeout=T)
    me = clients.make(server, token=f"{name}:{old}")
    with raises_milvus(1400, match=f"old password not correct for {name}: not authenticated"):
        me.update_password(name, "wrong-old", pw(), timeout=T)
    assert clients.can_connect(server, f"{name}:{old}")


def test_update_password_of_missing_user_fails(root, server, clients):
    """Changing the password of a user that does not exist must fail (Milvus answers
    1400 "old password not correct for <user>"; root skips the old-password check as a
    super user, and credstore answers that the user is not found) and must not create the
    user."""
    ghost, new = uname("ghost"), pw()
    with raises_milvus(65535, match=f"^user not found: {ghost}$"):
        root.update_password(ghost, "whatever1", new, timeout=T)
    assert ghost not in root.list_users(timeout=T)
    assert not clients.can_connect(server, f"{ghost}:{new}")


def test_description_via_create_and_update_user(server, root):
    name = uname()
    root.create_user(name, pw(), description="first words", timeout=T)
    d = root.describe_user(name, timeout=T)
    assert d.get("description") == "first words", d

    root.update_user(name, description="second words", timeout=T)
    d = root.describe_user(name, timeout=T)
    assert d.get("description") == "second words", d


def test_update_user_description_keeps_password(server, root, clients):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    root.update_user(name, description="just a note", timeout=T)
    # update_user sends UpdateCredential with no password fields; it must not touch it.
    assert clients.can_connect(server, f"{name}:{password}")
    d = root.describe_user(name, timeout=T)
    assert d.get("description") == "just a note", d


def test_normal_user_is_denied_user_management(server, root, clients):
    name, password = uname(), pw()
    other = uname()
    root.create_user(name, password, timeout=T)
    root.create_user(other, pw(), timeout=T)
    me = clients.make(server, user=name, password=password)

    with raises_rpc(DENIED, match=f"permission deny to {name}"):
        me.create_user(uname(), pw(), timeout=T)
    with raises_rpc(DENIED, match=f"permission deny to {name}"):
        me.drop_user(other, timeout=T)
    with raises_rpc(DENIED, match=f"permission deny to {name}"):
        me.list_users(timeout=T)
    with raises_rpc(DENIED, rf"^PrivilegeSelectUser: permission deny to {name} in the `default` database$"):
        me.describe_user(other, timeout=T)
    assert other in root.list_users(timeout=T)


def test_drop_root_is_1401(root, clients, server):
    with raises_milvus(1401, match="root user cannot be deleted"):
        root.drop_user(ROOT_USER, timeout=T)
    assert clients.can_connect(server, f"{ROOT_USER}:{ROOT_PASSWORD}")


def test_create_existing_user_is_1100(root):
    name = uname()
    root.create_user(name, pw(), timeout=T)
    with raises_milvus(1100, match="already exists"):
        root.create_user(name, pw(), timeout=T)


def test_drop_missing_user_succeeds(root):
    root.drop_user(uname("ghost"), timeout=T)


def test_grant_admin_lets_user_manage_users(server, root, clients):
    boss, boss_pw = uname("boss"), pw()
    root.create_user(boss, boss_pw, timeout=T)
    me = clients.make(server, user=boss, password=boss_pw)
    with raises_rpc(DENIED, rf"^PrivilegeCreateOwnership: permission deny to {boss} in the `default` database$"):
        me.create_user(uname(), pw(), timeout=T)

    root.grant_role(boss, "admin", timeout=T)
    assert "admin" in root.describe_user(boss, timeout=T).get("roles", ()), "grant not visible"

    # The same connection picks up the new role.
    made = uname()
    me.create_user(made, pw(), timeout=T)
    assert made in me.list_users(timeout=T)
    me.drop_user(made, timeout=T)
    assert made not in me.list_users(timeout=T)

    # An admin still cannot delete root.
    with raises_milvus(1401):
        me.drop_user(ROOT_USER, timeout=T)

    root.revoke_role(boss, "admin", timeout=T)
    assert "admin" not in root.describe_user(boss, timeout=T).get("roles", ())
    with raises_rpc(DENIED, rf"^PrivilegeCreateOwnership: permission deny to {boss} in the `default` database$"):
        me.create_user(uname(), pw(), timeout=T)


def test_dropping_a_user_drops_its_role_binding(server, root, clients):
    name, password = uname(), pw()
    root.create_user(name, password, timeout=T)
    root.grant_role(name, "admin", timeout=T)
    root.drop_user(name, timeout=T)
    # Re-created with the same name: must not inherit the old admin role.
    root.create_user(name, password, timeout=T)
    assert tuple(root.describe_user(name, timeout=T).get("roles", ("<missing>",))) == ()
    me = clients.make(server, user=name, password=password)
    with raises_rpc(DENIED, rf"^PrivilegeSelectOwnership: permission deny to {name} in the `default` database$"):
        me.list_users(timeout=T)


def test_builtin_roles_exist(root):
    roles = root.list_roles(timeout=T)
    assert "admin" in roles and "public" in roles, roles


def test_create_and_drop_role(root):
    role = uname("role")
    root.create_role(role, timeout=T)
    assert role in root.list_roles(timeout=T)
    user = uname()
    root.create_user(user, pw(), timeout=T)
    root.grant_role(user, role, timeout=T)
    assert role in root.describe_user(user, timeout=T).get("roles", ())
    root.revoke_role(user, role, timeout=T)
    root.drop_role(role, timeout=T)
    assert role not in root.list_roles(timeout=T)


def test_builtin_role_cannot_be_dropped(root):
    # Milvus: "the role[admin] is a default role, which can't be dropped", code 1401.
    with raises_milvus(1401):
        root.drop_role("admin", timeout=T)
    assert "admin" in root.list_roles(timeout=T)


def test_password_with_colons(server, root, clients, orm):
    """The authorization header is split at the first ':' only."""
    name = uname()
    password = "a:b:c::d_" + pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    c = clients.make(server, user=name, password=password)
    assert c.describe_user(name, timeout=T).get("user_name") == name
    assert orm.can_connect(server, name, password)
    # ...and credentials embedded in the URI (pymilvus joins them to "user:a:b:...").
    alias = orm.connect(server, user=None, password=None,
                        uri=f"http://{name}:{password}@{server.host}:{server.port}")
    assert [g.username for g in utility.list_user(name, False, using=alias, timeout=T).groups] == [name]
    # A wrong split would make "a" the password; make sure that is not accepted.
    assert not clients.can_connect(server, f"{name}:a")


def test_unicode_password(server, root, clients, orm):
    name = uname()
    password = "Pässwörd-✓-пароль-" + pw()
    root.create_user(name, password, timeout=T)
    assert clients.can_connect(server, f"{name}:{password}")
    assert orm.can_connect(server, name, password)
    assert not clients.can_connect(server, f"{name}:{password[:-1]}")
    me = clients.make(server, user=name, password=password)
    new = "新しいパスワード-" + pw()
    me.update_password(name, password, new, timeout=T)
    assert clients.can_connect(server, f"{name}:{new}")
    assert not clients.can_connect(server, f"{name}:{password}")
