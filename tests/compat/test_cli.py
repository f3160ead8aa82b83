"""The admin CLI of the same binary (`credstore user ...`, `credstore health`), which talks
to a running server over the gRPC API; results are cross-checked with pymilvus."""

import subprocess

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


def test_create_list_passwd_delete(server, clients):
    name, password = uname("cli"), pw()
    _ok(server.cli("user", "create", name, "--new-password", password))
    assert name in _names(_ok(server.cli("user", "list")))
    assert ROOT_USER in _names(_ok(server.cli("user", "list")))
    assert clients.can_connect(server, f"{name}:{password}")
    assert name in clients.make(server).list_users(timeout=T)

    # root is a super user: no old password needed.
    second = pw()
    _ok(server.cli("user", "passwd", name, "--new-password", second))
    assert clients.can_connect(server, f"{name}:{second}")
    assert not clients.can_connect(server, f"{name}:{password}")

    # The user changes their own password, proving the old one.
    third = pw()
    _ok(server.cli("user", "passwd", name, "--new-password", third, "--old-password", second,
                   user=name, password=second))
    assert clients.can_connect(server, f"{name}:{third}")
    assert not clients.can_connect(server, f"{name}:{second}")

    _ok(server.cli("user", "delete", name))
    assert name not in _names(_ok(server.cli("user", "list")))
    assert not clients.can_connect(server, f"{name}:{third}")


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
    _fails(server.cli("user", "create", "1bad-name", "--new-password", pw()))
    _fails(server.cli("user", "create", name, "--new-password", "short"))
    assert name not in _names(_ok(server.cli("user", "list")))
    # duplicate
    _ok(server.cli("user", "create", name, "--new-password", password))
    _fails(server.cli("user", "create", name, "--new-password", pw()))
    # delete root
    _fails(server.cli("user", "delete", ROOT_USER))
    # a normal user may not list users
    _fails(server.cli("user", "list", user=name, password=password))
    # a normal user must prove the old password
    _fails(server.cli("user", "passwd", name, "--new-password", pw(), "--old-password",
                      "wrong-old", user=name, password=password))
    _ok(server.cli("user", "delete", name))


def test_cli_against_dead_server_fails(binary):
    r = subprocess.run(
        [str(binary), "user", "list", "--uri", f"http://127.0.0.1:{free_port()}",
         "--user", ROOT_USER, "--password", ROOT_PASSWORD],
        capture_output=True, text=True, timeout=60,
    )
    _fails(r)
