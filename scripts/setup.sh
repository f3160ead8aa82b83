#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine with a Rust
# toolchain: etcd (Debian's etcd-server), a `protoc` for etcd-client's build script (the
# pure-Rust protox, into the git-ignored .tools/), and pymilvus and Milvus Lite (the proxy
# tests' upstream) in a virtualenv (.venv/).
# Idempotent: each step is skipped when its result is already there.
#
#   scripts/setup.sh build   only what `cargo build` needs (protox)
#   scripts/setup.sh         everything, for the tests
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .tools/bin/protox ]; then
  echo "setup: installing protox into .tools/ (a protoc for etcd-client's build script)"
  cargo install --locked --root .tools protox@0.10.0 --features bin
  echo "setup: protox is in .tools/bin; .cargo/config.toml points the build at it (no PATH change needed)"
fi
[ "$mode" = build ] && exit 0

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing etcd-server, etcd-client and openssl (test certificates)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq etcd-server etcd-client openssl >/dev/null
fi

# The venv is (re)installed whenever tests/compat/requirements.txt changes: a stamp inside
# .venv records the hash of the requirements it was installed from.
requirements=tests/compat/requirements.txt
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp=.venv/.requirements.sha256
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
    || ! .venv/bin/python -c 'import pymilvus, pytest, bcrypt, milvus_lite' 2>/dev/null; then
  echo "setup: installing $requirements into .venv (pymilvus, pytest, milvus-lite)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi
echo "setup: ready (etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'))"
