"""The guide's "Limitations" section: username and password rules, each answered with
MilvusException code 1100 (ParameterInvalid), through both the ORM and MilvusClient."""

import uuid

import pytest
from pymilvus import utility

from conftest import T, raises_milvus, pw, uname


def _name_of_length(n: int) -> str:
    base = "n" + uuid.uuid4().hex + uuid.uuid4().hex  # letter first, 65 chars
    return base[:n]


BAD_NAMES = {
    "empty": "",
    "33 chars": None,  # filled per test (must be unique)
    "starts with digit": "1abc_{u}",
    "starts with underscore": "_abc_{u}",
    "contains dash": "ab-{u}",
    "contains dot": "ab.{u}",
    "contains inner space": "ab {u}",
    "non-ascii letter": "\u00e9t\u00e9_{u}",
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_invalid_username_orm(server, orm, case):
    admin = orm.connect(server)
    name = BAD_NAMES[case]
    name = _name_of_length(33) if name is None else name.format(u=uuid.uuid4().hex[:6])
    with raises_milvus(1100):
        utility.create_user(name, pw(), using=admin, timeout=T)
    if name:
        assert name not in utility.list_usernames(using=admin, timeout=T)


@pytest.mark.parametrize("case", ["empty", "33 chars", "starts with digit", "contains dash"])
def test_invalid_username_client(server, root, case):
    name = BAD_NAMES[case]
    name = _name_of_length(33) if name is None else name.format(u=uuid.uuid4().hex[:6])
    with raises_milvus(1100):
        root.create_user(name, pw(), timeout=T)
    if name:
        assert name not in root.list_users(timeout=T)


def test_username_of_32_chars_is_fine(server, orm):
    admin = orm.connect(server)
    name = _name_of_length(32)
    assert len(name) == 32
    password = pw()
    utility.create_user(name, password, using=admin, timeout=T)
    assert name in utility.list_usernames(using=admin, timeout=T)
    assert orm.can_connect(server, name, password)
    utility.delete_user(name, using=admin, timeout=T)


def test_username_with_digits_and_underscores_is_fine(server, orm):
    admin = orm.connect(server)
    name = f"A1_b2_{uuid.uuid4().hex[:6]}"
    password = pw()
    utility.create_user(name, password, using=admin, timeout=T)
    assert orm.can_connect(server, name, password)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 5, id="5 bytes"),
        pytest.param("x" * 257, id="257 bytes"),
        pytest.param("\u00e9\u00e9a", id="3 chars 5 bytes"),
        pytest.param("\u00e9" * 128 + "a", id="129 chars 257 bytes"),
    ],
)
def test_invalid_password_length_on_create(server, orm, password):
    admin = orm.connect(server)
    name = uname()
    with raises_milvus(1100, match="(?i)password"):
        utility.create_user(name, password, using=admin, timeout=T)
    assert name not in utility.list_usernames(using=admin, timeout=T)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("x" * 6, id="6 bytes"),
        pytest.param("y" * 256, id="256 bytes"),
        pytest.param("\u00e9\u00e9\u00e9", id="3 chars 6 bytes"),
        pytest.param("\u00e9" * 128, id="128 chars 256 bytes"),
    ],
)
def test_valid_password_length_on_create(server, orm, password):
    admin = orm.connect(server)
    name = uname()
    utility.create_user(name, password, using=admin, timeout=T)
    assert orm.can_connect(server, name, password)
    utility.delete_user(name, using=admin, timeout=T)


@pytest.mark.parametrize(
    "new_password",
    [pytest.param("x" * 5, id="5 bytes"), pytest.param("x" * 257, id="257 bytes")],
)
def test_invalid_new_password_on_update(server, orm, new_password):
    admin = orm.connect(server)
    name, old = uname(), pw()
    utility.create_user(name, old, using=admin, timeout=T)
    mine = orm.connect(server, name, old)
    with raises_milvus(1100, match="(?i)password"):
        utility.update_password(name, old, new_password, using=mine, timeout=T)
    assert orm.can_connect(server, name, old)


def test_new_password_is_validated_before_old_one(server, orm):
    """Milvus checks the new password first: a too-short new password is 1100 even when
    the old password is wrong too."""
    admin = orm.connect(server)
    name, old = uname(), pw()
    utility.create_user(name, old, using=admin, timeout=T)
    mine = orm.connect(server, name, old)
    with raises_milvus(1100):
        utility.update_password(name, "wrong-old", "short", using=mine, timeout=T)


def test_limits_through_milvus_client(root):
    with raises_milvus(1100, match="(?i)password"):
        root.create_user(uname(), "12345", timeout=T)
    with raises_milvus(1100, match="(?i)password"):
        root.create_user(uname(), "p" * 257, timeout=T)
    name = uname()
    root.create_user(name, "p" * 256, timeout=T)
    assert name in root.list_users(timeout=T)
    root.drop_user(name, timeout=T)


DESCRIPTION_LIMIT = 1024  # bytes; Milvus's proxy.maxUserDescriptionLength default


def test_description_is_bounded(server, root, clients):
    """A description over 1 KiB is a parameter error (1100) and stores nothing: not on create,
    not on a description-only update, not with a password change."""
    name, password = uname("desc"), pw()
    too_long = "d" * (DESCRIPTION_LIMIT + 1)
    with raises_milvus(1100, match="invalid description length"):
        root.create_user(name, password, description=too_long, timeout=T)
    assert name not in root.list_users(timeout=T)

    root.create_user(name, password, description="d" * DESCRIPTION_LIMIT, timeout=T)
    assert root.describe_user(name, timeout=T)["description"] == "d" * DESCRIPTION_LIMIT
    with raises_milvus(1100, match="invalid description length"):
        root.update_user(name, description=too_long, timeout=T)
    second = pw()
    with raises_milvus(1100, match="invalid description length"):
        root.update_password(name, password, second, description=too_long, timeout=T)
    assert root.describe_user(name, timeout=T)["description"] == "d" * DESCRIPTION_LIMIT
    assert clients.can_connect(server, f"{name}:{password}")
    assert not clients.can_connect(server, f"{name}:{second}")
    root.drop_user(name, timeout=T)
