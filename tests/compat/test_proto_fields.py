"""Every message and enum credstore declares in proto/*.proto has the field numbers, types
and labels pymilvus's generated descriptors have (the authority, `pymilvus.grpc_gen`), so a
typo in a field number cannot silently drop a field on the wire."""

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from pymilvus.grpc_gen import common_pb2, milvus_pb2

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"milvus.proto": milvus_pb2, "common.proto": common_pb2}
SCALARS = {
    "string": FieldDescriptor.TYPE_STRING,
    "bool": FieldDescriptor.TYPE_BOOL,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
}
FIELD = re.compile(r"^\s*(repeated |optional )?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
ENUM_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)\s*;")


def declarations(path):
    """(kind, name, [lines]) for each top-level message/enum of one of our proto files."""
    kind = name = None
    body = []
    for line in path.read_text().splitlines():
        header = re.match(r"^(message|enum)\s+(\w+)\s*\{(\s*\})?", line)
        if header:
            kind, name, body = header.group(1), header.group(2), []
            if header.group(3):
                yield kind, name, body
                kind = None
        elif kind and line.startswith("}"):
            yield kind, name, body
            kind = None
        elif kind:
            body.append(line)


def cases():
    for file, module in PACKAGES.items():
        for kind, name, body in declarations(ROOT / "proto" / file):
            yield pytest.param(module, kind, name, body, id=f"{file}:{name}")


@pytest.mark.parametrize("module, kind, name, body", list(cases()))
def test_declaration_matches_pymilvus(module, kind, name, body):
    if kind == "enum":
        theirs = module.DESCRIPTOR.enum_types_by_name[name]
        for line in body:
            m = ENUM_VALUE.match(line)
            if m:
                assert theirs.values_by_name[m.group(1)].number == int(m.group(2)), line
        return
    theirs = module.DESCRIPTOR.message_types_by_name[name]
    for line in body:
        m = FIELD.match(line)
        if not m:
            continue
        label, type_name, field_name, number = m.groups()
        field = theirs.fields_by_name[field_name]
        assert field.number == int(number), f"{name}.{field_name}"
        assert field.is_repeated == (label == "repeated "), f"{name}.{field_name} label"
        if type_name == "int32" and field.type == FieldDescriptor.TYPE_ENUM:
            continue  # an enum we read as its number: the same varint on the wire
        if type_name in SCALARS:
            assert field.type == SCALARS[type_name], f"{name}.{field_name} type"
        else:
            nested = field.message_type or field.enum_type
            assert nested.name == type_name.split(".")[-1], f"{name}.{field_name} type"
