"""Per-call latency through the shim and through seccomp: native, Python master, C floor, fakeroot.

    python bench/latency.py [--calls 20000] [--runs 5] [--pin same,split,none] [--json FILE]

One C program (``tests/c/bench_calls.c``) times ``--calls`` stat(PATH) calls
and as many open(PATH)+close pairs, one at a time, and prints the median
nanoseconds per call. It runs under each master, interleaved, ``--runs``
times; the figure is the median of the runs' medians:

- ``native``     no shim, no master
- ``shim-inert`` the shim preloaded without a master (no ``LIBC_SERVICE_FD``):
                 every call goes straight to the real libc after the shim's
                 check — what a call the shim could allow by a local rule
                 would cost at best
- ``local``      the shim's static rule (``LIBC_SERVICE_LOCAL``, which
                 ``spawn()`` sets to the sandbox's read trees): the C floor
                 master runs, but read-only calls beneath the path's
                 directory go to the real libc with no round trip
- ``router``     ``bench/pymaster.py answer``: a Router whose stat handler
                 returns a fixed Stat and whose open handler returns
                 ``WithFds`` of an ``os.open`` (b)
- ``router-poll`` the same with ``Master.busy_poll_ns`` = 20 µs: the master
                 polls its socket a little after each reply instead of
                 going idle (what that buys cross-CPU; off by default)
- ``forward``    ``bench/pymaster.py forward``: ``Router(default=FORWARD)`` (c)
- ``floor``      ``bench/floor_master.c answer``: the same answers from a C poll()
                 loop (d) — the transport floor the ratios are taken to
- ``floor-fwd``  ``bench/floor_master.c forward``: the C floor of (c)
- ``fakeroot``   the same program under ``fakeroot`` (its stat is
                 intercepted and answered by the ``faked`` daemon; its open
                 is not intercepted)
- ``shim-answer`` the answers of ``seccomp`` below through the shim: the
                 same router, ``spawn()`` without seccomp (e)
- ``seccomp``    the program built ``-static`` (no shim) under
                 ``spawn(..., seccomp=True)`` with router (e): stat answered
                 with a fixed Stat written into the program's buffer, open
                 with ``WithFds`` of an ``os.open`` installed by
                 ``SECCOMP_IOCTL_NOTIF_ADDFD`` — the seccomp round trip
- ``seccomp-fwd`` the same with ``Router(default=FORWARD)``: every call is
                 continued in the kernel (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``)
- ``seccomp+shim`` the dynamic program under seccomp with router (e): the
                 shim relays each call (``FORWARD`` without asking the
                 router), then the kernel notifies it — what a dynamically
                 linked program pays for ``--seccomp``
- ``sandlock``   the static program under sandlock (``pip install sandlock``;
                 not a dependency) through its Python API,
                 ``Sandbox.run_with_handlers`` with Python ``Handler``s on
                 ``newfstatat`` and ``openat`` (the calls the static
                 program's stat and open make): stat answered with the same
                 fixed ``struct stat`` written into the program's buffer
                 (``HandlerCtx.write``) after reading its path
                 (``read_path``) — sandlock's equivalent of ``seccomp``'s
                 stat. Its open column is *not* a Python handler: sandlock
                 0.9 decides ``openat`` in its own (Rust) supervisor and
                 never calls a handler registered for it (counted: 0 calls
                 for 1,000 opens), so that column is its native supervisor.
                 Its sandbox (Landlock, the whole file system readable) is
                 on, as sandlock has no run without one. No ``split`` row:
                 ``taskset`` started under sandlock fails to load
- ``sandlock-fwd`` the same with handlers that read the path and answer
                 ``NotifAction.continue_()``: the equivalent of ``seccomp-fwd``'s stat

Pinning (``--pin``): ``same`` runs master and slave on CPU 0 (``taskset -c
0`` for both), ``split`` the master on CPU 0 and the slave on CPU 1 (every
round trip is two cross-CPU wake-ups), ``none`` leaves it to the scheduler
(bimodal on a 2-CPU VM). ``BENCH_TREE=DIR`` measures the libc_service of
another checkout (the shim stays this one's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

#: --tree NAME=PATH: other checkouts whose Python master to measure too.
TREES: dict[str, str] = {}
CONFIGS = (
    "native",
    "shim-inert",
    "local",
    "router",
    "router-poll",
    "forward",
    "floor",
    "floor-fwd",
    "fakeroot",
    "shim-answer",
    "seccomp",
    "seccomp-fwd",
    "seccomp+shim",
    "sandlock",
    "sandlock-fwd",
)
#: The static build of the timing program, for the seccomp rows (no shim can load).
_common.PROGRAMS["bench_calls_static"] = (("tests/c/bench_calls.c",), ("-static",))
CALLS = ("stat", "open_close")


def command(config: str, pinning: str, calls: int, path: str) -> list[str] | None:
    """The argv of one configuration, or None when its tool is missing.

    ``router[NAME]``/``forward[NAME]`` run the Python master of the tree
    given as ``--tree NAME=PATH``.
    """
    tree = None
    if "[" in config:
        config, name = config.rstrip("]").split("[", 1)
        tree = TREES[name]
    program = [_common.build("bench_calls"), str(calls), path]
    master = _common.pin_master(pinning)
    slave = _common.pin_slave(pinning) + program
    shim = _common.shim()
    if config == "native":
        return master + program
    if config == "shim-inert":
        return master + ["env", "-u", "LIBC_SERVICE_FD", f"LD_PRELOAD={shim}", *program]
    if config == "local":
        tree = os.path.dirname(os.path.abspath(path)) or "/"
        return master + [
            "env",
            f"LIBC_SERVICE_LOCAL={tree}",
            _common.build("floor_master"),
            "-s",
            shim,
            "answer",
            "--",
            *slave,
        ]
    if config in ("router", "forward", "router-poll"):
        mode = "forward" if config == "forward" else "answer"
        env = ["env", f"BENCH_TREE={tree}"] if tree else []
        poll = ["--busy-poll", "20"] if config == "router-poll" else []
        return master + env + [_common.PYTHON, str(_common.BENCH / "pymaster.py"), *poll, mode, "--", *slave]
    if config == "floor":
        return master + [_common.build("floor_master"), "-s", shim, "answer", "--", *slave]
    if config == "floor-fwd":
        return master + [_common.build("floor_master"), "-s", shim, "forward", "--", *slave]
    if config == "fakeroot":
        fakeroot = _common.need("fakeroot")
        return None if fakeroot is None else master + [fakeroot, "--", *slave]
    if config in ("sandlock", "sandlock-fwd"):
        if importlib.util.find_spec("sandlock") is None or pinning == "split":
            return None  # under sandlock, taskset (dynamic) dies in the loader: no split row
        slave = [_common.build("bench_calls_static"), str(calls), path]
        mode = "forward" if config == "sandlock-fwd" else "answer"
        return master + [_common.PYTHON, str(Path(__file__).resolve()), "serve", "sandlock", mode, "--", *slave]
    if config in ("shim-answer", "seccomp", "seccomp-fwd", "seccomp+shim"):
        if config in ("seccomp", "seccomp-fwd"):
            slave = _common.pin_slave(pinning) + [_common.build("bench_calls_static"), str(calls), path]
        transport = "shim" if config == "shim-answer" else "seccomp"
        mode = "forward" if config == "seccomp-fwd" else "answer"
        return master + [_common.PYTHON, str(Path(__file__).resolve()), "serve", transport, mode, "--", *slave]
    raise ValueError(config)


def serve(transport: str, mode: str, argv: list[str]) -> int:
    """``latency.py serve shim|seccomp answer|forward -- CMD``: the master of router (e).

    (e) is ``bench/pymaster.py``'s answering router with every open flag
    name mapped (``safepath.open_flags``), so that the seccomp transport's
    requests, which name every flag, are answered the same way.
    """
    import asyncio

    sys.path.insert(0, str(_common.ROOT))
    from libc_service import FORWARD, Router, Stat, WithFds, spawn
    from libc_service.acting.safepath import open_flags

    fixed = Stat(size=4242, mode=0o644, nlink=1, blksize=4096, blocks=16)
    router = Router(default=FORWARD)
    if mode == "answer":

        @router.on("stat", "lstat")
        def fixed_stat(request: Any) -> Any:
            """Every file is a 4242-byte regular file."""
            return fixed

        @router.on("open", "openat")
        def open_here(request: Any) -> Any:
            """Open in the master and hand the descriptor over."""
            flags, resolve = open_flags(request.flags)
            if resolve:
                return FORWARD
            fd = os.open(request.path, flags, request.mode or 0, dir_fd=request.dirfd)
            return WithFds(0, [fd])

    async def run() -> int:
        async with spawn(argv, router, seccomp=transport == "seccomp") as process:
            return await process.wait()

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def serve_sandlock(mode: str, argv: list[str]) -> int:
    """``latency.py serve sandlock answer|forward -- CMD``: the same answers from sandlock's Python handlers.

    The handlers run on sandlock's supervisor (Rust, calling into Python
    with the GIL held); the program's output is captured by sandlock and
    printed once it exited.
    """
    from sandlock import Handler, HandlerCtx, NotifAction, Sandbox

    # struct stat on x86_64 as router (e)'s fixed Stat packs it: a 4242-byte regular file.
    fixed = struct.pack("<QQQIIIiQqqqqqqqqq24x", 0, 0, 1, 0o100644, 0, 0, 0, 0, 4242, 4096, 16, 0, 0, 0, 0, 0, 0)
    at_fdcwd = (1 << 64) - 100

    class FixedStat(Handler):
        def handle(self, ctx: HandlerCtx) -> NotifAction:
            """Every file is a 4242-byte regular file (the path is read, as router (e)'s request is)."""
            if ctx.read_path() is None or not ctx.write(ctx.args[2], fixed):
                return NotifAction.errno(14)
            return NotifAction.returns(0) if mode == "answer" else NotifAction.continue_()

    class OpenHere(Handler):
        def handle(self, ctx: HandlerCtx) -> NotifAction:
            """Open in the supervisor and hand the descriptor over."""
            path = ctx.read_path()
            if path is None:
                return NotifAction.errno(14)
            if mode == "forward" or ctx.args[0] != at_fdcwd:
                return NotifAction.continue_()
            flags = ctx.args[2] & 0xFFFFFFFF
            fd = os.open(path, flags & ~os.O_CLOEXEC | os.O_CLOEXEC, ctx.args[3] & 0o7777)
            return NotifAction.inject_fd_send(fd, newfd_flags=flags & os.O_CLOEXEC)

    class ReadPath(Handler):
        def handle(self, ctx: HandlerCtx) -> NotifAction:
            """Read the path and continue (the forward row's stat)."""
            return NotifAction.errno(14) if ctx.read_path() is None else NotifAction.continue_()

    stat_handler: Handler = FixedStat() if mode == "answer" else ReadPath()
    sandbox = Sandbox(fs_readable=["/"], fs_writable=["/tmp"])
    result = sandbox.run_with_handlers(argv, [("newfstatat", stat_handler), ("openat", OpenHere())])
    sys.stdout.buffer.write(result.stdout or b"")
    sys.stderr.buffer.write(result.stderr or b"")
    return 0 if result.success else (result.exit_code or 1)


def measure(
    pinnings: list[str], configs: list[str], calls: int, runs: int, path: str
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """pinning -> config -> call -> the runs' median ns."""
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for pinning in pinnings:
        per_config: dict[str, dict[str, list[float]]] = {c: {k: [] for k in CALLS} for c in configs}
        for _ in range(runs):
            for config in configs:
                argv = command(config, pinning, calls, path)
                if argv is None:
                    continue
                parsed = _common.fields(_common.run(argv))
                for call in CALLS:
                    per_config[config][call].append(parsed[call]["median_ns"])
        results[pinning] = {c: v for c, v in per_config.items() if v["stat"]}
    return results


def report(results: dict[str, dict[str, dict[str, list[float]]]], calls: int, runs: int, path: str) -> str:
    lines = [
        f"# latency: bench_calls {calls} {path}, {runs} interleaved runs, median of run medians",
        f"# {_common.machine()}",
        _common.noise(),
    ]
    for pinning, per_config in results.items():
        lines.append(f"\n## pin={pinning}")
        floor = {call: _common.median(per_config["floor"][call]) for call in CALLS} if "floor" in per_config else None
        rows = []
        for config, values in per_config.items():
            row: list[object] = [config]
            for call in CALLS:
                m = _common.median(values[call])
                row.append(f"{m / 1000:.2f}")
                row.append(f"{m / floor[call]:.2f}" if floor else "-")
                row.append(f"{min(values[call]) / 1000:.1f}..{max(values[call]) / 1000:.1f}")
            rows.append(row)
        lines.append(
            _common.table(rows, ("config", "stat µs", "÷floor", "stat range", "open+close µs", "÷floor", "open range"))
        )
        if "native" in per_config:
            native = {call: _common.median(per_config["native"][call]) for call in CALLS}
            lines.append(
                "÷native: "
                + "; ".join(
                    f"{config} stat {_common.median(v['stat']) / native['stat']:.2f}, "
                    f"open+close {_common.median(v['open_close']) / native['open_close']:.2f}"
                    for config, v in per_config.items()
                    if config in ("shim-inert", "local", "fakeroot")
                )
            )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        transport, mode, separator, *argv = sys.argv[2:]
        assert separator == "--" and transport in ("shim", "seccomp", "sandlock") and mode in ("answer", "forward")
        sys.exit(serve_sandlock(mode, argv) if transport == "sandlock" else serve(transport, mode, argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="repeat a run (up to 5 tries) while other processes used more than SHARE "
        "(0..1) of the machine; the default never repeats",
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pin", default="same,split,none", help="comma list of same, split, none")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--path", default="/etc/hostname")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run router and forward on the libc_service of checkout PATH "
        "(as router[NAME], forward[NAME]); repeatable",
    )
    args = parser.parse_args()
    _common.MAX_FOREIGN = args.max_foreign
    pinnings = args.pin.split(",")
    if unknown := set(pinnings) - set(_common.PINNINGS):
        parser.error(f"unknown pinning {unknown}")
    configs = args.configs.split(",")
    for spec in args.tree:
        name, _, path = spec.partition("=")
        TREES[name] = path
        configs += [f"{c}[{name}]" for c in ("router", "forward") if c in configs]
    results = measure(pinnings, configs, args.calls, args.runs, args.path)
    print(report(results, args.calls, args.runs, args.path))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"calls": args.calls, "runs": args.runs, "results": results, "tree": os.environ.get("BENCH_TREE")},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
