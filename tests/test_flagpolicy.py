"""``run --sandbox --read/--write/--exec/--bind``: a sandbox without a Python file, or added to one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from libc_service.tools.flagpolicy import PolicyFlags, bind_endpoints, policy_from_flags
from libc_service.tools.policy_file import PolicyError
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import PYTHON, needs_shim

sandboxed = pytest.mark.skipif(
    landlock_abi() < 1 or network_namespaces_available() is not None,
    reason="the kernel has no Landlock or no network namespaces here",
)


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *argv], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def _program_dir(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name} here")
    return os.path.dirname(os.path.realpath(found))


@needs_shim
@sandboxed
def test_read_grants_a_tree_to_read_and_nothing_to_write(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("the data\n")
    done = _cli(
        "run", "--sandbox", "--read", str(tmp_path), "--", "sh", "-c", f"read line < {tmp_path}/data.txt; echo $line"
    )
    assert (done.returncode, done.stdout) == (0, "the data\n"), done.stderr
    done = _cli("run", "--sandbox", "--read", str(tmp_path), "--", "sh", "-c", f"echo x > {tmp_path}/out.txt")
    assert done.returncode != 0 and not (tmp_path / "out.txt").exists()
    assert f"libc-service: refused 1× open after FORWARD (EACCES): {tmp_path}/out.txt" in done.stderr.splitlines() or (
        f"by Landlock (fs.make_reg): {tmp_path}/out.txt" in done.stderr
    ), done.stderr


@needs_shim
@sandboxed
def test_write_grants_a_tree_to_create_in_and_a_relative_path_is_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    done = _cli("run", "--sandbox", "--write", "work", "--", "sh", "-c", "echo made > work/out.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "work" / "out.txt").read_text() == "made\n"


@needs_shim
@sandboxed
def test_exec_grants_the_programs_of_a_tree(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("the data\n")
    script = f"cat {tmp_path}/data.txt"
    refused = _cli("run", "--sandbox", "--read", str(tmp_path), "--", "sh", "-c", script)
    assert refused.returncode == 126  # cat may not be executed
    done = _cli("run", "--sandbox", "--read", str(tmp_path), "--exec", _program_dir("cat"), "--", "sh", "-c", script)
    assert (done.returncode, done.stdout) == (0, "the data\n"), done.stderr


POLICY = textwrap.dedent("""
    import errno
    from libc_service import Router, Sandbox, deny

    router = Router(default=deny(errno.EACCES))
    sandbox = Sandbox(allow_write=["/dev/null"])
""")


@needs_shim
@sandboxed
def test_flags_add_to_a_policy_file_and_come_before_its_rules(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    script = "read line < data/a.txt && echo $line"  # a relative path: it reaches the master
    refused = _cli("run", "--sandbox", str(policy), "--", "sh", "-c", script, cwd=tmp_path)
    assert refused.returncode != 0 and "by default (EACCES)" in refused.stderr, refused.stderr
    done = _cli("run", "--sandbox", "--read", str(data), str(policy), "--", "sh", "-c", script, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "a\n"), done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _python_trees() -> list[str]:
    trees = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), os.path.dirname(PYTHON)}
    return [argument for tree in sorted(trees) for argument in ("--read", tree)]


LISTEN = textwrap.dedent("""
    import socket, sys
    server = socket.socket()
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen()
    print("listening", flush=True)
    client, _ = server.accept()
    client.sendall(b"hello from the sandbox")
    client.close()
""")


@needs_shim
@sandboxed
def test_bind_lets_a_program_without_a_network_serve_on_a_port(tmp_path: Path) -> None:
    port = _free_port()
    program = subprocess.Popen(
        [sys.executable, "-m", "libc_service", "run", "--sandbox", "--bind", f"127.0.0.1:{port}", *_python_trees(),
         "--", PYTHON, "-c", LISTEN, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert program.stdout is not None
        line = program.stdout.readline()
        assert line == "listening\n", program.stderr.read() if program.stderr else ""
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            assert client.recv(100) == b"hello from the sandbox"
        assert program.wait(timeout=60) == 0
    finally:
        program.kill()
        program.wait()


@needs_shim
@sandboxed
def test_a_port_not_given_to_bind_is_refused_and_named(tmp_path: Path) -> None:
    port = _free_port()
    code = f"import socket\ntry:\n socket.socket().bind(('127.0.0.1', {port}))\nexcept OSError as e: print(e.errno)"
    done = _cli("run", "--sandbox", "--bind", str(port + 1), *_python_trees(), "--", PYTHON, "-c", code, cwd=tmp_path)
    assert done.stdout.strip() == "13", done.stderr
    assert f"libc-service: refused 1× bind_inet by unlisted_network (EACCES): 127.0.0.1:{port}" in done.stderr


def test_flags_without_a_sandbox_are_a_usage_error(tmp_path: Path) -> None:
    done = _cli("run", "--read", str(tmp_path), "--", "true")
    assert done.returncode == 2
    assert "build a sandbox: add --sandbox" in done.stderr


def test_bind_values_are_checked() -> None:
    assert bind_endpoints("8080") == [("0.0.0.0/0", 8080), ("::/0", 8080)]
    assert bind_endpoints("[::1]:53") == [("::1", 53)]
    for wrong in ("http", "127.0.0.1:99999", "::1:53", "example.com:80", ":80"):
        with pytest.raises(PolicyError, match="--bind"):
            bind_endpoints(wrong)


def test_docs_shows_what_the_flags_grant(tmp_path: Path) -> None:
    done = _cli("docs", "--format", "json", "--read", str(tmp_path), "--write", "/dev/null", "--bind", "8080")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["policy"] == "command-line flags"
    assert {"path": str(tmp_path), "access": ["read"]} in doc["sandbox"]["rules"]
    assert {"path": "/dev/null", "access": ["read", "write"]} in doc["sandbox"]["rules"]
    names = [handler["name"] for handler in doc["handlers"]]
    assert names == ["write_flag", "read_flag", "read_flag_stat", "bind_flag", "unlisted_network"]
    assert "`8080`" in doc["handlers"][3]["summary"]


def test_the_policy_file_is_left_as_it_was(tmp_path: Path) -> None:
    from libc_service.tools.policy_file import load_policy

    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    loaded = load_policy(str(policy))
    merged = policy_from_flags(PolicyFlags(read=(str(tmp_path),)), loaded)
    assert len(loaded.router.routes()) == 0 and loaded.sandbox.allow_read == ()
    assert [route.name for route in merged.router.routes()] == ["read_flag", "read_flag_stat"]
    assert merged.sandbox is not None and merged.sandbox.allow_read == (str(tmp_path),)
    assert merged.sandbox.allow_write == ("/dev/null",)
