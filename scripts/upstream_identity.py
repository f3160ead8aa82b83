#!/usr/bin/env python3
"""Creates credstore's own identity in an upstream Milvus: a dedicated user (not root) whose
role holds what the proxy tier forwards, so `credstore.upstream.token` need not be root's.

    MILVUS_ADMIN_PASSWORD=... CREDSTORE_UPSTREAM_PASSWORD=... \\
        python3 scripts/upstream_identity.py --uri http://milvus:19530

What the role gets, on every database (db `*`):
- Collection `*`: every collection privilege (queries, writes, indexes, partitions, loads);
- each Global privilege of a method the tier forwards (src/rbac/methods.tsv, less the methods
  credstore answers itself, `OWNED` in src/proxy/methods.rs), plus ShowCollections and
  ListDatabases, which Milvus 2.3 checks; a privilege this Milvus does not know is skipped.
No user, role, grant or privilege-group privilege: credstore serves those from its own store
and never forwards them, so the identity cannot manage Milvus's users.

Idempotent: an existing user keeps its password (give it again to have it checked), an existing
role and its grants stay. Needs pymilvus (2.4 or newer) and an admin of that Milvus (root).
Prints what it granted and skipped, then `credstore.upstream.token: <user>:<password>` only when
it generated the password.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
from pathlib import Path

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

REPO = Path(__file__).resolve().parents[1]
# What Milvus 2.3 checks besides the tier's table (pymilvus 3's descriptors leave them
# unannotated; older Milvus proxies annotate them).
LEGACY_GLOBAL = ["ShowCollections", "ListDatabases"]


def forwarded_global_privileges() -> list[str]:
    """Global privileges of the methods the tier forwards, from its own tables."""
    methods = (REPO / "src" / "proxy" / "methods.rs").read_text()
    owned_block = re.search(r"pub const OWNED: &\[&str\] = &\[(.*?)\];", methods, re.S)
    if owned_block is None:
        sys.exit("src/proxy/methods.rs has no OWNED list: update this script")
    owned = set(re.findall(r'"(\w+)"', owned_block.group(1)))
    privileges = set(LEGACY_GLOBAL)
    for line in (REPO / "src" / "rbac" / "methods.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        method, object_type, privilege = line.split("\t")[:3]
        if method not in owned and object_type == "Global":
            privileges.add(privilege)
    return sorted(privileges)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="the Milvus to configure, e.g. http://milvus:19530")
    parser.add_argument("--admin", default="root", help="an admin of that Milvus (default root)")
    parser.add_argument("--user", default="credstore_upstream", help="the identity to create")
    parser.add_argument("--role", default="credstore_upstream", help="its role")
    args = parser.parse_args()

    admin_password = os.environ.get("MILVUS_ADMIN_PASSWORD") or getpass.getpass(
        f"password of {args.admin} on {args.uri}: "
    )
    password = os.environ.get("CREDSTORE_UPSTREAM_PASSWORD")
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(24)
    admin = MilvusClient(uri=args.uri, token=f"{args.admin}:{admin_password}", timeout=30)

    if args.user in admin.list_users():
        print(f"user {args.user} exists; its password is left as it is")
        if generated:
            sys.exit("give its password in CREDSTORE_UPSTREAM_PASSWORD, or drop the user first")
    else:
        admin.create_user(args.user, password)
        print(f"created user {args.user}")
    if args.role not in admin.list_roles():
        admin.create_role(args.role)
        print(f"created role {args.role}")

    granted, skipped = [], []
    grants = [("Collection", "*")] + [("Global", p) for p in forwarded_global_privileges()]
    for object_type, privilege in grants:
        try:
            admin.grant_privilege(args.role, object_type, privilege, "*", db_name="*")
            granted.append(f"{object_type}:{privilege}")
        except MilvusException as e:
            if "privilege" not in (e.message or "") or "not" not in (e.message or ""):
                raise
            skipped.append(privilege)
    admin.grant_role(args.user, args.role)
    print(f"granted on db * to {args.role}: {', '.join(granted)}")
    if skipped:
        print(f"skipped (unknown to this Milvus): {', '.join(skipped)}")
    print(f"bound {args.user} to {args.role}")

    # The identity works: it lists databases and collections as the tier will.
    check = MilvusClient(uri=args.uri, token=f"{args.user}:{password}", timeout=30)
    check.list_databases()
    check.list_collections()
    if generated:
        print(f"credstore.upstream.token: {args.user}:{password}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
