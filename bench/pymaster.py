"""Run a program as a slave of a benchmark Router (the Python master under test).

    python bench/pymaster.py [--loop uvloop|asyncio] [--concurrent] MODE -- CMD [ARG...]

MODE ``forward``: ``Router(default=FORWARD)``; every call is done by the slave.
MODE ``answer``: the same answers as ``bench/floor_master.c answer`` — stat/lstat get
a fixed ``Stat`` (size 4242, mode 0644), open/openat are answered by
``WithFds`` of an ``os.open`` in the master, everything else is forwarded.

Exits with the program's status. The program's stdout passes through.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

#: BENCH_TREE names a checkout whose libc_service to measure (before/after
#: comparisons); the shim is always this checkout's.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE", str(REPO)))

from libc_service import FORWARD, Router, Stat, WithFds, spawn  # noqa: E402
from libc_service.protocol.openflags import OS_FLAGS  # noqa: E402
from libc_service.protocol.requests import LstatRequest, OpenatRequest, OpenRequest, StatRequest  # noqa: E402

#: The floor's fixed answer (bench/floor_master.c, stat and answer modes).
FAKE_STAT = Stat(size=4242, mode=0o644, nlink=1, blksize=4096, blocks=16)


def answering_router(concurrent: bool = False) -> Router:
    """stat answered with a fixed Stat, open with a descriptor opened here."""
    router = Router(default=FORWARD, concurrent=concurrent)

    @router.on("stat", "lstat")
    def fixed_stat(request: StatRequest | LstatRequest) -> Stat:
        """Every file is a 4242-byte regular file."""
        return FAKE_STAT

    @router.on("open", "openat")
    def open_here(request: OpenRequest | OpenatRequest) -> Any:
        """Open in the master and hand the descriptor over."""
        if any(flag.startswith("resolve_") for flag in request.flags):
            return FORWARD
        flags = os.O_CLOEXEC
        for name in request.flags:
            flags |= OS_FLAGS[name]
        fd = os.open(request.path, flags, request.mode or 0, dir_fd=request.dirfd)
        return WithFds(0, [fd])

    return router


def forwarding_router(concurrent: bool = False) -> Router:
    """Every call is done by the slave itself."""
    return Router(default=FORWARD, concurrent=concurrent)


async def serve(argv: list[str], router: Router) -> int:
    async with spawn(argv, router, shim=REPO / "libc_service" / "_shim.so") as process:
        return await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--concurrent", action="store_true", help="Router(concurrent=True)")
    parser.add_argument(
        "--busy-poll",
        type=float,
        default=0,
        metavar="US",
        help="Master.busy_poll_ns in µs (0: off; checkouts without it ignore it)",
    )
    parser.add_argument("mode", choices=("forward", "answer"))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program given (put it after --)")
    router = (answering_router if args.mode == "answer" else forwarding_router)(args.concurrent)
    if args.busy_poll:
        from libc_service import Master

        Master.busy_poll_ns = int(args.busy_poll * 1000)
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(command, router))
    return asyncio.run(serve(command, router))


if __name__ == "__main__":
    sys.exit(main())
