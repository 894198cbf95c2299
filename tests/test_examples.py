"""Every example policy, run with real programs under the real shim.

Each test loads ``examples/NAME.py`` the way ``libc-service run`` does
(``load_policy``, with the example's environment variables set first) and
runs an unmodified program as its slave through ``spawn()``. The sandboxed
variants run only where the kernel has Landlock and skip with the reason
otherwise.

The commands the documentation tells a reader to type are run too, verbatim,
by ``sh`` in a copy of the checkout, and must exit 0. Which lines are such
commands is a convention of the sources: every indented line of an
example's module docstring (its "Run it" block), and every line but
comments of a ```` ```sh ```` block in ``README.md`` and
``docs/quickstart.md``. Set-up commands (venv, pip) and usage synopses sit
in plain ```` ``` ```` blocks and are not run.
"""

from __future__ import annotations

import ast
import asyncio
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from libc_service import Router, Sandbox, spawn
from libc_service.tools.docs import render_policy
from libc_service.tools.policy_file import LoadedPolicy, load_policy
from libc_service.confinement.sandbox import network_namespaces_available
from libc_service.processes.spawn_launch import ShimNotFound, shim_path

from nameserver import Nameserver, nameserver  # noqa: F401 - nameserver is a fixture

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLES = REPOSITORY / "examples"
#: A real Python binary (not a pyenv or wrapper script).
PYTHON = os.path.realpath(sys.executable)


def _shim_missing() -> str | None:
    try:
        shim_path()
    except ShimNotFound as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_shim_missing() is not None, reason=f"the preload shim is not built: {_shim_missing()}"),
]

#: The examples' sandboxes all take the network away, so they need network namespaces too.
_SANDBOX_MISSING = Sandbox.available() or network_namespaces_available()
needs_sandbox = pytest.mark.skipif(_SANDBOX_MISSING is not None, reason=f"no Landlock sandbox here: {_SANDBOX_MISSING}")


def needs(program: str) -> str:
    """The program's path, or skip the test saying which program is missing."""
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed")
    return found


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> LoadedPolicy:
    """Load ``examples/NAME.py`` as ``libc-service run`` does, with ``env`` set while it imports."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_policy(str(EXAMPLES / f"{name}.py"))


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str


async def run(
    argv: Sequence[str],
    router: Router,
    *,
    sandbox: Sandbox | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Ran:
    """Run ``argv`` as a slave of ``router`` and collect its status and output."""
    full_env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": os.environ.get("HOME", "/")}
    full_env.update(env or {})
    async with spawn(
        argv,
        router,
        sandbox=sandbox,
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        status = await process.wait()
    return Ran(status, (out or b"").decode(), (err or b"").decode())


def test_every_example_says_how_to_run_it_and_documents_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    names = sorted(path.stem for path in EXAMPLES.glob("*.py"))
    assert names == ["asyncio_server", "audit_jsonl", "fake_dns", "net_allowlist", "readonly_tree"]
    for name in names:
        policy = load_example(name, monkeypatch)
        header = policy.module.__doc__ or ""
        assert "Run it" in header and f"examples/{name}.py" in header, name
        page = render_policy(policy, fmt="md")
        assert page.startswith(f"# Policy `{name}.py`"), name
    assert not (tmp_path / "audit.jsonl").exists(), "documenting the audit policy created its log"


# ------------------------------------------------------------- readonly_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("inside the tree\n")
    (root / "sub" / "b.txt").write_text("deeper\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root.resolve()


async def test_readonly_tree_reads_files_beneath_the_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree))
    ran = await run(["cat", "a.txt", str(tree / "sub" / "b.txt")], policy.router, cwd=tree)
    assert (ran.status, ran.out) == (0, "inside the tree\ndeeper\n")
    ran = await run(["stat", "-c", "%s %F", "sub/b.txt"], policy.router, cwd=tree)
    assert (ran.status, ran.out) == (0, "7 regular file\n")


async def test_readonly_tree_refuses_what_lies_outside_even_through_a_symlink(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree))
    ran = await run(["cat", str(tree.parent / "secret.txt")], policy.router, cwd=tree)
    assert ran.status == 1 and "Permission denied" in ran.err
    ran = await run(["cat", "escape"], policy.router, cwd=tree)
    assert ran.status == 1 and "escape: Permission denied" in ran.err
    assert "outside" not in ran.out


async def test_readonly_tree_refuses_writes_with_erofs(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree))
    ran = await run(["touch", "new.txt"], policy.router, cwd=tree)
    assert ran.status == 1 and "Read-only file system" in ran.err
    ran = await run(["sh", "-c", "echo overwritten > a.txt"], policy.router, cwd=tree)
    assert ran.status != 0 and "Read-only file system" in ran.err
    ran = await run(["mkdir", "newdir"], policy.router, cwd=tree)
    assert ran.status == 1 and "Read-only file system" in ran.err
    ran = await run(["rm", "a.txt"], policy.router, cwd=tree)
    assert ran.status == 1 and "Read-only file system" in ran.err
    assert not (tree / "new.txt").exists() and not (tree / "newdir").exists()
    assert (tree / "a.txt").read_text() == "inside the tree\n"


@needs_sandbox
async def test_readonly_tree_sandboxed_gets_files_only_from_the_master(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree), PATH="/usr/bin:/bin")
    assert isinstance(policy.sandbox, Sandbox)
    assert policy.sandbox.allow_exec == ("/usr/bin", "/bin") and not policy.sandbox.allow_write
    ran = await run(["cat", "a.txt"], policy.router, sandbox=policy.sandbox, cwd=tree)
    assert (ran.status, ran.out) == (0, "inside the tree\n")
    # ls lists the directory with opendir(), which asks the master as an open of a directory:
    # the policy opens it beneath the root; outside the root it refuses.
    ran = await run(["ls", str(tree)], policy.router, sandbox=policy.sandbox, cwd=tree)
    assert (ran.status, ran.out) == (0, "a.txt\nescape\nsub\n")
    ran = await run(["ls", str(tree.parent)], policy.router, sandbox=policy.sandbox, cwd=tree)
    assert ran.status != 0 and "Permission denied" in ran.err


async def test_readonly_tree_lets_a_shell_find_its_programs_on_path(
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree), PATH="/usr/bin:/bin")
    script = "ls; cat a.txt; touch new.txt || echo refused"
    for sandbox in (None, policy.sandbox) if _SANDBOX_MISSING is None else (None,):
        ran = await run(["sh", "-c", script], policy.router, sandbox=sandbox, cwd=tree)
        assert (ran.status, ran.out) == (0, "a.txt\nescape\nsub\ninside the tree\nrefused\n"), (sandbox, ran.err)
        assert "Read-only file system" in ran.err and not (tree / "new.txt").exists()
    # A PATH directory that contains the tree is not granted: it would expose the tree past the master.
    wide = load_example("readonly_tree", monkeypatch, LIBC_SERVICE_ROOT=str(tree), PATH=f"{tree.parent}:/usr/bin")
    assert wide.module.PROGRAMS == ("/usr/bin",)


# ------------------------------------------------------------------ fake_dns


async def test_fake_dns_answers_getent_from_the_table_with_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    needs("getent")
    policy = load_example("fake_dns", monkeypatch)
    ran = await run(["getent", "ahosts", "api.internal"], policy.router)
    assert ran.status == 0, ran.err
    addresses = {line.split()[0] for line in ran.out.splitlines()}
    assert addresses == {"10.0.0.6", "fd00::6"}
    ran = await run(["getent", "ahostsv4", "API.Internal."], policy.router)
    assert {line.split()[0] for line in ran.out.splitlines()} == {"10.0.0.6"}


async def test_fake_dns_says_noname_for_everything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    needs("getent")
    policy = load_example("fake_dns", monkeypatch)
    ran = await run(["getent", "ahosts", "example.com"], policy.router)
    assert (ran.status, ran.out) == (2, "")  # getent: key not found


async def test_fake_dns_python_getaddrinfo_gets_ports_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_example("fake_dns", monkeypatch, LIBC_SERVICE_HOSTS="extra.test=192.0.2.7")
    code = (
        "import json, socket\n"
        "out = {}\n"
        "out['api'] = sorted({i[4][:2] for i in socket.getaddrinfo('api.internal', 'https')})\n"
        "out['extra'] = [i[4] for i in socket.getaddrinfo('extra.test', 8080, type=socket.SOCK_STREAM)]\n"
        "for name, service in (('example.com', 80), ('db.internal', 'no-such-service')):\n"
        "    try:\n"
        "        socket.getaddrinfo(name, service)\n"
        "    except socket.gaierror as exc:\n"
        "        out[name] = exc.errno\n"
        "print(json.dumps(out))\n"
    )
    ran = await run([PYTHON, "-c", code], policy.router)
    assert ran.status == 0, ran.err
    got = json.loads(ran.out)
    assert got["api"] == [["10.0.0.6", 443], ["fd00::6", 443]]
    assert got["extra"] == [["192.0.2.7", 8080]]
    assert got["example.com"] == socket.EAI_NONAME
    assert got["db.internal"] == socket.EAI_SERVICE


# ------------------------------------------------------------- net_allowlist


@pytest.fixture
async def listeners() -> AsyncIterator[tuple[int, int]]:
    """Two TCP listeners on 127.0.0.1, each greeting with its own word."""

    def greeter(word: bytes) -> Any:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(word)
            await writer.drain()
            writer.close()

        return greet

    allowed = await asyncio.start_server(greeter(b"allowed"), "127.0.0.1", 0)
    other = await asyncio.start_server(greeter(b"other"), "127.0.0.1", 0)
    try:
        yield allowed.sockets[0].getsockname()[1], other.sockets[0].getsockname()[1]
    finally:
        for server in (allowed, other):
            server.close()
            await server.wait_closed()


_CONNECT = (
    "import json, socket, sys\n"
    "out = {}\n"
    "for host, port in ((sys.argv[1], int(sys.argv[2])), ('127.0.0.1', int(sys.argv[3]))):\n"
    "    s = socket.socket()\n"
    "    try:\n"
    "        s.connect((host, port))\n"
    "        out[str(port)] = s.recv(100).decode()\n"
    "    except OSError as exc:\n"
    "        out[str(port)] = exc.errno\n"
    "    finally:\n"
    "        s.close()\n"
    "print(json.dumps(out))\n"
)


async def test_net_allowlist_connects_by_name_and_not_to_the_bare_address(
    listeners: tuple[int, int],
    nameserver: Nameserver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed, other = listeners
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    policy = load_example(
        "net_allowlist",
        monkeypatch,
        LIBC_SERVICE_ALLOW=f"allowed.test:{allowed}",
        LIBC_SERVICE_NAMESERVERS=nameserver.address,
    )
    ran = await run([PYTHON, "-c", _CONNECT, "allowed.test", str(allowed), str(other)], policy.router)
    assert ran.status == 0, ran.err
    # the second listener is on the very address the name gave, but the policy refuses it
    assert json.loads(ran.out) == {str(allowed): "allowed", str(other): errno.ECONNREFUSED}
    # the address alone, never returned for the name in this run, is refused too
    ran = await run([PYTHON, "-c", _CONNECT, "127.0.0.1", str(allowed), str(other)], policy.router)
    assert json.loads(ran.out) == {str(allowed): errno.ECONNREFUSED, str(other): errno.ECONNREFUSED}


async def test_net_allowlist_still_takes_addresses(listeners: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, other = listeners
    policy = load_example("net_allowlist", monkeypatch, LIBC_SERVICE_ALLOW=f"127.0.0.1:{allowed}")
    ran = await run([PYTHON, "-c", _CONNECT, "127.0.0.1", str(allowed), str(other)], policy.router)
    assert ran.status == 0, ran.err
    assert json.loads(ran.out) == {str(allowed): "allowed", str(other): errno.ECONNREFUSED}


_LOOKUP = (
    "import socket, sys\n"
    "try:\n"
    "    socket.getaddrinfo(sys.argv[1], 443)\n"
    "except socket.gaierror as exc:\n"
    "    print(exc.errno)\n"
)


def _demo_index(root: Path) -> None:
    """A package index with one wheel, laid out as pip's simple API reads it."""
    import zipfile

    wheel = root / "files" / "demo_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    meta = "demo_pkg-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
        archive.writestr(f"{meta}/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
        archive.writestr(
            f"{meta}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(
            f"{meta}/RECORD", f"demo_pkg/__init__.py,,\n{meta}/METADATA,,\n{meta}/WHEEL,,\n{meta}/RECORD,,\n"
        )
    page = root / "simple" / "demo-pkg" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/{wheel.name}">{wheel.name}</a>\n')


async def test_net_allowlist_lets_pip_download_from_an_index_by_name_and_nothing_else(
    tmp_path: Path, nameserver: Nameserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import http.server
    import threading

    _demo_index(tmp_path / "index")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    nameserver.zone["index.pkg.test"] = (["127.0.0.1"], 300)
    nameserver.zone["pypi.org"] = (["127.0.0.1"], 300)
    try:
        policy = load_example(
            "net_allowlist",
            monkeypatch,
            LIBC_SERVICE_ALLOW=f"*.pkg.test:{port}",
            LIBC_SERVICE_NAMESERVERS=nameserver.address,
        )
        pip = [PYTHON, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir"]
        pip += ["--disable-pip-version-check", "--trusted-host", "index.pkg.test"]
        pip += ["--index-url", f"http://index.pkg.test:{port}/simple/"]
        ran = await run([*pip, "-d", str(tmp_path / "got"), "demo-pkg"], policy.router)
        assert ran.status == 0, ran.out + ran.err
        assert [path.name for path in (tmp_path / "got").iterdir()] == ["demo_pkg-1.0-py3-none-any.whl"]
        ran = await run([PYTHON, "-c", _LOOKUP, "pypi.org"], policy.router)
        assert ran.out.split() == [str(socket.EAI_NONAME)]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert ("index.pkg.test", "A") in nameserver.log
    assert not nameserver.asked("pypi.org")


@needs_sandbox
async def test_net_allowlist_sandboxed_slave_without_a_network_still_reaches_listed_names(
    listeners: tuple[int, int],
    nameserver: Nameserver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no python3 in /usr/bin or /bin (the sandbox lets the slave run only system programs)")
    allowed, other = listeners
    nameserver.zone["allowed.test"] = (["127.0.0.1"], 300)
    policy = load_example(
        "net_allowlist",
        monkeypatch,
        LIBC_SERVICE_ALLOW=f"allowed.test:{allowed}",
        LIBC_SERVICE_NAMESERVERS=nameserver.address,
    )
    ran = await run(
        [system_python, "-c", _CONNECT, "allowed.test", str(allowed), str(other)],
        policy.router,
        sandbox=policy.sandbox,
    )
    assert ran.status == 0, ran.err
    assert json.loads(ran.out) == {str(allowed): "allowed", str(other): errno.ECONNREFUSED}
    # On its own, the sandboxed slave has no network at all.
    own = await run(
        [system_python, "-c", f"import socket; socket.create_connection(('127.0.0.1', {allowed}))"],
        Router(),
        sandbox=policy.sandbox,
    )
    assert own.status != 0


# --------------------------------------------------------------- audit_jsonl


async def test_audit_jsonl_writes_every_decision_as_a_json_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "audit.jsonl"
    (tmp_path / "read-me").write_text("hello\n")
    (tmp_path / "keep-me").write_text("")
    policy = load_example("audit_jsonl", monkeypatch, LIBC_SERVICE_AUDIT=str(log))
    assert not log.exists()
    ran = await run(["sh", "-c", "cat read-me; rm keep-me"], policy.router, cwd=tmp_path)
    policy.module.audit.close()
    assert ran.out == "hello\n" and "Operation not permitted" in ran.err
    assert (tmp_path / "keep-me").exists()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keys = {
        "pid",
        "tid",
        "function",
        "arguments",
        "route",
        "decision",
        "result",
        "errno",
        "errno_name",
        "fds",
        "latency_us",
        "session",
        "transport",
    }
    assert records and all(set(record) == keys for record in records)
    opened = [r for r in records if r["function"] in ("open", "openat") and r["arguments"]["path"] == "read-me"]
    assert opened and opened[0]["decision"] == "forward" and opened[0]["route"] == "default"
    unlinked = [r for r in records if r["function"] == "unlink"]
    assert len(unlinked) == 1
    assert unlinked[0] | {"pid": 0, "tid": 0, "latency_us": 0, "session": ""} == {
        "pid": 0,
        "tid": 0,
        "function": "unlink",
        "arguments": {"path": "keep-me"},
        "route": "no_deletes",
        "decision": "error",
        "result": -1,
        "errno": 1,
        "errno_name": "EPERM",
        "fds": 0,
        "latency_us": 0,
        "session": "",
        "transport": "shim",
    }
    assert len({r["pid"] for r in records}) >= 2  # sh and its children, each its own session


# ------------------------------------------------------------ asyncio_server


@pytest.fixture
def jobs(tmp_path: Path) -> list[Path]:
    directories = []
    for name in ("alpha", "beta", "gamma"):
        directory = tmp_path / "jobs" / name
        directory.mkdir(parents=True)
        (directory / "data.txt").write_text(f"data of {name}\n")
        directories.append(directory.resolve())
    return directories


def _job(directory: Path) -> dict[str, Any]:
    # Reads its own file, tries a neighbour's and a write, then stays a while so jobs overlap.
    script = "cat data.txt; cat ../beta/data.txt; echo x > out.txt; sleep 2"
    return {"job": directory.name, "directory": str(directory), "argv": ["sh", "-c", script]}


def _check_report(report: dict[str, Any]) -> None:
    name = report["job"]
    assert report["stdout"].startswith(f"data of {name}\n")
    decisions = report["decisions"]
    own = [d for d in decisions if d["function"] in ("open", "openat") and d["arguments"]["path"] == "data.txt"]
    assert own and own[0]["route"] == "JobPolicy.read_job_files" and own[0]["decision"] == "reply"
    neighbour = [d for d in decisions if d["arguments"].get("path") == "../beta/data.txt"]
    # Refused to every job, beta too: its path climbs out of its directory before it comes back.
    assert neighbour[0]["errno_name"] == "EACCES" and "Permission denied" in report["stderr"]
    assert neighbour[0]["route"] == ("JobPolicy.refuse_climbing" if name == "beta" else "default")
    assert report["stdout"] == f"data of {name}\n"
    write = [d for d in decisions if d["arguments"].get("path") == "out.txt"]
    assert write[0]["route"] == "JobPolicy.refuse_writes" and write[0]["errno_name"] == "EROFS"
    assert report["summary"]["reply"] >= 1 and report["summary"]["error"] >= 1


async def _start_server(socket_path: Path, *extra: str) -> asyncio.subprocess.Process:
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "asyncio_server.py"),
        "serve",
        str(socket_path),
        *extra,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if server.returncode is not None or time.monotonic() > deadline:
            if server.returncode is None:
                server.kill()
            _, err = await server.communicate()
            pytest.fail(f"the job server did not start: {err.decode()}")
        await asyncio.sleep(0.05)
    return server


async def test_asyncio_server_runs_each_job_under_its_own_policy_all_at_once(
    jobs: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    module: ModuleType = load_example("asyncio_server", monkeypatch).module
    socket_path = tmp_path / "jobs.sock"
    server = await _start_server(socket_path)
    try:
        reports = await asyncio.wait_for(module.submit(str(socket_path), [_job(d) for d in jobs]), 60)
    finally:
        server.terminate()
        await server.wait()
    assert [report["job"] for report in reports] == ["alpha", "beta", "gamma"]
    for report in reports:
        _check_report(report)
    # Three jobs of two seconds each, submitted at once, on one loop: they overlapped.
    assert max(report["concurrent_jobs"] for report in reports) >= 2, [r["concurrent_jobs"] for r in reports]
    assert all(report["sandboxed"] is (report["sandbox_unavailable"] is None) for report in reports)
    assert all(report["sandboxed"] is (_SANDBOX_MISSING is None) for report in reports)


@needs_sandbox
async def test_asyncio_server_workers_are_sandboxed(jobs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    module: ModuleType = load_example("asyncio_server", monkeypatch).module
    # ls lists its directory with opendir(), which asks the master: the job's policy opens
    # it beneath the job's directory, and refuses another job's (the sandbox refuses the
    # worker's own attempt).
    listing = module.Job("alpha", str(jobs[0]), ["ls"])
    sandboxed = await module.JobServer().run_job(listing)
    assert sandboxed["sandboxed"] is True
    assert (sandboxed["status"], sandboxed["stdout"]) == (0, "data.txt\n")
    other = await module.JobServer().run_job(module.Job("alpha", str(jobs[0]), ["ls", str(jobs[1])]))
    assert other["status"] != 0 and "Permission denied" in other["stderr"]
    plain = await module.JobServer(use_sandbox=False).run_job(listing)
    assert plain["sandboxed"] is False
    assert (plain["status"], plain["stdout"]) == (0, "data.txt\n")


async def test_asyncio_server_reports_a_bad_job_without_running_anything(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    socket_path = tmp_path / "jobs.sock"
    server = await _start_server(socket_path, "--no-sandbox")
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(b'{"directory": "/nonexistent-dir", "argv": ["true"]}\nnot json\n')
        await writer.drain()
        first = json.loads(await reader.readline())
        second = json.loads(await reader.readline())
        writer.close()
    finally:
        server.terminate()
        await server.wait()
    assert first == {"error": '"directory" must name a directory'}
    assert "error" in second


# ------------------------------------------------- the documented commands, verbatim

#: Pages whose ```sh blocks are commands to run.
RUNNABLE_PAGES = ("README.md", "docs/quickstart.md")
#: Programs some commands run that a machine may lack.
OPTIONAL_PROGRAMS = ("curl", "getent")


def documented_commands() -> dict[str, list[str]]:
    """Each source (an example, a page) with its commands, in the order a reader meets them."""
    sources: dict[str, list[str]] = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        header = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        sources[f"examples/{path.name}"] = [line[4:] for line in header.splitlines() if line.startswith("    ")]
    for name in RUNNABLE_PAGES:
        blocks = re.findall(r"^```sh\n(.*?)^```", (REPOSITORY / name).read_text(), flags=re.MULTILINE | re.DOTALL)
        sources[name] = [
            line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")
        ]
    return sources


def _missing_feature(command: str) -> str | None:
    """Why ``command`` cannot run on this machine, or ``None``."""
    if "--sandbox" in command and _SANDBOX_MISSING is not None:
        return f"no Landlock sandbox here: {_SANDBOX_MISSING}"
    for program in OPTIONAL_PROGRAMS:
        if re.search(rf"(^|[\s'\"]){program}\s", command) and shutil.which(program) is None:
            return f"{program} is not installed"
    return None


def _fresh_checkout(directory: Path) -> Path:
    """What the commands read of a checkout — examples, README.md, docs pages — copied into ``directory``.

    A copy, so a command that writes (an audit log, ``-o policy.json``)
    leaves the repository alone, and so the tree ``readonly_tree`` serves
    holds real files, not symlinks leading out of it.
    """
    shutil.copytree(EXAMPLES, directory / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "docs").mkdir()
    for page in (REPOSITORY / "docs").glob("*.md"):
        shutil.copy(page, directory / "docs" / page.name)
    shutil.copy(REPOSITORY / "README.md", directory / "README.md")
    return directory


def test_the_convention_finds_the_commands_of_every_source() -> None:
    sources = documented_commands()
    assert set(sources) == {f"examples/{path.name}" for path in EXAMPLES.glob("*.py")} | set(RUNNABLE_PAGES)
    for source, commands in sources.items():
        assert commands, f"{source} shows no command to run"
        assert all(not command.startswith((" ", "pip ", "python3 -m venv")) for command in commands), source
    assert "libc-service docs examples/readonly_tree.py" in sources["examples/readonly_tree.py"]


def _seccomp_missing() -> str | None:
    from libc_service.seccomp.availability import seccomp_unavailable

    return seccomp_unavailable()


@pytest.mark.parametrize("transport", ["shim", "seccomp"])
@pytest.mark.parametrize("source", sorted(documented_commands()))
def test_every_documented_command_runs_verbatim_and_exits_0(source: str, transport: str, tmp_path: Path) -> None:
    """Each example's commands as written — and, with ``--seccomp`` added to every ``run``,
    on the second transport: one policy serves both."""
    if transport == "seccomp":
        reason = _seccomp_missing()
        if reason is not None:
            pytest.skip(reason)
    # As a reader would after the README's install: this interpreter's scripts first on PATH,
    # none of the examples' variables set, the working directory a checkout.
    scripts = Path(sys.executable).parent
    if shutil.which("libc-service", path=str(scripts)) is None:
        pytest.skip(f"no libc-service script next to {sys.executable} (pip install the package)")
    workdir = _fresh_checkout(tmp_path / "checkout")
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIBC_SERVICE_")}
    env.update(PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', os.defpath)}", PWD=str(workdir))
    skipped = []
    for command in documented_commands()[source]:
        if transport == "seccomp":
            if "libc-service run " not in command:
                continue
            command = command.replace("libc-service run ", "libc-service run --seccomp ")
        reason = _missing_feature(command)
        if reason is not None:
            skipped.append(f"{command}: {reason}")
            continue
        ran = subprocess.run(
            ["sh", "-c", command],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, f"{command}\nexit status {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
        assert "Traceback" not in ran.stderr, f"{command}\n{ran.stderr}"
    if skipped:
        pytest.skip("; ".join(skipped))
