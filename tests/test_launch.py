"""SlaveProcess.launch(): the program starts before any event loop, and is served once it needs a master.

``libc-service run`` starts the program first and imports asyncio only when
the program asks or reports something; a run the rule table decides whole
never starts a master. Real programs, the real shim.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, Decision, Errno, Router, SlaveProcess, spawn
from libc_service.policy.conditions import under
from libc_service.protocol.requests import Request
from shimtools import needs_shim


def _handled(tree: Path, seen: list[str]) -> Router:
    router = Router(default=FORWARD)

    @router.on("open", "openat", when=under(str(tree)))
    def refuse(request: Request) -> Any:
        seen.append(str(request.path))
        raise Errno(errno.EACCES)

    return router


def _serve(process: SlaveProcess) -> int:
    """Serve a launched program on a loop of its own, to its end; its exit status."""

    async def serve() -> int:
        async with process:
            return await process.wait()

    return asyncio.run(serve())


@needs_shim
def test_a_program_the_rule_table_decides_whole_ends_without_a_master(tmp_path: Path) -> None:
    seen: list[str] = []
    process = spawn(["cat", "/etc/hostname"], _handled(tmp_path, seen), stdout=subprocess.DEVNULL)
    process.launch()
    assert process.wait_unserved() == 0
    assert process.returncode == 0 and process.sessions_started == 0 and seen == []


@needs_shim
def test_the_exit_status_of_a_program_never_served_is_as_a_shell_says_it(tmp_path: Path) -> None:
    process = spawn(["sh", "-c", "exit 7"], _handled(tmp_path, []))
    process.launch()
    assert process.wait_unserved() == 7
    process = spawn(["sh", "-c", "kill -TERM $$"], _handled(tmp_path, []))
    process.launch()
    assert process.wait_unserved() == 128 + 15


@needs_shim
def test_a_program_that_asks_late_is_served_when_it_asks(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("no\n")
    seen: list[str] = []
    process = spawn(
        ["sh", "-c", f"cat /etc/hostname >/dev/null; sleep 0.3; cat {tmp_path / 'secret'}"],
        _handled(tmp_path, seen),
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},
    )
    process.launch()
    assert process.wait_unserved() is None  # the second cat asked

    assert _serve(process) == 1
    assert seen == [str(tmp_path / "secret")] and process.sessions_started == 1


@needs_shim
def test_reports_left_by_a_program_that_ended_still_reach_the_observers(tmp_path: Path) -> None:
    decisions: list[Decision] = []
    router = Router(default=FORWARD)
    router.observe(decisions.append)
    process = spawn(["cat", "/etc/hostname"], router, stdout=subprocess.DEVNULL, reports=True)
    process.launch()
    assert process.wait_unserved() is None

    assert _serve(process) == 0
    assert any(str(getattr(d.request, "path", "")) == "/etc/hostname" for d in decisions)


@needs_shim
def test_a_served_launch_closes_every_descriptor_it_made(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    process = spawn(["sh", "-c", f"cat {tmp_path / 'x'} 2>/dev/null; exit 0"], _handled(tmp_path, []))
    process.launch()
    assert process.wait_unserved() is None

    assert _serve(process) == 0
    process = spawn(["true"], _handled(tmp_path, []))
    process.launch()
    assert process.wait_unserved() == 0
    assert set(os.listdir("/proc/self/fd")) == before


def test_launch_refuses_what_needs_a_loop_from_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seccomp"):
        spawn(["true"], Router(), seccomp=True).launch()
    with pytest.raises(ValueError, match="pipes"):
        spawn(["true"], Router(), stdout=subprocess.PIPE).launch()
    with pytest.raises(RuntimeError, match="follows launch"):
        spawn(["true"], Router()).wait_unserved()


@needs_shim
def test_reports_made_while_the_master_starts_wait_in_the_socket_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reports that must not wait for room (``reports=True``) are dropped only when the socket is full:
    it holds what a busy program sends before the master is up."""
    decisions: list[Decision] = []
    router = Router(default=FORWARD)
    router.observe(decisions.append)
    process = spawn(
        ["sh", "-c", "i=0; while [ $i -lt 800 ]; do test -e /etc/hostname; i=$((i+1)); done"],
        router,
        reports=True,
    )
    process.launch()
    # The master starts late: once the program has made all its calls and exited (left unreaped).
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    assert process.wait_unserved() is None

    assert _serve(process) == 0
    assert "were lost" not in caplog.text
    assert sum(str(getattr(d.request, "path", "")) == "/etc/hostname" for d in decisions) == 800
