"""The asyncio Master against a real Python Slave and against a hostile peer.

Every scenario uses a real SOCK_SEQPACKET pair and real descriptors; the
slave side runs in a thread, as a slave's calling thread blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat as stat_module
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import FdCount
from libc_service.protocol import wire_requests
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_header
from libc_service.protocol import wire_fields
from libc_service import FORWARD, AddrInfo, Errno, Master, Reply, SessionClosed, Slave, Stat, WithFds
from libc_service.protocol.outcomes import answer_for
from libc_service.protocol.requests import ConnectUnixRequest, OpenatRequest, StatRequest
from helpers import assert_closed, close_all, in_thread, rights
from strategies import raw_request


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[int]:
    """A directory descriptor, like a slave's dirfd or working directory."""
    (tmp_path / "greeting").write_bytes(b"hello from the slave's directory\n")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


# --------------------------------------------------------------- the basics


async def test_a_slave_call_arrives_typed_with_who_asked(channel: tuple[Master, Slave]) -> None:
    master, slave = channel

    def call() -> tuple[Reply, int]:
        return slave.call("stat", path="/etc/hostname"), threading.get_native_id()

    calling = in_thread(call)
    request = await master.receive()
    assert isinstance(request, StatRequest)
    assert master.function_ == "stat"
    assert master.arguments() == (PurePosixPath("/etc/hostname"),)
    assert master.descriptors() == ()
    assert request.pid == os.getpid() == master.pid
    await master.send(Stat(size=42, type="regular", mode=0o644))
    reply, tid = await calling
    assert request.tid == tid
    assert reply == Reply(Stat(size=42, mode=0o644), 0, (), False)


async def test_a_master_refuses_a_socket_that_is_not_seqpacket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(ValueError):
        Master(a)


async def test_async_with_ends_the_session(fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    master, sock = Master.pair()
    async with master:
        assert not master.closed and master.fileno() >= 0
    assert master.closed and master.fileno() == -1
    sock.close()
    fd_count.assert_unchanged(before)


async def test_aclose_ends_the_session_as_close_does(workdir: int, fd_count: FdCount) -> None:
    # The async spelling of closing, shared with SlaveProcess (contextlib.aclosing takes either).
    before = fd_count.snapshot()
    master, sock = Master.pair()
    with Slave(sock) as slave:
        calling = in_thread(slave.call, "stat", path="greeting", fds=[workdir])
        await master.receive()
        (dirfd,) = master.descriptors()
        async with contextlib.aclosing(master):
            assert not master.closed
        assert master.closed and master.fileno() == -1
        assert_closed(dirfd)
        with pytest.raises(ConnectionError):
            await calling
        await master.aclose()  # idempotent, as close()
        master.close()
    fd_count.assert_unchanged(before)


# ----------------------------------------------------------- the seed rules


async def test_receive_while_a_reply_is_owed_is_a_runtime_error(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "unlink", path="/tmp/x")
    await master.receive()
    with pytest.raises(RuntimeError, match="owed"):
        await master.receive()
    await master.send(0)
    assert (await calling).result == 0


async def test_a_second_concurrent_receive_is_ebusy(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    first = asyncio.ensure_future(master.receive())
    await asyncio.sleep(0)
    with pytest.raises(OSError) as raised:
        await master.receive()
    assert raised.value.errno == errno.EBUSY
    # The first receive is unharmed, and gets the call.
    calling = in_thread(slave.call, "rmdir", path="/tmp/d")
    assert (await first).function == "rmdir"
    await master.send(-1, errno.ENOTEMPTY)
    assert (await calling).errno == errno.ENOTEMPTY


async def test_a_cancelled_receive_leaves_the_master_usable(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    waiting = asyncio.ensure_future(master.receive())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    calling = in_thread(slave.call, "mkdir", path="d", mode=0o700)
    assert (await master.receive()).function == "mkdir"
    await master.send(0)
    assert (await calling).result == 0


async def test_answering_twice_or_before_receiving_is_a_runtime_error(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    with pytest.raises(RuntimeError):
        await master.send(0)
    with pytest.raises(RuntimeError):
        master.arguments()
    assert master.function_ is None
    calling = in_thread(slave.call, "unlink", path="/tmp/x")
    await master.receive()
    await master.send(0)
    with pytest.raises(RuntimeError):
        await master.send(0)
    with pytest.raises(RuntimeError):
        await master.use_slave_credentials()
    await calling


async def _reply(master: Master, how: str) -> None:
    if how == "send":
        await master.send(Stat(size=1))
    elif how == "errno":
        await master.send(-1, errno.EACCES)
    elif how == "oserror":
        await master.send(-1, PermissionError(errno.EACCES, "no"))
    elif how == "send_with_fds":
        r, w = os.pipe()
        os.close(w)
        await master.send_with_fds(Stat(size=1), [r])
    else:
        await master.use_slave_credentials()


@pytest.mark.parametrize("how", ["send", "errno", "oserror", "send_with_fds", "forward"])
async def test_received_descriptors_are_closed_when_the_reply_goes_out(
    channel: tuple[Master, Slave], workdir: int, fd_count: FdCount, how: str
) -> None:
    master, slave = channel
    before = fd_count.snapshot()
    calling = in_thread(slave.call, "stat", path="greeting", fds=[workdir])
    request = await master.receive()
    (dirfd,) = master.descriptors()
    assert request.dirfd == dirfd != workdir  # type: ignore[union-attr]
    assert stat_module.S_ISDIR(os.fstat(dirfd).st_mode)
    await _reply(master, how)
    reply = await calling
    close_all(reply.fds)
    assert_closed(dirfd)
    fd_count.assert_unchanged(before)
    assert os.fstat(workdir), "the slave's own descriptor stays the slave's"


async def test_an_unanswered_calls_descriptors_are_closed_with_the_session(workdir: int, fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    master, sock = Master.pair()
    slave = Slave(sock)
    calling = in_thread(slave.call, "rename", path1="a", path2="b", fds=[workdir, workdir])
    await master.receive()
    received = master.descriptors()
    assert len(received) == 2
    master.close()
    assert_closed(*received)
    with pytest.raises(ConnectionError):
        await calling
    slave.close()
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize("how", ["send", "send_with_fds", "forward"])
async def test_answering_after_the_master_closed_is_session_closed(workdir: int, fd_count: FdCount, how: str) -> None:
    before = fd_count.snapshot()
    master, sock = Master.pair()
    with Slave(sock) as slave:
        calling = in_thread(slave.call, "stat", path="greeting", fds=[workdir])
        await master.receive()
        (dirfd,) = master.descriptors()
        master.close()
        assert_closed(dirfd)
        r, w = os.pipe()
        with pytest.raises(SessionClosed):
            if how == "send":
                await master.send(Stat())
            elif how == "send_with_fds":
                await master.send_with_fds(Stat(), [r, w])
            else:
                await master.use_slave_credentials()
        if how == "send_with_fds":
            assert_closed(r, w)
        else:
            close_all([r, w])
        with pytest.raises(ConnectionError):
            await calling
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize(
    ("result", "nfds", "errno_arg", "error"),
    [
        pytest.param(Stat(), 1, 0, TypeError, id="TypeError: Stat for open"),
        pytest.param(3, 2, 0, ValueError, id="ValueError: two descriptors on open"),
        pytest.param(-1, 1, "EACCES", TypeError, id="TypeError: an errno that is a string"),
        pytest.param(-1, 1, -5, ValueError, id="ValueError: a negative errno"),
    ],
)
async def test_send_with_fds_owns_the_descriptors_even_when_it_raises(
    channel: tuple[Master, Slave], fd_count: FdCount, result: Any, nfds: int, errno_arg: Any, error: type[Exception]
) -> None:
    master, slave = channel
    before = fd_count.snapshot()
    calling = in_thread(slave.call, "open", path="/dev/null", flags=["read_only"])
    await master.receive()
    pipes = [os.pipe() for _ in range(nfds)]
    sent = [r for r, _ in pipes]
    with pytest.raises(error):
        await master.send_with_fds(result, sent, errno_arg)
    assert_closed(*sent)
    close_all([w for _, w in pipes])
    # The call is still owed, and a correct reply still goes out.
    await asyncio.sleep(0.01)
    assert not calling.done()
    await master.send(-1, errno.EACCES)
    reply = await calling
    assert (reply.result, reply.errno, reply.fds) == (-1, errno.EACCES, ())
    fd_count.assert_unchanged(before)


async def test_sent_descriptors_are_closed_after_a_successful_send(
    channel: tuple[Master, Slave], fd_count: FdCount
) -> None:
    master, slave = channel
    before = fd_count.snapshot()
    calling = in_thread(slave.call, "unlink", path="/tmp/x")
    await master.receive()
    pipes = [os.pipe() for _ in range(wire_header.MAX_REPLY_FDS)]
    await master.send_with_fds(0, [fd for pair in pipes for fd in pair][: wire_header.MAX_REPLY_FDS])
    reply = await calling
    assert len(reply.fds) == wire_header.MAX_REPLY_FDS
    close_all(reply.fds)
    for r, w in pipes:
        for fd in (r, w):
            try:
                os.close(fd)  # only the ones not sent are still ours
            except OSError:
                pass
    fd_count.assert_unchanged(before)


async def test_send_with_fds_with_nothing_owed_still_closes_them(channel: tuple[Master, Slave]) -> None:
    master, _ = channel
    r, w = os.pipe()
    with pytest.raises(RuntimeError):
        await master.send_with_fds(0, [r, w])
    assert_closed(r, w)


async def test_send_with_fds_after_the_slave_left_closes_them(fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    master, peer = Master.pair()
    async with master:
        peer.sendmsg([raw_request(b"/dev/null", function=wire_header.CODE["open"], flags=1)])
        await master.receive()
        peer.close()
        r, w = os.pipe()
        with pytest.raises(SessionClosed):
            await master.send_with_fds(0, [r])
        os.close(w)
        assert_closed(r)
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize(
    ("function", "arguments", "wrong", "right"),
    [
        pytest.param("open", {"path": "/dev/null", "flags": ["read_only"]}, Stat(), 0, id="Stat for open"),
        pytest.param("stat", {"path": "/etc/hostname"}, 0, Stat(size=7), id="int for a successful stat"),
        pytest.param(
            "mkdir", {"path": "d", "mode": 0o755}, [AddrInfo("127.0.0.1", 80)], 0, id="AddrInfo list for mkdir"
        ),
        pytest.param("getaddrinfo", {"node": "localhost"}, 0, [AddrInfo("127.0.0.1")], id="int for getaddrinfo"),
        pytest.param("getaddrinfo", {"node": "localhost"}, "timeout", "noname", id="unknown error name"),
        pytest.param("open", {"path": "/dev/null", "flags": ["read_only"]}, 2**63, 0, id="result beyond 64 bits"),
    ],
)
async def test_a_wrong_result_is_refused_before_anything_is_sent(
    channel: tuple[Master, Slave], function: str, arguments: dict[str, Any], wrong: Any, right: Any
) -> None:
    master, slave = channel
    calling = in_thread(slave.call, function, **arguments)
    await master.receive()
    with pytest.raises((TypeError, ValueError)) as raised:
        await master.send(wrong)
    assert not isinstance(raised.value, wire_header.RemoteProtocolError), "the policy's bug, not the peer's"
    await asyncio.sleep(0.02)
    assert not calling.done(), "nothing went out: the slave still waits"
    await master.send(right)
    assert (await calling).result == right


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        pytest.param(Stat(size=3), Reply(Stat(size=3)), id="reply"),
        pytest.param(FORWARD, Reply(0, forwarded=True), id="forward"),
        pytest.param(Errno(errno.EACCES), Reply(-1, errno.EACCES), id="error"),
        pytest.param(RuntimeError("bug"), Reply(-1, errno.EIO), id="failure"),
    ],
)
async def test_a_call_is_answered_with_one_method(
    channel: tuple[Master, Slave], workdir: int, fd_count: FdCount, outcome: object, expected: Reply
) -> None:
    """What a dispatcher does: the pure answer, then ``Call.answer``; nothing else is asked of it."""
    master, slave = channel
    before = fd_count.snapshot()
    calling = in_thread(slave.call, "stat", path="greeting", fds=[workdir])
    call = await master.receive_call()
    (dirfd,) = call.descriptors()
    assert call.answer(answer_for(call.request, outcome, errno.EIO)) is True  # the socket took it
    assert call.done
    assert await calling == expected
    assert_closed(dirfd)
    fd_count.assert_unchanged(before)
    with pytest.raises(RuntimeError):
        call.answer(answer_for(call.request, 0, errno.EIO))


async def test_an_answers_descriptors_go_out_with_it_and_are_closed(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "open", path="/x", flags=["read_only"])
    call = await master.receive_call()
    r, w = os.pipe()
    os.close(w)
    assert call.answer(answer_for(call.request, WithFds(0, [r]), errno.EIO))
    reply = await calling
    assert (reply.result, reply.errno, len(reply.fds)) == (0, 0, 1)
    close_all(reply.fds)
    assert_closed(r)


async def test_an_answer_with_a_descriptor_that_is_not_open_is_refused_and_still_owed(
    channel: tuple[Master, Slave],
) -> None:
    """Asked first: ``sendmsg`` would fail and end the session; the caller fails only the call."""
    master, slave = channel
    calling = in_thread(slave.call, "open", path="/x", flags=["read_only"])
    call = await master.receive_call()
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match="not open"):
        call.answer(answer_for(call.request, WithFds(0, [r]), errno.EIO))
    assert not call.done
    call.answer(answer_for(call.request, Errno(errno.EIO), errno.EIO))
    assert await calling == Reply(-1, errno.EIO)
    assert not master.closed


async def test_an_errno_may_be_an_oserror(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "open", path="/root/secret", flags=["read_only"])
    await master.receive()
    with pytest.raises(ValueError):
        await master.send(-1, OSError("no errno here"))
    await master.send(-1, FileNotFoundError(errno.ENOENT, "gone"))
    reply = await calling
    assert (reply.result, reply.errno) == (-1, errno.ENOENT)


async def test_the_end_of_the_session_is_session_closed(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    slave.close()
    with pytest.raises(SessionClosed) as raised:
        await master.receive()
    assert raised.value.errno is None
    assert master.closed
    with pytest.raises(SessionClosed):
        await master.receive()


async def test_a_malformed_message_closes_the_session_with_ebadmsg_and_a_log_line(
    caplog: pytest.LogCaptureFixture, workdir: int, fd_count: FdCount
) -> None:
    before = fd_count.snapshot()
    master, peer = Master.pair()
    caplog.set_level(logging.WARNING, logger="libc_service.endpoints.master")
    peer.sendmsg([raw_request(magic=b"HTTP", roles=wire_fields.ROLE_DIR1)], rights([workdir]))
    with pytest.raises(SessionClosed) as raised:
        await master.receive()
    assert raised.value.errno == errno.EBADMSG
    assert master.closed
    (record,) = [r for r in caplog.records if r.name == "libc_service.endpoints.master"]
    assert record.levelno == logging.WARNING
    assert "malformed" in record.getMessage() and "magic" in record.getMessage()
    # The peer sees the end of its channel.
    assert peer.recv(64) == b""
    peer.close()
    fd_count.assert_unchanged(before)


# --------------------------------------------------------------- descriptors


async def test_openat_dirfd_arrives_as_a_working_directory(channel: tuple[Master, Slave], workdir: int) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "openat", path="greeting", flags=["read_only"], fds=[workdir])
    request = await master.receive()
    assert isinstance(request, OpenatRequest) and request.dirfd is not None
    # The master resolves the path beneath the slave's directory, not its own.
    fd = os.open(request.path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.dirfd)
    assert os.pread(fd, 100, 0) == b"hello from the slave's directory\n"
    await master.send_with_fds(0, [fd])
    reply = await calling
    (opened,) = reply.fds
    try:
        assert os.read(opened, 100) == b"hello from the slave's directory\n"
    finally:
        os.close(opened)


async def test_a_connect_unix_socket_arrives_and_the_master_connects_it(
    channel: tuple[Master, Slave], tmp_path: Path
) -> None:
    master, slave = channel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "server"))
    listener.listen()
    mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener, mine:
        calling = in_thread(slave.call, "connect_unix", path=str(tmp_path / "server"), fds=[mine.fileno()])
        request = await master.receive()
        assert isinstance(request, ConnectUnixRequest)
        assert not request.abstract
        # Connecting the received descriptor connects the slave's own socket.
        theirs = socket.socket(fileno=os.dup(request.socket))
        with theirs:
            theirs.connect(str(request.path))
        await master.send(0)
        assert (await calling).result == 0
        mine.sendall(b"ping")
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(4) == b"ping"


async def test_a_connect_inet_socket_arrives(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, mine:
        calling = in_thread(slave.call, "connect_inet", address="127.0.0.1", port=port, fds=[mine.fileno()])
        request = await master.receive()
        (sock_fd,) = master.descriptors()
        assert socket.socket(fileno=os.dup(sock_fd)).getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        theirs = socket.socket(fileno=os.dup(sock_fd))
        with theirs:
            theirs.connect((str(request.address), request.port))  # type: ignore[union-attr]
        await master.send(0)
        assert (await calling).result == 0
        assert mine.getpeername() == ("127.0.0.1", port)


async def test_a_slave_that_opens_dev_null_reads_what_the_master_put_in_the_pipe(
    channel: tuple[Master, Slave],
) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "open", path="/dev/null", flags=["read_only"])
    await master.receive()
    r, w = os.pipe()
    os.write(w, b"not what you expected\n")
    os.close(w)
    await master.send_with_fds(0, [r])
    reply = await calling
    (pipe,) = reply.fds
    try:
        assert os.read(pipe, 100) == b"not what you expected\n"
        assert os.read(pipe, 100) == b"", "the master's write end is closed"
        assert os.get_inheritable(pipe) is False, "received with MSG_CMSG_CLOEXEC"
    finally:
        os.close(pipe)


async def test_a_forward_tells_the_slave_to_do_it_itself(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "access", path="/bin/sh", amode="rx")
    assert (await master.receive()).amode == frozenset("rx")  # type: ignore[union-attr]
    await master.use_slave_credentials()
    assert await calling == Reply(0, 0, (), True)


# ------------------------------------------------------- many calls at once


async def test_calls_from_two_threads_may_be_answered_out_of_order(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    first = in_thread(slave.call, "stat", path="/first")
    call1 = await master.receive_call()
    second = in_thread(slave.call, "stat", path="/second")
    call2 = await master.receive_call()
    assert {str(call1.request.path), str(call2.request.path)} == {"/first", "/second"}  # type: ignore[union-attr]
    await call2.send(Stat(size=len(str(call2.request.path))))  # type: ignore[union-attr]
    await call1.send(Stat(size=len(str(call1.request.path))))  # type: ignore[union-attr]
    assert (await first).result == Stat(size=len("/first"))
    assert (await second).result == Stat(size=len("/second"))
    with pytest.raises(RuntimeError):
        await call1.send(Stat())


# ------------------------------------------------------------- hostile peers


def _fds_of_kind(kind: str, count: int, tmp: Path) -> list[int]:
    fds: list[int] = []
    for i in range(count):
        choice = kind if kind != "mixed" else ("pipe", "socket", "directory", "devnull")[i % 4]
        if choice == "pipe":
            r, w = os.pipe()
            os.close(w)
            fds.append(r)
        elif choice == "socket":
            a, b = socket.socketpair()
            b.close()
            fds.append(a.detach())
        elif choice == "directory":
            fds.append(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY))
        else:
            fds.append(os.open("/dev/null", os.O_RDWR))
    return fds


async def _hostile(data: bytes, fds: Sequence[int] = (), *, closes_early: bool = False) -> SessionClosed:
    """Send one datagram from a raw peer; the master must end just that session."""
    master, peer = Master.pair()
    with peer:
        peer.sendmsg([data], rights(fds))
        close_all(fds)
        if closes_early:
            peer.close()
        with pytest.raises(SessionClosed) as raised:
            await master.receive()
    assert master.closed
    master.close()
    return raised.value


@given(data=st.binary(min_size=1, max_size=wire_header.MAX_MESSAGE + 64), nfds=st.integers(0, 4))
async def test_random_bytes_from_a_peer_end_only_that_session(data: bytes, nfds: int) -> None:
    before = FdCount().snapshot()
    pipes = [os.pipe() for _ in range(nfds)]
    close_all([w for _, w in pipes])
    closed = await _hostile(data, [r for r, _ in pipes])
    assert closed.errno == errno.EBADMSG
    FdCount().assert_unchanged(before)


_STAT = wire_header.CODE["stat"]


@pytest.mark.parametrize(
    ("data", "nfds"),
    [
        pytest.param(raw_request()[:1], 0, id="one byte"),
        pytest.param(raw_request()[:63], 0, id="header less one byte"),
        pytest.param(raw_request()[:64], 0, id="header without its string"),
        pytest.param(raw_request(len1=200), 0, id="len1 larger than the datagram"),
        pytest.param(raw_request(len1=1), 0, id="len1 smaller than the datagram"),
        pytest.param(raw_request(len1=0xFFFF, len2=0xFFFF), 0, id="both lengths at their maximum"),
        pytest.param(raw_request(function=0), 0, id="function 0"),
        pytest.param(raw_request(function=24), 0, id="function 24"),
        pytest.param(raw_request(function=0xFFFF), 0, id="function 65535"),
        pytest.param(raw_request(version=0xFFFF), 0, id="version 65535"),
        pytest.param(raw_request(reserved=b"\0\0\0\0\0\0\x80"), 0, id="last reserved bit"),
        pytest.param(raw_request(roles=0x80 | 1), 1, id="fd role bit 7"),
        pytest.param(
            raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1), 1, id="a descriptor on getaddrinfo"
        ),
        pytest.param(
            raw_request(b"x", function=wire_header.CODE["getaddrinfo"], flags=1, roles=1),
            1,
            id="a directory role on getaddrinfo",
        ),
        pytest.param(
            raw_request(b"", function=wire_header.CODE["connect_inet"], roles=4, arg=80),
            2,
            id="two descriptors on connect_inet",
        ),
        pytest.param(raw_request(roles=wire_fields.ROLE_DIR1), 0, id="a role without its descriptor"),
        pytest.param(raw_request(roles=wire_fields.ROLE_SOCKET), 1, id="stat with the socket role"),
        pytest.param(
            raw_request(b"\0x", function=wire_header.CODE["connect_unix"], roles=1),
            1,
            id="connect_unix with a directory role",
        ),
        pytest.param(
            raw_request(b"/a", b"/b", function=wire_header.CODE["rename"], roles=3),
            1,
            id="rename announces two, one comes",
        ),
        pytest.param(raw_request(b"/" * 4095, b"/" * 4095) + bytes(100), 0, id="one byte beyond the largest message"),
        pytest.param(bytes(wire_header.MAX_MESSAGE + 1), 0, id="MAX_MESSAGE + 1 bytes"),
        pytest.param(bytes(65000), 0, id="a 65000-byte datagram"),
        pytest.param(b"", 1, id="descriptors without bytes"),
    ],
)
async def test_a_malformed_request_ends_only_its_session(
    data: bytes, nfds: int, tmp_path: Path, fd_count: FdCount
) -> None:
    before = fd_count.snapshot()
    closed = await _hostile(data, _fds_of_kind("mixed", nfds, tmp_path))
    assert closed.errno == errno.EBADMSG
    fd_count.assert_unchanged(before)


@pytest.mark.parametrize("kind", ["pipe", "socket", "directory", "devnull", "mixed"])
@pytest.mark.parametrize("count", [wire_header.MAX_REQUEST_FDS + 1, wire_header.MAX_REQUEST_FDS + 2, 16, 253])
async def test_too_many_descriptors_are_all_closed(kind: str, count: int, tmp_path: Path, fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    closed = await _hostile(raw_request(roles=wire_fields.ROLE_DIR1), _fds_of_kind(kind, count, tmp_path))
    assert closed.errno == errno.EBADMSG
    fd_count.assert_unchanged(before)


async def test_a_peer_that_hangs_up_after_asking_leaves_nothing_open(workdir: int, fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    master, peer = Master.pair()
    peer.sendmsg([raw_request(b"greeting", roles=wire_fields.ROLE_DIR1)], rights([workdir]))
    request = await master.receive()
    assert request.dirfd is not None  # type: ignore[union-attr]
    peer.close()
    with pytest.raises(SessionClosed):
        await master.send(Stat())
    assert_closed(request.dirfd)  # type: ignore[union-attr]
    with pytest.raises(SessionClosed):
        await master.receive()
    fd_count.assert_unchanged(before)


async def test_a_peer_that_hangs_up_while_the_master_waits(fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    master, peer = Master.pair()
    receiving = asyncio.ensure_future(master.receive())
    await asyncio.sleep(0.01)
    peer.close()
    with pytest.raises(SessionClosed) as raised:
        await receiving
    assert raised.value.errno is None
    fd_count.assert_unchanged(before)


async def test_a_peer_that_sends_garbage_then_vanishes_with_descriptors_in_flight(
    tmp_path: Path, fd_count: FdCount
) -> None:
    before = fd_count.snapshot()
    garbage = raw_request(roles=wire_fields.ROLE_DIR1, function=0)
    closed = await _hostile(garbage, _fds_of_kind("mixed", 3, tmp_path), closes_early=True)
    assert closed.errno == errno.EBADMSG
    fd_count.assert_unchanged(before)


async def test_a_good_call_then_garbage(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "lstat", path="/tmp")
    await master.receive()
    await master.send(Stat(type="directory"))
    assert (await calling).result == Stat(type="directory")
    os.write(slave.fileno(), b"garbage")
    with pytest.raises(SessionClosed) as raised:
        await master.receive()
    assert raised.value.errno == errno.EBADMSG


async def test_the_master_keeps_serving_one_session_while_another_sends_garbage(fd_count: FdCount) -> None:
    before = fd_count.snapshot()
    ends: dict[str, SessionClosed] = {}

    async def serve(name: str, master: Master) -> int:
        served = 0
        try:
            while True:
                request = await master.receive()
                await master.send(Stat(size=len(str(request.path))))  # type: ignore[union-attr]
                served += 1
        except SessionClosed as end:
            ends[name] = end
            return served

    hostile, peer = Master.pair()
    good, sock = Master.pair()
    slave = Slave(sock)
    serving = asyncio.gather(serve("hostile", hostile), serve("good", good))

    def work() -> list[Reply]:
        return [slave.call("stat", path=f"/calls/{i}") for i in range(300)]

    try:
        calling = in_thread(work)
        peer.send(raw_request(b"/ok"))
        await asyncio.sleep(0.005)
        peer.send(b"\xff" * 100)
        replies = await calling
    finally:
        slave.close()
    wrong = [(i, r) for i, r in enumerate(replies) if r.result != Stat(size=len(f"/calls/{i}"))]
    assert not wrong[:3]
    served = await serving
    assert list(served) == [1, 300]
    assert ends["hostile"].errno == errno.EBADMSG
    assert ends["good"].errno is None
    # The hostile peer got its one answer, then the end of its channel.
    assert wire_replies.decode_reply(peer.recv(wire_header.MAX_MESSAGE)).result == Stat(size=3)
    assert peer.recv(wire_header.MAX_MESSAGE) == b""
    peer.close()
    fd_count.assert_unchanged(before)


# ------------------------------------------------------ the dispatch contract


class _Recorder:
    """A dispatcher of its own: proves Master.serve needs nothing but the public Call API."""

    def __init__(self, *, later: bool = False, fail_on: str | None = None) -> None:
        self.later = later
        self.fail_on = fail_on
        self.decided: list[str] = []

    def decide_now(self, call: Any) -> Any:
        self.decided.append(str(call.request.path))
        if str(call.request.path) == self.fail_on:
            raise LookupError("the dispatcher's bug")
        if not self.later:
            assert call.try_send(Stat(size=len(self.decided)))
            return None

        async def answer() -> None:
            await asyncio.sleep(0)
            await call.send(Stat(size=len(self.decided)))

        return answer()


@pytest.mark.parametrize("later", [False, True], ids=["answered at once", "answered by an awaitable"])
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
async def test_a_dispatcher_of_its_own_serves_a_session_through_the_public_call_api(
    later: bool, concurrent: bool, fd_count: FdCount
) -> None:
    before = fd_count.snapshot()
    master, sock = Master.pair()
    slave = Slave(sock)
    dispatcher = _Recorder(later=later)
    serving = asyncio.ensure_future(master.serve(dispatcher, concurrent=concurrent))

    def calls() -> list[int]:
        return [slave.call("stat", path=f"/{n}").result.size for n in range(5)]  # type: ignore[union-attr]

    assert await in_thread(calls) == [1, 2, 3, 4, 5]
    slave.close()
    await serving
    assert master.closed and dispatcher.decided == [f"/{n}" for n in range(5)]
    fd_count.assert_unchanged(before)


async def test_a_dispatcher_bug_ends_its_session_and_the_slave_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="libc_service.endpoints.master")
    master, sock = Master.pair()
    slave = Slave(sock)
    serving = asyncio.ensure_future(master.serve(_Recorder(fail_on="/bug")))
    assert (await in_thread(slave.call, "stat", path="/fine")).result == Stat(size=1)
    with pytest.raises(ConnectionError):
        await in_thread(slave.call, "stat", path="/bug")
    try:
        await serving
    except LookupError:
        pass  # decided in the session's task rather than in the reader callback: serve raises it
    assert master.closed
    slave.close()


async def test_the_session_state_says_how_a_session_ended(channel: tuple[Master, Slave]) -> None:
    master, slave = channel
    calling = in_thread(slave.call, "stat", path="/never/answered")
    await master.receive_call()
    assert (master.channel.in_flight, master.channel.unanswered) == (1, 1)
    master.close()
    assert (master.channel.unanswered_at_close, master.channel.unsent_at_close) == (1, 0)
    with pytest.raises(ConnectionError):
        await calling


async def test_the_in_flight_cap_stops_reading_until_a_call_is_answered() -> None:
    master, sock = Master.pair()
    release = asyncio.Event()
    started: list[int] = []

    class Slow:
        def decide_now(self, call: Any) -> Any:
            started.append(call.request.tid)

            async def answer() -> None:
                await release.wait()
                await call.send(Stat())

            return answer()

    serving = asyncio.ensure_future(master.serve(Slow(), concurrent=True, max_in_flight=2))
    for tid in (1, 2, 3):
        sock.send(
            wire_requests.encode_request(StatRequest(path=PurePosixPath("/x"), pid=9, tid=tid, request_id=tid))[0]
        )
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert started == [1, 2], "the third call waits until one of the first two is answered"
    release.set()
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert started == [1, 2, 3]
    sock.close()
    await serving


def test_a_cpu_is_free_when_idle_time_kept_up_with_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from libc_service.kernel import idle_cpu
    from libc_service.kernel.idle_cpu import IdleCpu

    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # The sampler's clock is the test's: a real sleep on a loaded machine lasts longer
    # than the idle time the test writes, and the test would measure the machine.
    clock = [100.0]
    monkeypatch.setattr(idle_cpu, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock[0])}))
    sampler = IdleCpu(str(stat))
    sampler.PERIOD = 0.0  # type: ignore[misc]  # sample on every call here

    def idle_for(seconds: float) -> None:
        idle_for.total += seconds  # type: ignore[attr-defined]
        stat.write_text(f"cpu  10 0 10 {int(idle_for.total * ticks)} 0 0 0 0 0 0\n")  # type: ignore[attr-defined]

    idle_for.total = 1000.0  # type: ignore[attr-defined]
    idle_for(0)
    assert not sampler.free()  # the first call only samples
    clock[0] += 0.2
    idle_for(0.2)  # a whole CPU idle meanwhile
    assert sampler.free()
    clock[0] += 0.2
    idle_for(0.0)  # every CPU busy (with others' work: this process hardly ran)
    assert not sampler.free()
    stat.unlink()
    assert not sampler.free()  # no /proc/stat: never free


def test_the_adaptive_busy_poll_waits_for_a_lone_master() -> None:
    from libc_service.endpoints.master import Master

    first_a, first_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    second_a, second_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    before = Master.open_count
    one, two = Master(first_a), Master(second_a)
    try:
        assert Master.open_count == before + 2
        two.close()
        two.close()  # idempotent: counted once
        assert Master.open_count == before + 1
    finally:
        one.close()
        for sock in (first_b, second_b):
            sock.close()
    assert Master.open_count == before
