"""The master end of one slave channel, on asyncio.

Two levels of API over one socket:

- one call at a time: ``await receive()``, then exactly one of
  ``send``/``send_with_fds``/``use_slave_credentials``;
- :meth:`Master.receive_call`, which hands out a :class:`Call` per request
  so several calls (from different slave threads) can be answered out of
  order;
- :meth:`Master.serve`, which owns the dispatch loop (sequential, or
  concurrent in a task group) and hands each call to a :class:`Dispatcher`
  (the :class:`~libc_service.Router` is one) through the public
  :class:`Call` methods only.

The protocol rules (one reply per call, the in-flight cap, descriptor
counts) live in :class:`~libc_service.protocol.calls.MasterChannel`, a call and
the seed's one-call level in :mod:`libc_service.endpoints.master_call`; this module
does the I/O.

Descriptor ownership is strict: every descriptor received with a request
belongs to its :class:`Call` and is closed exactly once, when the reply goes
out or when the session ends; every descriptor passed to a send is owned by
that send and closed after it, whether or not it went out.
"""

from __future__ import annotations

import array
import collections
import errno as errno_module
import fcntl
import functools
import logging
import os
import socket
import termios
import time
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import ClassVar, TYPE_CHECKING, Final, NoReturn

from libc_service.protocol import wire_header
from libc_service.protocol.calls import MasterChannel
from libc_service.protocol.wire_header import ProtocolError
from libc_service.kernel.descriptors import close_fds, received_fds
from libc_service.kernel.idle_cpu import IDLE_CPU
from libc_service.endpoints.master_call import Call, Dispatcher, OneCallAtATime, SessionClosed, discard

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.protocol.requests import Request
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["Call", "Dispatcher", "Master", "ProtocolError", "SessionClosed"]

logger = logging.getLogger(__name__)

_CMSG_SPACE: Final = socket.CMSG_SPACE((wire_header.MAX_REQUEST_FDS + 1) * array.array("i").itemsize)
# Plain ints: socket.MSG_* are IntFlag members, and IntFlag arithmetic costs
# more per call than the rest of the flag handling (docs/performance.md).
_RECV_FLAGS: Final = int(socket.MSG_CMSG_CLOEXEC)
_SEND_FLAGS: Final = int(socket.MSG_NOSIGNAL)
#: Datagrams the reader callback takes in ahead of ``receive_call``; past
#: that it stops watching the socket until they are consumed (backpressure:
#: the slave's sends then block in the kernel).
_INBOX_MAX: Final = 8

#: Datagrams one reader callback answers itself at most (then the loop
#: serves other sessions and comes back: readiness is level-triggered).
_DRAIN_MAX: Final = 16

#: What the reader callback got: a datagram (data, ancillary data, flags)
#: or the receive error.
_Received = tuple[bytes, list[tuple[int, int, bytes]], int] | OSError


def _discard_if_cancelled(call: Call, pending: Awaitable[None], task: asyncio.Task[None]) -> None:
    # A task cancelled before its first step never ran its coroutine, so
    # the dispatcher's awaitable was never started: close it, drop the call.
    if task.cancelled():
        discard(pending)
        call.abandon()


class _Ended(Exception):
    """Raised in a concurrent session's task group to cancel the calls still being decided."""


class Master(OneCallAtATime):
    """The master end of one channel to one slave process.

    Create one with :meth:`pair` (for a Python :class:`~libc_service.Slave`)
    or from a socket received at registration. Use ``async with`` (or
    :meth:`close`) so the socket and any unanswered call's descriptors are
    closed when the session ends.
    """

    #: Busy-poll, in nanoseconds (0: off, the default). After the reader
    #: callback has answered what was waiting, it keeps checking the socket
    #: for this long (yielding the CPU between checks) before returning to
    #: the loop, and starts over whenever a call comes in. When slave and
    #: master run on different CPUs, the slave's next call then finds the
    #: master awake instead of costing a wake-up from idle (figures in
    #: docs/performance.md, "busy-polling"). The price is CPU time spent polling, and other sessions on the same
    #: loop wait up to this long: for a master with cores to spare and few,
    #: chatty slaves. Set it on the class or on one master.
    busy_poll_ns: int = 0
    #: Busy-poll only when it costs nobody (0: never, the default): like
    #: :attr:`busy_poll_ns`, but only while this is the process's one open
    #: master (no other session waits on the loop) and a CPU is otherwise
    #: idle (:class:`~libc_service.kernel.idle_cpu.IdleCpu`). The command line sets it: a lone program's
    #: round trips lose the cross-CPU wake-up while a CPU is free, and
    #: nothing changes when the machine is busy.
    adaptive_busy_poll_ns: int = 0
    #: Masters open in this process (the adaptive busy-poll polls only for a lone one).
    open_count: ClassVar[int] = 0

    def __init__(self, sock: socket.socket, *, name: str | None = None, pid: int | None = None) -> None:
        """``pid``: the process the channel belongs to, when the kernel named it (``spawn`` does, from
        the registration's credentials): a request that claims another process is then malformed."""
        if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
            raise ValueError("a Master needs an AF_UNIX SOCK_SEQPACKET socket")
        sock.setblocking(False)
        Master.open_count += 1
        self._sock: socket.socket | None = sock
        self.name = name or f"fd {sock.fileno()}"
        self._reading = False
        self._current: Call | None = None
        #: The protocol state: calls in flight, one reply each, the in-flight cap.
        self._channel: MasterChannel[Call] = MasterChannel()
        #: Set while a concurrent session waits for a call to leave the flight.
        self._room: asyncio.Future[None] | None = None
        self._writers: list[asyncio.Future[None]] = []
        #: The loop the writer callback is registered with, while it is.
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Future[None] | None = None
        # The socket stays registered with the loop for the session (not
        # add_reader/remove_reader per receive: two epoll_ctl calls each);
        # the callback takes datagrams into the bounded inbox.
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[_Received] = collections.deque()
        #: The dispatcher of a sequential :meth:`serve`: the reader callback
        #: hands it each well-formed call without waking the session's task.
        self._dispatcher: Dispatcher | None = None
        #: A call the reader callback decoded and the awaitable its
        #: dispatcher returned, for the session's task to finish.
        self._handover: tuple[Call, Awaitable[None] | None] | None = None
        self._queued_bytes = bytearray(4)
        self.pid: int | None = pid
        self._owner = pid

    @classmethod
    def pair(cls) -> tuple[Master, socket.socket]:
        """A master end and the slave's socket (blocking, close-on-exec)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(mine), theirs

    # ------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        """Whether the session is over."""
        return self._sock is None

    @property
    def channel(self) -> MasterChannel[Call]:
        """The channel's protocol state: calls in flight and, once closed, how the session ended."""
        return self._channel

    def fileno(self) -> int:
        """The channel socket's descriptor (-1 once closed)."""
        return -1 if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        """End the session: close the socket and every unanswered call's descriptors.

        Idempotent, and safe from anywhere on the loop: from a handler or an
        observer (in the session's task or in the reader callback), from the
        reader callback itself when a reply fails because the slave died, or
        from whoever owns the session (spawn's ``aclose``). ``_sock`` is
        cleared first, so code that runs during the close (a discarded
        handler's ``finally``) sees the session closed; the reader and writer
        callbacks are unregistered before the descriptor is closed, so no
        callback runs on it afterwards, nor on a socket that reuses its number.
        The socket is closed before any policy code can run (discarding a
        call's unfinished work), so nothing that code does can keep it open.
        """
        sock, self._sock = self._sock, None
        if sock is None:
            return
        Master.open_count -= 1
        self._disarm_reader(sock)
        self._disarm_writer(sock)
        sock.close()
        while self._inbox:
            item = self._inbox.popleft()
            if not isinstance(item, OSError):
                close_fds(received_fds(item[1]))
        for waiter in [*self._writers, self._reader]:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._writers.clear()
        self._reader = None
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
        # The channel counts what was still in flight first (the handed-over
        # call included), then every call is dropped and its descriptors closed.
        in_flight = self._channel.close()
        handover, self._handover = self._handover, None
        if handover is not None:
            handover[0].abandon()
            if handover[1] is not None:
                discard(handover[1])
        for call in in_flight:
            call.abandon()
        self._current = None

    async def aclose(self) -> None:
        """End the session from async code: what :meth:`close` does, awaited.

        The package's async objects close one way, as the standard library's
        async generators and :func:`contextlib.aclosing` expect:
        ``await x.aclose()``, or ``async with x:`` which calls it (a
        :class:`Master`, a :class:`~libc_service.processes.spawn.SlaveProcess`).
        :meth:`close` stays for the code that cannot await (a reader
        callback, a sync handler or observer); a master has nothing left to
        wait for once it returns, so both end the session at once.
        """
        self.close()

    async def __aenter__(self) -> Master:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------ many-call level

    async def serve(
        self, dispatcher: Dispatcher, *, concurrent: bool = False, max_in_flight: int | None = None
    ) -> None:
        """Hand every call to ``dispatcher`` until the session ends; the master is closed after.

        Sequential (the default): one call decided at a time, in order;
        the reader callback hands calls to ``dispatcher.decide_now`` itself
        while the session's task waits. Concurrent: calls from different
        slave threads are decided at once, each awaitable in a task of the
        session's task group, at most ``max_in_flight`` calls in flight (the
        master stops reading past that, so a slave that never reads its
        replies cannot pile up tasks and descriptors). Tasks still running
        when the slave hangs up are cancelled. Returns at the end of the
        session; raises only what ``dispatcher`` raises from the task.
        """
        if max_in_flight is not None:
            if max_in_flight < 1:
                raise ValueError(f"max_in_flight is at least 1, not {max_in_flight}")
            self._channel.max_in_flight = max_in_flight
        try:
            if concurrent:
                try:
                    async with asyncio.TaskGroup() as group:
                        await self._serve_concurrently(dispatcher, group)
                        raise _Ended  # cancels the calls still being decided: their slave is gone
                except* _Ended:
                    pass
            else:
                await self._serve_sequentially(dispatcher)
        finally:
            self.close()

    async def _serve_sequentially(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        aside: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    call, pending = await self._receive()
                except SessionClosed:
                    return
                try:
                    if pending is None:
                        pending = dispatcher.decide_now(call)
                    if pending is not None:
                        if self._sock is None:
                            discard(pending)  # the decision ended the session: nobody is owed
                            call.abandon()
                        elif getattr(pending, "detached", False):
                            # Decided; only waiting for another party (a FIFO's
                            # other end), which may be this slave's next call.
                            task = asyncio.get_running_loop().create_task(self._finish(call, pending))
                            aside.add(task)
                            task.add_done_callback(aside.discard)
                            task.add_done_callback(functools.partial(_discard_if_cancelled, call, pending))
                        else:
                            await pending
                except SessionClosed:
                    call.abandon()
        finally:
            if self._dispatcher is dispatcher:
                self._dispatcher = None
            for task in list(aside):
                task.cancel()  # their slave is gone: release what they wait for

    async def _serve_concurrently(self, dispatcher: Dispatcher, group: asyncio.TaskGroup) -> None:
        channel = self._channel
        while True:
            if channel.full:
                # Backpressure: a call's descriptors stay open until it is answered.
                await self._wait_for_room()
                continue
            try:
                call = await self.receive_call()
            except SessionClosed:
                return
            try:
                pending = dispatcher.decide_now(call)
            except SessionClosed:
                call.abandon()
                continue
            if pending is not None:
                task = group.create_task(self._finish(call, pending))
                task.add_done_callback(functools.partial(_discard_if_cancelled, call, pending))

    async def _finish(self, call: Call, pending: Awaitable[None]) -> None:
        """Await a decision in the session's task group; its failure ends only the session."""
        try:
            await pending
        except SessionClosed:
            call.abandon()
        except Exception:  # noqa: BLE001 - a dispatcher bug must not end the task group's other calls
            logger.exception("closing session %s (pid %s): the dispatcher failed", self.name, self.pid)
            self.close()

    async def _wait_for_room(self) -> None:
        if self._sock is None:
            return
        room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room = room
        try:
            await room
        finally:
            if self._room is room:
                self._room = None

    async def receive_call(self) -> Call:
        """Wait for the next request and return it as a :class:`Call`.

        Raises :class:`SessionClosed` at the end of the session (and after
        closing it for a malformed message, with ``errno=EBADMSG``), and
        ``OSError(EBUSY)`` if another task is already receiving.
        """
        call, pending = await self._receive()
        if pending is not None:
            discard(pending)  # no dispatcher outside serve(): cannot happen, but never leak it
        return call

    async def _receive(self) -> tuple[Call, Awaitable[None] | None]:
        if self._reading:
            raise OSError(errno_module.EBUSY, "another receive is already waiting on this master")
        self._reading = True
        try:
            received = await self._recv()
        finally:
            self._reading = False
        if len(received) == 2:  # a call the reader callback decoded, handed over
            return received
        data, fds, flags = received
        try:
            request = MasterChannel.receive(data, fds, flags)
        except wire_header.RemoteProtocolError as exc:
            close_fds(fds)
            self._protocol_failure(str(exc))
        if self._owner is not None and request.pid != self._owner:
            close_fds(fds)
            self._protocol_failure(f"a request claims pid {request.pid} on pid {self._owner}'s channel")
        return self._new_call(request, fds), None

    def _new_call(self, request: Request, fds: list[int]) -> Call:
        if self.pid is None:
            self.pid = request.pid
        call = Call(self, request, fds)
        self._channel.open(call)
        return call

    async def _recv(self) -> tuple[bytes, list[int], int] | tuple[Call, Awaitable[None] | None]:
        while True:
            sock = self._sock
            if sock is None:
                raise SessionClosed("the session is closed")
            if self._handover is not None:
                handover, self._handover = self._handover, None
                return handover
            if self._inbox:
                item = self._inbox.popleft()
            else:
                # Try first: when slave and master share a CPU the next
                # request is usually in before the reply's sendmsg returns.
                try:
                    if not self._queued(sock):
                        raise BlockingIOError
                    data, ancdata, flags, _ = sock.recvmsg(wire_header.MAX_MESSAGE + 1, _CMSG_SPACE, _RECV_FLAGS)
                    item = (data, ancdata, flags)
                except (BlockingIOError, InterruptedError):
                    await self._wait_readable(sock)
                    continue
                except OSError as exc:
                    item = exc
            if isinstance(item, OSError):
                self.close()
                raise SessionClosed(f"receive failed: {item}") from item
            data, ancdata, flags = item
            fds = received_fds(ancdata)
            if not data and not fds:
                self.close()
                raise SessionClosed("the slave closed the channel")
            return data, fds, flags

    def _protocol_failure(self, reason: str) -> NoReturn:
        logger.warning("closing session %s (pid %s): malformed message: %s", self.name, self.pid, reason)
        self.close()
        raise SessionClosed(f"malformed message: {reason}", errno_module.EBADMSG)

    async def _wait_readable(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._reader_loop is not loop:
            self._disarm_reader(sock)
            loop.add_reader(sock.fileno(), self._on_readable)
            self._reader_loop = loop
        self._reader = waiter
        try:
            await waiter
        finally:
            self._reader = None

    def _on_readable(self) -> None:
        """The loop's reader callback.

        With a sequential :meth:`serve` and its task waiting to receive, it
        hands up to ``_DRAIN_MAX`` calls to the dispatcher itself, with no
        future and no task switch, and wakes the task only for a call whose
        decision must be awaited, or for anything out of the ordinary (end
        of file, an error, a malformed message), which the task's receive
        then handles as usual. Otherwise it takes one datagram into the
        inbox and wakes the task.
        """
        sock = self._sock
        reader = self._reader
        if sock is None:
            return
        if reader is None or len(self._inbox) >= _INBOX_MAX:
            # Nobody is receiving (a handler is running), or enough is taken
            # in: stop watching, or level-triggered readiness would spin the
            # loop. The next receive tries the socket first, then re-arms.
            self._disarm_reader(sock)
            return
        # Anything that can run policy code or send (the dispatcher) can also
        # end the session: a reply fails because the slave died meanwhile, or
        # a handler closes the master. After it the socket is not touched
        # again unless it is still the session's (``self._sock is sock``).
        for taken in range(_DRAIN_MAX):
            if taken and not self._queued(sock) and not self._poll_briefly(sock):
                return  # all answered
            try:
                data, ancdata, flags, _ = sock.recvmsg(wire_header.MAX_MESSAGE + 1, _CMSG_SPACE, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                return  # all answered (or readiness reported before the last receive took it)
            except OSError as exc:
                self._inbox.append(exc)
                self._disarm_reader(sock)
                break
            dispatcher = self._dispatcher
            call = None
            if dispatcher is not None and not reader.done() and not self._inbox:
                call = self._decode_now(data, ancdata, flags)
            if call is None:
                self._inbox.append((data, ancdata, flags))
                if not data and not ancdata:
                    self._disarm_reader(sock)  # end of file stays readable
                break
            assert dispatcher is not None
            try:
                pending = dispatcher.decide_now(call)
            except SessionClosed:
                call.abandon()
                if self._sock is not sock:
                    return  # closed while answering; close() woke the task
                continue
            except Exception:  # noqa: BLE001 - a dispatcher bug must not stall the session
                logger.exception("closing session %s (pid %s): the dispatcher failed", self.name, self.pid)
                self.close()
                return
            if self._sock is not sock:
                # The session ended while deciding (close() woke the task):
                # work the dispatcher handed back is for nobody.
                call.abandon()
                if pending is not None:
                    discard(pending)
                return
            if pending is None:
                continue
            self._handover = (call, pending)
            break
        else:
            return  # the budget is spent: the loop comes back while datagrams wait
        if not reader.done():
            reader.set_result(None)

    def _poll_briefly(self, sock: socket.socket) -> bool:
        """Busy-poll for a next datagram for up to :attr:`busy_poll_ns`."""
        budget = self.busy_poll_ns
        if budget <= 0:
            budget = self.adaptive_busy_poll_ns
            if budget <= 0 or Master.open_count != 1 or not IDLE_CPU.free():
                return False
        deadline = time.perf_counter_ns() + budget
        while time.perf_counter_ns() < deadline:
            os.sched_yield()  # a slave sharing this CPU runs meanwhile
            if self._sock is not sock:
                return False
            if self._queued(sock):
                return True
        return False

    def _queued(self, sock: socket.socket) -> bool:
        """Whether a datagram with bytes waits: an ioctl costs a fraction of
        a failed ``recvmsg`` (the raised ``BlockingIOError``; figures in
        docs/performance.md). End of file and descriptor-only datagrams read as nothing waiting: the
        loop's readiness callback takes those."""
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, self._queued_bytes)
        except OSError:
            return True  # let recvmsg report it
        return self._queued_bytes != b"\0\0\0\0"

    def _decode_now(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> Call | None:
        """A well-formed request as a call; ``None`` for anything else (left to the task)."""
        if not data:
            return None
        fds = received_fds(ancdata)
        try:
            request = MasterChannel.receive(data, fds, flags)
        except wire_header.RemoteProtocolError:
            return None
        if self._owner is not None and request.pid != self._owner:
            return None  # the task refuses it
        return self._new_call(request, fds)

    def _disarm_reader(self, sock: socket.socket) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed() and sock.fileno() >= 0:
            loop.remove_reader(sock.fileno())

    def _disarm_writer(self, sock: socket.socket) -> None:
        loop, self._writer_loop = self._writer_loop, None
        if loop is not None and not loop.is_closed() and sock.fileno() >= 0:
            loop.remove_writer(sock.fileno())

    # ------------------------------------------- what a Call asks of its master

    def transmit_now(self, data: bytes, fds: Sequence[int]) -> bool:
        """Send an encoded reply if the socket takes it now (the usual case): no coroutine, no loop.

        ``False``: the socket would block (:meth:`transmit` waits for room).
        Raises :class:`SessionClosed` when the session is over or the send
        failed (the session is then closed). The descriptors stay the caller's.
        """
        sock = self._sock
        if sock is None:
            raise SessionClosed("the session is closed")
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            sock.sendmsg([data], ancillary, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.close()
            raise SessionClosed(f"send failed: {exc}") from exc
        return True

    async def transmit(self, data: bytes, fds: Sequence[int]) -> None:
        """Send an encoded reply, waiting for room on the socket (see :meth:`transmit_now`)."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while True:
            sock = self._sock
            if sock is None:
                raise SessionClosed("the session is closed")
            try:
                sock.sendmsg([data], ancillary, _SEND_FLAGS)
                return
            except (BlockingIOError, InterruptedError):
                await self._wait_writable(sock)
            except OSError as exc:
                self.close()
                raise SessionClosed(f"send failed: {exc}") from exc

    def left_flight(self) -> None:
        """A call left the flight (:attr:`channel` says so): its reply went out, or never will.

        A concurrent session waiting for room (:attr:`Router.max_in_flight
        <libc_service.Router.max_in_flight>` calls in flight) reads on.
        """
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def _wait_writable(self, sock: socket.socket) -> None:
        # Several calls may wait to send at once: one writer callback wakes all.
        # Registration is tracked by the loop it is on, not by the waiters:
        # a cancelled sender leaves the list without unregistering.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if self._writer_loop is not loop:
            self._disarm_writer(sock)
            loop.add_writer(sock.fileno(), self._wake_writers)
            self._writer_loop = loop
        self._writers.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._writers:
                self._writers.remove(waiter)

    def _wake_writers(self) -> None:
        waiters, self._writers = self._writers, []
        sock = self._sock
        if sock is not None:
            self._disarm_writer(sock)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
