"""Roles, grants and privilege groups through pymilvus 3.0.2's MilvusClient and ORM Role, as a
Milvus user manages access: grant, describe, enforce, revoke, groups, and the refusals Milvus
gives (unknown privilege or object type, missing role, non-admin granting, dropping a role
that still has grants)."""

import pytest
from pymilvus import Role, connections

from conftest import DENIED, ROOT_PASSWORD, ROOT_USER, T, pw, raises_milvus, raises_rpc, uname


def member_of_new_role(server, root, clients):
    """A new user in a new role without privileges: (role, user, password, the user's client)."""
    role, user, password = rname(), uname(), pw()
    root.create_user(user, password, timeout=T)
    root.create_role(role, timeout=T)
    root.grant_role(user, role, timeout=T)
    return role, user, password, clients.make(server, user=user, password=password)


def rname(prefix="r"):
    return uname(prefix)


def privileges_of(described):
    return sorted(
        (p["object_type"], p["object_name"], p.get("db_name", ""), p["privilege"])
        for p in described["privileges"]
    )


def test_grant_describe_revoke_v1(root):
    role = rname()
    root.create_role(role, timeout=T)
    assert role in root.list_roles(timeout=T)
    root.grant_privilege(role, "Global", "CreateOwnership", "*", timeout=T)
    root.grant_privilege(role, "Collection", "Insert", "c1", timeout=T)
    root.grant_privilege(role, "Collection", "Insert", "c1", timeout=T)  # re-grant: quiet
    described = root.describe_role(role, timeout=T)
    assert described["role"] == role
    assert privileges_of(described) == [
        ("Collection", "c1", "default", "Insert"),
        ("Global", "*", "default", "CreateOwnership"),
    ]
    assert {p["grantor_name"] for p in described["privileges"]} == {ROOT_USER}
    root.revoke_privilege(role, "Collection", "Insert", "c1", timeout=T)
    root.revoke_privilege(role, "Collection", "Insert", "c1", timeout=T)  # missing: quiet
    assert privileges_of(root.describe_role(role, timeout=T)) == [
        ("Global", "*", "default", "CreateOwnership"),
    ]


def test_load_grants_its_related_privileges(root):
    role = rname()
    root.create_role(role, timeout=T)
    root.grant_privilege(role, "Collection", "Load", "c1", timeout=T)
    granted = [p[3] for p in privileges_of(root.describe_role(role, timeout=T))]
    assert sorted(granted) == ["GetLoadState", "GetLoadingProgress", "Load"]


def test_grant_v2_with_groups_and_levels(root):
    role = rname()
    root.create_role(role, timeout=T)
    root.grant_privilege_v2(role, "CollectionReadOnly", "c1", db_name="db1", timeout=T)
    root.grant_privilege_v2(role, "Insert", "c2", db_name="db1", timeout=T)
    root.grant_privilege_v2(role, "ClusterAdmin", "*", db_name="*", timeout=T)
    everything = root.describe_role(role, timeout=T)  # db "" = default and "*" grants only
    assert ("Global", "*", "*", "ClusterAdmin") in privileges_of(everything)
    assert all(p[2] in ("default", "*") for p in privileges_of(everything))
    with raises_milvus(1100, match="cluster level"):
        root.grant_privilege_v2(role, "ClusterAdmin", "*", db_name="db1", timeout=T)
    with raises_milvus(1100, match="database name for the collection level"):
        root.grant_privilege_v2(role, "CollectionReadOnly", "c1", db_name="*", timeout=T)
    root.revoke_privilege_v2(role, "Insert", "c2", db_name="db1", timeout=T)


def test_refusals_use_milvus_texts(root):
    role = rname()
    root.create_role(role, timeout=T)
    with raises_milvus(65535, match=r"not found the privilege name\[Nope\] in object\[Global\]"):
        root.grant_privilege(role, "Global", "Nope", "*", timeout=T)
    with raises_milvus(65535, match="object entity in the request is nil or invalid"):
        root.grant_privilege(role, "Database", "Insert", "*", timeout=T)
    with raises_milvus(65535, match="can not operate the built-in privilege group"):
        root.grant_privilege(role, "Global", "ClusterAdmin", "*", timeout=T)
    with raises_milvus(65535, match="not found the role"):
        root.grant_privilege(rname("missing"), "Global", "CreateOwnership", "*", timeout=T)
    with raises_milvus(65535, match=r"not found the privilege name\[Bogus\]"):
        root.grant_privilege_v2(role, "Bogus", "*", db_name="*", timeout=T)
    with raises_milvus(65535, match="not found the role"):
        root.describe_role(rname("missing"), timeout=T)


def test_a_role_with_grants_is_dropped_only_with_force(root):
    role = rname()
    root.create_role(role, timeout=T)
    root.grant_privilege(role, "Global", "DescribeCollection", "*", timeout=T)
    with raises_milvus(65535, match="fail to drop the role that it has privileges"):
        root.drop_role(role, timeout=T)
    root.drop_role(role, force_drop=True, timeout=T)
    assert role not in root.list_roles(timeout=T)
    root.create_role(role, timeout=T)  # same name again: no grant survived
    assert root.describe_role(role, timeout=T)["privileges"] == []


def test_grants_decide_what_a_user_may_do(server, root, clients):
    role, user, password, me = member_of_new_role(server, root, clients)
    with raises_rpc(DENIED, match="PrivilegeCreateOwnership: permission deny to " + user):
        me.create_user(uname(), pw(), timeout=T)
    root.grant_privilege(role, "Global", "CreateOwnership", "*", db_name="*", timeout=T)
    created = uname()
    me.create_user(created, pw(), timeout=T)  # allowed from the moment the grant returned
    assert created in root.list_users(timeout=T)
    # Anyone may read the grants of a role they hold (SelectGrant; MilvusClient.describe_role
    # also calls SelectRole first, which needs SelectOwnership, in Milvus as here).
    alias = uname("own")
    connections.connect(alias=alias, uri=server.uri, token=f"{user}:{password}")
    try:
        grants = Role(role, using=alias).list_grants()
        assert [g.privilege for g in grants.groups] == ["CreateOwnership"]
    finally:
        connections.disconnect(alias)
    root.revoke_privilege(role, "Global", "CreateOwnership", "*", db_name="*", timeout=T)
    with raises_rpc(DENIED, rf"^PrivilegeCreateOwnership: permission deny to {user} in the `default` database$"):
        me.create_user(uname(), pw(), timeout=T)
    with raises_rpc(DENIED, match="PrivilegeManageOwnership"):
        me.grant_privilege(role, "Global", "CreateOwnership", "*", timeout=T)


def test_cluster_read_only_group_lets_a_user_list_users(server, root, clients):
    role, user, password, me = member_of_new_role(server, root, clients)
    with raises_rpc(DENIED, rf"^PrivilegeSelectOwnership: permission deny to {user} in the `default` database$"):
        me.list_users(timeout=T)
    root.grant_privilege_v2(role, "ClusterReadOnly", "*", db_name="*", timeout=T)
    assert user in me.list_users(timeout=T)


def test_privilege_groups(root):
    group = uname("g")
    root.create_privilege_group(group, timeout=T)
    with raises_milvus(65535, match="is defined by users"):
        root.create_privilege_group(group, timeout=T)
    with raises_milvus(1100, match="defined by built in privileges"):
        root.create_privilege_group("ClusterAdmin", timeout=T)
    root.add_privileges_to_group(group, ["Query", "Search"], timeout=T)
    with raises_milvus(65535, match="not the same privilege level"):
        root.add_privileges_to_group(group, ["CreateOwnership"], timeout=T)
    groups = {g["privilege_group"]: g["privileges"] for g in root.list_privilege_groups(timeout=T)}
    assert sorted(groups[group]) == ["Query", "Search"]
    assert "UpdateUser" in groups["ClusterAdmin"] and len(groups) >= 10
    root.remove_privileges_from_group(group, ["Search"], timeout=T)
    role = rname()
    root.create_role(role, timeout=T)
    root.grant_privilege_v2(role, group, "c1", db_name="db1", timeout=T)
    with raises_milvus(65535, match="is used by role"):
        root.drop_privilege_group(group, timeout=T)
    root.revoke_privilege_v2(role, group, "c1", db_name="db1", timeout=T)
    root.drop_privilege_group(group, timeout=T)
    with raises_milvus(65535, match="no privilege group name"):
        root.add_privileges_to_group(group, ["Query"], timeout=T)


def test_role_limit_counts_admin_and_public(start_server, clients):
    s = start_server(overrides={"proxy": {"maxRoleNum": 4}})
    c = clients.make(s, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    c.create_role("one", timeout=T)
    c.create_role("two", timeout=T)
    with raises_milvus(65535, match="number of roles has reached the limit"):
        c.create_role("three", timeout=T)


def test_orm_role_flow(server, root):
    alias = uname("orm")
    connections.connect(alias=alias, uri=server.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    try:
        user = uname()
        root.create_user(user, pw(), timeout=T)
        role = Role(rname(), using=alias)
        role.create()
        assert role.is_exist()
        role.add_user(user)
        assert user in role.get_users()
        role.grant("Collection", "c1", "Search")
        grants = role.list_grant("Collection", "c1")
        assert [g.privilege for g in grants.groups] == ["Search"]
        role.revoke("Collection", "c1", "Search")
        assert role.list_grants().groups == []
        role.remove_user(user)
        role.drop()
        assert not role.is_exist()
    finally:
        connections.disconnect(alias)


def test_role_descriptions_and_alter_role(server, root, clients):
    """pymilvus 3.0 sends RoleEntity.description on create_role and AlterRole on alter_role;
    describe_role reads the description back through SelectRole."""
    described, plain = rname(), rname()
    root.create_role(described, description="reads things", timeout=T)
    root.create_role(plain, timeout=T)
    assert root.describe_role(described, timeout=T)["description"] == "reads things"
    assert root.describe_role(plain, timeout=T)["description"] == ""
    root.alter_role(plain, "now described", timeout=T)
    assert root.describe_role(plain, timeout=T)["description"] == "now described"
    root.alter_role(described, "", timeout=T)
    assert root.describe_role(described, timeout=T)["description"] == ""
    # The built-in roles (a legacy empty value) have none.
    assert root.describe_role("public", timeout=T)["description"] == ""
    with raises_milvus(65535, match="not found"):
        root.alter_role(rname(), "nobody", timeout=T)
    user, password = uname(), pw()
    root.create_user(user, password, timeout=T)
    me = clients.make(server, user=user, password=password)
    with raises_rpc(DENIED, match="PrivilegeCreateOwnership"):
        me.alter_role(plain, "mine now", timeout=T)


def test_root_should_bind_role_checks_root_like_anyone(start_server, clients):
    s = start_server(super_users=None, overrides={"common": {"security": {"rootShouldBindRole": True}}})
    c = clients.make(s, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
    with raises_rpc(DENIED, match="PrivilegeSelectOwnership: permission deny to root"):
        c.list_users(timeout=T)
