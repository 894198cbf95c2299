"""Load: 16 processes × 8 threads × 2,000 calls through the real shim.

Every thread of ``tests/c/load_stat.c`` stats its own paths,
``/lcs-load/PID/TID/THREAD/I``; the handler answers a ``Stat`` whose size,
inode and link count are functions of the path it was asked about, and
the program checks each answer. A reply routed to the wrong thread, the
wrong process or the wrong call of the right thread fails that check
(*misrouted*); a call that fails or a request the master never saw is
*lost*. The master also checks that each request says which process and
thread made it (the pid and tid in the path) and sees each call exactly once.

All programs are started with :func:`libc_service.processes.spawn` under one
:class:`~libc_service.Router`, on one loop. ``LCS_LOAD_CALLS`` overrides
the calls per thread (default 2,000).
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from libc_service import FORWARD, Errno, Router, Stat, spawn
from libc_service.protocol.requests import StatRequest
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture

PROCESSES = 16
THREADS = 8
CALLS = int(os.environ.get("LCS_LOAD_CALLS", "2000"))
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_INO_SALT = 0x9E3779B97F4A7C15

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def fnv1a(data: bytes) -> int:
    """FNV-1a 64, as ``load_stat.c`` computes it."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & _MASK64
    return value


@dataclass
class LoadHandler:
    """Answers ``stat`` of the load paths; counts what it saw."""

    seen: set[tuple[int, int, int, int]] = field(default_factory=set)
    duplicates: int = 0
    misattributed: int = 0
    other: int = 0

    def router(self, concurrent: bool) -> Router:
        router = Router(default=FORWARD, concurrent=concurrent)
        router.on("stat")(self.stat)
        return router

    def stat(self, request: StatRequest) -> Any:
        """A fake file per load path: size and inode from its hash, nlink from the call number."""
        raw = os.fsencode(str(request.path))
        if not raw.startswith(b"/lcs-load/"):
            self.other += 1
            return FORWARD
        _, _, pid, tid, thread, call = raw.split(b"/")
        if (int(pid), int(tid)) != (request.pid, request.tid):
            self.misattributed += 1
            raise Errno(errno.EXDEV)
        key = (int(pid), int(tid), int(thread), int(call))
        if key in self.seen:
            self.duplicates += 1
        self.seen.add(key)
        digest = fnv1a(raw)
        return Stat(size=digest & _MASK63, ino=digest ^ _INO_SALT, nlink=int(call) + 1, mode=0o640, type="regular")


@dataclass(frozen=True)
class ProgramResult:
    status: int
    calls: int
    ok: int
    misrouted: int
    errors: int
    stderr: str


async def _run_one(program: Path, router: Router) -> ProgramResult:
    async with spawn(
        [str(program), str(THREADS), str(CALLS)],
        router,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await process.communicate()
        status = await process.wait()
    counts = dict(item.split("=") for item in out.decode().split()) if out else {}
    return ProgramResult(
        status,
        *(int(counts.get(name, -1)) for name in ("calls", "ok", "misrouted", "errors")),
        stderr=err.decode(errors="replace"),
    )


async def _load(program: Path, router: Router) -> list[ProgramResult]:
    return list(await asyncio.gather(*(_run_one(program, router) for _ in range(PROCESSES))))


def _warm_up(factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Spawn once before counting descriptors: uvloop keeps a pipe for the
    whole process from its first subprocess on (not a leak of ours)."""

    async def spawn_once() -> None:
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(spawn_once())


@pytest.mark.slow
@needs_shim
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("mode", "loop"),
    [("sequential", "asyncio"), ("concurrent", "uvloop")],
    ids=["sequential-asyncio", "concurrent-uvloop"],
)
def test_every_reply_of_sixteen_processes_of_eight_threads_reaches_its_caller(
    c_program: Callable[[str], Path], fd_count: Any, mode: str, loop: str
) -> None:
    program = c_program("load_stat")
    _warm_up(LOOPS[loop])
    handler = LoadHandler()
    router = handler.router(concurrent=mode == "concurrent")
    before = fd_count.snapshot()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        results = runner.run(_load(program, router))
    elapsed = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    master_cpu = (cpu.ru_utime - usage.ru_utime) + (cpu.ru_stime - usage.ru_stime)

    expected = PROCESSES * THREADS * CALLS
    calls = sum(result.calls for result in results)
    ok = sum(result.ok for result in results)
    misrouted = sum(result.misrouted for result in results)
    failed = sum(result.errors for result in results)
    lost = expected - len(handler.seen)
    print(
        f"\nload ({mode}, {loop}): {PROCESSES} processes x {THREADS} threads x {CALLS} calls = {calls} calls "
        f"in {elapsed:.1f} s ({calls / elapsed:,.0f} calls/s, master CPU {master_cpu:.1f} s); "
        f"ok {ok}, misrouted {misrouted}, errors {failed}, lost {lost}, duplicates {handler.duplicates}, "
        f"misattributed {handler.misattributed}, other calls {handler.other}"
    )
    for result in results:
        assert result.status == 0, result
    assert calls == ok == expected
    assert (misrouted, failed, lost, handler.duplicates, handler.misattributed) == (0, 0, 0, 0, 0)
    fd_count.assert_unchanged(before)
