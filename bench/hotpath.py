"""The master's CPU cost per call, without a second process.

    python bench/hotpath.py [--calls N] [--runs R] [--loop uvloop|asyncio]

A raw socket in the same process plays the slave: it writes an encoded
request, the Master/Router under test receives, decides and replies, the
raw socket reads the reply. No context switch, no wake-up: what is left is
the Python work per call (plus two non-blocking send/recv syscalls on the
"slave" side, measured alone as ``transport``), so before/after figures of
an optimisation are steadier here than through the shim.

Rows: ``codec`` (decode_request + encode_reply only), ``channel`` (the
same through the master's sans-I/O channel state: one call opened, answered
and sent), ``master`` (the
explicit receive/send), ``router stat`` (Router with a stat handler
returning a Stat), ``router open`` (WithFds of an os.open), ``router
forward``, and ``serve stat``: the same stat router running ``router.serve``
as a task, the raw socket waiting on the loop for each reply (so the master
takes its waiting path every call: one loop iteration, the reader callback).
``callback stat``/``callback open``: the master's reader callback called
directly, answering one call each time (the path a session takes when the
router's handlers are all sync and its task waits). Figures: median over
runs of the mean µs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

sys.path.insert(0, os.environ.get("BENCH_TREE", str(_common.ROOT)))

from libc_service import Master, Router  # noqa: E402

from libc_service.protocol import wire_header  # noqa: E402

from libc_service.protocol import wire_replies  # noqa: E402

from libc_service.protocol import wire_requests  # noqa: E402
from libc_service.protocol.requests import OpenRequest, StatRequest  # noqa: E402

import pymaster  # noqa: E402

STAT = wire_requests.encode_request(StatRequest(path="/etc/hostname", pid=7, tid=7, request_id=1))[0]
OPEN = wire_requests.encode_request(OpenRequest(path="/etc/hostname", flags=["read_only"], pid=7, tid=7, request_id=1))[
    0
]


async def transport(n: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    start = time.perf_counter()
    for _ in range(n):
        b.send(STAT)
        a.recvmsg(wire_header.MAX_MESSAGE + 1, 64)
        a.send(STAT)
        b.recvmsg(wire_header.MAX_MESSAGE + 1, 64)
    elapsed = time.perf_counter() - start
    a.close()
    b.close()
    return elapsed / n


async def codec(n: int) -> float:
    reply = wire_replies.ReplyMessage("stat", 7, 1, pymaster.FAKE_STAT)
    start = time.perf_counter()
    for _ in range(n):
        wire_requests.decode_request(STAT, ())
        wire_replies.encode_reply(reply)
    return (time.perf_counter() - start) / n


async def channel_state(n: int) -> float:
    """``codec`` through the master's channel state (sans I/O): the protocol bookkeeping per call."""
    try:
        from libc_service.protocol.calls import MasterChannel
    except ImportError:  # a tree from before the channel state
        return float("nan")
    channel: MasterChannel[object] = MasterChannel()
    start = time.perf_counter()
    for _ in range(n):
        request = channel.receive(STAT, ())
        call = object()
        channel.open(call)
        channel.reply(call, request, pymaster.FAKE_STAT, 0, 0)
        channel.sent(call)
    return (time.perf_counter() - start) / n


async def seed_master(n: int) -> float:
    master, sock = Master.pair()
    sock.setblocking(False)
    start = time.perf_counter()
    async with master:
        for _ in range(n):
            sock.send(STAT)
            await master.receive()
            await master.send(pymaster.FAKE_STAT)
            sock.recv(256)
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed / n


def router_case(router: Router, data: bytes) -> Callable[[int], Awaitable[float]]:
    async def measure(n: int) -> float:
        master, sock = Master.pair()
        sock.setblocking(False)
        start = time.perf_counter()
        async with master:
            for _ in range(n):
                sock.send(data)
                call = await master.receive_call()
                await router.handle(call)
                _, ancdata, _, _ = sock.recvmsg(256, 64)
                for fd in _fds(ancdata):
                    os.close(fd)
        elapsed = time.perf_counter() - start
        sock.close()
        return elapsed / n

    return measure


def serve_case(router: Router, data: bytes) -> Callable[[int], Awaitable[float]]:
    """``router.serve(master)`` as a task; the raw socket sends, then waits for the reply."""

    async def measure(n: int) -> float:
        master, sock = Master.pair()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        server = asyncio.ensure_future(router.serve(master))
        await asyncio.sleep(0)
        start = time.perf_counter()
        for _ in range(n):
            sock.send(data)
            while True:
                try:
                    sock.recvmsg(256, 64)
                    break
                except BlockingIOError:
                    await _readable(loop, sock)
        elapsed = time.perf_counter() - start
        sock.close()
        await server
        return elapsed / n

    return measure


def callback_case(router: Router, data: bytes) -> Callable[[int], Awaitable[float]]:
    """The master's reader callback answering one call per wake-up, called directly.

    What a session costs per call when the router answers in the callback
    (sync handlers): recvmsg, decode, decide, encode, sendmsg, the check
    for a next datagram. Only where that path exists (this checkout on).
    """

    async def measure(n: int) -> float:
        master, sock = Master.pair()
        if not (hasattr(master, "_answer_now") or hasattr(master, "serve")):
            sock.close()
            master.close()
            return float("nan")
        sock.setblocking(False)
        server = asyncio.ensure_future(router.serve(master))
        await asyncio.sleep(0.01)  # the serve task waits: the callback may answer
        on_readable = master._on_readable
        start = time.perf_counter()
        for _ in range(n):
            sock.send(data)
            on_readable()
            _, ancdata, _, _ = sock.recvmsg(256, 64)
            for fd in _fds(ancdata):
                os.close(fd)
        elapsed = time.perf_counter() - start
        sock.close()
        await server
        return elapsed / n

    return measure


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    waiter = loop.create_future()
    loop.add_reader(sock.fileno(), waiter.set_result, None)
    try:
        await waiter
    finally:
        loop.remove_reader(sock.fileno())


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    import array

    fds: list[int] = []
    for _, _, data in ancdata:
        fds.extend(array.array("i", data))
    return fds


CASES: dict[str, Callable[[int], Awaitable[float]]] = {
    "transport": transport,
    "codec": codec,
    "channel": channel_state,
    "master": seed_master,
    "router stat": router_case(pymaster.answering_router(), STAT),
    "router open": router_case(pymaster.answering_router(), OPEN),
    "router forward": router_case(pymaster.forwarding_router(), STAT),
    "serve stat": serve_case(pymaster.answering_router(), STAT),
    "callback stat": callback_case(pymaster.answering_router(), STAT),
    "callback open": callback_case(pymaster.answering_router(), OPEN),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    with runner:
        for _ in range(args.runs):
            for name, case in CASES.items():
                results[name].append(runner.run(case(args.calls)) * 1e6)
    print(f"# hotpath: {args.calls} calls x {args.runs} runs, loop={args.loop}, unpinned")
    print(f"# {_common.machine()}")
    rows = [
        (name, f"{statistics.median(v):.2f}", f"{min(v):.2f}..{max(v):.2f}")
        for name, v in results.items()
        if not any(x != x for x in v)
    ]
    print(_common.table(rows, ("case", "median µs/call", "range over runs")))


if __name__ == "__main__":
    main()
