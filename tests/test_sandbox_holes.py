"""What a hostile slave tries under the sandbox, and the kernel refusing it.

Each attempt is one raw system call of ``tests/c/escape_attempts.c`` (no
libc wrapper the shim could see): typing into the user's terminal, killing
or starving the master through its resource limits, the host's keyrings,
attribute changes by calls and ioctls a denylist did not know, and system
calls newer than the filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from libc_service import FORWARD, Router, Sandbox, spawn
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available
from libc_service.confinement.syscall_filter import HIGHEST_KNOWN, build_filter, numbers_for

from shimtools import PYTHON, c_program, needs_shim

__all__ = ["c_program"]

pytestmark = [
    needs_shim,
    pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock"),
    pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here"),
]


async def run_attempts(
    program: Path, attempts: Sequence[str], sandbox: Sandbox, *, stdin: int | None = None
) -> dict[str, str]:
    """Run the attempts sandboxed with a forwarding policy; ``{attempt: "OK" or errno name}``."""
    async with spawn(
        [str(program), *attempts],
        Router(default=FORWARD),
        sandbox=sandbox,
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert await process.wait() == 0, err
    return dict(line.split("=", 1) for line in out.decode().split())


def run_natively(program: Path, attempts: Sequence[str]) -> dict[str, str]:
    """The same attempts without master or sandbox: the kernel's own answers on this machine."""
    out = subprocess.run(
        [str(program), *attempts], stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30
    ).stdout
    return dict(line.split("=", 1) for line in out.decode().split())


@pytest.fixture
def attempts(c_program: Callable[[str], Path]) -> Path:
    return c_program("escape_attempts")


async def test_the_slave_cannot_type_into_the_users_terminal(attempts: Path) -> None:
    """TIOCSTI and TIOCLINUX are refused, also with high bits set in the 64-bit request."""
    controller, terminal = os.openpty()
    try:
        seen = await run_attempts(attempts, ["tiocsti", "tiocsti_high_bits", "tioclinux"], Sandbox(), stdin=terminal)
        os.set_blocking(controller, False)
        try:
            injected = os.read(controller, 100)
        except BlockingIOError:
            injected = b""
    finally:
        os.close(controller)
        os.close(terminal)
    assert seen == {"tiocsti": "EPERM", "tiocsti_high_bits": "EPERM", "tioclinux": "EPERM"}
    assert b"x" not in injected


async def test_the_slave_runs_in_a_session_of_its_own() -> None:
    """Its terminal is not its controlling one: the terminal's job control goes to the master."""
    probe = "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"
    async with spawn(
        [PYTHON, "-S", "-c", probe],
        Router(default=FORWARD),
        sandbox=Sandbox(allow_read=[sys.prefix, sys.base_prefix]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await process.communicate()
        assert process.own_session
    assert out.split() == [b"True", b"True"], err


async def test_the_slave_cannot_limit_or_starve_the_master(attempts: Path) -> None:
    """Resource limits, priority and CPU placement of other processes are refused; of itself, not.

    What a process may do to itself (a nicer priority, its own limits) gets
    the answer it gets without a sandbox, whatever the nice level the test
    runs at.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    own = ["prlimit_self", "setpriority_self"]
    native = run_natively(attempts, own)
    seen = await run_attempts(
        attempts,
        [
            "prlimit_parent",
            "setpriority_user",
            "setpriority_parent",
            "setaffinity_parent",
            "prlimit_self",
            "prlimit_parent_read",
            "setpriority_self",
        ],
        Sandbox(),
    )
    assert seen == {
        "prlimit_parent": "EPERM",
        "setpriority_user": "EPERM",
        "setpriority_parent": "EPERM",
        "setaffinity_parent": "EPERM",
        "prlimit_self": native["prlimit_self"],
        "prlimit_parent_read": "OK",
        "setpriority_self": native["setpriority_self"],
    }
    assert native == {"prlimit_self": "OK", "setpriority_self": "OK"}
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


async def test_the_slave_cannot_use_the_hosts_keyrings(attempts: Path) -> None:
    seen = await run_attempts(attempts, ["keyctl", "add_key", "request_key"], Sandbox())
    assert seen == {"keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM"}


async def test_system_calls_newer_than_the_filter_fail_with_enosys(attempts: Path) -> None:
    seen = await run_attempts(attempts, ["unknown_470", "unknown_1000"], Sandbox(metadata=True))
    assert seen == {"unknown_470": "ENOSYS", "unknown_1000": "ENOSYS"}


async def test_attribute_changes_by_newer_calls_and_ioctls_are_refused(attempts: Path, tmp_path: Path) -> None:
    """file_setattr and the inode-flag ioctls on a read-only descriptor: EPERM unless metadata=True.

    With ``metadata=True`` each call gets the kernel's own answer: the one
    the same call gets without a sandbox, on this machine's file system.
    """
    target = tmp_path / "file"
    target.write_text("x")
    names = ["file_setattr", "fs_setflags", str(target), "fs_fssetxattr", str(target)]
    native = run_natively(attempts, names)
    refused = await run_attempts(attempts, names, Sandbox(allow_read=[tmp_path]))
    allowed = await run_attempts(attempts, names, Sandbox(allow_read=[tmp_path], metadata=True))
    assert refused == {"file_setattr": "EPERM", "fs_setflags": "EPERM", "fs_fssetxattr": "EPERM"}
    assert allowed == native
    assert native["file_setattr"] != "EPERM"  # the kernel's own answer (EINVAL for a null argument)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_slave_holds_only_stdio_and_the_shims_descriptors(loop: str) -> None:
    """No copies of the master's stdio or other inherited descriptors (uvloop closes none itself)."""
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
    inherited = os.open("/dev/null", os.O_RDONLY)  # not close-on-exec: a descriptor a master's parent left it
    os.set_inheritable(inherited, True)
    probe = (
        "import os\n"
        "def is_open(fd):\n"
        "    try:\n        os.fstat(fd)\n    except OSError:\n        return False\n    return True\n"
        "print(*[fd for fd in range(4096) if is_open(fd)])"
    )

    async def listing(sandbox: Sandbox | None) -> list[int]:
        async with spawn(
            [PYTHON, "-S", "-c", probe],
            Router(default=FORWARD),
            sandbox=sandbox,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            out, err = await process.communicate()
        assert out, err
        return [int(word) for word in out.split()]

    try:
        with runner:
            for sandbox in (None, Sandbox(allow_read=[sys.prefix, sys.base_prefix])):
                fds = runner.run(listing(sandbox))
                # stdio, and the shim's own (>= 1000).
                assert [fd for fd in fds if fd < 1000] == [0, 1, 2], (loop, sandbox, fds)
    finally:
        os.close(inherited)


def test_the_filter_refuses_everything_above_the_highest_known_number() -> None:
    """The program checks the number against HIGHEST_KNOWN before any list."""
    table = numbers_for("x86_64")
    assert table is not None
    program = build_filter(table, metadata=True)
    # ld arch, jeq arch, ld nr, jge x32, jgt HIGHEST_KNOWN
    code, _, _, k = struct.unpack_from("<HBBI", program, 4 * 8)
    assert (code, k) == (0x25, HIGHEST_KNOWN)


async def test_sigterm_twice_ends_a_program_that_ignores_it(tmp_path: Path) -> None:
    """The command always exits: a second SIGTERM kills what ignored the first."""
    policy = tmp_path / "policy.py"
    policy.write_text("from libc_service import FORWARD, Router\nrouter = Router(default=FORWARD)\n")
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libc_service.tools.cli",
        "run",
        str(policy),
        "--",
        PYTHON,
        "-S",
        "-c",
        script,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert command.stdout is not None
    assert await asyncio.wait_for(command.stdout.readline(), 30) == b"ready\n"
    command.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert command.returncode is None  # the program ignored it; the command waits for it
    command.send_signal(signal.SIGTERM)
    status = await asyncio.wait_for(command.wait(), 30)
    assert status == 128 + signal.SIGKILL


def _read_until(fd: int, word: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while word not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_ctrl_z_fg_and_ctrl_c_work_for_a_sandboxed_program_in_its_own_session(tmp_path: Path) -> None:
    """On a real terminal: Ctrl-Z stops the command (and the program), SIGCONT resumes,
    Ctrl-C reaches the program although the terminal is not its controlling one."""
    policy = tmp_path / "policy.py"
    policy.write_text(
        "from libc_service import FORWARD, Router, Sandbox\n"
        "router = Router(default=FORWARD)\n"
        f"sandbox = Sandbox(allow_read=[{sys.prefix!r}, {sys.base_prefix!r}])\n"
    )
    program = (
        "import time\nprint('ready', flush=True)\ntry:\n    time.sleep(30)\n"
        "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n"
    )
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "libc_service.tools.cli",
                "run",
                "--sandbox",
                str(policy),
                "--",
                PYTHON,
                "-S",
                "-c",
                program,
            ],
        )
    try:
        assert b"ready" in _read_until(terminal, b"ready")
        os.write(terminal, b"\x1a")  # Ctrl-Z
        deadline = time.monotonic() + 60  # a hang's bound, not a speed
        stopped = 0
        while time.monotonic() < deadline:
            waited, stopped = os.waitpid(pid, os.WUNTRACED | os.WNOHANG)
            if waited:
                break
            time.sleep(0.05)
        assert os.WIFSTOPPED(stopped)
        os.kill(pid, signal.SIGCONT)  # fg
        time.sleep(0.3)
        os.write(terminal, b"\x03")  # Ctrl-C
        assert b"interrupted" in _read_until(terminal, b"interrupted")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(terminal)


async def test_ctrl_c_three_times_ends_a_program_that_ignores_it(tmp_path: Path) -> None:
    """Once or twice is the program's to handle (a REPL); three times in two seconds kills it."""
    policy = tmp_path / "policy.py"
    policy.write_text("from libc_service import FORWARD, Router\nrouter = Router(default=FORWARD)\n")
    script = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libc_service.tools.cli",
        "run",
        str(policy),
        "--",
        PYTHON,
        "-S",
        "-c",
        script,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert command.stdout is not None
    assert await asyncio.wait_for(command.stdout.readline(), 30) == b"ready\n"
    for _ in range(2):
        command.send_signal(signal.SIGINT)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    assert command.returncode is None  # twice: still the program's
    command.send_signal(signal.SIGINT)
    status = await asyncio.wait_for(command.wait(), 30)
    assert status == 128 + signal.SIGKILL
