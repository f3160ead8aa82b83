"""Every step of Milvus's "Authenticate User Access" guide, through the ORM API
(`connections`, `utility`) exactly as the guide writes it."""

from pymilvus import connections, utility

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


def test_root_connects_with_default_password(server, orm):
    alias = orm.connect(server, ROOT_USER, ROOT_PASSWORD)
    assert connections.has_connection(alias)
    assert ROOT_USER in utility.list_usernames(using=alias, timeout=T)


def test_orm_connect_with_token_and_uri(server, orm):
    by_token = orm.connect(server, user=None, password=None,
                           uri=server.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    assert ROOT_USER in utility.list_usernames(using=by_token, timeout=T)
    by_uri = orm.connect(server, user=None, password=None,
                         uri=f"http://{ROOT_USER}:{ROOT_PASSWORD}@{server.host}:{server.port}")
    assert ROOT_USER in utility.list_usernames(using=by_uri, timeout=T)
    orm.refused(server, None, None, WRONG_PASSWORD, uri=server.uri, token="root:wrong")


def test_orm_list_users_and_roles(server, orm, clients):
    admin = orm.connect(server)
    user = uname()
    utility.create_user(user, pw(), using=admin, timeout=T)
    clients.make(server).grant_role(user, "admin", timeout=T)
    info = utility.list_users(True, using=admin, timeout=T)
    by_name = {g.username: g.roles for g in info.groups}
    assert ROOT_USER in by_name and user in by_name, by_name
    assert by_name[user] == ("admin",), by_name
    one = utility.list_user(user, True, using=admin, timeout=T)
    assert [(g.username, g.roles) for g in one.groups] == [(user, ("admin",))]
    roles = {g.role_name for g in utility.list_roles(False, using=admin, timeout=T).groups}
    assert {"admin", "public"} <= roles, roles


def test_guide_walkthrough(server, orm):
    # "Create an authenticated user"
    admin = orm.connect(server, ROOT_USER, ROOT_PASSWORD)
    user, password = uname(), pw()
    utility.create_user(user, password, using=admin, timeout=T)
    assert user in utility.list_usernames(using=admin, timeout=T)

    # "Connect Milvus with an existing user"
    mine = orm.connect(server, user, password)
    info = utility.list_user(user, False, using=mine, timeout=T)  # acting on self is allowed
    assert [g.username for g in info.groups] == [user]

    # "To log in to another authenticated user, disconnect and re-connect" (same alias name)
    connections.disconnect(mine)
    connections.connect(alias=mine, host=server.host, port=str(server.port),
                        user=ROOT_USER, password=ROOT_PASSWORD, timeout=T)
    assert user in utility.list_usernames(using=mine, timeout=T)  # root now, so allowed

    # "Reset password" (update_password is the alias that does not touch the connection)
    new_password = pw()
    utility.update_password(user, password, new_password, using=admin, timeout=T)
    assert not orm.can_connect(server, user, password)
    assert orm.can_connect(server, user, new_password)
    assert user in utility.list_usernames(using=admin, timeout=T)  # admin is still root

    # "Delete a user"
    utility.delete_user(user, using=admin, timeout=T)
    # "List all users"
    users = utility.list_usernames(using=admin, timeout=T)
    assert user not in users
    assert ROOT_USER in users
    assert not orm.can_connect(server, user, new_password)


def test_user_resets_own_password_and_connection_follows(server, orm):
    admin = orm.connect(server)
    user, old = uname(), pw()
    utility.create_user(user, old, using=admin, timeout=T)

    mine = orm.connect(server, user, old)
    new = pw()
    utility.reset_password(user, old, new, using=mine, timeout=T)

    # "after this operation, the connection is also ready to use": the alias now
    # authenticates as user:new, and the old password is already revoked.
    info = utility.list_user(user, False, using=mine, timeout=T)
    assert [g.username for g in info.groups] == [user]
    assert not orm.can_connect(server, user, old)
    assert orm.can_connect(server, user, new)


def test_reset_password_switches_connection_to_reset_user(server, orm):
    """pymilvus quirk (wire §4.4): after reset_password the ORM alias authenticates as the
    user whose password was reset, even if it was opened as root."""
    admin = orm.connect(server)
    user, old = uname(), pw()
    utility.create_user(user, old, using=admin, timeout=T)

    new = pw()
    utility.reset_password(user, old, new, using=admin, timeout=T)

    # The alias now speaks as `user` (a normal user), so root-only calls are refused...
    with raises_rpc(DENIED, match=f"permission deny to {user}"):
        utility.list_usernames(using=admin, timeout=T)
    with raises_rpc(DENIED, rf"^PrivilegeCreateOwnership: permission deny to {user} in the `default` database$"):
        utility.create_user(uname(), pw(), using=admin, timeout=T)
    # ...while acting on itself works with the new password.
    info = utility.list_user(user, False, using=admin, timeout=T)
    assert [g.username for g in info.groups] == [user]

    # Clean up through a fresh root connection.
    root2 = orm.connect(server)
    utility.delete_user(user, using=root2, timeout=T)


def test_existing_connection_with_old_password_is_rejected_after_update(server, orm):
    admin = orm.connect(server)
    user, old = uname(), pw()
    utility.create_user(user, old, using=admin, timeout=T)
    mine = orm.connect(server, user, old)
    utility.list_user(user, False, using=mine, timeout=T)  # works before the change

    utility.update_password(user, old, pw(), using=admin, timeout=T)

    # update_password does not touch any header; the alias still sends user:old, which
    # must be refused at once (the write is acknowledged) and not retried by pymilvus.
    with raises_refusal(WRONG_PASSWORD):
        utility.list_user(user, False, using=mine, timeout=T)
    assert user in utility.list_usernames(using=admin, timeout=T)


def test_update_password_needs_the_right_old_password(server, orm):
    admin = orm.connect(server)
    user, old = uname(), pw()
    utility.create_user(user, old, using=admin, timeout=T)
    mine = orm.connect(server, user, old)

    with raises_milvus(1400, match=f"old password not correct for {user}: not authenticated"):
        utility.update_password(user, "not-the-old-one", pw(), using=mine, timeout=T)
    # Nothing changed.
    assert orm.can_connect(server, user, old)

    new = pw()
    utility.update_password(user, old, new, using=mine, timeout=T)
    assert orm.can_connect(server, user, new)
    assert not orm.can_connect(server, user, old)


def test_super_user_resets_password_without_old_one(server, orm, foo):
    """superUsers: "root, foo" -- foo is a plain created user (no roles) listed there,
    with a blank after the comma (the #40599 trap: entries must be trimmed)."""
    admin = orm.connect(server)
    victim, old = uname(), pw()
    utility.create_user(victim, old, using=admin, timeout=T)

    as_foo = orm.connect(server, "foo", foo)
    new = pw()
    utility.update_password(victim, "wrong-old-password", new, using=as_foo, timeout=T)
    assert orm.can_connect(server, victim, new)
    assert not orm.can_connect(server, victim, old)

    # Through reset_password as well (the guide's spelling), with an empty old password.
    newer = pw()
    utility.reset_password(victim, "", newer, using=as_foo, timeout=T)
    assert orm.can_connect(server, victim, newer)
    assert not orm.can_connect(server, victim, new)


def test_super_user_with_admin_role_resets_password_without_old_one(server, orm, clients, foo):
    """What real Milvus needs for the same step: RBAC (PrivilegeUpdateUser on another
    user) runs before the superUsers check, so foo also holds the admin role here."""
    root = clients.make(server, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    admin = orm.connect(server)
    victim, old = uname(), pw()
    utility.create_user(victim, old, using=admin, timeout=T)
    root.grant_role("foo", "admin", timeout=T)
    try:
        as_foo = orm.connect(server, "foo", foo)
        new = pw()
        utility.update_password(victim, "wrong-old-password", new, using=as_foo, timeout=T)
        assert orm.can_connect(server, victim, new)
        assert not orm.can_connect(server, victim, old)
    finally:
        root.revoke_role("foo", "admin", timeout=T)


def test_root_is_a_super_user_too(server, orm):
    admin = orm.connect(server)
    user, old = uname(), pw()
    utility.create_user(user, old, using=admin, timeout=T)
    new = pw()
    utility.update_password(user, "definitely-wrong", new, using=admin, timeout=T)
    assert orm.can_connect(server, user, new)


def test_non_super_user_cannot_skip_old_password(server, orm, clients):
    admin = orm.connect(server)
    # A user with the admin role may manage users, but is not in superUsers.
    boss, boss_pw = uname("boss"), pw()
    utility.create_user(boss, boss_pw, using=admin, timeout=T)
    clients.make(server, token=f"{ROOT_USER}:{ROOT_PASSWORD}").grant_role(boss, "admin", timeout=T)

    victim, victim_pw = uname(), pw()
    utility.create_user(victim, victim_pw, using=admin, timeout=T)

    as_boss = orm.connect(server, boss, boss_pw)
    with raises_milvus(1400, match=f"old password not correct for {victim}"):
        utility.update_password(victim, "wrong-old", pw(), using=as_boss, timeout=T)
    with raises_milvus(1400):
        utility.reset_password(victim, "", pw(), using=as_boss, timeout=T)
    assert orm.can_connect(server, victim, victim_pw)

    # With the right old password the admin-role user may change it.
    new = pw()
    utility.update_password(victim, victim_pw, new, using=as_boss, timeout=T)
    assert orm.can_connect(server, victim, new)


def test_normal_user_cannot_change_someone_elses_password(server, orm):
    admin = orm.connect(server)
    a, a_pw = uname(), pw()
    b, b_pw = uname(), pw()
    utility.create_user(a, a_pw, using=admin, timeout=T)
    utility.create_user(b, b_pw, using=admin, timeout=T)
    as_a = orm.connect(server, a, a_pw)
    # Even with b's correct old password: UpdateUser on another user's object is RBAC.
    with raises_rpc(DENIED, rf"^PrivilegeUpdateUser: permission deny to {a} in the `default` database$"):
        utility.update_password(b, b_pw, pw(), using=as_a, timeout=T)
    assert orm.can_connect(server, b, b_pw)


def test_normal_user_cannot_manage_users(server, orm):
    admin = orm.connect(server)
    user, password = uname(), pw()
    other = uname()
    utility.create_user(user, password, using=admin, timeout=T)
    utility.create_user(other, pw(), using=admin, timeout=T)
    mine = orm.connect(server, user, password)

    with raises_rpc(DENIED, match=f"permission deny to {user}"):
        utility.create_user(uname(), pw(), using=mine, timeout=T)
    with raises_rpc(DENIED, match=f"permission deny to {user}"):
        utility.delete_user(other, using=mine, timeout=T)
    with raises_rpc(DENIED, match=f"permission deny to {user}"):
        utility.list_usernames(using=mine, timeout=T)
    assert other in utility.list_usernames(using=admin, timeout=T)


def test_delete_missing_user_succeeds(server, orm):
    admin = orm.connect(server)
    utility.delete_user(uname("ghost"), using=admin, timeout=T)


def test_delete_root_is_refused(server, orm):
    admin = orm.connect(server)
    with raises_milvus(1401, match="root user cannot be deleted"):
        utility.delete_user(ROOT_USER, using=admin, timeout=T)
    assert orm.can_connect(server, ROOT_USER, ROOT_PASSWORD)


def test_create_existing_user_is_refused(server, orm):
    admin = orm.connect(server)
    user, password = uname(), pw()
    utility.create_user(user, password, using=admin, timeout=T)
    with raises_milvus(1100, match="already exists"):
        utility.create_user(user, pw(), using=admin, timeout=T)
    # The first password still works; the second create changed nothing.
    assert orm.can_connect(server, user, password)


def test_deleted_then_recreated_user_gets_new_password_only(server, orm):
    admin = orm.connect(server)
    user, first = uname(), pw()
    utility.create_user(user, first, using=admin, timeout=T)
    assert orm.can_connect(server, user, first)
    utility.delete_user(user, using=admin, timeout=T)
    second = pw()
    utility.create_user(user, second, using=admin, timeout=T)
    assert not orm.can_connect(server, user, first)
    assert orm.can_connect(server, user, second)
