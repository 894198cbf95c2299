"""Per-call cost of the foundation: ``Master.receive()`` + ``Master.send()``.

One ``Master.pair()``; a Python ``Slave`` in a thread makes stat calls one
after another; the master answers each with a ``Stat``. Measured per call:

- **slave round trip**: ``perf_counter_ns`` around ``slave.call(...)`` in
  the slave thread (request built and validated, encoded, sent, reply
  received and decoded);
- **master receive+send (wall)**: ``perf_counter_ns`` from entering
  ``receive()`` to ``send()`` returning; includes waiting for the slave;
- **master receive+send (CPU)**: ``thread_time_ns`` of the loop thread over
  the same span: the master's own work per call, without the wait;
- **send**: ``perf_counter_ns`` around ``send()`` alone.

Variants: ``call`` uses ``slave.call("stat", path=...)`` (pydantic
validation on the slave side); ``prebuilt`` sends one prebuilt request
with ``slave.send_request``, leaving the channel and the master. Both run
on the default asyncio loop and on uvloop when installed, interleaved, for
``--rounds`` rounds; figures are medians of the round medians.

    python bench/master_roundtrip.py                       # 20,000 calls, pinned to one CPU
    python bench/master_roundtrip.py --calls 50000 --pin split
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table  # noqa: E402

from libc_service import Master, Slave, Stat  # noqa: E402

from libc_service.protocol import wire_replies  # noqa: E402

from libc_service.protocol import wire_requests  # noqa: E402
from libc_service.protocol.requests import StatRequest  # noqa: E402

PATH = "/usr/share/zoneinfo/Europe/Paris"
STAT = Stat(
    dev=2049,
    ino=1234567,
    mode=0o644,
    type="regular",
    nlink=1,
    size=2962,
    blksize=4096,
    blocks=8,
    atime=1_700_000_000_123_456_789,
    mtime=1_700_000_000_123_456_789,
    ctime=1_700_000_000_123_456_789,
)


def _loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {"asyncio": None}
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: asyncio only", file=sys.stderr)
    else:
        loops["uvloop"] = uvloop.new_event_loop
    return loops


def _pin(cpu: int | None) -> None:
    """Pin the calling thread (Linux: pid 0 is the calling thread)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


@dataclass
class Run:
    slave_ns: list[int]
    master_wall_ns: list[int]
    master_cpu_ns: list[int]
    send_ns: list[int]
    seconds: float


def _slave_thread(slave: Slave, variant: str, warmup: int, calls: int, cpu: int | None, out: list[int]) -> None:
    _pin(cpu)
    prebuilt = StatRequest(path=PATH, pid=os.getpid(), tid=threading.get_native_id(), request_id=1)
    clock = time.perf_counter_ns
    if variant == "call":

        def one() -> Any:
            return slave.call("stat", path=PATH)
    else:

        def one() -> Any:
            return slave.send_request(prebuilt)

    for _ in range(warmup):
        one()
    for _ in range(calls):
        t0 = clock()
        one()
        out.append(clock() - t0)


async def _master(variant: str, warmup: int, calls: int, slave_cpu: int | None) -> Run:
    master, sock = Master.pair()
    slave = Slave(sock)
    slave_ns: list[int] = []
    thread = threading.Thread(target=_slave_thread, args=(slave, variant, warmup, calls, slave_cpu, slave_ns))
    wall: list[int] = []
    cpu: list[int] = []
    send: list[int] = []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    thread.start()
    for _ in range(warmup):
        await master.receive()
        await master.send(STAT)
    started = time.perf_counter()
    for _ in range(calls):
        c0, t0 = cpu_clock(), clock()
        await master.receive()
        t1 = clock()
        await master.send(STAT)
        t2, c2 = clock(), cpu_clock()
        wall.append(t2 - t0)
        cpu.append(c2 - c0)
        send.append(t2 - t1)
    seconds = time.perf_counter() - started
    await asyncio.to_thread(thread.join)
    slave.close()
    master.close()
    return Run(slave_ns, wall, cpu, send, seconds)


def _codec_ns() -> list[tuple[str, float]]:
    """Pure codec cost per call (no I/O), best of 5."""
    request = StatRequest(path=PATH, pid=1, tid=1, request_id=1)
    data, fds = wire_requests.encode_request(request)
    reply = wire_replies.ReplyMessage("stat", 1, 1, STAT)
    reply_data = wire_replies.encode_reply(reply)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("StatRequest(...) validated", lambda: StatRequest(path=PATH, pid=1, tid=1, request_id=1)),
        ("encode_request", lambda: wire_requests.encode_request(request)),
        ("decode_request", lambda: wire_requests.decode_request(data, fds)),
        ("encode_reply(Stat)", lambda: wire_replies.encode_reply(reply)),
        ("decode_reply(Stat)", lambda: wire_replies.decode_reply(reply_data)),
    ]
    number = 20_000
    return [(name, min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9) for name, fn in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per run (default 20,000)")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians of round medians")
    parser.add_argument(
        "--pin",
        choices=("same", "split", "none"),
        default="same",
        help="same: both threads on CPU 0; split: master CPU 0, slave CPU 1; none: the scheduler",
    )
    parser.add_argument("--variants", default="call,prebuilt")
    args = parser.parse_args()

    master_cpu = None if args.pin == "none" else 0
    slave_cpu = {"same": 0, "split": 1, "none": None}[args.pin]
    if args.pin == "split" and (os.cpu_count() or 1) < 2:
        sys.exit("--pin split needs two CPUs")
    original = os.sched_getaffinity(0)
    loops = _loops()
    variants = args.variants.split(",")

    print(machine())
    print(f"calls={args.calls} warmup={args.warmup} rounds={args.rounds} pin={args.pin}")
    results: dict[tuple[str, str], list[Run]] = {(l, v): [] for l in loops for v in variants}
    try:
        _pin(master_cpu)
        for _ in range(args.rounds):
            for loop_name, factory in loops.items():
                for variant in variants:
                    with asyncio.Runner(loop_factory=factory) as runner:
                        run = runner.run(_master(variant, args.warmup, args.calls, slave_cpu))
                    assert len(run.slave_ns) == args.calls
                    results[loop_name, variant].append(run)
    finally:
        os.sched_setaffinity(0, original)

    def med(runs: list[Run], field: str) -> str:
        return f"{statistics.median(statistics.median(getattr(r, field)) for r in runs) / 1000:.2f}"

    rows = []
    for (loop_name, variant), runs in results.items():
        rate = statistics.median(args.calls / r.seconds for r in runs)
        p99 = statistics.median(sorted(r.slave_ns)[int(len(r.slave_ns) * 0.99)] for r in runs) / 1000
        rows.append(
            [
                loop_name,
                variant,
                med(runs, "slave_ns"),
                f"{p99:.1f}",
                med(runs, "master_wall_ns"),
                med(runs, "master_cpu_ns"),
                med(runs, "send_ns"),
                f"{rate:,.0f}",
            ]
        )
    print()
    print(
        table(
            rows,
            [
                "loop",
                "variant",
                "slave round trip µs",
                "p99 µs",
                "master recv+send µs (wall)",
                "master recv+send µs (CPU)",
                "send µs",
                "calls/s",
            ],
        )
    )
    print()
    print(table([[name, f"{ns:,.0f}"] for name, ns in _codec_ns()], ["codec, no I/O", "ns per call"]))


if __name__ == "__main__":
    main()
