#!/usr/bin/env bash
# Installs what the tests need, then runs every check and test: formatting, clippy, the Rust
# unit and integration tests (real etcd processes), and the pymilvus compatibility suite
# (real `credstore serve` processes). This is the command CI runs.
#
# Every stage runs even when an earlier one failed (a Rust failure must not hide the pymilvus
# results); each prints its time, and at the end a table of the stages and the `cargo test`
# summary line of every test binary; the script fails if any stage did. Every stage has a
# time limit as a backstop (every Rust integration test has its own, see tests/common/mod.rs);
# override with CREDSTORE_{SETUP,FMT,CLIPPY,CARGO_TEST,PYTEST}_LIMIT (timeout(1) durations).
#
# Cluster tests do not race each other for CPU: within a test binary they take a
# process-wide lock (`common::cluster_test`), and cargo runs test binaries one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

# CI builds from a clean checkout: incremental state would only cost disk (gigabytes).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
setup_limit="${CREDSTORE_SETUP_LIMIT:-20m}"
fmt_limit="${CREDSTORE_FMT_LIMIT:-2m}"
clippy_limit="${CREDSTORE_CLIPPY_LIMIT:-30m}"
cargo_test_limit="${CREDSTORE_CARGO_TEST_LIMIT:-40m}"
pytest_limit="${CREDSTORE_PYTEST_LIMIT:-20m}"
test_log="$(mktemp -t credstore-cargo-test.XXXXXX)"
stages=()
failed=()
started=$SECONDS

summary() {
  local rc=$?
  if [ -s "$test_log" ]; then
    echo
    echo "== cargo test summary (one line per test binary)"
    # "Running tests/grpc.rs (target/…)" / "Running unittests src/lib.rs (…)" then its result.
    awk '/^ *Running /{target=$2; if (target=="unittests") target=$3}
         /^ *Doc-tests /{target="doc-tests " $2}
         /^test result:/{sub(/^test result: /, ""); printf "  %-28s %s\n", target, $0}' "$test_log"
  fi
  echo
  echo "== stages"
  for line in "${stages[@]}"; do echo "  $line"; done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "  failed: ${failed[*]}"
  fi
  echo "  total: $((SECONDS - started)) s, exit $rc"
  rm -f "$test_log"
}
trap summary EXIT

# stage NAME COMMAND...: runs COMMAND, prints its time, records it; fails the script if it fails.
stage() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "== $name"
  "$@" || rc=$?
  local outcome="ok"
  case $rc in
    0) ;;
    124) outcome="TIMED OUT (stage limit)" ;;
    *) outcome="FAILED (exit $rc)" ;;
  esac
  stages+=("$(printf '%-40s %5d s  %s' "$name" $((SECONDS - t0)) "$outcome")")
  echo "== $name: $((SECONDS - t0)) s, $outcome"
  return "$rc"
}

cargo_test() {
  # --no-fail-fast: one failing binary does not hide the others' results.
  timeout --kill-after=30s "$cargo_test_limit" cargo test --locked --no-fail-fast 2>&1 | tee "$test_log"
}

pytest_compat() {
  local rc=0
  CREDSTORE_BIN="$PWD/target/debug/credstore" \
    timeout --kill-after=30s "$pytest_limit" \
    .venv/bin/python -m pytest tests/compat -q -p no:cacheprovider || rc=$?
  case $rc in
    0) ;;
    1) echo "pytest: some tests failed" ;;
    5) echo "pytest: no tests were collected from tests/compat (that is a failure)" ;;
    124) echo "pytest: over its stage limit of $pytest_limit" ;;
    *) echo "pytest: could not run the suite (exit $rc: interrupted, internal or usage error)" ;;
  esac
  return "$rc"
}

# limited LIMIT COMMAND...: COMMAND under a time limit (exit 124 when over it).
limited() {
  local limit=$1
  shift
  timeout --kill-after=30s "$limit" "$@"
}

# Every stage runs; a failed one is remembered and fails the script at the end.
run_stage() {
  stage "$@" || failed+=("$1")
}

run_stage "setup" limited "$setup_limit" scripts/setup.sh
run_stage "cargo fmt" limited "$fmt_limit" cargo fmt --all -- --check
run_stage "cargo clippy" limited "$clippy_limit" cargo clippy --locked --all-targets -- -D warnings
run_stage "cargo test" cargo_test
run_stage "pymilvus compatibility (tests/compat)" pytest_compat
[ ${#failed[@]} -eq 0 ]
