"""The launcher: a sandbox applied without Python in the child, on every way a program is started.

Programs whose stdio is not a pipe are started by ``subprocess.Popen``
with no ``preexec_fn`` (``vfork``); with pipes, by the loop. In both, what
the child must do before the program runs is done by the launcher
(``libc_service/_launch``). These tests run real programs both ways, on
both loops, and check what the kernel enforces.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture

from libc_service import FORWARD, Router, Sandbox, spawn
from libc_service.processes.launching import launcher_path
from libc_service.confinement.sandbox import network_namespaces_available
from libc_service.processes.spawn_launch import shim_path

_MISSING = Sandbox.available() or network_namespaces_available()
needs_kernel = pytest.mark.skipif(_MISSING is not None, reason=f"no sandbox here: {_MISSING}")
needs_launcher = pytest.mark.skipif(launcher_path() is None, reason="the launcher was not built")
pytestmark = [pytest.mark.slow, needs_shim, needs_launcher]

T = TypeVar("T")
LOOPS = ["asyncio", "uvloop"]
STDIO = ["pipes", "files"]


def on_loop(loop: str, coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine())


async def run(argv: list[str], stdio: str, tmp_path: Path, **options: Any) -> tuple[int, str, str, int]:
    """Status, stdout, stderr and sessions started, with pipes or files for stdio."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LD_PRELOAD": ""}
    if stdio == "pipes":
        async with spawn(
            argv, Router(default=FORWARD), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
        ) as process:
            out, err = await process.communicate()
            status = await process.wait()
        return status, out.decode(), err.decode(), process.sessions_started
    with open(tmp_path / "out", "wb") as out_file, open(tmp_path / "err", "wb") as err_file:
        async with spawn(
            argv,
            Router(default=FORWARD),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            **options,
        ) as process:
            status = await process.wait()
    return status, (tmp_path / "out").read_text(), (tmp_path / "err").read_text(), process.sessions_started


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret" / "secret.txt"
    path.parent.mkdir()
    path.write_text("the secret\n")
    return path


@needs_kernel
@pytest.mark.parametrize("stdio", STDIO)
@pytest.mark.parametrize("loop", LOOPS)
def test_the_sandbox_holds_for_the_shim_and_for_raw_system_calls(
    loop: str, stdio: str, secret: Path, tmp_path: Path, c_program: Callable[[str], Path]
) -> None:
    """cat (through the shim) and a raw openat both meet Landlock."""
    raw_read = c_program("raw_read")
    native = subprocess.run([str(raw_read), str(secret)], capture_output=True, text=True, check=False)
    assert native.stdout == "the secret\n"  # what the sandbox takes away

    cat = on_loop(loop, lambda: run(["cat", str(secret)], stdio, tmp_path, sandbox=Sandbox()))
    raw = on_loop(loop, lambda: run([str(raw_read), str(secret)], stdio, tmp_path, sandbox=Sandbox()))
    allowed = on_loop(
        loop, lambda: run(["cat", str(secret)], stdio, tmp_path, sandbox=Sandbox(allow_read=[secret.parent]))
    )
    assert cat[0] == 1 and "Permission denied" in cat[2], cat
    assert raw[:2] == (1, "EACCES\n"), raw
    assert allowed[:2] == (0, "the secret\n"), allowed


@pytest.mark.parametrize("sandboxed", [False, True], ids=["seccomp", "sandbox+seccomp"])
@pytest.mark.parametrize("stdio", STDIO)
def test_the_seccomp_listener_is_handed_over_by_the_launcher(sandboxed: bool, stdio: str, tmp_path: Path) -> None:
    """seccomp=True: the launcher installs the filter and sends the listener; the status passes through."""
    if sandboxed and _MISSING is not None:
        pytest.skip(f"no sandbox here: {_MISSING}")
    pytest.importorskip("libc_service.seccomp.availability").seccomp_unavailable() is None or pytest.skip(
        "no seccomp here"
    )
    sandbox = Sandbox() if sandboxed else None
    script = "echo ran; exit 3"
    status, out, _, _ = on_loop(
        "asyncio", lambda: run(["/bin/sh", "-c", script], stdio, tmp_path, sandbox=sandbox, seccomp=True)
    )
    assert (status, out) == (3, "ran\n")


@pytest.mark.parametrize("stdio", STDIO)
@pytest.mark.parametrize("loop", LOOPS)
def test_the_program_holds_only_stdio_and_the_shims_descriptors(loop: str, stdio: str, tmp_path: Path) -> None:
    """Popen closes the master's descriptors; with pipes on uvloop, the launcher marks them close-on-exec."""
    inherited = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(inherited, True)  # a descriptor a master's own parent left it
    probe = (
        "import os\n"
        "def is_open(fd):\n"
        "    try:\n        os.fstat(fd)\n    except OSError:\n        return False\n    return True\n"
        "print(*[fd for fd in range(4096) if is_open(fd)])"
    )
    try:
        for sandbox in (None, Sandbox(allow_read=[sys.prefix, sys.base_prefix])):
            if sandbox is not None and _MISSING is not None:
                continue
            status, out, err, _ = on_loop(
                loop, lambda: run([sys.executable, "-S", "-c", probe], stdio, tmp_path, sandbox=sandbox)
            )
            assert status == 0, err
            # stdio, and the shim's own (>= 1000).
            assert [int(fd) for fd in out.split() if int(fd) < 1000] == [0, 1, 2], (sandbox, out)
    finally:
        os.close(inherited)


@needs_kernel
@pytest.mark.parametrize("stdio", STDIO)
def test_the_program_is_preloaded_with_the_shim_and_the_callers_preload(stdio: str, tmp_path: Path) -> None:
    """The launcher itself runs without LD_PRELOAD and gives the program the value spawn() built."""

    async def preload() -> tuple[int, str, str, int]:
        env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "libm.so.6"}
        target = tmp_path / "preload"
        async with spawn(
            ["/bin/sh", "-c", f'printf %s "$LD_PRELOAD" > {target}'],
            Router(default=FORWARD),
            env=env,
            sandbox=Sandbox(allow_write=[tmp_path]),
            rules=False,  # every call asked: a shim loaded in the launcher too would register a second session
            stdout=subprocess.PIPE if stdio == "pipes" else subprocess.DEVNULL,
        ) as process:
            await process.communicate()
            status = await process.wait()
        return status, target.read_text(), "", process.sessions_started

    status, value, _, sessions = on_loop("asyncio", preload)
    assert status == 0
    assert value == f"{shim_path()} libm.so.6"
    assert sessions == 1


def test_a_step_that_fails_stops_the_program_with_status_127(tmp_path: Path) -> None:
    """The launcher never runs the program half-confined: the failed step is named on stderr."""
    launcher = launcher_path()
    assert launcher is not None
    marker = tmp_path / "ran"
    program = ["--", "/bin/sh", "sh", "-c", f"touch {marker}"]
    not_a_ruleset = os.open("/dev/null", os.O_RDONLY)
    try:
        for steps in (["l=%d:0" % not_a_ruleset], ["f=00"], ["bogus"]):
            done = subprocess.run(
                [str(launcher), *steps, *program],
                capture_output=True,
                text=True,
                pass_fds=(not_a_ruleset,),
                timeout=30,
                check=False,
            )
            assert done.returncode == 127, (steps, done)
            assert done.stderr.startswith("libc-service: cannot apply the sandbox: "), (steps, done.stderr)
            assert not marker.exists(), steps
    finally:
        os.close(not_a_ruleset)
    done = subprocess.run([str(launcher), *program], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0 and marker.exists()


@needs_kernel
@pytest.mark.parametrize("stdio", STDIO)
def test_every_sandboxed_job_gets_network_and_ipc_namespaces_of_its_own(stdio: str) -> None:
    """Made ahead of time or by the child, a job's namespaces are new and no other job's.

    The jobs run at once and stay until every one has answered: namespaces
    alive together have distinct inode numbers (a freed one's may be reused).
    """
    probe = (
        "import os, sys\n"
        "print(os.stat('/proc/self/ns/net').st_ino, os.stat('/proc/self/ns/ipc').st_ino, flush=True)\n"
        "sys.stdin.read()"
    )
    sandbox = Sandbox(allow_read=[sys.prefix, sys.base_prefix])
    hold, release = os.pipe()  # every job's stdin: each exits once ``release`` is closed
    answered: list[tuple[int, int]] = []

    async def one() -> None:
        reader, writer = os.pipe()
        try:
            async with spawn(
                [sys.executable, "-S", "-c", probe],
                Router(default=FORWARD),
                sandbox=sandbox,
                stdin=hold,
                stdout=subprocess.PIPE if stdio == "pipes" else writer,
            ) as process:
                if process.stdout is not None:
                    line = await process.stdout.readline()
                else:
                    os.close(writer)
                    writer = -1
                    line = b""
                    while not line.endswith(b"\n"):
                        chunk = await asyncio.to_thread(os.read, reader, 100)
                        assert chunk, line
                        line += chunk
                net, ipc = line.split()
                answered.append((int(net), int(ipc)))
        finally:
            os.close(reader)
            if writer >= 0:
                os.close(writer)

    async def scenario() -> None:
        jobs = [asyncio.ensure_future(one()) for _ in range(6)]
        while len(answered) < 6 and not any(job.done() for job in jobs):
            await asyncio.sleep(0.01)
        os.close(release)
        await asyncio.gather(*jobs)

    try:
        on_loop("asyncio", scenario)
    finally:
        os.close(hold)
        try:
            os.close(release)
        except OSError:
            pass  # closed by the scenario
    mine = (os.stat("/proc/self/ns/net").st_ino, os.stat("/proc/self/ns/ipc").st_ino)
    assert len({net for net, _ in answered}) == len({ipc for _, ipc in answered}) == len(answered) == 6, answered
    assert all(net != mine[0] and ipc != mine[1] for net, ipc in answered)
