"""The admin CLI of the same binary (`credstore user ...`, `credstore health`), which talks
to a running server over the gRPC API; results are cross-checked with pymilvus. Passwords go
through the environment or standard input, never only the command line (`ps` shows it)."""

import signal
import subprocess
import time

import pytest

from conftest import ROOT_PASSWORD, ROOT_USER, T, free_port, pw, uname


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (
        f"exit {r.returncode}\nargs: {r.args}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    )
    return r


def _fails(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode != 0, f"expected failure, got exit 0\nstdout: {r.stdout}"
    assert r.stderr.strip(), "a failing command must say why on stderr"
    return r


def _names(r: subprocess.CompletedProcess):
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def test_serve_help(binary):
    r = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True,
                       timeout=30)
    _ok(r)
    assert "--config" in r.stdout and "--listen" in r.stdout, r.stdout


def test_health(server, binary):
    r = subprocess.run([str(binary), "health", "--uri", server.uri],
                       capture_output=True, text=True, timeout=30)
    _ok(r)
    dead = subprocess.run([str(binary), "health", "--uri", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode != 0, "health must fail when nothing answers"


def test_health_ready_follows_readiness(start_server, binary):
    """`health --ready` (the compose and Dockerfile probe) asks grpc.health.v1: SERVING while
    the replica serves, NOT_SERVING as soon as it drains after SIGTERM, when plain `health`
    (liveness) still answers."""
    s = start_server(overrides={"credstore": {"shutdown": {"drainMs": 4000}}})

    def health(*extra):
        return subprocess.run([str(binary), "health", "--uri", s.uri, *extra],
                              capture_output=True, text=True, timeout=30)

    _ok(health("--ready"))
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    while (r := health("--ready")).returncode == 0:
        assert time.monotonic() < deadline, "still ready after SIGTERM"
        time.sleep(0.1)
    assert "not ready: NOT_SERVING" in r.stderr, r.stderr
    _ok(health())
    assert s.proc.wait(30) == 0


def test_create_list_passwd_delete(server, clients):
    name, password = uname("cli"), pw()
    # The new password as a line of standard input, the caller's in CREDSTORE_PASSWORD.
    _ok(server.cli("user", "create", name, stdin=password + "\n"))
    assert name in _names(_ok(server.cli("user", "list")))
    assert ROOT_USER in _names(_ok(server.cli("user", "list")))
    assert clients.can_connect(server, f"{name}:{password}")
    assert name in clients.make(server).list_users(timeout=T)

    # root is a super user: no old password needed. The new one from CREDSTORE_NEW_PASSWORD.
    second = pw()
    _ok(server.cli("user", "passwd", name, env={"CREDSTORE_NEW_PASSWORD": second}))
    assert clients.can_connect(server, f"{name}:{second}")
    assert not clients.can_connect(server, f"{name}:{password}")

    # The user changes their own password, proving the old one (their own login).
    third = pw()
    _ok(server.cli("user", "passwd", name, user=name, password=second, password_via="stdin",
                   stdin=third + "\n"))
    assert clients.can_connect(server, f"{name}:{third}")
    assert not clients.can_connect(server, f"{name}:{second}")

    _ok(server.cli("user", "delete", name))
    assert name not in _names(_ok(server.cli("user", "list")))
    assert not clients.can_connect(server, f"{name}:{third}")


def test_passwords_never_need_the_command_line(server, clients):
    name, password, second = uname("cli"), pw(), pw()
    # Everything on standard input: the caller's password, then the new one.
    r = _ok(server.cli("user", "create", name, password_via="stdin", stdin=password + "\n"))
    assert password not in r.args and ROOT_PASSWORD not in r.args, r.args
    assert clients.can_connect(server, f"{name}:{password}")
    # An explicit old password from the environment.
    r = _ok(server.cli("user", "passwd", name, user=name, password=password,
                       env={"CREDSTORE_NEW_PASSWORD": second,
                            "CREDSTORE_OLD_PASSWORD": password}))
    assert not any(p in r.args for p in (password, second)), r.args
    assert clients.can_connect(server, f"{name}:{second}")
    # No password anywhere and no terminal: an error, not a login without one.
    r = _fails(server.cli("user", "list", password=None))
    assert "password" in r.stderr, r.stderr
    _ok(server.cli("user", "delete", name, password_via="stdin"))


def test_old_flags_still_work(server, clients):
    name, password = uname("cli"), pw()
    _ok(server.cli("user", "create", name, "--new-password", password, password_via="flag"))
    assert clients.can_connect(server, f"{name}:{password}")
    second = pw()
    _ok(server.cli("user", "passwd", name, "--new-password", second, "--old-password", password,
                   user=name, password=password, password_via="flag"))
    assert clients.can_connect(server, f"{name}:{second}")
    _ok(server.cli("user", "delete", name, password_via="flag"))


def test_list_prints_exactly_the_users(server, clients):
    names = {uname("cli") for _ in range(3)}
    root = clients.make(server)
    for n in names:
        root.create_user(n, pw(), timeout=T)
    listed = _names(_ok(server.cli("user", "list")))
    assert names <= set(listed)
    assert set(listed) == set(root.list_users(timeout=T))
    assert len(listed) == len(set(listed)), f"duplicates in list output: {listed}"


def test_cli_errors(server):
    name, password = uname("cli"), pw()
    # wrong admin password
    _fails(server.cli("user", "list", password="not-" + ROOT_PASSWORD))
    # invalid user name / too short password
    _fails(server.cli("user", "create", "1bad-name", stdin=pw() + "\n"))
    _fails(server.cli("user", "create", name, stdin="short\n"))
    assert name not in _names(_ok(server.cli("user", "list")))
    # duplicate
    _ok(server.cli("user", "create", name, stdin=password + "\n"))
    _fails(server.cli("user", "create", name, stdin=pw() + "\n"))
    # delete root
    _fails(server.cli("user", "delete", ROOT_USER))
    # a normal user may not list users
    _fails(server.cli("user", "list", user=name, password=password))
    # a normal user must prove the old password
    _fails(server.cli("user", "passwd", name, user=name, password=password, stdin=pw() + "\n",
                      env={"CREDSTORE_OLD_PASSWORD": "wrong-old"}))
    _ok(server.cli("user", "delete", name))


def test_cli_against_dead_server_fails(binary):
    r = subprocess.run(
        [str(binary), "user", "list", "--uri", f"http://127.0.0.1:{free_port()}",
         "--user", ROOT_USER],
        capture_output=True, text=True, timeout=60, input=ROOT_PASSWORD + "\n",
    )
    _fails(r)


def test_prompts_on_a_terminal_without_echo(server, clients, binary):
    """With a terminal on standard input and no password anywhere else, the CLI prompts for
    each password and the terminal does not echo what is typed."""
    import os
    import pty
    import select
    import termios
    import time

    name, password = uname("cli"), pw()
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDSTORE_")}
    proc = subprocess.Popen(
        [str(binary), "user", "create", name, "--uri", server.uri, "--user", ROOT_USER],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    os.close(slave)
    try:
        # Type only once the CLI has turned echo off: both lines are then taken without echo.
        deadline = time.monotonic() + 20
        while termios.tcgetattr(master)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "the CLI never turned echo off"
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        os.write(master, f"{ROOT_PASSWORD}\n{password}\n".encode())
        out, err = proc.communicate(timeout=30)
        echoed = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            echoed += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, err
    assert b"Password for root: " in err and f"New password for {name}: ".encode() in err, err
    assert ROOT_PASSWORD.encode() not in echoed and password.encode() not in echoed, echoed
    assert clients.can_connect(server, f"{name}:{password}")
    _ok(server.cli("user", "delete", name))


def test_admin_reset_root_is_an_acknowledged_change_on_every_replica(start_server, clients):
    """Break-glass: `credstore admin reset-root` sets root's password with the store's own
    credentials (no login), as an acknowledged change: once it exits 0, both running replicas
    refuse the old password and accept the new one."""
    from pymilvus.exceptions import MilvusException

    from conftest import credstore_bin

    a = start_server(super_users=None)
    b = start_server(super_users=None, config=a.config)
    for s in (a, b):
        assert ROOT_USER in clients.make(s, token=f"{ROOT_USER}:{ROOT_PASSWORD}").list_users(timeout=T)
    new = "break-glass-1"
    run = subprocess.run(
        [str(credstore_bin()), "admin", "reset-root", "--config", a.config_path],
        input=new + "\n", capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "every live replica applied it" in run.stdout
    assert new not in run.stdout + run.stderr, "the password is never echoed"
    for s in (a, b):
        with pytest.raises(MilvusException):
            clients.make(s, token=f"{ROOT_USER}:{ROOT_PASSWORD}").list_users(timeout=T)
        assert ROOT_USER in clients.make(s, token=f"{ROOT_USER}:{new}").list_users(timeout=T)
