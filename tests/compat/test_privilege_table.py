"""The RPC -> privilege table credstore enforces (src/rbac/methods.tsv) is exactly what
pymilvus's generated descriptors say (`privilege_ext_obj`): a new or changed Milvus RPC fails
this test until the table is regenerated with scripts/privilege_table.py."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_generator():
    return load_script("privilege_table")


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


def load_subject_generator():
    return load_script("subject_table")


def test_committed_subject_table_and_descriptors_match_pymilvus():
    """src/proxy/subjects.tsv (where each request names databases, collections and aliases)
    and tests/data/milvus.fds (the descriptors the Rust property test decodes with) are what
    scripts/subject_table.py makes of pymilvus's descriptors today."""
    generator = load_subject_generator()
    committed = (ROOT / "src" / "proxy" / "subjects.tsv").read_text()
    assert committed == generator.table(), (
        "src/proxy/subjects.tsv is out of date: run "
        ".venv/bin/python scripts/subject_table.py > src/proxy/subjects.tsv"
    )
    assert (ROOT / "tests" / "data" / "milvus.fds").read_bytes() == generator.descriptors(), (
        "tests/data/milvus.fds is out of date: run "
        ".venv/bin/python scripts/subject_table.py --descriptors > tests/data/milvus.fds"
    )


def test_subject_table_reads_the_fields_of_the_attack_table():
    rows = {tuple(line.split("\t")) for line in load_subject_generator().table().splitlines()[1:]}
    assert ("Query", "db", "2") in rows and ("Query", "name", "3") in rows
    assert ("RenameCollection", "db+", "5") in rows and ("RenameCollection", "name", "4") in rows
    assert ("HybridSearch", "db+", "5[].2") in rows and ("HybridSearch", "name", "5[].3") in rows
    assert ("AlterAlias", "alias", "4") in rows
