"""Cost of a call as the policy grows: the shim's rule table and the Router's dispatch.

Two curves, each against its floor:

- **shim**: ``stat`` of a path outside every granted tree, under a
  ``FORWARD``-default policy whose one handler covers ``under()`` of N
  trees (learnt policies grant single files: N grows). The rule table
  decides it in the shim; the floor is the same program run natively.
  ``bench/stat_loop.c threads 1 CALLS PATH`` times the calls.
- **router**: ``Router.decide`` of a request no route takes, with R
  routes each ``under()`` of its own tree (every route tried, then the
  default), in the master's Python; the floor is one route.

Usage: ``python bench/policy_scale.py [--calls N] [--runs N]``. Prints two tables (µs per call, medians).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import PurePosixPath
from typing import Any

import _common

from libc_service import FORWARD, Router, spawn
from libc_service.policy.conditions import under
from libc_service.protocol.requests import StatRequest

TREES = (1, 100, 300, 500, 1_000, 10_000)
ROUTES = (1, 10, 100, 1_000)


def _trees(count: int) -> list[str]:
    return [f"/srv/app/tree{index:05d}/lib/module{index}.py" for index in range(count)]


def _policy(count: int) -> Router:
    router = Router(default=FORWARD)

    @router.on("open", "openat", "stat", "lstat", "access", when=under(*_trees(count)))
    def granted(request: Any) -> Any:
        return FORWARD

    return router


async def _shim_us(count: int | None, calls: int) -> float:
    """µs per stat of an unrelated path; count None: native."""
    argv = [_common.build("stat_loop"), "threads", "1", str(calls), "/etc/hostname"]
    if count is None:
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
    else:
        async with spawn(argv, _policy(count), stdout=asyncio.subprocess.PIPE) as slave:
            out, _ = await slave.communicate()
    fields = dict(item.split("=") for item in out.decode().split())
    return 1e6 * float(fields["seconds"]) / float(fields["calls"])


def _router_us(routes: int, calls: int) -> float:
    router = Router(default=FORWARD)
    for number in range(routes):

        def handler(request: Any) -> Any:
            return FORWARD

        handler.__name__ = f"tree{number}"
        router.on("stat", when=under(f"/srv/app/tree{number:05d}"))(handler)
    request = StatRequest(function="stat", pid=1, tid=1, request_id=1, path=PurePosixPath("/etc/hostname"))

    async def loop() -> float:
        await router.decide(request)  # the index is built on first use
        started = time.perf_counter()
        for _ in range(calls):
            await router.decide(request)
        return 1e6 * (time.perf_counter() - started) / calls

    return asyncio.run(loop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="stat calls per shim run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(_common.machine())
    rows = []
    native = _common.median([asyncio.run(_shim_us(None, args.calls)) for _ in range(args.runs)])
    rows.append(["native", f"{native:.2f}", "1.00×"])
    for count in TREES:
        figure = _common.median([asyncio.run(_shim_us(count, args.calls)) for _ in range(args.runs)])
        rows.append([f"{count:,} trees", f"{figure:.2f}", f"{figure / native:.2f}×"])
    print("\nstat of an unrelated path, decided by the shim's rule table (µs per call)")
    print(_common.table(rows, ["policy", "µs", "vs native"]))
    rows = []
    for routes in ROUTES:
        figure = _common.median([_router_us(routes, 20_000) for _ in range(args.runs)])
        rows.append([f"{routes:,} routes", f"{figure:.2f}"])
    print("\nRouter.decide of a request no route takes (µs per call)")
    print(_common.table(rows, ["policy", "µs"]))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
