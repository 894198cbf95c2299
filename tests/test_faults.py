"""Faults a master must survive, and slaves that misbehave on their side.

A slave killed mid-call, a master killed under its slaves, fork while
other threads have calls in flight, programs that close every inherited
descriptor, signals landing in blocked calls, vfork/posix_spawn children.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, Router, Stat, WithFds, spawn
from libc_service.protocol.requests import LstatRequest, OpenatRequest, OpenRequest, StatRequest
from shimtools import PYTHON, c_program, needs_shim, run_slave  # noqa: F401 - c_program is a fixture

pytestmark = [needs_shim]

FAKE = "/nonexistent/fake"


def faking_router(**kwargs: Any) -> Router:
    """stat of FAKE or /etc/passwd is a 4242-byte file; open of FAKE is a pipe."""
    router = Router(**kwargs)

    @router.on("stat", "lstat")
    def fake_stat(req: StatRequest | LstatRequest) -> Any:
        return Stat(size=4242, mode=0o644) if str(req.path) in (FAKE, "/etc/passwd") else FORWARD

    @router.on("open", "openat")
    def fake_open(req: OpenRequest | OpenatRequest) -> Any:
        if str(req.path) != FAKE:
            return FORWARD
        read_end, write_end = os.pipe()
        os.write(write_end, b"from the master\n")
        os.close(write_end)
        return WithFds(0, [read_end])

    return router


# ------------------------------------------------------- a slave killed


async def test_a_slave_killed_mid_call_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()
    arrived: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()

    @router.on("stat")
    async def slow(req: StatRequest) -> Any:
        if str(req.path) != "/slow":
            return FORWARD
        await arrived.put(req.pid)
        await release.wait()
        return Stat(size=1)

    script = f"""{PYTHON} -c 'import os; os.stat("/slow")' & wait $!; echo victim=$?; cat /etc/hostname; exit 7"""
    caplog.set_level(logging.WARNING, logger="libc_service.processes.spawn")
    async with spawn(["sh", "-c", script], router, stdout=subprocess.PIPE) as process:
        victim = await asyncio.wait_for(arrived.get(), 30)
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.05)
        release.set()  # the reply now has nowhere to go
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        status = await process.wait()
    assert status == 7
    assert out.decode() == f"victim={128 + signal.SIGKILL}\n{Path('/etc/hostname').read_text()}"
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [f"session pid {victim} dropped: the process went away before its reply was sent"]


async def test_a_slave_killed_mid_call_with_a_concurrent_router(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(concurrent=True)
    arrived: asyncio.Queue[int] = asyncio.Queue()

    @router.on("stat")
    async def hangs(req: StatRequest) -> Any:
        if str(req.path) != "/slow":
            return FORWARD
        await arrived.put(req.pid)
        await asyncio.sleep(3600)

    caplog.set_level(logging.WARNING, logger="libc_service.processes.spawn")
    async with spawn([PYTHON, "-c", "import os; os.stat('/slow')"], router) as process:
        victim = await asyncio.wait_for(arrived.get(), 30)
        assert victim == process.pid
        process.kill()
        assert await process.wait() == 128 + signal.SIGKILL
        for _ in range(100):
            if any("dropped" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [f"session pid {victim} dropped: the process went away with 1 call(s) unanswered"]


def test_run_exits_with_the_programs_status_when_a_slave_dies_mid_call(tmp_path: Path) -> None:
    policy = tmp_path / "slow.py"
    policy.write_text(
        textwrap.dedent("""
        import asyncio
        from libc_service import FORWARD, Router, Stat

        router = Router()

        @router.on("stat")
        async def slow(req):
            if str(req.path) != "/slow":
                return FORWARD
            await asyncio.sleep(0.5)
            return Stat(size=1)
    """)
    )
    script = f"""{PYTHON} -c 'import os; os.stat("/slow")' & sleep 0.3; kill -9 $!; wait $!; echo victim=$?; exit 7"""
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", str(policy), "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 7
    assert done.stdout == f"victim={128 + signal.SIGKILL}\n"
    assert "Traceback" not in done.stderr


# ------------------------------------------------------- the master killed

ORPHAN_POLICY = """
    import asyncio, os
    from libc_service import FORWARD, Router

    router = Router()

    @router.on("stat")
    async def hang(req):
        if str(req.path) != "/hang":
            return FORWARD
        open(os.environ["ARRIVED"], "w").close()
        await asyncio.Event().wait()
"""

ORPHAN = """
import os, subprocess, sys, time
print("before", flush=True)
start = time.monotonic()
try:
    os.stat("/hang")
    print("answered")
except FileNotFoundError:
    print("fell back to the real libc: ENOENT")
print("blocked for %.1f s" % (time.monotonic() - start))
print(open("/etc/hostname").read(), end="")
subprocess.run(["cat", "/etc/hostname"], check=True)
pid = os.fork()
if pid == 0:
    os.stat("/etc/hostname")
    os._exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
"""


def _read_to_end(fd: int, *, seconds: float) -> bytes:
    """Everything until end of file on ``fd``; fails the test if the writers are still there after ``seconds``."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"still blocked after {seconds} s: {b''.join(chunks)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.mark.slow
def test_orphaned_slaves_fall_back_when_the_master_is_killed(tmp_path: Path) -> None:
    policy = tmp_path / "hang.py"
    policy.write_text(textwrap.dedent(ORPHAN_POLICY))
    arrived = tmp_path / "arrived"
    env = dict(os.environ, ARRIVED=str(arrived))
    master = subprocess.Popen(
        [sys.executable, "-m", "libc_service", "run", str(policy), "--", PYTHON, "-c", ORPHAN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        bufsize=0,  # unbuffered: what readline leaves is still in the pipe
    )
    try:
        assert master.stdout is not None
        assert master.stdout.readline() == b"before\n"
        deadline = time.monotonic() + 30
        while not arrived.exists():
            assert time.monotonic() < deadline, "the call never reached the master"
            time.sleep(0.01)
        master.kill()
        master.wait(timeout=30)
        # Until the orphan exits and closes the pipe. The shim has no timer: only the
        # master's end of the channel closing can release the blocked call, so the bound
        # here is a hang's, not a speed.
        rest = _read_to_end(master.stdout.fileno(), seconds=120)
    finally:
        master.kill()
        master.wait()
        if master.stdout is not None:
            master.stdout.close()
        if master.stderr is not None:
            master.stderr.close()
    hostname = Path("/etc/hostname").read_text()
    lines = rest.decode().splitlines(keepends=True)
    assert lines[0] == "fell back to the real libc: ENOENT\n"
    assert lines[2:] == [hostname, hostname, "done\n"]


# ----------------------------------------------------------------- fork


@pytest.mark.slow
async def test_fork_in_a_multithreaded_slave_with_calls_in_flight(c_program: Callable[[str], Path]) -> None:
    program = c_program("fork_stat")
    ran = await run_slave([str(program)], faking_router(), timeout=90)
    assert (ran.status, ran.out) == (0, "fork children failed=0 parent mismatches=0\n")


# ------------------------------------------- programs that close everything


@pytest.mark.parametrize("mode", ["range", "cloexec", "from", "loop", "dup2"])
async def test_a_slave_that_closes_every_descriptor_still_reaches_the_master(
    c_program: Callable[[str], Path], mode: str
) -> None:
    program = c_program("close_all")
    # Then it execs stat: the registration socket survived too.
    ran = await run_slave([str(program), mode, FAKE, "stat", "-c", "%s", FAKE], faking_router())
    assert (ran.status, ran.out, ran.err) == (0, "size=4242 open=OK\n4242\n", "")


async def test_close_range_then_open_is_answered_by_the_master(c_program: Callable[[str], Path]) -> None:
    program = c_program("close_all")
    router = faking_router()
    ran = await run_slave([str(program), "range", FAKE, "cat", FAKE], router)
    assert (ran.status, ran.out) == (0, "size=4242 open=OK\nfrom the master\n")


async def test_pythons_subprocess_close_fds_keeps_children_under_the_master() -> None:
    program = "import subprocess; subprocess.run(['stat', '-c', '%s', '/etc/passwd'], check=True)"
    ran = await run_slave([PYTHON, "-c", program], faking_router())
    assert (ran.status, ran.out) == (0, "4242\n")


async def test_the_shims_descriptors_live_high_and_the_variable_follows() -> None:
    program = (
        "import os\n"
        "n = int(os.environ['LIBC_SERVICE_FD'])\n"
        "os.stat('/etc/passwd')\n"
        "print(n >= 100, sorted(fd for fd in map(int, os.listdir('/proc/self/fd')) if fd >= n) == [n, n + 1])\n"
        "os.close(n); os.closerange(3, 65536)\n"
        "print(os.stat('/etc/passwd').st_size)\n"
    )
    ran = await run_slave([PYTHON, "-c", program], faking_router())
    assert (ran.status, ran.out, ran.err) == (0, "True True\n4242\n", "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
async def test_bash_which_defines_its_own_getenv_passes_the_registration_on() -> None:
    # bash's own getenv/putenv work on its shell variables; the shim must
    # move the registration socket without them.
    ran = await run_slave(["bash", "-c", f"stat -c %s {FAKE}; (stat -c %s {FAKE})"], faking_router())
    assert (ran.status, ran.out) == (0, "4242\n4242\n")


# -------------------------------------------------------------- signals


@pytest.mark.slow
async def test_signals_interrupting_blocked_calls_do_not_lose_answers(c_program: Callable[[str], Path]) -> None:
    program = c_program("signal_stat")
    router = Router()
    calls = 0

    @router.on("stat")
    async def slow_sometimes(req: StatRequest) -> Any:
        nonlocal calls
        if str(req.path) != FAKE:
            return FORWARD
        calls += 1
        if calls % 50 == 0:
            await asyncio.sleep(0.002)  # many 200 µs alarms land while the slave waits
        return Stat(size=4242)

    ran = await run_slave([str(program), "3000", FAKE, "4242"], router, timeout=90)
    assert ran.status == 0, ran.out
    bad, handler = ran.out.split(" handler ")
    assert bad == "main bad=0"
    handler_calls, handler_ok = (int(part.split("=")[1]) for part in handler.split())
    assert handler_calls > 0
    # A handler that ran while the thread was inside the shim went straight
    # to the real libc (ENOENT: the path does not exist); one that ran
    # between calls reached the master like any call.
    assert calls == 3000 + handler_ok
    assert handler_ok < handler_calls


# -------------------------------------------------------- vfork, posix_spawn


async def test_vfork_and_posix_spawn_children_register_after_exec(c_program: Callable[[str], Path]) -> None:
    program = c_program("spawn_children")
    ran = await run_slave([str(program), "/etc/passwd"], faking_router())
    real = os.stat("/etc/passwd").st_size
    assert (ran.status, ran.out) == (0, f"parent-before=4242\n4242\n4242\nvfork-child={real}\nparent-after=4242\n")
