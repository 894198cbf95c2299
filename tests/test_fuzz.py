"""Fuzzing the master: hostile slaves on raw sockets, and grants never made.

The master runs as ``Router.serve`` on one event loop in a thread, serving
several sessions at once with a real handler set (:func:`hostile.fuzz_router`).
Hostile slaves (:mod:`hostile`) send mutated valid messages, random bytes,
lying lengths, huge counts and descriptor floods, hang up mid-call and are
killed — by a thread cutting their channel, and as real processes with
SIGKILL — while a well-behaved :class:`~libc_service.Slave` keeps asking
and checking its answers. The properties:

- ``serve`` never raises: every session ends normally;
- no descriptor leaks: ``/proc/self/fd`` is what it was once all sessions end;
- the master answers exactly the messages its own decoder accepts, with the
  handlers' answer, and closes the session on the first it rejects;
- other sessions are answered throughout;
- a malformed or failed call never turns into a *forward* or a success it
  should not get.

``LCS_FUZZ_SCALE=N`` multiplies the volume of the raw-socket fuzzer (CI: 1).
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

import hostile
from hostile import FD_KINDS, SELF, Message, Session, Tally
from libc_service import FORWARD, PASS, AddrInfo, Master, Router, Slave, Stat, WithFds, deny, spawn
from libc_service.protocol import wire_header
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_requests
from libc_service.protocol.requests import FUNCTIONS, REQUEST_TYPES, Request
from shimtools import PYTHON, needs_shim
from strategies import requests

PATIENCE = hostile.PATIENCE
SCALE = max(1, int(os.environ.get("LCS_FUZZ_SCALE", "1")))
HOSTILE = Path(hostile.__file__).resolve()

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(autouse=True)
def _quiet_master(caplog: pytest.LogCaptureFixture) -> None:
    # Every rejected message logs a warning by design; thousands of them are noise here.
    caplog.set_level(logging.CRITICAL, logger="libc_service")


class LoopThread:
    """An event loop running in its own thread: the master process's loop."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()
        self._thread = threading.Thread(target=self.loop.run_forever, name="master-loop", daemon=True)
        self._thread.start()
        # Let the loop create whatever it creates lazily before anyone counts descriptors.
        self.submit(asyncio.sleep(0)).result(PATIENCE)

    def submit(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def serve(self, router: Router) -> tuple[Future[None], socket.socket]:
        """A new session served by ``router``; the slave's end of it."""
        master, theirs = Master.pair()
        return self.submit(router.serve(master)), theirs

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(PATIENCE)
        self.loop.close()


@pytest.fixture(params=list(LOOPS))
def master_loop(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    loop = LoopThread(LOOPS[request.param])
    yield loop
    loop.close()


def play(loop: LoopThread, router: Router, messages: list[Message]) -> Tally:
    """One hostile session; asserts that ``serve`` ended normally."""
    served, theirs = loop.serve(router)
    session = Session(theirs)
    session.play(messages)
    assert served.result(PATIENCE) is None
    return session.tally


# ------------------------------------------------------- hypothesis fuzzing

fd_kinds = st.sampled_from([*FD_KINDS, SELF])


@st.composite
def hostile_messages(draw: st.DrawFn) -> Message:
    """A valid request, a mutation of one, random bytes, or the wrong descriptors."""
    request = draw(requests)
    data, placeholders = wire_requests.encode_request(request)
    right = tuple(draw(fd_kinds) for _ in placeholders)
    how = draw(st.sampled_from(["valid", "mutated", "mutated", "random", "fds"]))
    if how == "valid":
        return Message(data, right, hang_up=draw(st.booleans()), how=how)
    if how == "mutated":
        other, _ = wire_requests.encode_request(draw(requests))
        mutated, how = hostile.mutate(data, other, draw(st.randoms(use_true_random=False)))
        return Message(mutated, right, how=how)
    if how == "random":
        junk = draw(st.binary(max_size=wire_requests.REQUEST.size + 64))
        return Message(junk, draw(st.lists(fd_kinds, max_size=3).map(tuple)), how=how)
    wrong = draw(st.lists(fd_kinds, max_size=hostile.SCM_MAX_FD).filter(lambda kinds: len(kinds) != len(right)))
    return Message(data, tuple(wrong), how=how)


@given(messages=st.lists(hostile_messages(), min_size=1, max_size=6), concurrent=st.booleans())
@settings(max_examples=150)
def test_the_master_answers_what_its_decoder_accepts_and_closes_on_the_rest(
    master_loop: LoopThread, fd_count: Any, messages: list[Message], concurrent: bool
) -> None:
    before = fd_count.snapshot()
    tally = play(master_loop, hostile.fuzz_router(concurrent=concurrent), messages)
    assert not tally.violations
    fd_count.assert_unchanged(before)


# ------------------------------------------------- descriptor floods, by kind


@pytest.mark.parametrize("kind", [*FD_KINDS, SELF])
def test_every_kind_of_descriptor_is_closed_whether_the_message_is_answered_or_refused(
    master_loop: LoopThread, fd_count: Any, kind: str
) -> None:
    before = fd_count.snapshot()
    router = hostile.fuzz_router()
    stat = wire_requests.encode_request(
        REQUEST_TYPES["stat"].model_validate(
            {"function": "stat", "pid": 7, "tid": 7, "request_id": 1, "path": "/fuzz-ok/x", "dirfd": 3}
        )
    )[0]
    # The right count is answered (several times, on one session)...
    tally = play(master_loop, router, [Message(stat, (kind,))] * 5)
    assert (tally.answered, tally.violations) == (5, [])
    # ...one too many, the limit plus one, and a kernel-maximum flood close the session.
    for count in (2, 3, wire_header.MAX_REQUEST_FDS + 2, 64, hostile.SCM_MAX_FD):
        tally = play(master_loop, router, [Message(stat, (kind,) * count, how="flood")])
        assert (tally.closed_by_master, tally.violations) == (1, []), count
    fd_count.assert_unchanged(before)


# --------------------------------- many hostile sessions, one well-behaved


@dataclass
class GoodSlave:
    """A well-behaved Python slave asking in a loop and checking every answer.

    Each answered round notes how many hostile messages the master had
    dealt with by then (``storm()``; each hostile session waits for the
    master's answer to one before it sends the next): a master that left
    this session waiting while it served the others would deal with many
    of theirs between two of its rounds.
    """

    sock: socket.socket
    storm: Callable[[], int]
    answers: list[int] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with Slave(self.sock) as slave:
            i = 0
            while not self.stop.is_set():
                i += 1
                path = f"/fuzz-ok/good/{i}"
                reply = slave.call("stat", path=path)
                if (reply.result, reply.errno, reply.forwarded) != (hostile.stat_of(path.encode()), 0, False):
                    self.wrong.append(f"stat {path}: {reply}")
                reply = slave.call("open", path="/dev/null", flags={"read_only"})
                if len(reply.fds) != 1 or reply.errno or reply.forwarded:
                    self.wrong.append(f"open /dev/null: {reply}")
                for fd in reply.fds:
                    os.close(fd)
                reply = slave.call("getaddrinfo", node="localhost", service="http", protocol="tcp")
                if reply.result != [AddrInfo(address=IPv4Address("127.0.0.1"), port=80)]:
                    self.wrong.append(f"getaddrinfo: {reply}")
                self.answers.append(self.storm())

    def longest_silence(self, end: int) -> int:
        """The most hostile messages dealt with between two of its rounds (or before the first, after the last)."""
        counts = [0, *self.answers, end]
        return max(later - earlier for earlier, later in zip(counts, counts[1:]))


def _hostile_worker(
    loop: LoopThread, router: Router, seed: int, sessions: int, live: list[Session], lock: threading.Lock, total: Tally
) -> list[BaseException]:
    """Run ``sessions`` hostile sessions one after the other; the serve errors seen."""
    crashes: list[BaseException] = []
    rnd = random.Random(seed)
    for _ in range(sessions):
        served, theirs = loop.serve(router)
        session = Session(theirs)
        with lock:
            live.append(session)
        try:
            session.play(hostile.hostile_stream(rnd, valid=rnd.choice([0.3, 0.8, 0.95])))
        finally:
            with lock:  # counted once all along: live, then in the total
                live.remove(session)
                total.add(session.tally)
        try:
            served.result(PATIENCE)
        except BaseException as exc:  # noqa: BLE001 - a crash of serve, to report
            crashes.append(exc)
    return crashes


def _killer(live: list[Session], lock: threading.Lock, stop: threading.Event, seed: int, total: Tally) -> None:
    """Cut a random live hostile session every few milliseconds."""
    rnd = random.Random(seed)
    while not stop.wait(rnd.uniform(0.001, 0.02)):
        with lock:
            victim = rnd.choice(live) if live else None
        if victim is not None:
            victim.kill()
            with total.lock:
                total.killed += 1


@dataclass
class Child:
    """A hostile slave in its own process, to be SIGKILLed mid-call."""

    process: subprocess.Popen[bytes]
    served: Future[None]
    #: Its first report, read by ``wait_started`` (a loaded machine may kill it before another).
    first_report: str = ""

    @classmethod
    def start(cls, loop: LoopThread, router: Router, seed: int) -> Child:
        served, theirs = loop.serve(router)
        with theirs:
            process = subprocess.Popen(
                [sys.executable, str(HOSTILE), str(theirs.fileno()), str(seed)],
                pass_fds=[theirs.fileno()],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=HOSTILE.parent,
            )
        return cls(process, served)

    def wait_started(self) -> None:
        """Wait for its first report: it is talking to the master."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith(b"sent="), line
        self.first_report = line.decode().strip()

    def kill(self) -> int:
        """SIGKILL it; how many messages it had sent by its last report."""
        self.process.send_signal(signal.SIGKILL)
        out, err = self.process.communicate(timeout=PATIENCE)
        assert self.process.returncode == -signal.SIGKILL, err.decode()
        reports = [self.first_report] + [line for line in out.decode().splitlines() if line.startswith("sent=")]
        assert reports[-1], f"the hostile child never got going: {err.decode()}"
        return int(reports[-1].split()[0].removeprefix("sent="))


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
def test_hostile_sessions_are_killed_while_a_well_behaved_one_is_answered_throughout(
    master_loop: LoopThread, fd_count: Any, concurrent: bool
) -> None:
    before = fd_count.snapshot()
    router = hostile.fuzz_router(concurrent=concurrent)
    good_served, good_sock = master_loop.serve(router)
    total, live, lock, stop = Tally(), [], threading.Lock(), threading.Event()

    def storm() -> int:
        with lock:
            return total.sent + sum(session.tally.sent for session in live)

    good = GoodSlave(good_sock, storm)
    good_thread = threading.Thread(target=good.run, name="good-slave", daemon=True)
    good_thread.start()

    # Daemon threads, stopped in `finally`: a failed assertion must not leave
    # them running (a non-daemon one would hang the interpreter's exit).
    killer = threading.Thread(target=_killer, args=(live, lock, stop, 99, total), daemon=True)
    killer.start()
    try:
        children = [Child.start(master_loop, router, seed) for seed in range(2)]
        for child in children:
            child.wait_started()
        with ThreadPoolExecutor(4) as pool:
            workers = [
                pool.submit(_hostile_worker, master_loop, router, seed, 400 * SCALE, live, lock, total)
                for seed in range(4)
            ]
            # The children are killed in the middle of the hostile storm.
            child_messages = 0
            for child in children:
                time.sleep(0.5)
                child_messages += child.kill()
            crashes = [crash for worker in workers for crash in worker.result(timeout=300 * SCALE)]
        for child in children:
            child.served.result(PATIENCE)  # killed: the session ended, normally
    finally:
        stop.set()
        killer.join()
        good.stop.set()
    good_thread.join(PATIENCE)
    good_served.result(PATIENCE)

    silence = good.longest_silence(total.sent)
    print(
        f"\nfuzz ({'concurrent' if concurrent else 'sequential'}): {total.summary()}, "
        f"+{child_messages} from {len(children)} SIGKILLed processes; "
        f"good slave: {len(good.answers)} rounds, at most {silence} hostile messages between two; "
        f"by kind {dict(sorted(total.by_how.items()))}"
    )
    assert crashes == []
    assert total.violations == []
    assert good.wrong == []
    assert len(good.answers) > 10
    # Answered throughout the storm: never left waiting while a quarter of it went by.
    assert silence <= total.sent // 4, silence
    assert total.sent > 1000 * SCALE
    fd_count.assert_unchanged(before)


# ------------------------------------------------ a slave that never reads


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
def test_a_slave_that_never_reads_its_replies_holds_a_bounded_number_of_descriptors(
    master_loop: LoopThread, fd_count: Any, mode: str
) -> None:
    """Regression: in concurrent mode the master read on and on, one task and
    two descriptors per request, until the process ran out of descriptors and
    every session failed. Now it reads at most ``max_in_flight`` ahead (and
    one call at a time in sequential mode)."""
    before = fd_count.snapshot()
    router = hostile.fuzz_router(concurrent=mode == "concurrent")
    served, theirs = master_loop.serve(router)
    good_served, good_sock = master_loop.serve(router)
    theirs.setblocking(False)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    peak = sent = blocked = 0
    for i in range(4000):
        request = REQUEST_TYPES["rename"].model_validate(
            {
                "function": "rename",
                "pid": 1,
                "tid": 1000 + i,
                "request_id": i,
                "path1": "a",
                "path2": "b",
                "dirfd1": null,
                "dirfd2": null,
            }
        )
        data, fds = wire_requests.encode_request(request)
        try:
            theirs.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            sent += 1
        except BlockingIOError:
            # The master stopped reading us: that is the point.
            blocked += 1
            if blocked > 20:
                break
            time.sleep(0.005)
        if i % 200 == 0:
            time.sleep(0.01)
            peak = max(peak, fd_count() - len(before))
    time.sleep(0.05)
    peak = max(peak, fd_count() - len(before))
    # Another session of the same router is still answered.
    with Slave(good_sock) as slave:
        assert slave.call("stat", path="/fuzz-ok/x").result == hostile.stat_of(b"/fuzz-ok/x")
    os.close(null)
    theirs.close()
    served.result(PATIENCE)
    good_served.result(PATIENCE)
    in_flight = router.max_in_flight if router.concurrent else 1
    assert sent >= in_flight
    assert peak <= 2 * in_flight + 8, f"{peak} descriptors held for a slave that does not read"
    fd_count.assert_unchanged(before)


# ----------------------------------------------------------- grant safety


def _raw_call(sock: socket.socket, request: Request, fds: list[int]) -> tuple[wire_replies.ReplyMessage, list[int]]:
    data, _ = wire_requests.encode_request(request)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)
    sock.settimeout(PATIENCE)
    reply, ancdata, _, _ = sock.recvmsg(wire_header.MAX_MESSAGE + 1, socket.CMSG_SPACE(5 * 4))
    received = [
        fd
        for level, kind, raw in ancdata
        if kind == socket.SCM_RIGHTS
        for fd in array.array("i", raw[: len(raw) - len(raw) % 4])
    ]
    return wire_replies.decode_reply(reply, len(received)), received


def _with_real_fds(request: Request) -> tuple[Request, list[int]]:
    """The request with its descriptor fields backed by real descriptors (to send)."""
    fds = [
        os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        for name in request.DESCRIPTORS
        if getattr(request, name) is not None
    ]
    return request, fds


def _is_error(reply: wire_replies.ReplyMessage) -> bool:
    if reply.forward:
        return False
    if reply.function == "getaddrinfo":
        return isinstance(reply.result, str)
    return reply.result == -1 and reply.errno > 0


@given(request=requests, concurrent=st.booleans())
def test_a_deny_router_never_forwards_and_never_succeeds(
    master_loop: LoopThread, request: Request, concurrent: bool
) -> None:
    served, theirs = master_loop.serve(Router(default=deny(errno.EACCES), concurrent=concurrent))
    with theirs:
        request, fds = _with_real_fds(request)
        try:
            reply, received = _raw_call(theirs, request, fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert received == []
        assert not reply.forward
        assert reply.errno == errno.EACCES
        assert reply.result == ("system" if request.function == "getaddrinfo" else -1)
    served.result(PATIENCE)


class _Boom(Exception):
    pass


async def _async_raise(request: Request) -> Any:
    await asyncio.sleep(0)
    raise _Boom("async")


async def _stray_cancel(request: Request) -> Any:
    """Awaits a future some other task cancelled: CancelledError, not a cancellation of us."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    return await future


async def _too_slow(request: Request) -> Any:
    await asyncio.sleep(60)


def _closed_fd(request: Request) -> Any:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return WithFds(0, [fd])


#: Handlers that fail, or answer with something that is not an answer.
FAILURES: dict[str, Callable[[Request], Any]] = {
    "raises RuntimeError": lambda request: (_ for _ in ()).throw(RuntimeError("bug")),
    "raises KeyError": lambda request: {}["missing"],
    "raises OSError without errno": lambda request: (_ for _ in ()).throw(OSError("no errno")),
    "raises OSError(0)": lambda request: (_ for _ in ()).throw(OSError(0, "zero")),
    "raises OSError(-5)": lambda request: (_ for _ in ()).throw(OSError(-5, "negative")),
    "raises TimeoutError": lambda request: (_ for _ in ()).throw(TimeoutError()),
    "raises StopIteration": lambda request: next(iter(())),
    "async raises": _async_raise,
    "stray CancelledError (async)": _stray_cancel,
    "stray CancelledError (sync)": lambda request: (_ for _ in ()).throw(asyncio.CancelledError()),
    "past the timeout": _too_slow,
    "returns None": lambda request: None,
    "returns True": lambda request: True,
    "returns a float": lambda request: 0.0,
    "returns an object": lambda request: object(),
    "returns a bad result list": lambda request: [1, 2],
    "returns an unknown gai error": lambda request: "maybe",
    "returns a Stat to the wrong call": lambda request: Stat() if request.function not in ("stat", "lstat") else 0,
    "returns a bad Stat": lambda request: Stat.model_construct(mode=0o170000, type="regular"),
    "returns WithFds with a closed fd": _closed_fd,
    "returns WithFds with a str": lambda request: WithFds(0, ["3"]),  # type: ignore[list-item]
    "returns WithFds with too many": lambda request: WithFds(
        0, [os.open("/dev/null", os.O_RDONLY) for _ in range(wire_header.MAX_REPLY_FDS + 1)]
    ),
    "returns an int too large": lambda request: 2**64,
    "returns PASS (default denies)": lambda request: PASS,
}


def _sample_requests() -> list[Request]:
    fields: dict[str, dict[str, Any]] = {
        "stat": {"path": "/fuzz-ok/x"},
        "open": {"path": "/dev/null", "flags": {"read_only"}},
        "connect_inet": {"address": "127.0.0.1", "port": 80, "socket": 3},
        "getaddrinfo": {"node": "localhost", "service": None, "protocol": None},
        "rename": {"path1": "a", "path2": "b", "dirfd1": 3, "dirfd2": 3},
    }
    return [
        REQUEST_TYPES[name].model_validate({"function": name, "pid": 5, "tid": 5, "request_id": n, **f})
        for n, (name, f) in enumerate(fields.items())
    ]


@pytest.mark.parametrize("default", ["deny", "forward"])
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_call_fails_closed_never_forwarded_even_when_the_default_forwards(
    master_loop: LoopThread, fd_count: Any, failure: str, concurrent: bool, default: str
) -> None:
    before = fd_count.snapshot()
    router = Router(default=deny() if default == "deny" else FORWARD, concurrent=concurrent, timeout=0.05)
    handler = FAILURES[failure]
    if failure.startswith("returns PASS") and default == "forward":
        pytest.skip("PASS hands the call to the default, which here forwards: that is a decision, not a failure")
    router.on(*FUNCTIONS)(handler)
    served, theirs = master_loop.serve(router)
    with theirs:
        for request in _sample_requests():
            request, fds = _with_real_fds(request)
            try:
                reply, received = _raw_call(theirs, request, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            for fd in received:
                os.close(fd)
            assert not reply.forward, f"{failure}: {request.function} was forwarded"
            assert _is_error(reply), f"{failure}: {request.function} got {reply}"
            assert received == []
    served.result(PATIENCE)
    fd_count.assert_unchanged(before)


def test_a_stray_cancelled_error_fails_the_call_and_the_session_goes_on(master_loop: LoopThread) -> None:
    """Regression: a handler's own CancelledError used to escape ``serve``
    (sequential: the session closed, and a shim whose channel is gone does
    the call itself) or leave the calling thread without a reply (concurrent)."""
    for concurrent in (False, True):
        router = Router(default=deny(), concurrent=concurrent)
        router.on("stat")(_stray_cancel)
        served, theirs = master_loop.serve(router)
        with Slave(theirs) as slave:
            for _ in range(3):
                reply = slave.call("stat", path="/x")
                assert (reply.result, reply.errno, reply.forwarded) == (-1, router.error_errno, False)
        assert served.result(PATIENCE) is None


def test_cancelling_serve_still_ends_the_session(master_loop: LoopThread) -> None:
    """The other side of the fix: a real cancellation of ``serve`` is not swallowed."""
    started = threading.Event()

    async def slow(request: Request) -> Any:
        started.set()
        await asyncio.sleep(60)
        return 0

    for concurrent in (False, True):
        router = Router(concurrent=concurrent)
        router.on("stat")(slow)
        served, theirs = master_loop.serve(router)
        started.clear()
        with Slave(theirs) as slave:
            outcome: list[BaseException | Any] = []

            def call() -> None:
                try:
                    outcome.append(slave.call("stat", path="/x"))
                except BaseException as exc:  # noqa: BLE001 - what the caller saw
                    outcome.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            assert started.wait(PATIENCE)
            served.cancel()
            caller.join(PATIENCE)
            assert not caller.is_alive()
            assert len(outcome) == 1 and isinstance(outcome[0], ConnectionError), outcome
        with pytest.raises(FutureCancelled):
            served.result(PATIENCE)


@given(
    outcome=st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.lists(st.integers(), max_size=3),
        st.just(PASS),
        st.builds(object),
        st.just(Ellipsis),
        st.builds(Stat),
        st.lists(st.builds(AddrInfo, address=st.just(IPv4Address("10.0.0.1")), port=st.integers(0, 65535)), max_size=2),
    )
)
def test_what_a_handler_returns_is_either_sent_as_is_or_fails_closed(master_loop: LoopThread, outcome: Any) -> None:
    """Whatever a handler returns, a success carries exactly that value, and
    nothing is ever forwarded by a router whose default denies."""
    router = Router(default=deny())
    router.on(*FUNCTIONS)(lambda request: outcome)
    served, theirs = master_loop.serve(router)
    with theirs:
        for request in _sample_requests():
            request, fds = _with_real_fds(request)
            try:
                reply, received = _raw_call(theirs, request, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            assert not reply.forward
            assert received == []
            if not _is_error(reply):
                assert reply.result == outcome, f"{request.function} succeeded with {reply.result!r} for {outcome!r}"
    served.result(PATIENCE)


# ------------------------------------------------- hostile registrations

#: A slave process that abuses its registration socket (``LIBC_SERVICE_FD``):
#: hellos without a channel, with the wrong bytes, with two channels, with
#: descriptors that are no channel (a pipe, a directory, a stream, datagram
#: or unconnected socket, the registration socket itself), a flood; then
#: ``argv[2]`` valid channels that hang up at once; then one valid channel
#: that asks the request ``argv[1]`` (hex, with its own pid) and prints the reply (hex).
REGISTRATIONS = r"""
import array, os, socket, struct, sys
reg = socket.socket(fileno=int(os.environ["LIBC_SERVICE_FD"]))

def send(data, fds=()):
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    reg.sendmsg([data], ancillary)

def hello(magic=b"LCSh", version=3, pid=os.getpid()):
    return struct.pack("<4sHHII", magic, version, 0, pid, 0)

kept = []
def channel(kind=socket.SOCK_SEQPACKET):
    mine, theirs = socket.socketpair(socket.AF_UNIX, kind)
    kept.append(mine)
    kept.append(theirs)
    return theirs.fileno()

r, w = os.pipe()
unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
hostile = [
    (hello(), []), (b"junk", [channel()]), (hello()[:-1], [channel()]), (hello() + b"x", [channel()]),
    (hello(magic=b"LCSx"), [channel()]), (hello(version=1), [channel()]), (hello(version=3), [channel()]),
    (hello(pid=0), [channel()]),
    (hello(), [channel(), channel()]), (hello(), [r]), (hello(), [w]),
    (hello(), [os.open("/", os.O_RDONLY | os.O_DIRECTORY)]), (hello(), [os.open("/dev/null", os.O_RDONLY)]),
    (hello(), [channel(socket.SOCK_STREAM)]), (hello(), [channel(socket.SOCK_DGRAM)]),
    (hello(), [unconnected.fileno()]), (hello(), [channel()] * 40), (hello(), [reg.fileno()]),
    (os.urandom(16), [channel()]), (os.urandom(300), []),
]
for data, fds in hostile:
    send(data, fds)
for _ in range(int(sys.argv[2])):
    send(hello(), [channel()])
for sock in kept:
    sock.close()

mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
send(hello(), [theirs.fileno()])
theirs.close()
request = bytearray.fromhex(sys.argv[1])
request[8:12] = struct.pack("<I", os.getpid())  # its own pid: a request claiming another's closes the session
mine.sendmsg([request])
print(mine.recv(9000).hex())
"""


@pytest.mark.slow
@needs_shim
async def test_hostile_registrations_are_ignored_and_a_good_one_after_them_is_served(fd_count: Any) -> None:
    router = Router(default=FORWARD)  # the interpreter's own calls go through

    @router.on("stat")
    def fuzz_stat(request: Request) -> Any:
        raw = os.fsencode(str(request.path))  # type: ignore[union-attr]
        return hostile.stat_of(raw) if raw.startswith(hostile.OK_ROOT.encode()) else PASS

    request = REQUEST_TYPES["stat"].model_validate(
        {"function": "stat", "pid": 42, "tid": 42, "request_id": 9, "path": "/fuzz-ok/after"}
    )
    data, _ = wire_requests.encode_request(request)
    await asyncio.sleep(0)
    before = fd_count.snapshot()
    async with spawn(
        [PYTHON, "-c", REGISTRATIONS, data.hex(), "200"], router, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert await process.wait() == 0, err.decode()
        sessions = process.sessions_started
    reply = wire_replies.decode_reply(bytes.fromhex(out.decode().strip()))
    assert (reply.function, reply.tid, reply.request_id) == ("stat", 42, 9)
    assert (reply.result, reply.errno, reply.forward) == (hostile.stat_of(b"/fuzz-ok/after"), 0, False)
    # The interpreter's own session, 200 hang-ups, the good one, and those hostile
    # ones whose descriptor is a SEQPACKET socket with a valid hello.
    assert sessions >= 202
    fd_count.assert_unchanged(before)


#: Registers one channel (an end the program keeps) ``argv[1]`` times over,
#: then waits to be told to go: each registration hands the master a new
#: descriptor of the same socket.
SAME_CHANNEL_FLOOD = r"""
import array, os, socket, struct, sys
reg = socket.socket(fileno=int(os.environ["LIBC_SERVICE_FD"]))
hello = struct.pack("<4sHHII", b"LCSh", 1, 0, os.getpid(), 0)
mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
for _ in range(int(sys.argv[1])):
    reg.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
print("registered", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
@needs_shim
async def test_registering_one_channel_many_times_does_not_cost_the_master_a_descriptor_each() -> None:
    router = Router(default=FORWARD)
    registrations = 2000
    async with spawn(
        [PYTHON, "-c", SAME_CHANNEL_FLOOD, str(registrations)], router, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        before = len(os.listdir("/proc/self/fd"))
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"registered\n"
        await asyncio.sleep(0.5)
        held = len(os.listdir("/proc/self/fd")) - before
        process.stdin.close()
        await process.wait()
    assert held < registrations // 10, f"the master holds {held} descriptors for one channel"


#: Sends an empty datagram on the registration socket, then runs a child of
#: the tree (which registers at its first call) and waits for it.
EMPTY_REGISTRATION = r"""
import os, socket, subprocess
reg = socket.socket(fileno=int(os.environ["LIBC_SERVICE_FD"]))
reg.send(b"")
subprocess.run(["cat", "/dev/null"], close_fds=False, check=True)
"""


@pytest.mark.slow
@needs_shim
async def test_an_empty_registration_datagram_does_not_hang_the_rest_of_the_tree() -> None:
    # No pipes: the hung grandchild would hold them, and then even the kill
    # that follows the timeout could not finish the block.
    router = Router(default=FORWARD)
    async with spawn([PYTHON, "-c", EMPTY_REGISTRATION], router, stdout=subprocess.DEVNULL) as process:
        assert await asyncio.wait_for(process.wait(), 60) == 0
