"""Harness for the pymilvus compatibility suite.

Starts a real etcd (one per session) and real `credstore serve` processes on free
loopback ports, each with its own etcd root path, and hands the tests small helpers
for pymilvus ORM connections, MilvusClient instances, etcdctl and the admin CLI.

Nothing here is mocked: every test talks to the real binary over gRPC with the real
pymilvus client, exactly as a user would.

A negative login check asserts the refusal, never "a failure": pymilvus raises the same
MilvusException(code 2) for a wrong password and a dead server, so `refused`, `can_connect`
and `raises_refusal` check the gRPC answer behind it against a `Refusal` (code and text).
COMPAT_REFUSALS_AGAINST=killed|paused runs every such check first against a stopped server,
where it must fail (see "proving the negative checks" below).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
import pytest
from pymilvus import MilvusClient, connections
from pymilvus.exceptions import MilvusException

REPO = Path(__file__).resolve().parents[2]

# Per-RPC timeout handed to every pymilvus call. pymilvus retries UNAVAILABLE/INTERNAL/
# UNKNOWN answers for ~210 s when no timeout is given; with one, a server that wrongly
# answers with a retryable code makes the test fail in seconds instead of minutes.
T = 10

# Hard per-test ceiling, so one hung call cannot eat the whole suite's time budget.
TEST_TIMEOUT_S = int(os.environ.get("COMPAT_TEST_TIMEOUT", "90"))

READY_TIMEOUT_S = 60
ROOT_USER = "root"
ROOT_PASSWORD = "Milvus"
SUPER_USERS = "root, foo"  # with a blank after the comma on purpose (milvus#40599)
FOO_PASSWORD = "FooSecret_1"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_READY = re.compile(r"ready on (\S+)")


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def uname(prefix: str = "u") -> str:
    """A fresh, valid Milvus username (letter first, [A-Za-z0-9_] after, <= 32 bytes)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def pw(tag: str = "Pw") -> str:
    """A fresh password that is unique enough to be searched for in etcd and in logs."""
    return f"{tag}_{uuid.uuid4().hex[:12]}"


def b64(s: str) -> str:
    return base64.b64encode(s.encode("utf-8")).decode("ascii")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    if v is None:
        return "null"
    raise TypeError(f"cannot render {v!r} as YAML")


def to_yaml(d: Dict[str, Any], indent: int = 0) -> str:
    """Block-style YAML for nested dicts, the way milvus.yaml is written."""
    lines: List[str] = []
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(" " * indent + f"{k}:")
            lines.append(to_yaml(v, indent + 2))
        else:
            lines.append(" " * indent + f"{k}: {_yaml_scalar(v)}")
    return "\n".join(lines)


def base_config(
    root_path: str,
    endpoints: List[str],
    auth: bool = True,
    super_users: Optional[str] = SUPER_USERS,
) -> Dict[str, Any]:
    security: Dict[str, Any] = {
        "authorizationEnabled": auth,
        "defaultRootPassword": ROOT_PASSWORD,
    }
    if super_users is not None:
        security["superUsers"] = super_users
    return {
        "etcd": {
            "endpoints": endpoints,
            "rootPath": root_path,
            "metaSubPath": "meta",
            "use": {"embed": False},
        },
        "proxy": {
            "port": 19530,
            "maxUsernameLength": 32,
            "minPasswordLength": 6,
            "maxPasswordLength": 256,
        },
        "common": {"security": security},
        "credstore": {
            "password": {
                "algorithm": "argon2id",
                # Weak on purpose: keeps hashing in the test run cheap.
                "argon2": {"memoryKiB": 64, "iterations": 1, "parallelism": 1},
                "allowWeakParameters": True,
            },
            # No metrics port (Milvus's 9091 would clash between servers) and no drain on stop.
            "http": {"port": 0},
            "shutdown": {"drainMs": 0},
        },
    }


def credstore_bin() -> Path:
    p = Path(os.environ.get("CREDSTORE_BIN") or REPO / "target" / "debug" / "credstore")
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(
            f"credstore binary not found at {p}: build it with `cargo build` "
            f"or point CREDSTORE_BIN at it",
            pytrace=False,
        )
    return p


# --------------------------------------------------------------------------------------
# etcd
# --------------------------------------------------------------------------------------


class Etcd:
    """One real etcd on free loopback ports with a throw-away data directory."""

    def __init__(self) -> None:
        for tool in ("etcd", "etcdctl"):
            if shutil.which(tool) is None:
                pytest.fail(
                    f"`{tool}` is not on PATH: install Debian's etcd-server/etcd-client "
                    f"(scripts/setup.sh does)",
                    pytrace=False,
                )
        self.dir = tempfile.mkdtemp(prefix="credstore-compat-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "wb")
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name", "t",
                "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self._fail(f"etcd exited with {self.proc.returncode}")
            r = self.ctl("endpoint", "health", check=False, timeout=5)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                self._fail("etcd did not become healthy within 30 s")
            time.sleep(0.1)

    def _fail(self, why: str) -> None:
        self.stop()
        with open(os.path.join(self.dir, "etcd.log"), "rb") as f:
            log = f.read().decode("utf-8", "replace")[-4000:]
        pytest.fail(f"{why}\n--- etcd log ---\n{log}", pytrace=False)

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 15
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        r = subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, *args],
            capture_output=True,
            env=env,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(args)} failed ({r.returncode}): "
                f"{r.stderr.decode('utf-8', 'replace')}"
            )
        return r

    def get_prefix(self, prefix: str) -> Dict[str, bytes]:
        """All keys under prefix (\"\" = the whole keyspace), decoded from etcdctl's JSON."""
        r = self.ctl("get", "--prefix", prefix, "-w", "json")
        doc = json.loads(r.stdout)
        return {
            base64.b64decode(kv["key"]).decode("utf-8", "replace"): base64.b64decode(
                kv.get("value", "")
            )
            for kv in doc.get("kvs", [])
        }

    def get(self, key: str) -> Optional[bytes]:
        return self.get_prefix(key).get(key)

    def put(self, key: str, value: str) -> None:
        # `--` so a value can never be mistaken for a flag.
        self.ctl("put", "--", key, value)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# credstore server process
# --------------------------------------------------------------------------------------


class Server:
    """A `credstore serve` child process listening on 127.0.0.1:<free port>."""

    def __init__(
        self,
        config: Dict[str, Any],
        workdir: str,
        env: Optional[Dict[str, str]] = None,
        extra_args: Tuple[str, ...] = (),
        name: str = "credstore",
    ) -> None:
        self.bin = credstore_bin()
        self.config = config
        self.root_path: str = config.get("etcd", {}).get("rootPath", "by-dev")
        self.name = name
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config_path = os.path.join(workdir, f"{name}.yaml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(to_yaml(config) + "\n")
        self._lines: List[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._eof = threading.Event()
        self.addr: Optional[str] = None
        full_env = dict(os.environ)
        full_env.update({"NO_COLOR": "1", "RUST_BACKTRACE": "1"})
        # Never let the developer's shell leak Milvus-style overrides into a test server.
        for k in list(full_env):
            if k.startswith(("COMMON_", "ETCD_", "PROXY_", "CREDSTORE_")) and k != "CREDSTORE_BIN":
                del full_env[k]
        full_env.update(env or {})
        self.cmd = [
            str(self.bin),
            "serve",
            "--config",
            self.config_path,
            "--listen",
            "127.0.0.1:0",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=workdir,
        )
        self._reader = threading.Thread(target=self._drain, name=f"{name}-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.is_set():
            if self._eof.is_set() or self.proc.poll() is not None:
                self._reader.join(2)
                self.stop()
                pytest.fail(
                    f"credstore exited ({self.proc.returncode}) before it was ready\n"
                    f"command: {' '.join(self.cmd)}\nconfig:\n{to_yaml(config)}\n"
                    f"--- stderr ---\n{self.log_text()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"credstore did not log 'ready on' within {READY_TIMEOUT_S} s\n"
                    f"command: {' '.join(self.cmd)}\n--- stderr ---\n{self.log_text()}",
                    pytrace=False,
                )
            self._ready.wait(0.05)
        m = re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)", self.addr or "")
        assert m, f"cannot parse the address from the ready line: {self.addr!r}"
        self.host = m.group(1)
        self.port = int(m.group(2))
        self.uri = f"http://{self.host}:{self.port}"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            with self._lock:
                self._lines.append(line)
            if not self._ready.is_set() and "credstore ready on" in line:
                m = _READY.search(line)
                if m:
                    self.addr = m.group(1)
                    self._ready.set()
        self._eof.set()

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode

    # ---- the admin CLI of the same binary -------------------------------------------

    def cli(
        self,
        *args: str,
        user: Optional[str] = ROOT_USER,
        password: Optional[str] = ROOT_PASSWORD,
        timeout: float = 30,
        password_via: str = "env",
        stdin: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.CompletedProcess:
        """Runs `credstore ARGS --uri URI --user USER` with the caller's password in
        CREDSTORE_PASSWORD (`password_via="env"`), as `--password` (`"flag"`), or as the first
        line of standard input (`"stdin"`, before `stdin`). Never a terminal: nothing prompts."""
        cmd = [str(self.bin), *args, "--uri", self.uri]
        if user is not None:
            cmd += ["--user", user]
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("CREDSTORE_")}
        run_env.update(env or {})
        text = stdin or ""
        if password is not None:
            if password_via == "env":
                run_env["CREDSTORE_PASSWORD"] = password
            elif password_via == "flag":
                cmd += ["--password", password]
            elif password_via == "stdin":
                text = password + "\n" + text
            else:
                raise ValueError(password_via)
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=text, env=run_env
        )


# --------------------------------------------------------------------------------------
# error expectations
# --------------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"grpc.RpcError(code={e.code()}, details={e.details()!r})"
    if isinstance(e, MilvusException):
        return (
            f"MilvusException(code={e.code}, compatible_code={e.compatible_code}, "
            f"message={e.message!r})"
        )
    return repr(e)


# pymilvus's code for every failed Connect: a wrong password, a dead server and a timeout all
# raise MilvusException(2, "Fail connecting to server on H:P, illegal connection params or
# server unavailable"), so the code alone proves nothing; `refused` reads the gRPC answer.
CONNECT_FAILED = 2


@contextlib.contextmanager
def raises_milvus(code: int, match: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """The call must fail with a pymilvus MilvusException carrying `code`."""
    if code == CONNECT_FAILED:
        raise ValueError(
            "MilvusException code 2 is pymilvus's answer to every failed Connect, a dead "
            "server's included: assert the refusal with refused(...) or can_connect(...)"
        )
    box: Dict[str, Any] = {}
    try:
        yield box
    except (MilvusException, grpc.RpcError) as e:  # noqa: PERF203
        box["exc"] = e
        assert isinstance(e, MilvusException), (
            f"expected MilvusException(code={code}), got {_describe(e)}"
        )
        assert e.code == code, f"expected MilvusException(code={code}), got {_describe(e)}"
        if match is not None:
            assert re.search(match, e.message or ""), (
                f"message does not match /{match}/: {_describe(e)}"
            )
    else:
        pytest.fail(f"expected MilvusException(code={code}), but the call succeeded")


@contextlib.contextmanager
def raises_rpc(code: grpc.StatusCode, match: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """The call must fail with a raw grpc.RpcError whose status is `code`."""
    box: Dict[str, Any] = {}
    try:
        yield box
    except (MilvusException, grpc.RpcError) as e:  # noqa: PERF203
        box["exc"] = e
        assert isinstance(e, grpc.RpcError) and hasattr(e, "code"), (
            f"expected a raw grpc.RpcError({code}), got {_describe(e)}"
        )
        assert e.code() == code, f"expected grpc.RpcError({code}), got {_describe(e)}"
        if match is not None:
            assert re.search(match, e.details() or ""), (
                f"details do not match /{match}/: {_describe(e)}"
            )
    else:
        pytest.fail(f"expected grpc.RpcError({code}), but the call succeeded")


# --------------------------------------------------------------------------------------
# refusals: what a negative login check must see
# --------------------------------------------------------------------------------------

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED

# What a client sees when nothing answered: never a refusal, whatever the test expects.
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """How a server refuses a login: the gRPC status code and a regular expression the
    status text must match whole (credstore's texts are `auth::AuthError`'s)."""

    name: str
    code: grpc.StatusCode
    text: str

    def check(self, code: Any, details: Optional[str], what: str) -> None:
        """Fails the test unless (`code`, `details`) is this refusal. An UNAVAILABLE or
        DEADLINE_EXCEEDED that is not the expected answer says the server was unreachable."""
        details = details or ""
        if code == self.code and re.fullmatch(self.text, details, re.S):
            return
        if code in UNREACHABLE:
            pytest.fail(
                f"server unreachable: not a refusal: {what} got {code} {details!r}, "
                f"expected {self}",
                pytrace=False,
            )
        pytest.fail(f"{what}: expected {self}, got {code} {details!r}", pytrace=False)

    def __str__(self) -> str:
        return f"the {self.name} refusal ({self.code.name} /{self.text}/)"


# The gRPC code of an authenticated caller without the privilege (Milvus answers the same).
DENIED = grpc.StatusCode.PERMISSION_DENIED

WRONG_PASSWORD = Refusal(
    "wrong password", UNAUTHENTICATED,
    "auth check failure, please check username and password are correct",
)
NO_CREDENTIALS = Refusal("no credentials", UNAUTHENTICATED, "missing authorization in header")
BAD_TOKEN = Refusal("undecodable token", UNAUTHENTICATED, "invalid token format")
BAD_API_KEY = Refusal(
    "API key", UNAUTHENTICATED, "auth check failure, please check api key is correct"
)
LOCKED = Refusal(
    "locked", UNAUTHENTICATED,
    r"auth check failure: login attempts for this user from (this|every) address are locked "
    r"after too many failures; retry in [0-9]+ s or ask an administrator to unlock",
)
THROTTLED = Refusal(
    "throttled", grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too many logins of this user, or failed logins from this address, right now; "
    "retry in a moment",
)
BUSY = Refusal(
    "hashing queue full", grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too many password hash computations are waiting; retry later",
)


def grpc_cause(e: BaseException) -> Optional[grpc.RpcError]:
    """The gRPC answer behind a pymilvus exception (pymilvus raises its connect failure
    `from` the RpcError of its Connect call), or None."""
    seen = set()
    cause: Optional[BaseException] = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def check_refusal(e: BaseException, refusal: Refusal, what: str) -> None:
    """`e`, raised by a pymilvus connect (or a raw gRPC call), must be `refusal`: the
    gRPC status the server answered pymilvus's Connect with, not just code 2."""
    _Proof.refusals += 1
    rpc = grpc_cause(e)
    if rpc is None:
        pytest.fail(f"{what}: no gRPC answer behind {_describe(e)}; expected {refusal}",
                    pytrace=False)
    refusal.check(rpc.code(), rpc.details(), what)
    if isinstance(e, MilvusException):
        assert e.code == CONNECT_FAILED, f"{what}: {_describe(e)}"


@contextlib.contextmanager
def raises_refusal(refusal: Refusal, what: str = "call") -> Iterator[Dict[str, Any]]:
    """The call inside (a raw gRPC call, or a pymilvus call on a connected client, where
    pymilvus passes the RpcError up as it is) must be refused with `refusal`."""
    box: Dict[str, Any] = {}
    try:
        yield box
    except (MilvusException, grpc.RpcError) as e:  # noqa: PERF203
        box["exc"] = e
        check_refusal(e, refusal, what)
    else:
        pytest.fail(f"{what}: expected {refusal}, but the call succeeded", pytrace=False)


# ---- proving the negative checks: COMPAT_REFUSALS_AGAINST=killed|paused ------------------
#
# With the variable set, every negative login check made through `refused`, `can_connect`
# (when it is refused) or `Orm`/`Clients` is made twice: first against a stand-in server
# that was killed (SIGKILL) or paused (SIGSTOP) — that judgement must FAIL, and is recorded —
# then against the real server as usual, so the test goes on to its next check. A check that
# passes against the stand-in fails the test at once ("passed against a killed server"). The
# session's summary counts both. A call given to `refused` that connects without `Orm`,
# `Clients` or `retarget` reaches the real server in the first round, passes, and so is
# caught the same way. Raw gRPC checks (`raises_refusal`) and the CLI's are not redirected:
# test_auth_failures.py::test_the_refusal_checks_fail_when_the_server_is_down shows what a
# dead or hung server gives them.

PROOF_MODE = os.environ.get("COMPAT_REFUSALS_AGAINST", "")
if PROOF_MODE not in ("", "killed", "paused"):
    raise ValueError(f"COMPAT_REFUSALS_AGAINST must be killed or paused, not {PROOF_MODE!r}")


class _Proof:
    stand_in: Optional["Server"] = None
    redirecting = False
    refusals = 0  # refusals checked in this session (see _drop_test_users)
    failed: List[str] = []  # checks that failed against the stand-in, as they must
    passed: List[str] = []  # checks that passed against it: broken checks


def address(host: str, port: int) -> Tuple[str, int]:
    """Where a client helper connects: (host, port), or the stand-in's while a negative
    check is being proved."""
    if _Proof.redirecting:
        s = _Proof.stand_in
        assert s is not None, "proof mode without a stand-in server"
        return s.host, s.port
    return host, port


def retarget(uri: str) -> str:
    """`uri` with its host:port replaced by the stand-in's while a check is being proved."""
    if not _Proof.redirecting:
        return uri
    scheme, rest = uri.split("://", 1)
    netloc, slash, path = rest.partition("/")
    userinfo, at, _ = netloc.rpartition("@")
    host, port = address("", 0)
    return f"{scheme}://{userinfo}{at}{host}:{port}{slash}{path}"


def _attempt(call: Callable[[], Any]) -> Optional[BaseException]:
    """Runs `call`; what it raised (pymilvus or gRPC), or None if it succeeded."""
    try:
        result = call()
    except (MilvusException, grpc.RpcError) as e:
        return e
    if hasattr(result, "close"):
        with contextlib.suppress(Exception):
            result.close()
    return None


def _judge(e: Optional[BaseException], refusal: Refusal, what: str) -> None:
    if e is None:
        pytest.fail(f"{what}: expected {refusal}, but the call succeeded", pytrace=False)
    check_refusal(e, refusal, what)


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]


def _prove(call: Callable[[], Any], refusal: Refusal, what: str) -> None:
    """Proof mode: the same check against the stand-in must fail."""
    if not PROOF_MODE:
        return
    _Proof.redirecting = True
    try:
        e = _attempt(call)
    finally:
        _Proof.redirecting = False
    try:
        _judge(e, refusal, what)
    except (AssertionError, pytest.fail.Exception) as failure:
        why = str(failure).splitlines()[0]
        reason = "server unreachable" if "server unreachable" in why else why[:120]
        _Proof.failed.append(f"{_current_test()}: {what}: {reason}")
        return
    _Proof.passed.append(f"{_current_test()}: {what}")
    pytest.fail(f"{what}: the check passed against a {PROOF_MODE} server", pytrace=False)


def refused(call: Callable[[], Any], refusal: Refusal = WRONG_PASSWORD,
            what: str = "login") -> BaseException:
    """`call` (a pymilvus connect, or a raw gRPC call) must be refused with `refusal`: the
    server answered with that gRPC code and text. Returns what was raised."""
    _prove(call, refusal, what)
    e = _attempt(call)
    _judge(e, refusal, what)
    assert e is not None
    return e


# --------------------------------------------------------------------------------------
# pymilvus connection helpers
# --------------------------------------------------------------------------------------


class Orm:
    """Creates ORM (`connections`) aliases with unique names and removes them afterwards."""

    def __init__(self) -> None:
        self.aliases: List[str] = []

    def connect(
        self,
        server: Server,
        user: Optional[str] = ROOT_USER,
        password: Optional[str] = ROOT_PASSWORD,
        alias: Optional[str] = None,
        **kwargs: Any,
    ) -> str:
        alias = alias or f"a_{uuid.uuid4().hex[:10]}"
        self.aliases.append(alias)
        host, port = address(server.host, server.port)
        if "uri" in kwargs:
            kwargs["uri"] = retarget(kwargs["uri"])
        else:
            kwargs.setdefault("host", host)
            kwargs.setdefault("port", str(port))
        if user is not None:
            kwargs["user"] = user
        if password is not None:
            kwargs["password"] = password
        connections.connect(alias=alias, timeout=T, **kwargs)
        return alias

    def can_connect(
        self,
        server: Server,
        user: Optional[str],
        password: Optional[str],
        refusal: Refusal = WRONG_PASSWORD,
    ) -> bool:
        """True if connect works; False if the server refused it with `refusal` (checked on
        the gRPC answer); anything else (a dead server, another refusal) fails the test."""
        what = f"ORM connect as {user!r} to {server.name}"
        try:
            alias = self.connect(server, user, password)
        except (MilvusException, grpc.RpcError) as raised:
            e: BaseException = raised
        else:
            self.disconnect(alias)
            return True
        _prove(lambda: self.connect(server, user, password), refusal, what)
        check_refusal(e, refusal, what)
        return False

    def refused(
        self,
        server: Server,
        user: Optional[str],
        password: Optional[str],
        refusal: Refusal = WRONG_PASSWORD,
        **kwargs: Any,
    ) -> None:
        """The ORM connect must be refused with `refusal`."""
        refused(lambda: self.connect(server, user, password, **kwargs), refusal,
                f"ORM connect as {user!r} to {server.name}")

    def disconnect(self, alias: str) -> None:
        with contextlib.suppress(Exception):
            connections.remove_connection(alias)

    def close_all(self) -> None:
        for a in self.aliases:
            self.disconnect(a)


class Clients:
    """Creates dedicated MilvusClient instances (always a fresh channel and Connect)."""

    def __init__(self) -> None:
        self.clients: List[MilvusClient] = []

    def make(
        self,
        server: Server,
        token: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        anonymous: bool = False,
        **kwargs: Any,
    ) -> MilvusClient:
        """A client as root, or with `token` or `user`/`password`; `anonymous=True` sends no
        credentials at all."""
        if token is None and user is None and password is None and not anonymous:
            token = f"{ROOT_USER}:{ROOT_PASSWORD}"
        host, port = address(server.host, server.port)
        args: Dict[str, Any] = {"uri": f"http://{host}:{port}", "timeout": T, "dedicated": True}
        if token is not None:
            args["token"] = token
        if user is not None:
            args["user"] = user
        if password is not None:
            args["password"] = password
        args.update(kwargs)
        c = MilvusClient(**args)
        self.clients.append(c)
        return c

    def can_connect(
        self, server: Server, token: Optional[str], refusal: Refusal = WRONG_PASSWORD
    ) -> bool:
        """True if a MilvusClient with `token` connects; False if the server refused it with
        `refusal` (checked on the gRPC answer); anything else fails the test."""
        what = f"MilvusClient connect to {server.name}"
        connect = lambda: self.make(server, token=token if token is not None else "")  # noqa: E731
        e = _attempt(connect)
        if e is None:
            return True
        _prove(connect, refusal, what)
        check_refusal(e, refusal, what)
        return False

    def refused(self, server: Server, refusal: Refusal = WRONG_PASSWORD, **kwargs: Any) -> None:
        """A MilvusClient made with `kwargs` (see `make`) must be refused with `refusal`."""
        refused(lambda: self.make(server, **kwargs), refusal,
                f"MilvusClient connect to {server.name}")

    def close_all(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.close()


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _per_test_deadline() -> Iterator[None]:
    """Fail (instead of hang) a test that runs longer than TEST_TIMEOUT_S."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session", autouse=True)
def _refusal_stand_in(request: pytest.FixtureRequest) -> Iterator[None]:
    """In proof mode (COMPAT_REFUSALS_AGAINST), the stand-in server every negative check is
    first made against: a real `credstore serve`, killed or paused once it was ready."""
    if not PROOF_MODE:
        yield
        return
    etcd: Etcd = request.getfixturevalue("etcd")
    session_dir: str = request.getfixturevalue("session_dir")
    s = _session_server("stand-in", etcd, session_dir)
    holder: Optional[socket.socket] = None
    if PROOF_MODE == "killed":
        s.proc.kill()
        s.proc.wait(10)
        # Bound, never listening: connections are refused, and no later server gets the port.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind((s.host, s.port))
    else:
        s.proc.send_signal(signal.SIGSTOP)
    _Proof.stand_in = s
    try:
        yield
    finally:
        if holder is not None:
            holder.close()
        if PROOF_MODE == "paused":
            s.proc.send_signal(signal.SIGCONT)
        s.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not PROOF_MODE:
        return
    tr = terminalreporter
    tr.write_sep("=", f"negative checks against a {PROOF_MODE} server")
    tr.write_line(
        f"{len(_Proof.failed)} failed, as they must; {len(_Proof.passed)} passed (broken checks)"
    )
    for line in _Proof.failed:
        tr.write_line(f"  failed: {line}")
    for line in _Proof.passed:
        tr.write_line(f"  PASSED: {line}")


@pytest.fixture(scope="session")
def binary() -> Path:
    return credstore_bin()


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    e = Etcd()
    try:
        yield e
    finally:
        e.cleanup()


@pytest.fixture(scope="session")
def session_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="credstore-compat-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _session_server(name: str, etcd: Etcd, session_dir: str, **cfg: Any) -> Server:
    root = f"compat-{name}-{uuid.uuid4().hex[:8]}"
    config = base_config(root, [etcd.endpoint], **cfg)
    # Every test of the session shares this server and one address (127.0.0.1): the default
    # pace (2 failed verifications a second, 8 at once, in memory) would carry one test's
    # wrong passwords into the next as RESOURCE_EXHAUSTED. The pace is tested with its
    # defaults on servers of their own (test_apikeys, test_oidc, test_audit).
    config["credstore"]["lockout"] = {"peerFailuresPerSecond": 1000}
    return Server(config, os.path.join(session_dir, name), name=name)


@pytest.fixture(scope="session")
def server(binary: Path, etcd: Etcd, session_dir: str) -> Iterator[Server]:
    """Auth on, superUsers "root, foo", its own etcd root path."""
    s = _session_server("auth", etcd, session_dir, auth=True, super_users=SUPER_USERS)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def noauth_server(binary: Path, etcd: Etcd, session_dir: str) -> Iterator[Server]:
    """authorizationEnabled: false."""
    s = _session_server("noauth", etcd, session_dir, auth=False, super_users=SUPER_USERS)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def start_server(binary: Path, etcd: Etcd, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory for extra servers a single test needs; all are stopped at teardown.

    start_server(root_path=None, auth=True, super_users=SUPER_USERS, overrides={}, env={})
    """
    started: List[Server] = []

    def start(
        root_path: Optional[str] = None,
        auth: bool = True,
        super_users: Optional[str] = SUPER_USERS,
        overrides: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, str]] = None,
        config: Optional[Dict[str, Any]] = None,
        extra_args: Tuple[str, ...] = (),
    ) -> Server:
        if config is None:
            root = root_path or f"compat-x-{uuid.uuid4().hex[:8]}"
            config = base_config(root, [etcd.endpoint], auth=auth, super_users=super_users)
            config = deep_merge(config, overrides or {})
        name = f"srv{len(started)}"
        s = Server(config, str(tmp_path / name), env=env, extra_args=extra_args, name=name)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


class ReplicaPair:
    """Replicas A and B of one cluster (one etcd, one fresh root path `<prefix>-<hex>`) in
    front of the upstream at `upstream_uri`, with the failed-login delay off; B writes an
    audit log. `overrides` is merged into both configs (issue 19's API-key and OIDC tests)."""

    def __init__(self, etcd: Etcd, workdir: Path, upstream_uri: str, prefix: str,
                 overrides: Optional[Dict[str, Any]] = None) -> None:
        root = f"compat-{prefix}-{uuid.uuid4().hex[:8]}"
        self.audit = workdir / "b-audit.log"
        self.replicas: List[Server] = []
        for name in ("a", "b"):
            config = base_config(root, [etcd.endpoint])
            config["credstore"]["failedAuthDelayMs"] = 0
            if name == "b":
                config["credstore"]["audit"] = {"path": str(self.audit)}
            config = deep_merge(config, overrides or {})
            self.replicas.append(
                Server(config, str(workdir / name), extra_args=("--upstream", upstream_uri),
                       name=f"{prefix}-{name}")
            )
        self.a, self.b = self.replicas

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()

    def audit_reasons(self) -> List[str]:
        """The `reason` of every login_failed line B has written so far."""
        if not self.audit.exists():
            return []
        lines = [json.loads(l) for l in self.audit.read_text().splitlines() if l.strip()]
        return [l["reason"] for l in lines if l.get("event") == "login_failed"]

    def wait_for_reasons(self, wanted: List[str], within: float = 10) -> None:
        """Waits until B's audit log holds a login_failed line for each of `wanted`."""
        deadline = time.monotonic() + within
        while not set(wanted) <= set(self.audit_reasons()):
            assert time.monotonic() < deadline, (sorted(wanted), self.audit_reasons())
            time.sleep(0.1)


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[Any]:
    """A local OIDC issuer (tests/compat/oidc_issuer.py) with its JWKS served over HTTPS."""
    from oidc_issuer import Issuer  # only the OIDC and audit tests need its crypto imports

    i = Issuer(tmp_path / "issuer")
    try:
        yield i
    finally:
        i.stop()


@pytest.fixture
def orm() -> Iterator[Orm]:
    o = Orm()
    yield o
    o.close_all()


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    c.close_all()


@pytest.fixture
def root(server: Server, clients: Clients) -> MilvusClient:
    """MilvusClient(uri, token="root:Milvus") on the auth server."""
    return clients.make(server, token=f"{ROOT_USER}:{ROOT_PASSWORD}")


@pytest.fixture(autouse=True)
def _drop_test_users(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, drop the users it left on the shared session servers, so no test
    sees another's users and a Milvus-style user limit (proxy.maxUserNum) is never hit.
    Best effort: a failure here must not mask the test's own result."""
    refusals_before = _Proof.refusals
    yield
    for fixture_name in ("server", "noauth_server"):
        if fixture_name not in request.fixturenames:
            continue
        s: Server = request.getfixturevalue(fixture_name)
        if not s.alive():
            continue
        if _Proof.refusals != refusals_before:
            # Refused logins count towards root's lockout on the shared server (a cached
            # password still passes, but a wrong one would get the lock answer instead of
            # WRONG_PASSWORD in a later test): start every test from a clean count.
            with contextlib.suppress(Exception):
                s.cli("user", "unlock", ROOT_USER, timeout=T)
        c = None
        try:
            c = MilvusClient(uri=s.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T,
                             dedicated=True)
            for u in c.list_users(timeout=T):
                if u not in (ROOT_USER, "foo"):
                    c.drop_user(u, timeout=T)
            # Roles and privilege groups too: Milvus's role limit (proxy.maxRoleNum) is 10.
            for r in c.list_roles(timeout=T):
                if r not in ("admin", "public"):
                    c.drop_role(r, force_drop=True, timeout=T)
            for g in c.list_privilege_groups(timeout=T):
                name = g["privilege_group"]
                if name[0].islower():  # test groups; the built-in ones are capitalised
                    c.drop_privilege_group(name, timeout=T)
        except Exception:  # noqa: BLE001
            pass
        finally:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()


@pytest.fixture(scope="session")
def foo(server: Server) -> str:
    """Makes sure the super user `foo` (listed in superUsers, no roles) exists; its password."""
    c = MilvusClient(uri=server.uri, token=f"{ROOT_USER}:{ROOT_PASSWORD}", timeout=T, dedicated=True)
    try:
        if "foo" not in c.list_users(timeout=T):
            c.create_user("foo", FOO_PASSWORD, timeout=T)
    finally:
        c.close()
    return FOO_PASSWORD


def users_prefix(s: Server) -> str:
    return f"{s.root_path}/meta/root-coord/credential/users/"
