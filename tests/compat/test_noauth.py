"""common.security.authorizationEnabled: false -- any (or no) credentials are accepted,
and the credential RPCs still work; plus Milvus-style environment overrides."""

from pymilvus import MilvusClient, utility

from conftest import NO_CREDENTIALS, ROOT_PASSWORD, ROOT_USER, T, pw, uname


def test_connect_without_credentials(noauth_server, orm, clients):
    alias = orm.connect(noauth_server, user=None, password=None)
    assert ROOT_USER in utility.list_usernames(using=alias, timeout=T)
    c = MilvusClient(uri=noauth_server.uri, timeout=T, dedicated=True)
    clients.clients.append(c)
    assert ROOT_USER in c.list_users(timeout=T)


def test_connect_with_wrong_password(noauth_server, orm, clients):
    alias = orm.connect(noauth_server, ROOT_USER, "wrong-password")
    assert ROOT_USER in utility.list_usernames(using=alias, timeout=T)
    c = clients.make(noauth_server, token=f"{uname('nobody')}:whatever")
    assert ROOT_USER in c.list_users(timeout=T)


def test_user_management_still_works(noauth_server, clients):
    c = clients.make(noauth_server, token="")
    name, password = uname(), pw()
    c.create_user(name, password, timeout=T)
    assert name in c.list_users(timeout=T)
    assert c.describe_user(name, timeout=T).get("user_name") == name
    c.update_password(name, password, pw(), timeout=T)
    c.drop_user(name, timeout=T)
    assert name not in c.list_users(timeout=T)


def test_any_caller_may_manage_users_when_auth_is_off(noauth_server, orm):
    # Even a "user" that does not exist: the interceptors are no-ops.
    alias = orm.connect(noauth_server, uname("nobody"), "irrelevant")
    name = uname()
    utility.create_user(name, pw(), using=alias, timeout=T)
    assert name in utility.list_usernames(using=alias, timeout=T)
    utility.delete_user(name, using=alias, timeout=T)


def test_env_overrides_config(start_server, etcd, orm, clients):
    """COMMON_SECURITY_AUTHORIZATIONENABLED=false beats `authorizationEnabled: true` in
    the file, and ETCD_ENDPOINTS beats a config pointing at a dead etcd."""
    s = start_server(
        auth=True,
        overrides={"etcd": {"endpoints": ["127.0.0.1:1"]}},
        env={
            "COMMON_SECURITY_AUTHORIZATIONENABLED": "false",
            "ETCD_ENDPOINTS": etcd.endpoint,
        },
    )
    alias = orm.connect(s, user=None, password=None)
    name = uname()
    utility.create_user(name, pw(), using=alias, timeout=T)
    assert name in utility.list_usernames(using=alias, timeout=T)
    # The user really went to the etcd named by the environment.
    assert etcd.get(f"{s.root_path}/meta/root-coord/credential/users/{name}") is not None


def test_auth_on_by_config_refuses_anonymous(start_server, orm):
    """Control for the test above: the same config without the override does refuse."""
    s = start_server(auth=True)
    orm.refused(s, None, None, NO_CREDENTIALS)
    assert orm.can_connect(s, ROOT_USER, ROOT_PASSWORD)
