"""``libc-service learn``: a starting policy from one observed run, which ``run --sandbox`` accepts."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import errno
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libc_service.tools.learn import Learned, narrowest, render_policy
from libc_service.tools.learnt_source import read as read_policy
from libc_service.seccomp.availability import seccomp_unavailable
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from nameserver import Nameserver, nameserver  # noqa: F401 - nameserver is a fixture
from shimtools import needs_shim

SCRIPT = "cat data/a.txt > out/out.txt && cat data/b.txt data/c.txt >> out/out.txt && ls data && cat out/out.txt"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **(env or {})},
    )


def test_busy_directories_merge_and_shallow_ones_do_not() -> None:
    used = [
        "/opt/app/lib/a.py",
        "/opt/app/lib/b.py",
        "/opt/app/lib/c.py",
        "/etc/passwd",
        "/etc/group",
        "/etc/hosts",
        "/opt/app/lib/sub/d.py",
    ]
    assert narrowest(used) == ["/etc/group", "/etc/hosts", "/etc/passwd", "/opt/app/lib"]


def test_the_written_policy_is_a_module_with_the_learnt_lists(tmp_path: Path) -> None:
    learned = Learned(read={"/opt/x/a"}, written={str(tmp_path / "out.txt")}, executed={"/usr/bin/cat"})
    namespace: dict[str, object] = {}
    exec(compile(render_policy(learned, ["cat", "a b"]), "policy.py", "exec"), namespace)  # noqa: S102
    sandbox = namespace["sandbox"]
    assert sandbox.allow_read == ("/opt/x/a",)  # type: ignore[attr-defined]
    assert sandbox.allow_write == (str(tmp_path),)  # type: ignore[attr-defined]
    assert sandbox.allow_exec == ("/usr/bin/cat",)  # type: ignore[attr-defined]
    assert sandbox.network is False  # type: ignore[attr-defined]


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_a_learnt_policy_lets_the_same_run_succeed_under_the_sandbox_and_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    for name in "abc":
        (tmp_path / "data" / f"{name}.txt").write_text(f"{name}\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    learnt = cli("learn", "-o", "policy.py", "--", "sh", "-c", SCRIPT, cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout == "a.txt\nb.txt\nc.txt\na\nb\nc\n"
    assert "wrote policy.py" in learnt.stderr
    (tmp_path / "out" / "out.txt").unlink()

    again = cli("run", "--sandbox", "policy.py", "--", "sh", "-c", SCRIPT, cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, learnt.stdout), again.stderr
    outside = cli("run", "--sandbox", "policy.py", "--", "cat", "secret.txt", cwd=tmp_path)
    assert outside.returncode != 0  # never read while learning: not granted


def _learn_then_run(
    tmp_path: Path, argv: list[str], reset: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    learnt = cli("learn", "-o", "policy.py", "--", *argv, cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    if reset:
        subprocess.run(reset, cwd=tmp_path, check=True)
    again = cli("run", "--sandbox", "policy.py", "--", *argv, cwd=tmp_path)
    return learnt, again


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
@pytest.mark.skipif(not all(map(Path("/usr/bin").joinpath, ("make", "cc"))), reason="no make or cc")
def test_make_of_a_small_c_project_runs_identically_under_its_learnt_policy(tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("%d\\n", add(2, 3)); return 0; }\n'
    )
    (tmp_path / "add.c").write_text("int add(int a, int b) { return a + b; }\n")
    (tmp_path / "Makefile").write_text("prog: main.o add.o\n\tcc -o prog main.o add.o\n%.o: %.c\n\tcc -c -o $@ $<\n")
    learnt, again = _learn_then_run(tmp_path, ["make"], reset=["rm", "-f", "prog", "main.o", "add.o"])
    assert (again.returncode, again.stdout) == (0, learnt.stdout), again.stderr
    # The linker's chmod of its output went through the master: the program is executable.
    assert subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, check=True).stdout == "5\n"
    assert "METADATA_TREES" in (tmp_path / "policy.py").read_text()


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
@pytest.mark.skipif(not Path("/usr/bin/git").exists(), reason="no git")
def test_git_runs_identically_under_its_learnt_policy(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=Learner", "-c", "user.email=l@example.test", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    (tmp_path / "a.txt").write_text("changed\n")
    command = ["git", "-c", "core.pager=cat", "log", "--format=%an %s"]
    learnt, again = _learn_then_run(tmp_path, command)
    assert (again.returncode, again.stdout) == (0, learnt.stdout) == (0, "Learner first\n"), again.stderr
    status_learnt, status_again = _learn_then_run(tmp_path, ["git", "status", "--porcelain"])
    assert (status_again.returncode, status_again.stdout) == (0, status_learnt.stdout), status_again.stderr
    assert status_again.stdout == " M a.txt\n?? policy.py\n"  # loading the policy left no __pycache__


def test_a_directory_the_run_created_and_removed_is_named_by_where_it_was_made(tmp_path: Path) -> None:
    learned = Learned()
    learned.changed.add(str(tmp_path / "pip-target-x8k2" / "lib" / "INSTALLER"))
    learned.written.add(str(tmp_path / "cc1234.d" / "main.o"))
    assert learned.metadata_trees() == [str(tmp_path)]
    assert learned.sandbox_arguments()["allow_write"] == [str(tmp_path)]
    (tmp_path / "kept").mkdir()
    learned.changed = {str(tmp_path / "kept" / "prog")}
    assert learned.metadata_trees() == [str(tmp_path / "kept")]


# ------------------------------------------------ the policy is a faithful literal

#: The module's statements, in order, with the names they bind: nothing else may appear.
EXPECTED_STATEMENTS = [
    ("Expr", None),  # the docstring
    ("Import", None),
    ("ImportFrom", None),
    ("Assign", "LEARNT_FROM"),
    ("Assign", "LEARNT_CALLS"),
    ("Assign", "NOT_GRANTED"),
    ("Assign", "sandbox"),
    ("Assign", "NAMESERVERS"),
    ("Assign", "router"),
    ("Assign", "CONNECTS"),
    ("FunctionDef", "connect"),
    ("Assign", "BINDS"),
    ("FunctionDef", "bind"),
    ("Assign", "NAMES"),
    ("FunctionDef", "look_up"),
    ("Assign", "RESOLVED"),
    ("FunctionDef", "any_resolved"),
    ("FunctionDef", "connect_by_name"),
    ("Assign", "METADATA_TREES"),
    ("FunctionDef", "change_metadata"),
]


def _statements(tree: ast.Module) -> list[tuple[str, str | None]]:
    shape: list[tuple[str, str | None]] = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            [target] = node.targets
            assert isinstance(target, ast.Name)
            shape.append(("Assign", target.id))
        elif isinstance(node, ast.FunctionDef):
            shape.append(("FunctionDef", node.name))
        else:
            shape.append((type(node).__name__, None))
    return shape


def _without_literals(tree: ast.Module) -> str:
    """The module with every list emptied and the docstring and counts blanked: its code alone."""
    tree = copy.deepcopy(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.List):
            node.elts = []
    tree.body[0] = ast.Expr(ast.Constant(""))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            node.value = ast.Constant(0)
    return ast.dump(tree)


def _literal(tree: ast.Module, name: str) -> Any:
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name:
            if name == "sandbox":
                assert isinstance(node.value, ast.Call)
                return {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.value.keywords}
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} in the policy")


def _benign(tag: str = "a") -> Learned:
    return Learned(
        read={f"/opt/{tag}/r"},
        written={f"/opt/{tag}/w/x"},
        executed={f"/opt/{tag}/bin"},
        changed={f"/opt/{tag}/m/x"},
        skipped={f"/proc/1/{tag}"},
        connects={("127.0.0.1", 80)},
        binds={("::1", 0)},
        names={f"{tag}.example"},
        resolved={(f"{tag}.example", 443)},
        nameservers=["127.0.0.1:5353"],
        commands=[[tag]],
        calls=3,
    )


#: The code of a policy with every section, whatever the names: what every policy's code must equal.
CODE = _without_literals(ast.parse(render_policy(_benign())))

#: A name component as a slave may choose it: any bytes but "/" and NUL.
components = st.binary(min_size=1, max_size=12).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b"..")
)
#: An absolute path beneath a directory that does not exist, so nothing is merged away or found.
paths = st.lists(components, min_size=1, max_size=3).map(
    lambda parts: os.fsdecode(b"/nonexistent-learn-root/" + b"/".join(parts))
)
texts = st.text(min_size=1, max_size=20)


@pytest.fixture(scope="module")
def learn_root(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A directory where the written and changed files of the property test exist (as they did for learn)."""
    return os.fsencode(tmp_path_factory.mktemp("learnt"))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    read=paths,
    written=components,
    executed=paths,
    changed=components,
    skipped=paths,
    name=texts.filter(lambda name: "*" not in name),
    port=st.integers(0, 65535),
    nameserver=texts,
    command=st.lists(texts | components.map(os.fsdecode), min_size=1, max_size=3),
)
def test_every_name_is_written_as_a_literal_that_reads_back_as_itself(
    learn_root: bytes,
    read: str,
    written: bytes,
    executed: str,
    changed: bytes,
    skipped: str,
    name: str,
    port: int,
    nameserver: str,
    command: list[str],
) -> None:
    made = []
    for component in (written, b"sub-" + changed):
        path = os.path.join(learn_root, component)
        os.makedirs(path, exist_ok=True)  # a file's name, or a directory whose files changed
        made.append(os.fsdecode(path))
    learned = Learned(
        read={read},
        modified={made[0]},
        executed={executed},
        changed={made[1] + "/f"},
        skipped={"/proc/" + skipped},
        connects={("127.0.0.1", 80)},
        binds={("::1", 0)},
        names={name},
        resolved={(name, port)},
        nameservers=[nameserver],
        calls=7,
    )
    source = render_policy(learned, command)
    tree = ast.parse(source)  # whatever the names, the output is Python
    assert _statements(tree) == EXPECTED_STATEMENTS
    assert _without_literals(tree) == CODE  # no code but the policy's own
    lists = learned.sandbox_arguments()
    sandbox = _literal(tree, "sandbox")
    assert sandbox == {**lists, "network": False}
    assert sandbox["allow_exec"] == [executed]
    assert sandbox["allow_write"] == [made[0]]
    assert os.fsencode(sandbox["allow_write"][0]) == os.path.join(learn_root, written)
    assert _literal(tree, "METADATA_TREES") == [made[1]]
    assert [os.fsencode(path) for path in sandbox["allow_read"] + sandbox["allow_write"]] == [
        os.fsencode(path) for path in lists["allow_read"] + lists["allow_write"]
    ]
    assert _literal(tree, "NOT_GRANTED") == ["/proc/" + skipped]
    assert _literal(tree, "NAMES") == [name]
    assert _literal(tree, "RESOLVED") == [f"{name}:{port}"]
    assert _literal(tree, "NAMESERVERS") == [nameserver]
    assert _literal(tree, "LEARNT_FROM") == [command]
    assert _literal(tree, "METADATA_TREES") == learned.metadata_trees()
    # Comments hold fixed text: every comment line is one of the policy's own.
    assert {line for line in source.splitlines() if line.lstrip().startswith("#")} <= COMMENTS
    # What learn --append reads back is what was written.
    again = read_policy(source)
    assert again.sandbox_arguments() == lists
    assert again.commands == [command]
    assert (again.names, again.connects, again.binds) == (learned.names, learned.connects, learned.binds)
    assert (again.resolved, again.nameservers) == (learned.resolved, learned.nameservers)


#: Every comment line a policy may hold (the broad-tree comments sit beside a literal, not on a line of their own).
COMMENTS = {
    line
    for line in render_policy(dataclasses.replace(_benign(), unnamed=2)).splitlines()
    if line.lstrip().startswith("#")
}


def test_a_name_with_a_newline_and_code_stays_a_string(tmp_path: Path) -> None:
    evil = "/tmp/x\nimport os; os.system('touch pwned')\n#"
    source = render_policy(Learned(read={evil}, skipped={"/proc/1/fd/3/" + evil}), ["x"])
    namespace: dict[str, object] = {}
    exec(compile(source, "policy.py", "exec"), namespace)  # noqa: S102 - proving the policy is inert
    assert namespace["sandbox"].allow_read == (evil,)  # type: ignore[attr-defined]
    assert namespace["NOT_GRANTED"] == ["/proc/1/fd/3/" + evil]
    # A look-up learn records resolved, so it was a host name; were it not, it stays a string,
    # which named() refuses when the policy loads.
    name = "a'\"\\\n"
    source = render_policy(Learned(names={name}, resolved={(name, 80)}), ["x"])
    assert _literal(ast.parse(source), "NAMES") == [name]
    assert _literal(ast.parse(source), "RESOLVED") == [f"{name}:80"]
    with pytest.raises(ValueError, match="is not a name pattern"):
        exec(compile(source, "policy.py", "exec"), {})  # noqa: S102 - proving the policy is inert
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# ------------------------------------------------------ as the program's author would attack it

#: A file name that is a line of Python when it lands raw in the policy.
EVIL_NAME = "x\n__import__('pathlib').Path('PWNED').touch()\n#"
#: The slave opens it through its own descriptor 200, which the master does not have.
THROUGH_PROC_SELF = (
    "import os, sys\n"
    "os.dup2(os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY), 200)\n"
    "print(open('/proc/self/fd/200/' + sys.argv[2]).read(), end='')\n"
)


def _covered(path: str, granted: Any) -> bool:
    """Whether ``path`` is granted itself or beneath a granted directory."""
    return any(path == tree or path.startswith(tree.rstrip("/") + "/") for tree in granted)


@needs_shim
def test_a_name_opened_through_proc_self_fd_becomes_a_literal_and_loading_the_policy_runs_nothing(
    tmp_path: Path,
) -> None:
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / EVIL_NAME).write_text("bait\n")
    learnt = cli(
        "learn",
        "-o",
        "policy.py",
        "--",
        sys.executable,
        "-S",
        "-c",
        THROUGH_PROC_SELF,
        str(trap),
        EVIL_NAME,
        cwd=tmp_path,
    )
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout == "bait\n"
    # Loading the policy, as `run` and `docs` do, executes nothing of the name.
    docs = cli("docs", "policy.py", cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert docs.returncode == 0, docs.stderr
    source = (tmp_path / "policy.py").read_text()
    assert "\n__import__" not in source
    namespace: dict[str, Any] = {}
    exec(compile(source, "policy.py", "exec"), namespace)  # noqa: S102 - proving the policy is inert
    assert not (tmp_path / "PWNED").exists()
    # The name is resolved as the slave meant it: its descriptor 200, not the master's (the file is
    # granted itself, or with a directory the run listed; never through /proc).
    granted = namespace["sandbox"].allow_read
    assert _covered(str(trap / EVIL_NAME), granted), granted
    assert not any(path.startswith("/proc/") for path in granted), granted


@needs_shim
def test_a_name_that_is_not_utf8_is_granted_by_its_exact_bytes(tmp_path: Path) -> None:
    """Byte 0xff in a name the program opened (through its own descriptor) and in its arguments."""
    name = b"caf\xe9-\xff"
    (tmp_path / os.fsdecode(name)).write_bytes(b"latin\n")
    learnt = cli(
        "learn",
        "-o",
        "policy.py",
        "--",
        sys.executable,
        "-S",
        "-c",
        THROUGH_PROC_SELF,
        str(tmp_path),
        os.fsdecode(name),
        cwd=tmp_path,
    )
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout == "latin\n"
    source = (tmp_path / "policy.py").read_text(encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, "policy.py", "exec"), namespace)  # noqa: S102 - the policy learn wrote
    granted = [os.fsencode(path) for path in namespace["sandbox"].allow_read]
    target = os.fsencode(tmp_path) + b"/" + name
    assert any(target == path or target.startswith(path + b"/") for path in granted), granted
    assert target in granted or os.fsencode(tmp_path) in granted  # its exact bytes, or the directory listed
    assert os.fsencode(namespace["LEARNT_FROM"][0][-1]) == name


# ------------------------------------------------------------- narrow grants, said aloud


def _load(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - the policy learn wrote
    return namespace


@needs_shim
def test_a_file_written_in_place_is_granted_alone_and_a_home_only_with_a_warning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".history").write_text("old\n")
    env = {"HOME": str(home)}
    appended = cli("learn", "-o", "policy.py", "--", "sh", "-c", 'echo new >> "$HOME/.history"', cwd=tmp_path, env=env)
    assert appended.returncode == 0, appended.stderr
    assert _load(tmp_path / "policy.py")["sandbox"].allow_write == (str(home / ".history"),)
    assert "warning" not in appended.stderr

    created = cli("learn", "-o", "policy.py", "--", "sh", "-c", 'echo new > "$HOME/made.txt"', cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    policy = tmp_path / "policy.py"
    assert _load(policy)["sandbox"].allow_write == (str(home),)
    assert f"libc-service: warning: the policy grants {home} whole: a whole home directory" in created.stderr
    assert f"    {str(home)!r},  # a whole home directory: keys, tokens and history included\n" in policy.read_text()


def test_shared_trees_granted_whole_carry_a_comment_that_says_so() -> None:
    learned = Learned(read={"/etc"}, written={"/tmp/cc1234.o"}, listed={"/"})
    source = render_policy(learned, ["cc"])
    assert "    '/tmp',  # a whole shared temporary directory" in source
    assert "    '/',  # the whole file system\n" in source
    assert [tree for tree, _ in learned.broad()] == ["/", "/tmp"]
    assert narrowest(["/home/me/a", "/home/me/b", "/home/me/c"]) == ["/home/me/a", "/home/me/b", "/home/me/c"]


def test_the_commented_example_runs_when_uncommented(tmp_path: Path) -> None:
    source = render_policy(Learned(read={"/opt/x"}), ["x"])
    example = source.index("# @router.on(")
    uncommented = source[:example] + "\n".join(
        line.removeprefix("# ") for line in source[example:].splitlines() if line.startswith("# ")
    )
    namespace: dict[str, Any] = {}
    exec(compile(uncommented + "\n", "policy.py", "exec"), namespace)  # noqa: S102 - the policy learn wrote
    assert [route.name for route in namespace["router"].routes()] == ["serve"]


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_the_network_is_the_addresses_and_ports_the_run_used(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as other:
        port, other_port = server.getsockname()[1], other.getsockname()[1]
        client = (
            "import socket, sys\n"
            "with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10) as s:\n"
            "    print('connected')\n"
            "b = socket.socket(); b.bind(('127.0.0.1', 0)); b.close()\n"
        )
        argv = [sys.executable, "-S", "-c", client]
        learnt = cli("learn", "-o", "policy.py", "--", *argv, str(port), cwd=tmp_path)
        assert learnt.returncode == 0, learnt.stderr
        assert "1 connect, 1 bind, 0 name rule(s)" in learnt.stderr
        policy = _load(tmp_path / "policy.py")
        assert policy["CONNECTS"] == [f"127.0.0.1:{port}"]
        assert policy["BINDS"] == ["127.0.0.1:0"]
        assert policy["sandbox"].network is False

        again = cli("run", "--sandbox", "policy.py", "--", *argv, str(port), cwd=tmp_path)
        assert (again.returncode, again.stdout) == (0, "connected\n"), again.stderr
        elsewhere = cli("run", "--sandbox", "policy.py", "--", *argv, str(other_port), cwd=tmp_path)
        assert elsewhere.returncode != 0 and "connected" not in elsewhere.stdout


def _a_name_of_etc_hosts() -> tuple[str, set[str]] | None:
    """A host name ``/etc/hosts`` gives (the master's resolver reads it, no nameserver asked), and its addresses."""
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return None
    found: dict[str, set[str]] = {}
    for line in lines:
        address, *hosts = line.split("#", 1)[0].split() or [""]
        for host in hosts:
            if ":" not in address and "*" not in host:
                found.setdefault(host, set()).add(address)
    return next(iter(found.items()), None)


@needs_shim
def test_the_names_a_run_looks_up_are_learnt(tmp_path: Path) -> None:
    """The run being learnt is the user's own and unconfined: the master resolves every name it looks up
    (no policy's patterns limit it yet), and the policy names them."""
    entry = _a_name_of_etc_hosts()
    if entry is None:
        pytest.skip("/etc/hosts names no IPv4 host")
    name, addresses = entry
    program = "import socket, sys\nprint(socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)[0][4][0])\n"
    learnt = cli("learn", "-o", "policy.py", "--", sys.executable, "-S", "-c", program, name, cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout.strip() in addresses
    assert "1 name rule(s)" in learnt.stderr
    assert _load(tmp_path / "policy.py")["NAMES"] == [name]


#: Arguments after the port: a name is looked up, an address connected to; prints a JSON list.
LOOK_UP_AND_CONNECT = """
import json, socket, sys
port = int(sys.argv[1])
out = []
for arg in sys.argv[2:]:
    if arg[0].isdigit():
        try:
            with socket.create_connection((arg, port), timeout=30):
                out.append("connected")
        except OSError as exc:
            out.append(exc.errno)
    else:
        try:
            out.append(sorted({info[4][0] for info in socket.getaddrinfo(arg, port, type=socket.SOCK_STREAM)}))
        except socket.gaierror as exc:
            out.append(exc.errno)
print(json.dumps(out))
"""


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_a_connection_to_an_address_the_master_resolved_is_learnt_as_its_name(
    tmp_path: Path, nameserver: Nameserver
) -> None:
    """The connect to what index.pkg.test resolved to becomes resolved("index.pkg.test", ports=[PORT]);
    the connect to an address no answer gave stays an address rule."""
    nameserver.zone["index.pkg.test"] = (["127.0.0.1"], 300)
    nameserver.zone["other.pkg.test"] = (["127.0.0.1"], 300)
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = str(server.getsockname()[1])
        argv = [sys.executable, "-S", "-c", LOOK_UP_AND_CONNECT, port]
        learning = ["learn", "--nameserver", nameserver.address, "-o", "policy.py", "--"]
        learnt = cli(*learning, *argv, "index.pkg.test", "127.0.0.1", "127.0.0.2", cwd=tmp_path)
        assert learnt.returncode == 0, learnt.stderr
        assert json.loads(learnt.stdout) == [["127.0.0.1"], "connected", "connected"]
        assert "1 connect, 0 bind, 1 name rule(s), 1 connect(s) by name" in learnt.stderr
        policy = _load(tmp_path / "policy.py")
        assert policy["RESOLVED"] == [f"index.pkg.test:{port}"]
        assert policy["NAMES"] == ["index.pkg.test"]
        assert policy["CONNECTS"] == [f"127.0.0.2:{port}"]  # no answer gave it
        assert policy["NAMESERVERS"] == [nameserver.address]

        again = cli("run", "--sandbox", "policy.py", "--", *argv, "index.pkg.test", "127.0.0.1", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == [["127.0.0.1"], "connected"]
        # Another name: not looked up by the master (the program's own look-up has no network), and
        # its address is no name's answer in this run: the sandbox refuses the connect (Landlock's
        # EACCES where it rules TCP, else the empty network's ECONNREFUSED).
        other = cli("run", "--sandbox", "policy.py", "--", *argv, "other.pkg.test", "127.0.0.1", cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        looked_up, connected = json.loads(other.stdout)
        assert looked_up in (socket.EAI_NONAME, socket.EAI_AGAIN)
        assert connected == (errno.EACCES if landlock_abi() >= 4 else errno.ECONNREFUSED)
        assert not nameserver.asked("other")

        # --append keeps the name rules and the nameserver, and adds the new run's.
        nameserver.zone["mirror.pkg.test"] = (["127.0.0.3"], 300)
        appended = cli(
            "learn", "--append", "-o", "policy.py", "--", *argv, "mirror.pkg.test", "127.0.0.3", cwd=tmp_path
        )
        assert appended.returncode == 0, appended.stderr
        policy = _load(tmp_path / "policy.py")
        assert policy["RESOLVED"] == [f"index.pkg.test:{port}", f"mirror.pkg.test:{port}"]
        assert policy["NAMES"] == ["index.pkg.test", "mirror.pkg.test"]
        assert policy["CONNECTS"] == [f"127.0.0.2:{port}"]
        assert policy["NAMESERVERS"] == [nameserver.address]


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_append_merges_a_second_run_into_the_policy(tmp_path: Path) -> None:
    for name in ("one.txt", "two.txt"):
        (tmp_path / name).write_text(f"{name}\n")
    first = cli("learn", "--append", "-o", "policy.py", "--", "cat", "one.txt", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = cli("learn", "--append", "-o", "policy.py", "--", "cat", "two.txt", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "(2 runs)" in second.stderr
    policy = _load(tmp_path / "policy.py")
    assert policy["LEARNT_FROM"] == [["cat", "one.txt"], ["cat", "two.txt"]]
    assert {str(tmp_path / "one.txt"), str(tmp_path / "two.txt")} <= set(policy["sandbox"].allow_read)
    for name in ("one.txt", "two.txt"):
        again = cli("run", "--sandbox", "policy.py", "--", "cat", name, cwd=tmp_path)
        assert (again.returncode, again.stdout) == (0, f"{name}\n"), again.stderr

    (tmp_path / "mine.py").write_text("from libc_service import Router\nrouter = Router()\n")
    refused = cli("learn", "--append", "-o", "mine.py", "--", "true", cwd=tmp_path)
    assert refused.returncode == 2
    assert "cannot add to mine.py: it has no LEARNT_FROM" in refused.stderr
    assert (tmp_path / "mine.py").read_text() == "from libc_service import Router\nrouter = Router()\n"


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_the_learnt_metadata_handler_acts_beneath_its_trees(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    (tmp_path / "outside").write_text("x")
    (tmp_path / "outside").chmod(0o644)
    learnt = cli("learn", "-o", "policy.py", "--", "chmod", "640", "tree/f", cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    (tree / "link").symlink_to(tmp_path / "outside")
    through = cli("run", "--sandbox", "policy.py", "--", "chmod", "600", "tree/link", cwd=tmp_path)
    assert through.returncode != 0
    assert stat.S_IMODE((tmp_path / "outside").stat().st_mode) == 0o644  # a symlink out of the tree is refused
    inside = cli("run", "--sandbox", "policy.py", "--", "chmod", "600", "tree/f", cwd=tmp_path)
    assert inside.returncode == 0, inside.stderr
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o600


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(seccomp_unavailable() is not None, reason=str(seccomp_unavailable()))
def test_learn_seccomp_sees_what_the_program_opens(tmp_path: Path) -> None:
    (tmp_path / "seen.txt").write_text("seen\n")
    learnt = cli("learn", "--seccomp", "-o", "policy.py", "--", "cat", "seen.txt", cwd=tmp_path)
    assert (learnt.returncode, learnt.stdout) == (0, "seen\n"), learnt.stderr
    assert str(tmp_path / "seen.txt") in _load(tmp_path / "policy.py")["sandbox"].allow_read


# ---------------------------------------------------------------- the documented commands

CLI_PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _learning_commands() -> list[str]:
    section = CLI_PAGE.read_text().split("## Learning a policy\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    return [line for line in block.splitlines() if line.strip()]


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_the_learning_example_of_the_cli_page_runs_verbatim(tmp_path: Path) -> None:
    scripts = Path(sys.executable).parent
    if not (scripts / "libc-service").exists():
        pytest.skip(f"no libc-service script next to {sys.executable} (pip install the package)")
    commands = _learning_commands()
    assert any("--append" in command for command in commands)
    for command in commands:
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=tmp_path,
            env={"PATH": f"{scripts}:/usr/bin:/bin", "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
    assert done.stdout == "hello\n"
    policy = _load(tmp_path / "policy.py")
    assert policy["LEARNT_FROM"] == [["cat", "notes.txt"], ["ls"]]


def test_a_failed_write_leaves_the_policy_as_it_was(tmp_path: Path) -> None:
    from libc_service.tools.cli_output import write_output

    policy = tmp_path / "policy.py"
    policy.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_output(str(policy), "new\udcff\n", source=True)  # text that cannot be written
    assert policy.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["policy.py"]


@needs_shim
def test_a_policy_written_to_stdout_is_utf8_whatever_the_terminal(tmp_path: Path) -> None:
    name = "caf\u00e9-\u6f22"
    (tmp_path / name).write_text("x\n")
    learnt = subprocess.run(
        [sys.executable, "-m", "libc_service", "learn", "--", "cat", name],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PYTHONIOENCODING": "ascii"},
    )
    assert learnt.returncode == 0, learnt.stderr
    source = learnt.stdout.removeprefix(b"x\n").decode("utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, "policy.py", "exec"), namespace)  # noqa: S102 - the policy learn wrote
    assert str(tmp_path / name) in namespace["sandbox"].allow_read
