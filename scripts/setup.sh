#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine with a Rust
# toolchain: etcd (Debian's etcd-server), a `protoc` for etcd-client's build script (the
# pure-Rust protox, into the git-ignored .tools/), and pymilvus in a virtualenv (.venv/).
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
  cargo install --locked --quiet --root .tools protox@0.10.0 --features bin
fi
[ "$mode" = build ] && exit 0

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing etcd-server, etcd-client and openssl (test certificates)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq etcd-server etcd-client openssl >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pymilvus, pytest, bcrypt' 2>/dev/null; then
  echo "setup: creating .venv with pymilvus"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
fi
echo "setup: ready (etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'))"
