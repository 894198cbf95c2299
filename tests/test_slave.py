"""The Python Slave against a real Master: every function, every kind of
reply, many threads on one socket, and a master that misbehaves."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import strategies as s
from conftest import FdCount
from helpers import close_all, in_thread, rights
from libc_service import AddrInfo, Master, Reply, SessionClosed, Slave, Stat
from libc_service.protocol import wire_header
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_requests
from libc_service.protocol.replies import GAI_ERRORS, Result
from libc_service.protocol.requests import FUNCTIONS, REQUEST_TYPES, Request
from strategies import raw_reply

_IDENTITY = ("function", "pid", "tid", "request_id")

#: Each example of these crosses a real socket and a thread: fewer of them
#: than the profile's pure-codec examples, which cover the value space.
through_a_thread = settings(max_examples=min(settings().max_examples, 40))


@pytest.fixture
def real_fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    """A directory descriptor and a socket, to stand in for a slave's own."""
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        yield {"directory": directory, "socket": sock.fileno()}
    finally:
        os.close(directory)
        sock.close()


def _answer_for(request: Request) -> Result:
    """What the master answers: computed from the request, so a mix-up shows."""
    if request.function in ("stat", "lstat"):
        return Stat(size=len(os.fsencode(str(request.path))), ino=request.request_id, type="symlink")
    if request.function == "getaddrinfo":
        return [AddrInfo("192.0.2.7", request.request_id % 65536), AddrInfo("fe80::7%3", request.tid % 65536)]
    return request.request_id


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# ---------------------------------------------------- every function, typed


@pytest.mark.parametrize("function", FUNCTIONS)
@through_a_thread
@given(data=st.data())
async def test_every_function_reaches_the_master_as_the_slave_asked(
    function: str, data: st.DataObject, real_fds: dict[str, int]
) -> None:
    drawn = data.draw(s.requests_of(function))
    model = REQUEST_TYPES[function]
    arguments = {
        name: getattr(drawn, name)
        for name in model.model_fields
        if name not in _IDENTITY and name not in model.DESCRIPTORS
    }
    # The drawn descriptor numbers become real descriptors of the right kind.
    sent = {
        name: real_fds["socket" if name == "socket" else "directory"]
        for name in model.DESCRIPTORS
        if getattr(drawn, name) is not None
    }
    master, sock = Master.pair()
    slave = Slave(sock)
    try:
        calling = in_thread(lambda: (slave.call(function, **{**arguments, **sent}), threading.get_native_id()))
        request = await master.receive()
        assert type(request) is model
        for name, value in arguments.items():
            assert getattr(request, name) == value, name
            if isinstance(value, PurePosixPath):
                assert str(getattr(request, name)) == str(value), f"{name} byte for byte"
        for name in model.DESCRIPTORS:
            if name in sent:
                assert _same_file(getattr(request, name), sent[name]), f"{name} is the slave's descriptor"
            else:
                assert getattr(request, name) is None
        assert len(master.descriptors()) == len(sent)
        expected = _answer_for(request)
        await master.send(expected)
        reply, tid = await calling
        assert (request.pid, request.tid) == (os.getpid(), tid)
        assert reply == Reply(expected, 0, (), False)
    finally:
        slave.close()
        master.close()


# ------------------------------------------------------- every kind of reply


async def _one_call(master: Master, slave: Slave, function: str, arguments: dict[str, Any], answer: Any) -> Reply:
    calling = in_thread(slave.call, function, **arguments)
    await master.receive()
    await answer(master)
    return await calling


_STAT_ARGS = {"path": "/etc/hostname"}
_GAI_ARGS = {"node": "example.org", "service": "https", "protocol": "tcp"}


@through_a_thread
@given(stat=s.stats, function=st.sampled_from(["stat", "lstat"]))
async def test_a_stat_reply_arrives_with_every_field_to_the_nanosecond(stat: Stat, function: str) -> None:
    master, sock = Master.pair()
    with Slave(sock) as slave:
        reply = await _one_call(master, slave, function, _STAT_ARGS, lambda m: m.send(stat))
    master.close()
    assert isinstance(reply.result, Stat)
    assert reply.result.model_dump() == stat.model_dump()
    assert reply.result.st_mode == stat.st_mode
    assert (reply.errno, reply.fds, reply.forwarded) == (0, (), False)


async def test_a_real_files_stat_arrives_intact(channel: tuple[Master, Slave], tmp_path: Path) -> None:
    master, slave = channel
    target = tmp_path / "file"
    target.write_bytes(b"12345")
    os.utime(target, ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    truth = Stat.from_os(os.lstat(target))
    reply = await _one_call(master, slave, "lstat", {"path": str(target)}, lambda m: m.send(truth))
    assert reply.result == truth
    assert reply.result.mtime == 1_222_222_222_222_222_222


@through_a_thread
@given(addresses=s.addrinfo_lists)
async def test_an_address_list_arrives_in_order_with_scopes(addresses: list[AddrInfo]) -> None:
    master, sock = Master.pair()
    with Slave(sock) as slave:
        reply = await _one_call(master, slave, "getaddrinfo", _GAI_ARGS, lambda m: m.send(addresses))
    master.close()
    assert reply.result == addresses
    assert [getattr(a.address, "scope_id", None) for a in reply.result] == [
        getattr(a.address, "scope_id", None) for a in addresses
    ]


@pytest.mark.parametrize("name", [n for n in GAI_ERRORS if n != "system"])
async def test_a_getaddrinfo_error_name_arrives(channel: tuple[Master, Slave], name: str) -> None:
    master, slave = channel
    reply = await _one_call(master, slave, "getaddrinfo", _GAI_ARGS, lambda m: m.send(name))
    assert (reply.result, reply.errno) == (name, 0)


@pytest.mark.parametrize("how", ["system with an errno", "an int with an errno", "an OSError"])
async def test_the_system_error_carries_its_errno(channel: tuple[Master, Slave], how: str) -> None:
    master, slave = channel
    answers = {
        "system with an errno": lambda m: m.send("system", errno.ECONNRESET),
        "an int with an errno": lambda m: m.send(-1, errno.ECONNRESET),
        "an OSError": lambda m: m.send("system", ConnectionResetError(errno.ECONNRESET, "reset")),
    }
    reply = await _one_call(master, slave, "getaddrinfo", _GAI_ARGS, answers[how])
    assert (reply.result, reply.errno) == ("system", errno.ECONNRESET)


@through_a_thread
@given(function=st.sampled_from([f for f in FUNCTIONS if f not in ("stat", "lstat", "getaddrinfo")]), result=s.I64)
async def test_an_int_result_arrives(function: str, result: int, real_fds: dict[str, int]) -> None:
    every: dict[str, dict[str, Any]] = {
        "mkdir": {"path": "d", "mode": 0o700},
        "rename": {"path1": "a", "path2": "b"},
        "access": {"path": "f", "amode": "f"},
        "eaccess": {"path": "f", "amode": "x"},
        "open": {"path": "f", "flags": ["read_only"]},
        "openat": {"path": "f", "flags": ["read_only"]},
        "connect_unix": {"path": "\0bus"},
        "bind_unix": {"path": "/run/s"},
        "connect_inet": {"address": "127.0.0.1", "port": 1},
        "bind_inet": {"address": "0.0.0.0", "port": 0},
        "connect_inet6": {"address": "::1", "port": 1},
        "bind_inet6": {"address": "::", "port": 0},
        "chmod": {"path": "x", "mode": 0o755},
        "fchmod": {"mode": 0o755},
        "utimens": {"path": "x", "atime": "omit", "mtime": 0},
    }
    arguments = every.get(function, {"path": "x"})
    if function.startswith(("connect", "bind")):
        arguments = {**arguments, "socket": real_fds["socket"]}
    if function in ("fchmod", "fchown", "futimens"):
        arguments = {key: value for key, value in arguments.items() if key != "path"} | {"fd": real_fds["directory"]}
    master, sock = Master.pair()
    with Slave(sock) as slave:
        reply = await _one_call(master, slave, function, arguments, lambda m: m.send(result))
    master.close()
    assert reply == Reply(result, 0, (), False)


@pytest.mark.parametrize("as_oserror", [False, True], ids=["errno as an int", "errno as an OSError"])
@through_a_thread
@given(errno_value=st.sampled_from(sorted(errno.errorcode)))
async def test_a_failure_arrives_as_minus_one_and_its_errno(errno_value: int, as_oserror: bool) -> None:
    given_errno: int | OSError = OSError(errno_value, os.strerror(errno_value)) if as_oserror else errno_value
    master, sock = Master.pair()
    with Slave(sock) as slave:
        reply = await _one_call(master, slave, "unlink", {"path": "/etc/passwd"}, lambda m: m.send(-1, given_errno))
    master.close()
    assert reply == Reply(-1, errno_value, (), False)


@pytest.mark.parametrize("function", ["open", "stat", "getaddrinfo", "connect_inet6"])
async def test_a_forward_arrives_as_forwarded(
    channel: tuple[Master, Slave], function: str, real_fds: dict[str, int]
) -> None:
    master, slave = channel
    every: dict[str, dict[str, Any]] = {
        "open": {"path": "/etc/hostname", "flags": ["read_only"]},
        "stat": _STAT_ARGS,
        "getaddrinfo": _GAI_ARGS,
        "connect_inet6": {"address": "fe80::1%1", "port": 22, "socket": real_fds["socket"]},
    }
    arguments = every[function]
    reply = await _one_call(master, slave, function, arguments, lambda m: m.use_slave_credentials())
    assert reply == Reply(0, 0, (), True)


async def test_descriptors_on_a_reply_belong_to_the_caller(channel: tuple[Master, Slave], fd_count: FdCount) -> None:
    master, slave = channel
    before = fd_count.snapshot()

    async def four_pipes(m: Master) -> None:
        ends = []
        for i in range(4):
            r, w = os.pipe()
            os.write(w, b"pipe %d" % i)
            os.close(w)
            ends.append(r)
        await m.send_with_fds(0, ends)

    reply = await _one_call(master, slave, "unlink", {"path": "x"}, four_pipes)
    assert [os.read(fd, 10) for fd in reply.fds] == [b"pipe 0", b"pipe 1", b"pipe 2", b"pipe 3"]
    close_all(reply.fds)
    fd_count.assert_unchanged(before)


async def test_the_callers_descriptors_stay_the_callers(
    channel: tuple[Master, Slave], real_fds: dict[str, int]
) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "openat", path="x", flags=["read_only"], fds=[real_fds["directory"]])
    await master.receive()
    await master.send(-1, errno.ENOENT)
    await calling
    assert os.fstat(real_fds["directory"])


# ------------------------------------------------ many threads, one socket


_THREADS = 8
_CALLS = 1000


def _checked_calls(slave: Slave, thread: int, calls: int) -> list[str]:
    """Make ``calls`` stat calls; return every reply that was not this call's."""
    tid = threading.get_native_id()
    wrong: list[str] = []
    for n in range(calls):
        path = f"/thread/{thread}/call/{n}"
        reply = slave.call("stat", path=path)
        result = reply.result
        if not isinstance(result, Stat) or (result.size, result.ino) != (zlib.crc32(path.encode()), tid):
            wrong.append(f"{path}: {result!r}")
    return wrong


async def test_eight_threads_a_thousand_calls_each_and_not_one_misrouted(channel: tuple[Master, Slave]) -> None:
    master, slave = channel

    async def serve() -> int:
        served = 0
        try:
            while True:
                request = await master.receive()
                # Computed from what this request says: its path and its thread.
                path = os.fsencode(str(request.path))  # type: ignore[union-attr]
                await master.send(Stat(size=zlib.crc32(path), ino=request.tid))
                served += 1
        except SessionClosed:
            return served

    serving = asyncio.ensure_future(serve())
    workers = [in_thread(_checked_calls, slave, thread, _CALLS) for thread in range(_THREADS)]
    misrouted = [wrong for worker in workers for wrong in await worker]
    assert misrouted == []
    slave.close()
    assert await serving == _THREADS * _CALLS


async def test_calls_answered_out_of_order_still_reach_their_threads(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    shuffle = random.Random(1234)

    async def answer_later(call: Any) -> None:
        for _ in range(shuffle.randrange(4)):
            await asyncio.sleep(0)
        path = os.fsencode(str(call.request.path))
        await call.send(Stat(size=zlib.crc32(path), ino=call.request.tid))

    async def serve() -> None:
        answering: set[asyncio.Task[None]] = set()
        try:
            while True:
                task = asyncio.ensure_future(answer_later(await master.receive_call()))
                answering.add(task)
                task.add_done_callback(answering.discard)
        except SessionClosed:
            await asyncio.gather(*answering, return_exceptions=True)

    serving = asyncio.ensure_future(serve())
    workers = [in_thread(_checked_calls, slave, thread, 200) for thread in range(_THREADS)]
    misrouted = [wrong for worker in workers for wrong in await worker]
    assert misrouted == []
    slave.close()
    await serving


# ------------------------------------------------ a caller's and a master's mistakes


async def test_a_call_the_slave_cannot_encode_is_refused_before_sending(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    with pytest.raises(ValueError, match="unknown function"):
        slave.call("chmdo", path="/x")
    with pytest.raises(ValueError, match="at most 1"):
        slave.call("stat", path="x", fds=[0, 1])
    with pytest.raises(ValidationError):
        slave.call("open", path="/x", flags=["read_only", "write_only"])
    with pytest.raises(ValidationError):
        slave.call("stat", path="/x", follow=True)
    # Nothing reached the master; the next good call is the first it sees.
    calling = in_thread(slave.call, "unlink", path="/tmp/ok")
    assert str((await master.receive()).path) == "/tmp/ok"  # type: ignore[union-attr]
    await master.send(0)
    assert (await calling).result == 0


async def test_when_the_master_goes_away_every_call_fails_with_connection_error() -> None:
    master, sock = Master.pair()
    with Slave(sock) as slave:
        waiting = [in_thread(slave.call, "stat", path=f"/{i}") for i in range(3)]
        await master.receive()
        master.close()
        for call in waiting:
            with pytest.raises(ConnectionError):
                await call
        with pytest.raises(ConnectionError):
            slave.call("stat", path="/later")


class RawMaster:
    """A master played by hand, to send replies a real Master never would."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.slave = Slave(theirs)

    def next_request(self) -> Request:
        data, ancdata, _, _ = self.sock.recvmsg(wire_header.MAX_MESSAGE, socket.CMSG_SPACE(64))
        fds = [int.from_bytes(d[i : i + 4], "little") for _, _, d in ancdata for i in range(0, len(d), 4)]
        close_all(fds)
        return wire_requests.decode_request(data, fds)

    def close(self) -> None:
        self.slave.close()
        self.sock.close()


@pytest.mark.parametrize(
    ("reply", "nfds"),
    [
        pytest.param(lambda req: b"nonsense", 0, id="garbage"),
        pytest.param(
            lambda req: raw_reply(tid=req.tid, request_id=req.request_id, kind=9), 0, id="unknown payload kind"
        ),
        pytest.param(lambda req: raw_reply(tid=req.tid, request_id=req.request_id), 2, id="two descriptors on open"),
        pytest.param(lambda req: raw_reply(tid=req.tid, request_id=req.request_id + 1), 1, id="another request's id"),
        pytest.param(
            lambda req: raw_reply(tid=req.tid, request_id=req.request_id, function=wire_header.CODE["stat"]),
            0,
            id="another function",
        ),
        pytest.param(
            lambda req: raw_reply(tid=req.tid, request_id=req.request_id) + bytes(wire_header.MAX_MESSAGE),
            0,
            id="oversized",
        ),
        pytest.param(lambda req: b"", 3, id="descriptors without bytes"),
    ],
)
async def test_a_malformed_reply_breaks_the_channel_and_closes_its_descriptors(
    reply: Any, nfds: int, fd_count: FdCount
) -> None:
    before = fd_count.snapshot()
    raw = RawMaster()
    try:
        calling = in_thread(raw.slave.call, "open", path="/etc/hostname", flags=["read_only"])
        request = await asyncio.to_thread(raw.next_request)
        pipes = [os.pipe() for _ in range(nfds)]
        raw.sock.sendmsg([reply(request)], rights([r for r, _ in pipes]))
        close_all([fd for pair in pipes for fd in pair])
        with pytest.raises(ConnectionError):
            await calling
        with pytest.raises(ConnectionError, match="broken"):
            raw.slave.call("stat", path="/after")
    finally:
        raw.close()
    fd_count.assert_unchanged(before)


async def test_a_reply_for_another_thread_waits_for_that_thread() -> None:
    raw = RawMaster()
    try:
        first = in_thread(lambda: (raw.slave.call("stat", path="/first"), threading.get_native_id()))
        req1 = await asyncio.to_thread(raw.next_request)
        second = in_thread(lambda: (raw.slave.call("stat", path="/second"), threading.get_native_id()))
        req2 = await asyncio.to_thread(raw.next_request)
        for req, size in ((req2, 2), (req1, 1)):
            raw.sock.send(
                wire_replies.encode_reply(
                    wire_replies.ReplyMessage(req.function, req.tid, req.request_id, Stat(size=size))
                )
            )
        (reply1, tid1), (reply2, tid2) = await first, await second
        assert (reply1.result.size, tid1) == (1, req1.tid)  # type: ignore[union-attr]
        assert (reply2.result.size, tid2) == (2, req2.tid)  # type: ignore[union-attr]
    finally:
        raw.close()


async def test_closing_the_slave_wakes_a_waiting_caller(fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    raw = RawMaster()
    calling = in_thread(raw.slave.call, "stat", path="/never/answered")
    await asyncio.to_thread(raw.next_request)
    raw.close()
    with pytest.raises(ConnectionError):
        await calling
    fd_count.assert_unchanged(before)
