"""The README is executable: its `sh` and `python` code blocks run in order, as a newcomer
would run them, and any error fails the block's test (one test per block, named by line).

The set-up is the one the README describes: a fresh checkout directory (the working directory
of every block) in which `target/release/credstore` is the binary under test (CREDSTORE_BIN;
`scripts/run.sh` leaves its build there) and `.venv` is the repository's virtualenv; a PATH
with no `credstore` on it until a block puts it there; a fresh embedded store served by the
real binary (the README's `scripts/run.sh` block), then the proxy tier in front of a real
`milvus-lite server` (the README's proxy blocks). Run the whole file: later blocks use what
earlier blocks set up, exactly as in a terminal.

How blocks run
- `sh` blocks run with `bash -euo pipefail` in one session: the working directory and
  exported variables carry from block to block, as in one terminal. Standard input is empty.
  A command followed by `# prints: TEXT` must print TEXT (its output lines joined by single
  spaces), where `...` in TEXT matches anything.
- `python` blocks each run in a fresh interpreter (this one, the repository's .venv), so each
  must create what it uses. A line `print(...)  # TEXT` must print TEXT, where `...` in TEXT
  matches anything.
- Other languages (`json`, `yaml`, none) are shown, never run.
- What a block leaves on the servers, later blocks see (one store throughout): examples remove
  what they create. The break-glass example in "Operate it" sets root's password to
  `Recovered-root-1` (and exports it as CREDSTORE_PASSWORD): blocks after it log in with that.
- Addresses: the README's ports are mapped to free loopback ports before a block runs, so
  the test never collides with another server: 19530 (credstore's gRPC port), 19531 (the
  upstream Milvus the proxy example starts) and 9091 (the metrics port). To match, servers
  started by background blocks get PROXY_PORT, CREDSTORE_HTTP_PORT and
  CREDSTORE_LISTENHOST=127.0.0.1, and the session has CREDSTORE_URI (the admin CLI's default
  server); nothing else in a block is changed.

Markers: an HTML comment on the line right before a fence, `<!-- readme-test: WORD ... -->`.
Use them sparingly; every one is listed in this test's output (`pytest -rs` for skips).
- `<!-- readme-test: skip (REASON) -->` — the block needs a set-up this test does not
  provide (`skip (needs etcd)`, `skip (needs docker)`, `skip (runs the whole test suite)`).
  The reason is required and is the test's skip message.
- `<!-- readme-test: background -->` — each command of the block starts a long-running
  server, as in a second terminal: it is started in the background (with the session's
  working directory and environment) and the test waits until it is ready (credstore: its
  "ready on" log line; others: their mapped port accepts connections). `scripts/run.sh ARGS`
  is run as `target/release/credstore serve ARGS`, which is what the script executes once it
  has built the binary (the build is CREDSTORE_BIN here). A credstore server replaces the
  one running before it: the README tells the user to stop it first.
- `<!-- readme-test: server stopped -->` — the README says to stop the credstore server
  before the block and to start it again after: the test stops it, runs the block, and
  starts it again with the same command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from conftest import READY_TIMEOUT_S, credstore_bin

REPO = Path(__file__).resolve().parents[2]
README = Path(os.environ.get("CREDSTORE_README") or REPO / "README.md")
BLOCK_TIMEOUT_S = 60
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip\s*\((.+)\)$")
FENCE = re.compile(r"^```\s*([A-Za-z0-9_+-]*)\s*$")
PRINT_CHECK = re.compile(r"^(\s*)print\((.*)\)\s+#\s?(.+?)\s*$")
SH_CHECK = re.compile(r"^(\S.*?)\s+# prints: (.+?)\s*$")
README_PORTS = {"grpc": 19530, "upstream": 19531, "http": 9091}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------
# the README's blocks
# --------------------------------------------------------------------------------------


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str  # "sh" or "python"
    text: str
    section: str
    marker: Optional[str]

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"L{self.line}-{self.lang}-{slug}"


def parse(markdown: str) -> List[Block]:
    """The runnable blocks, in order, with the marker right before each (if any)."""
    blocks: List[Block] = []
    lines = markdown.splitlines()
    section = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        m = FENCE.match(line)
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body: List[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        lang = RUNNABLE.get(m.group(1).lower())
        if lang is None:
            continue
        marker = None
        if start > 0:
            mm = MARKER.match(lines[start - 1].strip())
            if mm:
                marker = mm.group(1)
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", section, marker))
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))


def test_the_readme_has_runnable_blocks_and_well_formed_markers():
    assert len(BLOCKS) >= 5, f"found only {len(BLOCKS)} sh/python blocks in {README}"
    for b in BLOCKS:
        if b.marker is None:
            continue
        ok = b.marker in ("background", "server stopped") or SKIP.match(b.marker)
        assert ok, (
            f"README.md:{b.line}: unknown marker {b.marker!r}: use `skip (REASON)`, "
            f"`background` or `server stopped` (see the top of {Path(__file__).name})"
        )
    # Markers that float away from a fence would silently stop applying.
    text = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(text):
        if MARKER.match(line.strip()):
            following = text[n + 1] if n + 1 < len(text) else ""
            assert FENCE.match(following), f"README.md:{n + 1}: a marker must precede a fence"


# --------------------------------------------------------------------------------------
# the newcomer's machine: a checkout, a terminal session, background servers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def path_without_credstore(path: str) -> str:
    """PATH minus every directory holding a `credstore`: only the README may add one."""
    keep = [d for d in path.split(os.pathsep) if d and not os.path.exists(os.path.join(d, "credstore"))]
    return os.pathsep.join(keep)


@dataclass
class Background:
    command: str
    argv: List[str]
    proc: subprocess.Popen
    log: List[str] = field(default_factory=list)
    is_credstore: bool = False

    def text(self) -> str:
        return "\n".join(self.log[-200:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Session:
    """One newcomer's terminal (cwd and exported variables) plus their background servers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkout = root / "credstore"
        (self.checkout / "target" / "release").mkdir(parents=True)
        os.symlink(credstore_bin(), self.checkout / "target" / "release" / "credstore")
        venv = REPO / ".venv"
        if venv.exists():
            os.symlink(venv, self.checkout / ".venv")
        self.ports = {name: free_port() for name in README_PORTS}
        self.cwd = str(self.checkout)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COMMON_", "ETCD_", "PROXY_", "CREDSTORE_", "PYTEST_"))
        }
        env["PATH"] = path_without_credstore(env.get("PATH", "/usr/bin:/bin"))
        env["NO_COLOR"] = "1"
        env["CREDSTORE_URI"] = f"http://127.0.0.1:{self.ports['grpc']}"
        env["HOME"] = str(root / "home")
        (root / "home").mkdir()
        self.env = env
        self.background: List[Background] = []
        self.server: Optional[Background] = None
        self.state = root / "state"

    # ---- text ------------------------------------------------------------------------

    def map_ports(self, text: str) -> str:
        for name, readme_port in README_PORTS.items():
            text = re.sub(rf"\b{readme_port}\b", str(self.ports[name]), text)
        return text

    # ---- sh --------------------------------------------------------------------------

    def sh_source(self, block: Block) -> str:
        """The block, each `COMMAND  # prints: TEXT` line turned into a check of its output."""
        out = []
        for n, line in enumerate(self.map_ports(block.text).splitlines()):
            m = SH_CHECK.match(line)
            if m:
                command, expected = m.groups()
                glob = "*".join(shlex.quote(part) for part in " ".join(expected.split()).split("..."))
                where = f"README.md:{block.line + 1 + n}"
                line = (
                    f"__out=$({command})\n"
                    'printf "%s\\n" "$__out"\n'
                    '__got=$(printf "%s" "$__out" | tr -s " \\n" "  " | sed "s/ *$//")\n'
                    f'[[ "$__got" == {glob} ]] || {{ echo "{where}: printed \'$__got\'," '
                    f"{shlex.quote('the README says ' + repr(expected))} >&2; exit 1; }}"
                )
            out.append(line)
        return "\n".join(out) + "\n"

    def run_block(self, argv: List[str]) -> subprocess.CompletedProcess:
        """Runs one block's script in the session's directory and environment."""
        return subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )

    def run_sh(self, block: Block) -> subprocess.CompletedProcess:
        script = self.root / f"block-{block.line}.sh"
        state_env, state_cwd = self.state.with_suffix(".env"), self.state.with_suffix(".cwd")
        script.write_text(
            "set -euo pipefail\n"
            f"{self.sh_source(block)}"
            f"env -0 > {shlex.quote(str(state_env))}\n"
            f"pwd > {shlex.quote(str(state_cwd))}\n",
            encoding="utf-8",
        )
        r = self.run_block(["bash", str(script)])
        if r.returncode == 0:
            env = {}
            for item in state_env.read_bytes().decode("utf-8", "replace").split("\0"):
                if "=" in item:
                    k, v = item.split("=", 1)
                    if k not in ("_", "SHLVL", "PWD", "OLDPWD"):
                        env[k] = v
            self.env = env
            self.cwd = state_cwd.read_text(encoding="utf-8").strip()
        return r

    # ---- python ----------------------------------------------------------------------

    def run_python(self, block: Block) -> subprocess.CompletedProcess:
        source = [
            "def __readme_print(line, expected, *args, **kwargs):",
            "    import re",
            "    print(*args, **kwargs)",
            "    got = ' '.join(str(a) for a in args)",
            "    pattern = '.*'.join(re.escape(p) for p in expected.split('...'))",
            "    if not re.fullmatch(pattern, got, re.S):",
            "        raise AssertionError(",
            "            f'README.md:{line}: printed {got!r}, the README says {expected!r}')",
        ]
        for n, line in enumerate(self.map_ports(block.text).splitlines()):
            m = PRINT_CHECK.match(line)
            if m:
                indent, args, expected = m.groups()
                line = f"{indent}__readme_print({block.line + 1 + n}, {expected!r}, {args})"
            source.append(line)
        script = self.root / f"block-{block.line}.py"
        script.write_text("\n".join(source) + "\n", encoding="utf-8")
        return self.run_block([sys.executable, str(script)])

    # ---- background servers ----------------------------------------------------------

    def start_background(self, block: Block) -> None:
        text = self.map_ports(block.text).replace("\\\n", " ")
        for raw in text.splitlines():
            command = raw.split(" #", 1)[0].strip()
            if not command or command.startswith("#"):
                continue
            self.start(command)

    def start(self, command: str) -> Background:
        argv = shlex.split(command)
        if argv and argv[0] == "scripts/run.sh":
            argv = ["target/release/credstore", "serve", *argv[1:]]
        is_credstore = bool(argv) and (
            Path(argv[0]).name == "credstore" or argv[0].endswith("/credstore")
        )
        if is_credstore and self.server is not None:
            self.server.stop()
            self.background.remove(self.server)
            self.server = None
        env = dict(self.env)
        if is_credstore:
            env.update(
                PROXY_PORT=str(self.ports["grpc"]),
                CREDSTORE_HTTP_PORT=str(self.ports["http"]),
                CREDSTORE_LISTENHOST="127.0.0.1",
            )
        executable = argv[0]
        if "/" in executable:
            executable = str(Path(self.cwd) / executable)
        else:
            executable = shutil.which(executable, path=env.get("PATH")) or executable
        proc = subprocess.Popen(
            [executable, *argv[1:]],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        bg = Background(command, argv, proc, is_credstore=is_credstore)
        ready = threading.Event()

        def drain() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                bg.log.append(line)
                if is_credstore and "credstore ready on" in line:
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        self.background.append(bg)
        if is_credstore:
            self.server = bg
        ports = [p for p in self.ports.values() if re.search(rf"\b{p}\b", command)]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if is_credstore and ready.is_set():
                return bg
            if not is_credstore and ports and listening(ports[0]):
                return bg
            if proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(
                    f"`{command}` exited with {proc.returncode} before it was ready\n{bg.text()}"
                )
            if not is_credstore and not ports:
                raise AssertionError(f"cannot tell when `{command}` is ready: it names no port")
            if time.monotonic() > deadline:
                raise AssertionError(f"`{command}` was not ready within {READY_TIMEOUT_S} s\n{bg.text()}")
            time.sleep(0.1)

    def restart_server(self, command: str) -> None:
        self.start(command)

    def close(self) -> None:
        for bg in reversed(self.background):
            bg.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    root = Path(tempfile.mkdtemp(prefix="credstore-readme-"))
    s = Session(root)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def _logs(session: Session) -> str:
    out = []
    for bg in session.background:
        out.append(f"--- background `{bg.command}` (exit {bg.proc.poll()}) ---\n{bg.text()}")
    return "\n".join(out)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, session: Session):
    marker = block.marker or ""
    skip = SKIP.match(marker)
    if skip:
        pytest.skip(f"README.md:{block.line}: {skip.group(1)}")
    if marker == "background":
        assert block.lang == "sh", f"README.md:{block.line}: only sh blocks run in the background"
        session.start_background(block)
        return
    restart = None
    if marker == "server stopped":
        assert session.server is not None, f"README.md:{block.line}: no server is running"
        restart = session.server.command
        session.server.stop()
        session.background.remove(session.server)
        session.server = None
    r = session.run_sh(block) if block.lang == "sh" else session.run_python(block)
    if restart is not None:
        session.restart_server(restart)
    assert r.returncode == 0, (
        f"README.md:{block.line} ({block.section}, {block.lang}) failed with exit "
        f"{r.returncode}\n--- block ---\n{block.text}--- stdout ---\n{r.stdout}"
        f"--- stderr ---\n{r.stderr}\n{_logs(session)}"
    )
