"""The RPC -> privilege table credstore enforces (src/rbac/methods.tsv) is exactly what
pymilvus's generated descriptors say (`privilege_ext_obj`): a new or changed Milvus RPC fails
this test until the table is regenerated with scripts/privilege_table.py."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("privilege_table", ROOT / "scripts" / "privilege_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_matches_pymilvus_descriptors():
    committed = (ROOT / "src" / "rbac" / "methods.tsv").read_text()
    assert committed == load_generator().table(), (
        "src/rbac/methods.tsv is out of date: run "
        ".venv/bin/python scripts/privilege_table.py > src/rbac/methods.tsv"
    )


def test_table_names_user_management_privileges_as_milvus_does():
    rows = {line.split("\t")[0]: line.split("\t") for line in load_generator().table().splitlines()[1:]}
    assert rows["CreateCredential"][1:3] == ["Global", "CreateOwnership"]
    assert rows["UpdateCredential"][1:4] == ["User", "UpdateUser", "2"]
    assert rows["Insert"][1:4] == ["Collection", "Insert", "3"]
    assert "Connect" not in rows and "GetVersion" not in rows
