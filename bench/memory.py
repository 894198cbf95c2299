"""Memory of the master per idle session: RSS with 1, 100 and 1,000 sessions.

    python bench/memory.py [--sessions 1,100,1000] [--runs 3] [--loop uvloop|asyncio]

Each measurement is a fresh Python process (the master) on ``--loop``:

- ``pair``:  N ``Master.pair()`` sessions, each served by ``router.serve``
             (one task per session, waiting in ``receive_call``); the slave
             ends are kept open in the same process, and each session has
             answered one stat call from a Python ``Slave`` first.
- ``spawn``: ``spawn(["idle_tree", N, PATH], router)``: N real processes
             that each made one stat call through the shim (so each
             registered its own channel) and then sit idle.

The master's VmRSS (from ``/proc/self/status``, after ``gc.collect()``) is
taken once every session has answered its call. Figures: median over
``--runs`` of RSS in MiB, and the per-session cost = (RSS(N) − RSS(1)) /
(N − 1) in KiB. Kernel socket buffers are not in RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def pair_sessions(n: int) -> int:
    from libc_service import Master, Slave

    import pymaster

    router = pymaster.answering_router()
    masters, slaves, tasks = [], [], []
    for _ in range(n):
        master, sock = Master.pair()
        masters.append(master)
        slaves.append(Slave(sock))
        tasks.append(asyncio.ensure_future(router.serve(master)))
    loop = asyncio.get_running_loop()

    def ask_all() -> None:
        for slave in slaves:
            slave.call("stat", path="/etc/hostname")

    await loop.run_in_executor(None, ask_all)
    gc.collect()
    rss = rss_kib()
    for master in masters:
        master.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return rss


async def spawn_sessions(n: int) -> int:
    from libc_service import spawn

    import pymaster

    router = pymaster.answering_router()
    program = [_common.build("idle_tree"), str(n), "/etc/hostname"]
    answered = 0
    done = asyncio.Event()

    def count(decision: object) -> None:
        nonlocal answered
        answered += 1
        if answered == n:
            done.set()

    router.observe(count)  # type: ignore[arg-type]
    async with spawn(
        program, router, stdin=subprocess.PIPE, shim=pymaster.REPO / "libc_service" / "_shim.so"
    ) as process:
        await asyncio.wait_for(done.wait(), 120)
        gc.collect()
        rss = rss_kib()
        assert process.stdin is not None
        process.stdin.close()
    return rss


def child(mode: str, n: int, loop: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n + 256)), hard))
    os.environ.setdefault("BENCH_TREE", str(_common.ROOT))
    sys.path.insert(0, os.environ["BENCH_TREE"])
    coroutine = pair_sessions(n) if mode == "pair" else spawn_sessions(n)
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            print(runner.run(coroutine))
    else:
        print(asyncio.run(coroutine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,100,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.loop)
        return
    counts = [int(n) for n in args.sessions.split(",")]
    results: dict[str, dict[int, list[int]]] = {m: {n: [] for n in counts} for m in ("pair", "spawn")}
    for _ in range(args.runs):
        for mode in results:
            for n in counts:
                out = _common.run([_common.PYTHON, __file__, "--loop", args.loop, "--child", mode, str(n)])
                results[mode][n].append(int(out.split()[-1]))
    print(f"# memory: master VmRSS with N idle sessions, loop={args.loop}, median of {args.runs} runs")
    print(f"# {_common.machine()}")
    rows = []
    for mode, per_n in results.items():
        base = _common.median(per_n[counts[0]])
        for n in counts:
            rss = _common.median(per_n[n])
            per = f"{(rss - base) / (n - counts[0]):.1f}" if n != counts[0] else ""
            rows.append((mode, n, f"{rss / 1024:.1f}", per))
    print(_common.table(rows, ("sessions via", "N", "RSS MiB", f"KiB per extra session (vs N={counts[0]})")))


if __name__ == "__main__":
    main()
