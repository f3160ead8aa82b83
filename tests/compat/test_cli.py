"""The admin CLI of the same binary (`credstore user ...`, `credstore role ...`, `credstore
health`), which talks to a running server over the gRPC API; results are cross-checked with
pymilvus. Each command prints one line saying what it did, or an error and a non-zero exit.
Passwords go through the environment or standard input, never only the command line (`ps`
shows it). Also `credstore admin reset-root` and the embedded store it must never create or
fork: from another directory, beside a live server, and the start-up log of `serve`."""

import os
import signal
import subprocess
import time

from conftest import ROOT_PASSWORD, ROOT_USER, T, Server, free_port, pw, uname


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
    # The drain must outlast the readiness loop and the liveness call below, each a new CLI
    # process: 12 s rather than 4 s, so a starved test on a loaded 2-core machine still
    # finds the replica alive (it costs the wait for the exit).
    s = start_server(overrides={"credstore": {"shutdown": {"drainMs": 12000}}})

    def health(*extra):
        return subprocess.run([str(binary), "health", "--uri", s.uri, *extra],
                              capture_output=True, text=True, timeout=30)

    _ok(health("--ready"))
    s.proc.send_signal(signal.SIGTERM)
    # NOT_SERVING comes at once with SIGTERM; 6 s is a hang guard for a loaded machine
    # (each probe starts a process), leaving 6 s of the drain for the liveness check.
    deadline = time.monotonic() + 6
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


def _refused(r: subprocess.CompletedProcess, stderr: str) -> None:
    """The command failed with exactly `stderr`: the server's answer (a dead server gets
    "cannot reach URI")."""
    _fails(r)
    assert r.stderr == stderr + "\n", r.stderr


def test_cli_errors(server):
    name, password = uname("cli"), pw()
    _refused(server.cli("user", "list", password="not-" + ROOT_PASSWORD),
             "credstore: server refused: Unauthenticated: auth check failure, please check "
             "username and password are correct")
    _refused(server.cli("user", "create", "1bad-name", stdin=pw() + "\n"),
             "credstore: failed (code 1100): invalid user name 1bad-name, the first character "
             "must be a letter, but got 1: invalid parameter")
    _refused(server.cli("user", "create", name, stdin="short\n"),
             "credstore: failed (code 1100): invalid password length: invalid parameter[5 out "
             "of range 6 <= value <= 256]")
    assert name not in _names(_ok(server.cli("user", "list")))
    _ok(server.cli("user", "create", name, stdin=password + "\n"))
    _refused(server.cli("user", "create", name, stdin=pw() + "\n"),
             f"credstore: failed (code 1100): user already exists: {name}: invalid parameter")
    _refused(server.cli("user", "delete", ROOT_USER),
             "credstore: failed (code 1401): root user cannot be deleted: privilege not permitted")
    # a normal user may not list users
    _refused(server.cli("user", "list", user=name, password=password),
             f"credstore: server refused: PermissionDenied: PrivilegeSelectOwnership: permission "
             f"deny to {name} in the `default` database")
    # a normal user must prove the old password
    _refused(server.cli("user", "passwd", name, user=name, password=password, stdin=pw() + "\n",
                        env={"CREDSTORE_OLD_PASSWORD": "wrong-old"}),
             f"credstore: failed (code 1400): old password not correct for {name}: not "
             f"authenticated")
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
    from conftest import WRONG_PASSWORD, credstore_bin

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
        clients.refused(s, WRONG_PASSWORD, token=f"{ROOT_USER}:{ROOT_PASSWORD}")
        assert ROOT_USER in clients.make(s, token=f"{ROOT_USER}:{new}").list_users(timeout=T)


# --------------------------------------------------------------------------------------
# every command answers: one line saying what it did, or an error and a non-zero exit
# --------------------------------------------------------------------------------------


def _help_entries(binary, *path):
    """(name, description) of each subcommand `credstore PATH --help` lists."""
    r = _ok(subprocess.run([str(binary), *path, "--help"], capture_output=True, text=True,
                           timeout=30))
    entries, in_commands = [], False
    for line in r.stdout.splitlines():
        if line.strip() == "Commands:":
            in_commands = True
            continue
        if in_commands:
            if not line.startswith("  "):
                break
            name, _, description = line.strip().partition(" ")
            entries.append((name, description.strip()))
    return entries


def test_every_subcommand_has_help(binary):
    """Walks the whole command tree: every subcommand is described in its parent's help, and
    its own --help works."""
    seen, todo = [], [()]
    while todo:
        path = todo.pop()
        for name, description in _help_entries(binary, *path):
            if name == "help":
                continue
            assert description, f"`credstore {' '.join(path + (name,))}` has no help text"
            seen.append(" ".join(path + (name,)))
            todo.append(path + (name,))
    for expected in ("user create", "user passwd", "user delete", "user list", "role create",
                     "role drop", "role list", "role grant", "role revoke", "role bind",
                     "role unbind", "admin reset-root", "health", "serve"):
        assert expected in seen, (expected, seen)


def test_each_command_prints_one_line_saying_what_it_did(server, clients, binary):
    name, role = uname("cli"), uname("r")
    r = _ok(server.cli("user", "create", name, stdin=pw() + "\n"))
    assert r.stdout == f"created user {name}\n", r.stdout
    r = _ok(server.cli("user", "passwd", name, env={"CREDSTORE_NEW_PASSWORD": pw()}))
    assert r.stdout == f"changed the password of user {name}\n", r.stdout
    r = _ok(server.cli("role", "create", role))
    assert r.stdout == f"created role {role}\n", r.stdout
    r = _ok(server.cli("role", "grant", role, "Collection", "books", "Search"))
    assert r.stdout == f"granted Search on Collection books in database default to role {role}\n"
    r = _ok(server.cli("role", "grant", role, "Collection", "books", "Query", "--db", "db2"))
    assert r.stdout == f"granted Query on Collection books in database db2 to role {role}\n"
    r = _ok(server.cli("role", "bind", name, role))
    assert r.stdout == f"added user {name} to role {role}\n", r.stdout
    r = _ok(server.cli("role", "unbind", name, role))
    assert r.stdout == f"removed user {name} from role {role}\n", r.stdout
    r = _ok(server.cli("role", "revoke", role, "Collection", "books", "Search"))
    assert r.stdout == f"revoked Search on Collection books in database default from role {role}\n"
    r = _ok(server.cli("role", "drop", role, "--force"))
    assert r.stdout == f"dropped role {role} and its grants\n", r.stdout
    r = _ok(server.cli("user", "delete", name))
    assert r.stdout == f"deleted user {name}\n", r.stdout
    r = _ok(subprocess.run([str(binary), "health", "--uri", server.uri], capture_output=True,
                           text=True, timeout=30))
    assert r.stdout == f"{server.uri} answers\n", r.stdout
    r = _ok(subprocess.run([str(binary), "health", "--ready", "--uri", server.uri],
                           capture_output=True, text=True, timeout=30))
    assert r.stdout == f"{server.uri} is ready\n", r.stdout
    # CREDSTORE_URI stands for --uri.
    r = _ok(subprocess.run([str(binary), "health"], capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "CREDSTORE_URI": server.uri}))
    assert r.stdout == f"{server.uri} answers\n", r.stdout
    for r in (_ok(server.cli("user", "list")), _ok(server.cli("role", "list"))):
        assert r.stderr == "", r.stderr


def test_role_subcommands_set_up_rbac_as_pymilvus_sees_it(server, clients):
    root = clients.make(server)
    role, name, password = uname("r"), uname("cli"), pw()
    root.create_user(name, password, timeout=T)
    _ok(server.cli("role", "create", role))
    assert role in root.list_roles(timeout=T)
    assert set(_names(_ok(server.cli("role", "list")))) == set(root.list_roles(timeout=T))

    def grants():
        return {(g["object_type"], g["object_name"], g["db_name"], g["privilege"])
                for g in root.describe_role(role, timeout=T)["privileges"]}

    _ok(server.cli("role", "grant", role, "Collection", "books", "Search"))
    _ok(server.cli("role", "grant", role, "Global", "*", "CreateCollection"))
    assert grants() == {("Collection", "books", "default", "Search"),
                        ("Global", "*", "default", "CreateCollection")}
    _ok(server.cli("role", "bind", name, role))
    assert role in root.describe_user(name, timeout=T)["roles"]
    # The member holds the grant: its own roles' grants are visible to it (SelectGrant).
    me = clients.make(server, token=f"{name}:{password}")
    assert role in me.describe_user(name, timeout=T)["roles"]

    # A role with grants is dropped only with --force; refused, it changes nothing.
    _refused(server.cli("role", "drop", role),
             "credstore: failed (code 65535): fail to drop the role that it has privileges. Use "
             "REVOKE API to revoke privileges")
    assert role in root.list_roles(timeout=T)
    _ok(server.cli("role", "unbind", name, role))
    assert role not in root.describe_user(name, timeout=T)["roles"]
    _ok(server.cli("role", "revoke", role, "Collection", "books", "Search"))
    assert grants() == {("Global", "*", "default", "CreateCollection")}
    _ok(server.cli("role", "revoke", role, "Global", "*", "CreateCollection"))
    assert grants() == set()
    _ok(server.cli("role", "drop", role))
    assert role not in root.list_roles(timeout=T)


def test_role_subcommand_errors_exit_non_zero_and_change_nothing(server, clients):
    root = clients.make(server)
    role, name, password = uname("r"), uname("cli"), pw()
    root.create_user(name, password, timeout=T)
    _ok(server.cli("role", "create", role))  # the positive control, on the same server
    r = _fails(server.cli("role", "create", role))
    assert "already exist" in r.stderr, r.stderr
    r = _fails(server.cli("role", "grant", role, "Collection", "books", "NoSuchPrivilege"))
    assert "NoSuchPrivilege" in r.stderr, r.stderr
    r = _fails(server.cli("role", "grant", role, "Table", "books", "Search"))
    assert "object" in r.stderr, r.stderr
    # v1 grants take single privileges; groups go through grant_privilege_v2 (as in Milvus).
    _refused(server.cli("role", "grant", role, "Collection", "books", "CollectionReadOnly"),
             "credstore: failed (code 65535): can not operate the built-in privilege group "
             "[CollectionReadOnly]")
    assert root.describe_role(role, timeout=T)["privileges"] == []
    r = _fails(server.cli("role", "bind", uname("ghost"), role))
    assert "not found the user" in r.stderr, r.stderr
    # An ordinary user may not manage roles: refused with Milvus's text, nothing created.
    other = uname("r")
    r = _fails(server.cli("role", "create", other, user=name, password=password))
    assert "permission deny" in r.stderr, r.stderr
    assert other not in root.list_roles(timeout=T)
    r = server.cli("role", "list", password="not-" + ROOT_PASSWORD)
    _refused(r, "credstore: server refused: Unauthenticated: auth check failure, please check "
                "username and password are correct")
    assert r.stdout == ""


def test_root_changes_its_own_password_as_the_readme_says(start_server, clients):
    """`credstore user passwd root`: root's current password, then the new one (prompts on a
    terminal; here two lines of standard input)."""
    s = start_server(super_users=None)
    new = "Changed-root-1"
    r = _ok(s.cli("user", "passwd", ROOT_USER, password_via="stdin", stdin=new + "\n"))
    assert r.stdout == "changed the password of user root\n", r.stdout
    assert clients.can_connect(s, f"{ROOT_USER}:{new}")
    assert not clients.can_connect(s, f"{ROOT_USER}:{ROOT_PASSWORD}")


# --------------------------------------------------------------------------------------
# the embedded store cannot be lost or forked by accident
# --------------------------------------------------------------------------------------


def _embedded_config(**security):
    return {
        "etcd": {"use": {"embed": True}},
        "common": {"security": {"authorizationEnabled": True, **security}},
        "credstore": {
            "password": {
                "argon2": {"memoryKiB": 64, "iterations": 1, "parallelism": 1},
                "allowWeakParameters": True,
            },
            "http": {"port": 0},
            "shutdown": {"drainMs": 0},
        },
    }


def _reset_root(binary, cwd, password, *args):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CREDSTORE_", "ETCD_", "COMMON_", "PROXY_"))}
    return subprocess.run([str(binary), "admin", "reset-root", *args], cwd=str(cwd),
                          input=password + "\n", capture_output=True, text=True, timeout=60,
                          env=env)


def test_serve_logs_the_absolute_path_and_whether_it_created_the_store(tmp_path):
    first = tmp_path / "first"
    store = first / "default.etcd" / "credstore.redb"
    s = Server(_embedded_config(), str(first), name="emb")
    s.stop()
    log = s.log_text()
    created = [line for line in log.splitlines() if "created a new, empty embedded store" in line]
    assert len(created) == 1 and " WARN " in created[0], log
    assert f"at {store} " in created[0], created
    assert "root's password is `Milvus`, the default common.security.defaultRootPassword" in created[0]

    # The same directory again: opened, not created.
    s = Server(_embedded_config(), str(first), name="emb")
    s.stop()
    assert f"opened the embedded store at {store}\n" in s.log_text() + "\n", s.log_text()
    assert "created a new" not in s.log_text()

    # Another directory with its own first password: a new store, and the warning names where
    # root's password came from without printing it.
    secret = "Configured-root-1"
    other = tmp_path / "other"
    s = Server(_embedded_config(defaultRootPassword=secret), str(other), name="emb")
    s.stop()
    log = s.log_text()
    assert f"created a new, empty embedded store at {other / 'default.etcd' / 'credstore.redb'} " in log
    assert "root's password is common.security.defaultRootPassword as configured" in log
    assert secret not in log


def test_reset_root_never_creates_a_store(tmp_path, binary):
    """From a directory with no store (the server ran elsewhere): a non-zero exit naming the
    absolute path it looked at, and no store left behind — with or without the server's
    --config, whose etcd.data.dir is relative to the working directory."""
    server_dir, elsewhere = tmp_path / "server", tmp_path / "elsewhere"
    s = Server(_embedded_config(), str(server_dir), name="emb")
    s.stop()
    elsewhere.mkdir()
    for args in ((), ("--config", s.config_path)):
        r = _fails(_reset_root(binary, elsewhere, "Break-glass-1", *args))
        missing = elsewhere / "default.etcd" / "credstore.redb"
        assert f"no embedded store at {missing}: `admin reset-root` never creates one" in r.stderr
        assert r.stdout == ""
        assert not (elsewhere / "default.etcd").exists(), "reset-root created a store"
    # The positive control: in the server's directory it works.
    r = _ok(_reset_root(binary, server_dir, "Break-glass-1"))
    assert f"in the embedded store {server_dir / 'default.etcd' / 'credstore.redb'} at revision" in r.stdout


def test_reset_root_beside_a_live_embedded_server_says_what_to_do(tmp_path, binary, clients):
    workdir = tmp_path / "srv"
    store = workdir / "default.etcd" / "credstore.redb"
    s = Server(_embedded_config(), str(workdir), name="emb")
    try:
        assert clients.can_connect(s, f"{ROOT_USER}:{ROOT_PASSWORD}")
        r = _fails(_reset_root(binary, workdir, "Break-glass-2", "--config", s.config_path))
        assert f"the embedded store at {store} is held by a running `credstore serve`: " \
               "stop that server" in r.stderr, r.stderr
        assert "Database already open" not in r.stderr
        # A second server on the same store is refused the same way, not a fork.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDSTORE_")}
        second = subprocess.run(
            [str(binary), "serve", "--config", s.config_path, "--listen", "127.0.0.1:0"],
            cwd=str(workdir), capture_output=True, text=True, timeout=60, env=env,
        )
        assert second.returncode != 0, second.stderr
        assert f"embedded store at {store} failed: another process has it open" in second.stderr
        # Nothing changed, and the server still serves.
        assert clients.can_connect(s, f"{ROOT_USER}:{ROOT_PASSWORD}")
    finally:
        s.stop()
    # As the message says: with the server stopped it works, and the restarted server (same
    # store) takes the new password only.
    r = _ok(_reset_root(binary, workdir, "Break-glass-2", "--config", s.config_path))
    assert f"reset root's password in the embedded store {store} at revision" in r.stdout
    assert "Break-glass-2" not in r.stdout + r.stderr
    s = Server(_embedded_config(), str(workdir), name="emb")
    try:
        assert f"opened the embedded store at {store}" in s.log_text()
        assert clients.can_connect(s, f"{ROOT_USER}:Break-glass-2")
        assert not clients.can_connect(s, f"{ROOT_USER}:{ROOT_PASSWORD}")
    finally:
        s.stop()


def test_reset_root_refuses_an_etcd_root_path_without_root(etcd, server, tmp_path, binary):
    """With etcd, a root path no server uses (a typo in etcd.rootPath) holds no root: refused,
    naming where it looked, and nothing is written there."""
    import uuid

    from conftest import base_config, to_yaml

    root_path = f"compat-typo-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "typo.yaml"
    path.write_text(to_yaml(base_config(root_path, [etcd.endpoint])) + "\n")
    r = _fails(_reset_root(binary, tmp_path, "Break-glass-3", "--config", str(path)))
    assert f"under {root_path}/meta holds no root user" in r.stderr, r.stderr
    assert etcd.get_prefix(root_path) == {}
    # The positive control: the servers' own root path has root, and the same etcd answers.
    assert etcd.get_prefix(f"{server.root_path}/meta/root-coord/credential/users/root")
