"""Sandboxed jobs per second from a running asyncio program.

Where users of an asyncio library feel the framework: a server that runs
short jobs. Each row runs ``true`` (by absolute path: no ``PATH`` search)
``--jobs`` times from one running loop (uvloop when installed), first one
job at a time, then ``--parallel`` at a time, and prints jobs per second
(median of ``--runs``) and the ratio to the floor — a plain
``asyncio.create_subprocess_exec`` measured in the same run.

Rows:

- ``subprocess``: ``asyncio.create_subprocess_exec`` (the floor);
- ``spawn``: ``spawn(argv, router)`` (the shim, a ``FORWARD`` router);
- ``spawn+sandbox``: with ``Sandbox(allow_read=["/"], allow_write=["/tmp"])``;
- ``spawn+sandbox+network``: the same sandbox with ``network=True`` (no network
  namespace, no socket filter): what the namespace costs;
- ``spawn+seccomp``: ``seccomp=True`` (no sandbox);
- ``spawn+sandbox+seccomp``: both;
- ``sandlock``: sandlock's Python API (Landlock + seccomp notify) with the same
  trees, in a worker thread (its ``popen().wait()`` blocks), when installed.

Usage: ``python bench/spawnrate.py [--jobs N] [--parallel N] [--runs N] [--rows NAME,...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable

import logging

import _common

from libc_service import FORWARD, Router, Sandbox, spawn

TRUE = shutil.which("true", path="/usr/bin:/bin") or "/bin/true"
SANDBOX = Sandbox(allow_read=["/"], allow_write=["/tmp"])
NETWORKED = Sandbox(allow_read=["/"], allow_write=["/tmp"], network=True)

Job = Callable[[], Awaitable[int]]


def _jobs(router: Router) -> dict[str, Job]:
    async def subprocess() -> int:
        process = await asyncio.create_subprocess_exec(TRUE)
        return await process.wait()

    def slave(**options: object) -> Job:
        async def job() -> int:
            async with spawn([TRUE], router, **options) as process:  # type: ignore[arg-type]
                return await process.wait()

        return job

    rows: dict[str, Job] = {
        "subprocess": subprocess,
        "spawn": slave(),
        "spawn+sandbox": slave(sandbox=SANDBOX),
        "spawn+sandbox+network": slave(sandbox=NETWORKED),
        "spawn+seccomp": slave(seccomp=True),
        "spawn+sandbox+seccomp": slave(sandbox=SANDBOX, seccomp=True),
    }
    if importlib.util.find_spec("sandlock") is not None:
        from sandlock import Sandbox as Sandlock

        async def sandlocked() -> int:
            def run() -> int:
                # One sandbox per job: a sandlock Sandbox runs one program at a time.
                sandlock = Sandlock(fs_readable=["/"], fs_writable=["/tmp"])
                return 0 if sandlock.popen([TRUE]).wait().success else 1

            return await asyncio.to_thread(run)

        rows["sandlock"] = sandlocked
    return rows


async def _rate(job: Job, jobs: int, parallel: int) -> float:
    """Jobs per second, ``parallel`` at a time."""
    await job()  # warm: caches, the first fork of the loop
    limit = asyncio.Semaphore(parallel)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with limit:
            failures += (await job()) != 0

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{failures} of {jobs} jobs failed")
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", help="comma-separated rows to run (default: all)")
    args = parser.parse_args()
    logging.getLogger("libc_service").setLevel(logging.ERROR)  # the seccomp rows' warning, once per job
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    print(_common.machine(), "loop=uvloop" if factory else "loop=asyncio")

    async def measure() -> list[list[str]]:
        jobs = _jobs(Router(default=FORWARD))
        chosen = args.rows.split(",") if args.rows else list(jobs)
        figures: dict[str, tuple[float, float]] = {}
        for name in ["subprocess", *[row for row in chosen if row != "subprocess"]]:
            sequential = _common.median([await _rate(jobs[name], args.jobs, 1) for _ in range(args.runs)])
            parallel = _common.median([await _rate(jobs[name], args.jobs, args.parallel) for _ in range(args.runs)])
            figures[name] = (sequential, parallel)
        floor = figures["subprocess"]
        return [
            [name, f"{seq:.0f}", f"{seq / floor[0]:.2f}×", f"{par:.0f}", f"{par / floor[1]:.2f}×"]
            for name, (seq, par) in figures.items()
        ]

    with asyncio.Runner(loop_factory=factory) as runner:
        rows = runner.run(measure())
    header = ["row", "jobs/s, one at a time", "÷ subprocess", f"jobs/s, {args.parallel} at a time", "÷ subprocess"]
    print(_common.table(rows, header))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
