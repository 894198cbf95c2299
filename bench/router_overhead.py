"""The Router's added cost per call over a bare Master loop.

Same setup for every variant: one ``Master.pair()``, one Python ``Slave``
thread doing ``--calls`` stat calls back to back, each timed on the slave
side (send to reply, ``perf_counter_ns``). The master answers every call
with the same ``Stat``:

- ``bare``:     ``call = await master.receive_call(); await call.send(STAT)``
- ``router``:   ``await router.serve(master)`` with one sync
  ``@router.on("stat")`` handler returning that ``Stat``
- ``observed``: the same router with one observer attached

Variants run interleaved for ``--rounds`` rounds on each loop (asyncio,
uvloop); a round's figure is the median call, the figure printed is the
median of the rounds, and a difference is the median of the per-round
differences (so a drift of the machine between rounds cancels). The slave
sends one prebuilt request (its own tid), so what varies between variants
is the master side only.

``--pin`` as in the other bench scripts: ``same`` (default) runs the loop
thread and the slave thread on CPU 0, ``split`` the slave on CPU 1, ``none``
leaves it to the scheduler (bimodal on a 2-CPU VM: a round trip is either a
same-CPU switch or a cross-CPU wake-up, and the figures jump between the two).

A second table gives the same three variants without any I/O: ``handle()``
on a stub call whose sends do nothing, best of 5 runs of ``--cpu-calls``.
That is the router's own CPU cost per call, free of the thread wake-ups
that dominate (and blur) the round trip.

    python bench/router_overhead.py [--calls 20000] [--rounds 5] [--loop asyncio|uvloop|both]
                                    [--pin same|split|none]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from libc_service import Decision, Master, Router, SessionClosed, Slave, Stat, deny
from libc_service.protocol.requests import StatRequest

STAT = Stat(size=4242, mode=0o644, type="regular", nlink=1, ino=7, mtime=1_700_000_000_000_000_000)
WARMUP = 2_000
PINNINGS = ("same", "split", "none")
#: CPUs for the loop thread and the slave thread under each pinning.
CPUS: dict[str, tuple[set[int], set[int]] | None] = {"same": ({0}, {0}), "split": ({0}, {1}), "none": None}


def pin(pinning: str, role: int) -> None:
    """Pin the calling thread (role 0: the loop, 1: the slave)."""
    cpus = CPUS[pinning]
    if cpus is not None:
        os.sched_setaffinity(0, cpus[role])  # 0: the calling thread


def slave_thread(slave: Slave, calls: int, samples: list[int], pinning: str) -> None:
    """Do ``WARMUP + calls`` stat calls; record the last ``calls`` round trips (ns)."""
    pin(pinning, 1)
    request = StatRequest(path="/bench", pid=1, tid=threading.get_native_id(), request_id=1)
    clock = time.perf_counter_ns
    call = slave.send_request
    for _ in range(WARMUP):
        call(request)
    for _ in range(calls):
        started = clock()
        call(request)
        samples.append(clock() - started)
    slave.close()


async def bare(master: Master) -> None:
    try:
        while True:
            call = await master.receive_call()
            await call.send(STAT)
    except SessionClosed:
        pass
    finally:
        master.close()


def stat_router(observed: bool) -> Router:
    router = Router(default=deny())

    @router.on("stat")
    def stat(req: StatRequest) -> Stat:
        return STAT

    if observed:
        seen = [0]

        @router.observe
        def count(decision: Decision) -> None:
            seen[0] += 1

    return router


def variants() -> dict[str, Callable[[Master], Awaitable[None]]]:
    return {
        "bare": bare,
        "router": stat_router(observed=False).serve,
        "observed": stat_router(observed=True).serve,
    }


async def one_run(serve: Callable[[Master], Awaitable[None]], calls: int, pinning: str) -> float:
    """One session; the median slave-side round trip in µs."""
    master, sock = Master.pair()
    slave = Slave(sock)
    samples: list[int] = []
    thread = threading.Thread(target=slave_thread, args=(slave, calls, samples, pinning))
    serving = asyncio.ensure_future(serve(master))
    thread.start()
    await serving
    thread.join()
    assert len(samples) == calls, "the slave stopped early"
    return statistics.median(samples) / 1000


def measure(loop_name: str, calls: int, rounds: int, pinning: str) -> dict[str, list[float]]:
    """Per-round median round trips (µs) of each variant, rounds interleaved."""
    per_round: dict[str, list[float]] = {name: [] for name in variants()}

    async def main() -> None:
        pin(pinning, 0)
        servers = variants()
        for _ in range(rounds):
            for name, serve in servers.items():
                per_round[name].append(await one_run(serve, calls, pinning))

    with asyncio.Runner(loop_factory=_factory(loop_name)) as runner:
        runner.run(main())
    return per_round


def paired(minuend: list[float], subtrahend: list[float]) -> float:
    """The median of per-round differences."""
    return statistics.median(a - b for a, b in zip(minuend, subtrahend))


class StubCall:
    """A call whose replies go nowhere: the router's CPU cost without I/O.

    It implements the public part of :class:`libc_service.endpoints.master.Call` the
    router uses (the dispatch contract), nothing private.
    """

    __slots__ = ("request",)

    def __init__(self, request: StatRequest) -> None:
        self.request = request

    @property
    def function(self) -> str:
        return self.request.function

    async def send(self, result: Any, errno: int = 0) -> None:
        pass

    async def send_with_fds(self, result: Any, fds: Any, errno: int = 0) -> None:
        pass

    async def use_slave_credentials(self) -> None:
        pass

    def answer(self, answer: Any) -> bool:
        return True

    def try_send(self, result: Any, fds: Any = (), errno: int = 0) -> bool:
        return True

    def try_forward(self) -> bool:
        return True

    async def flush(self) -> None:
        pass

    @property
    def session(self) -> str:
        return "stub"

    def abandon(self) -> None:
        pass


def cpu_cost(loop_name: str, calls: int) -> dict[str, float]:
    """ns per call, best of 5, for each variant on a stub call."""
    call: Any = StubCall(StatRequest(path="/bench", pid=1, tid=1, request_id=1))
    routed, observed = stat_router(observed=False), stat_router(observed=True)
    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "bare": lambda: call.send(STAT),
        "router": lambda: routed.handle(call),
        "observed": lambda: observed.handle(call),
    }
    best: dict[str, float] = {}

    async def main() -> None:
        clock = time.perf_counter_ns
        for name, step in steps.items():
            runs = []
            for _ in range(5):
                started = clock()
                for _ in range(calls):
                    await step()
                runs.append((clock() - started) / calls)
            best[name] = min(runs)

    with asyncio.Runner(loop_factory=_factory(loop_name)) as runner:
        runner.run(main())
    return best


def _factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed stat calls per run (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs per variant (default 5)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--pin", choices=PINNINGS, default="same", help="thread placement (default same)")
    parser.add_argument("--cpu-calls", type=int, default=200_000, help="calls per no-I/O run (default 200000)")
    args = parser.parse_args(argv)
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    print(
        f"python {sys.version.split()[0]}, {args.calls} stat calls per run, median of {args.rounds} rounds, "
        f"pinning {args.pin}"
    )
    print(f"{'loop':8} {'bare µs':>8} {'router µs':>10} {'+observer µs':>13} {'router−bare':>12} {'observer':>9}")
    for loop_name in loops:
        rounds = measure(loop_name, args.calls, args.rounds, args.pin)
        median = {name: statistics.median(values) for name, values in rounds.items()}
        print(
            f"{loop_name:8} {median['bare']:8.2f} {median['router']:10.2f} {median['observed']:13.2f} "
            f"{paired(rounds['router'], rounds['bare']):12.2f} {paired(rounds['observed'], rounds['router']):9.2f}"
        )
    print(f"\nno I/O (stub call), ns per call, best of 5 x {args.cpu_calls}")
    print(f"{'loop':8} {'bare ns':>8} {'router ns':>10} {'+observer ns':>13} {'router−bare':>12} {'observer':>9}")
    for loop_name in loops:
        cpu = cpu_cost(loop_name, args.cpu_calls)
        print(
            f"{loop_name:8} {cpu['bare']:8.0f} {cpu['router']:10.0f} {cpu['observed']:13.0f} "
            f"{cpu['router'] - cpu['bare']:12.0f} {cpu['observed'] - cpu['router']:9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
