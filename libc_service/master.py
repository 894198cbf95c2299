"""The master end of one slave channel, on asyncio.

Two levels of API over one socket:

- the seed's, one call at a time: ``await receive()``, then exactly one of
  ``send``/``send_with_fds``/``use_slave_credentials``;
- :meth:`Master.receive_call`, which hands out a :class:`Call` per request
  so several calls (from different slave threads) can be answered out of
  order. The router's concurrent mode is built on it.

Descriptor ownership is strict: every descriptor received with a request
belongs to its :class:`Call` and is closed exactly once, when the reply goes
out or when the session ends; every descriptor passed to a send is owned by
that send and closed after it, whether or not it went out.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno as errno_module
import fcntl
import logging
import os
import socket
import termios
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Final

from . import wire
from .replies import Result
from .requests import Request

__all__ = ["Call", "Master", "SessionClosed"]

logger = logging.getLogger(__name__)

_CMSG_SPACE: Final = socket.CMSG_SPACE((wire.MAX_REQUEST_FDS + 1) * array.array("i").itemsize)
# Plain ints: socket.MSG_* are IntFlag members, and IntFlag arithmetic on
# the hot path (``flags & (MSG_CTRUNC | MSG_TRUNC)``) cost ~1.5 µs a call.
_RECV_FLAGS: Final = int(socket.MSG_CMSG_CLOEXEC)
_SEND_FLAGS: Final = int(socket.MSG_NOSIGNAL)
_TRUNCATED: Final = int(socket.MSG_CTRUNC | socket.MSG_TRUNC)
_INT_SIZE: Final = array.array("i").itemsize
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


class SessionClosed(EOFError):
    """The session is over: the slave hung up, or broke the protocol.

    ``errno`` is ``None`` for a clean end of file and ``EBADMSG`` when the
    master closed the session because of a malformed message.
    """

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


def close_fds(fds: Iterable[int]) -> None:
    """Close descriptors, ignoring ones already gone."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _errno_value(errno: int | OSError) -> int:
    if isinstance(errno, OSError):
        if not errno.errno:
            raise ValueError(f"{errno!r} carries no errno")
        return errno.errno
    if isinstance(errno, bool) or not isinstance(errno, int):
        raise TypeError(f"errno is an int or an OSError, not {type(errno).__name__}")
    return errno


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Descriptors in ``SCM_RIGHTS`` control messages (partial ints dropped)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds


class Call:
    """One request awaiting its reply, with the descriptors that came with it.

    Reply exactly once with :meth:`send`, :meth:`send_with_fds` or
    :meth:`use_slave_credentials`. The received descriptors are closed when
    the reply goes out (or, unanswered, when the session ends).
    """

    __slots__ = ("request", "_master", "_fds", "_done", "_unsent", "_later")

    def __init__(self, master: Master, request: Request, fds: list[int]) -> None:
        self.request: Final = request
        self._master = master
        self._fds = fds
        self._done = False
        #: A reply encoded but not yet taken by the socket, and its descriptors.
        self._unsent: tuple[bytes, list[int]] | None = None
        #: Work begun outside the session's task (the router's dispatch in
        #: the reader callback) that the task must finish.
        self._later: Later | None = None

    @property
    def function(self) -> str:
        """The function's name, e.g. ``"openat"``."""
        return self.request.function

    @property
    def done(self) -> bool:
        """Whether the reply went out (or the call was abandoned)."""
        return self._done

    def descriptors(self) -> tuple[int, ...]:
        """The descriptors that came with the request, in role order."""
        return tuple(self._fds)

    async def send(self, result: Result, errno: int | OSError = 0) -> None:
        """Reply with ``result`` (and ``errno`` on failure)."""
        await self.send_with_fds(result, (), errno)

    async def send_with_fds(self, result: Result, fds: Sequence[int], errno: int | OSError = 0) -> None:
        """Reply with ``result`` and descriptors; ``fds`` are closed afterwards, always."""
        if not self._try_send(result, fds, errno):
            await self._flush()

    async def use_slave_credentials(self) -> None:
        """Tell the slave to perform the call itself, with its own authority."""
        if not self._try_forward():
            await self._flush()

    def _try_send(self, result: Result, fds: Sequence[int], errno: int | OSError = 0) -> bool:
        """Encode the reply and send it if the socket takes it now.

        Raises as :meth:`send_with_fds` does. ``False``: the socket would
        block; the reply waits on the call and :meth:`_flush` sends it.
        """
        fds = list(fds) if fds else []
        try:
            self._claim()
            request = self.request
            data = wire.encode_reply_to(
                request.function, request.tid, request.request_id, result,
                errno if type(errno) is int else _errno_value(errno), False, len(fds),
            )
        except BaseException:
            # Nothing went out: the call stays owed, the descriptors are gone.
            close_fds(fds)
            raise
        return self._try_finish(data, fds)

    def _try_forward(self) -> bool:
        """:meth:`use_slave_credentials` if the socket takes it now (see :meth:`_try_send`)."""
        self._claim()
        request = self.request
        return self._try_finish(wire.encode_reply_to(request.function, request.tid, request.request_id, forward=True), [])

    def _try_finish(self, data: bytes, fds: list[int]) -> bool:
        self._done = True
        try:
            sent = self._master._send_now(data, fds)
        except BaseException:
            close_fds(fds)
            self.abandon()
            raise
        if not sent:
            self._unsent = (data, fds)
            return False
        if fds:
            close_fds(fds)
        self.abandon()
        return True

    async def _flush(self) -> None:
        """Send the reply the socket did not take at once (a no-op without one)."""
        unsent, self._unsent = self._unsent, None
        if unsent is None:
            return
        data, fds = unsent
        try:
            await self._master._send(data, fds)
        finally:
            close_fds(fds)
            self.abandon()

    def _claim(self) -> None:
        # Closed-ness first: a call the session's end abandoned is "done"
        # too, and its late reply (an async handler finishing after the
        # slave died) is the ordinary SessionClosed, not a policy bug.
        if self._master.closed:
            self.abandon()
            raise SessionClosed("the session is closed")
        if self._done:
            raise RuntimeError(f"the {self.request.function} call was already answered")

    def abandon(self) -> None:
        """Close the received descriptors without replying (session over)."""
        self._done = True
        fds, self._fds = self._fds, []
        close_fds(fds)
        unsent, self._unsent = self._unsent, None
        if unsent is not None:
            close_fds(unsent[1])
        later, self._later = self._later, None
        if later is not None:
            later.discard()
        self._master._pending.discard(self)


class Later:
    """Work on a call that its session's task must finish: a coroutine to
    await, and what to close should the session end first."""

    __slots__ = ("coroutine", "awaitable")

    def __init__(self, coroutine: Coroutine[Any, Any, None], awaitable: object = None) -> None:
        self.coroutine = coroutine
        self.awaitable = awaitable

    def discard(self) -> None:
        # Runs while a session closes: a failure here must not stop the
        # other calls' descriptors from being closed.
        for pending in (self.coroutine, self.awaitable):
            close = getattr(pending, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - the policy's awaitable, closed unfinished
                    logger.exception("closing the unfinished %r failed", pending)


class Master:
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
    #: master awake instead of costing a wake-up from idle: on the project's
    #: VM a cross-CPU round trip drops from ~55 µs to ~33 µs with 20 µs.
    #: The price is CPU time spent polling, and other sessions on the same
    #: loop wait up to this long: for a master with cores to spare and few,
    #: chatty slaves. Set it on the class or on one master.
    busy_poll_ns: int = 0

    def __init__(self, sock: socket.socket, *, name: str | None = None) -> None:
        if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
            raise ValueError("a Master needs an AF_UNIX SOCK_SEQPACKET socket")
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self.name = name or f"fd {sock.fileno()}"
        self._reading = False
        self._current: Call | None = None
        self._pending: set[Call] = set()
        self._writers: list[asyncio.Future[None]] = []
        #: The loop the writer callback is registered with, while it is.
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Future[None] | None = None
        # The socket stays registered with the loop for the session (not
        # add_reader/remove_reader per receive: two epoll_ctl calls each);
        # the callback takes datagrams into the bounded inbox.
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[_Received] = collections.deque()
        #: Set by a dispatcher (the sequential Router) that can answer calls
        #: synchronously: the reader callback then decodes and hands each
        #: call to it without waking the session's task. It returns False
        #: for a call the task must take (nothing done yet, or ``_later`` set).
        self._answer_now: Callable[[Call], bool] | None = None
        self._handover: Call | None = None
        self._queued_bytes = bytearray(4)
        self.pid: int | None = None

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
        self._handover = None
        for call in list(self._pending):
            call.abandon()
        self._current = None

    async def __aenter__(self) -> Master:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------ many-call level

    async def receive_call(self) -> Call:
        """Wait for the next request and return it as a :class:`Call`.

        Raises :class:`SessionClosed` at the end of the session (and after
        closing it for a malformed message, with ``errno=EBADMSG``), and
        ``OSError(EBUSY)`` if another task is already receiving.
        """
        if self._reading:
            raise OSError(errno_module.EBUSY, "another receive is already waiting on this master")
        self._reading = True
        try:
            received = await self._recv()
        finally:
            self._reading = False
        if isinstance(received, Call):
            return received
        data, fds = received
        try:
            request = wire.decode_request(data, fds)
        except wire.ProtocolError as exc:
            close_fds(fds)
            self._protocol_failure(str(exc))
        return self._new_call(request, fds)

    def _new_call(self, request: Request, fds: list[int]) -> Call:
        if self.pid is None:
            self.pid = request.pid
        call = Call(self, request, fds)
        self._pending.add(call)
        return call

    async def _recv(self) -> tuple[bytes, list[int]] | Call:
        while True:
            sock = self._sock
            if sock is None:
                raise SessionClosed("the session is closed")
            if self._handover is not None:
                call, self._handover = self._handover, None
                return call
            if self._inbox:
                item = self._inbox.popleft()
            else:
                # Try first: when slave and master share a CPU the next
                # request is usually in before the reply's sendmsg returns.
                try:
                    if not self._queued(sock):
                        raise BlockingIOError
                    data, ancdata, flags, _ = sock.recvmsg(wire.MAX_MESSAGE + 1, _CMSG_SPACE, _RECV_FLAGS)
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
            if flags & _TRUNCATED or len(data) > wire.MAX_MESSAGE:
                close_fds(fds)
                self._protocol_failure("message or its descriptors truncated (too large or too many)")
            if len(fds) > wire.MAX_REQUEST_FDS:
                close_fds(fds)
                self._protocol_failure(f"{len(fds)} descriptors on one request")
            return data, fds

    def _protocol_failure(self, reason: str) -> Any:
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

        With a synchronous dispatcher (``_answer_now``) and the session's
        task waiting to receive, it answers up to ``_DRAIN_MAX`` calls
        itself, with no future and no task switch, and wakes the task only
        for a call the dispatcher cannot finish here, or for anything out of
        the ordinary (end of file, an error, a malformed message), which the
        task's receive then handles as usual. Otherwise it takes one
        datagram into the inbox and wakes the task.
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
        # Anything that can run policy code or send (``answer``) can also end
        # the session: a reply fails because the slave died meanwhile, or a
        # handler closes the master. After it the socket is not touched
        # again unless it is still the session's (``self._sock is sock``).
        for taken in range(_DRAIN_MAX):
            if taken and not self._queued(sock) and not self._poll_briefly(sock):
                return  # all answered
            try:
                data, ancdata, flags, _ = sock.recvmsg(wire.MAX_MESSAGE + 1, _CMSG_SPACE, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                return  # all answered (or readiness reported before the last receive took it)
            except OSError as exc:
                self._inbox.append(exc)
                self._disarm_reader(sock)
                break
            answer = self._answer_now
            call = None
            if answer is not None and not reader.done() and not self._inbox:
                call = self._decode_now(data, ancdata, flags)
            if call is None:
                self._inbox.append((data, ancdata, flags))
                if not data and not ancdata:
                    self._disarm_reader(sock)  # end of file stays readable
                break
            assert answer is not None
            try:
                answered = answer(call)
            except SessionClosed:
                return  # closed while answering; close() woke the task
            except Exception:  # noqa: BLE001 - a dispatcher bug must not stall the session
                logger.exception("closing session %s (pid %s): the dispatcher failed", self.name, self.pid)
                self.close()
                return
            if self._sock is not sock:
                # The session ended while answering (close() woke the task).
                # Work the dispatcher left on the call (``_later``) was set
                # after close() abandoned it: abandon again to discard it.
                call.abandon()
                return
            if answered:
                continue
            self._handover = call
            break
        else:
            return  # the budget is spent: the loop comes back while datagrams wait
        if not reader.done():
            reader.set_result(None)

    def _poll_briefly(self, sock: socket.socket) -> bool:
        """Busy-poll for a next datagram for up to :attr:`busy_poll_ns`."""
        budget = self.busy_poll_ns
        if budget <= 0:
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
        """Whether a datagram with bytes waits: a 0.3 µs ioctl where a failed
        ``recvmsg`` costs 1.2 µs (the raised ``BlockingIOError``). End of
        file and descriptor-only datagrams read as nothing waiting: the
        loop's readiness callback takes those."""
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, self._queued_bytes)
        except OSError:
            return True  # let recvmsg report it
        return self._queued_bytes != b"\0\0\0\0"

    def _decode_now(self, data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> Call | None:
        """A well-formed request as a call; ``None`` for anything else (left to the task)."""
        if not data or flags & _TRUNCATED or len(data) > wire.MAX_MESSAGE:
            return None
        fds = received_fds(ancdata)
        if len(fds) > wire.MAX_REQUEST_FDS:
            return None
        try:
            request = wire.decode_request(data, fds)
        except wire.ProtocolError:
            return None
        return self._new_call(request, fds)

    def _disarm_reader(self, sock: socket.socket) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed() and sock.fileno() >= 0:
            loop.remove_reader(sock.fileno())

    def _disarm_writer(self, sock: socket.socket) -> None:
        loop, self._writer_loop = self._writer_loop, None
        if loop is not None and not loop.is_closed() and sock.fileno() >= 0:
            loop.remove_writer(sock.fileno())

    def _send_now(self, data: bytes, fds: Sequence[int]) -> bool:
        """Send if the socket takes it now (the usual case): no coroutine, no loop."""
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

    async def _send(self, data: bytes, fds: Sequence[int]) -> None:
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

    # --------------------------------------------------------- seed's level

    async def receive(self) -> Request:
        """Wait for the next request (one call in flight at a time).

        Raises ``RuntimeError`` while a reply to the previous request is
        still owed, ``OSError(EBUSY)`` for a second concurrent receive, and
        :class:`SessionClosed` at the end of the session.
        """
        if self._current is not None and not self._current.done:
            raise RuntimeError(f"a reply to {self._current.function} is owed before the next receive")
        self._current = None
        call = await self.receive_call()
        self._current = call
        return call.request

    @property
    def function_(self) -> str | None:
        """The current request's function name (``None`` before the first receive)."""
        return None if self._current is None else self._current.function

    def arguments(self) -> tuple[Any, ...]:
        """The current request's arguments in the seed's positional order."""
        return self._owed().request.arguments()

    def descriptors(self) -> tuple[int, ...]:
        """The descriptors that came with the current request."""
        return self._owed().descriptors()

    async def send(self, result: Result, errno: int | OSError = 0) -> None:
        """Answer the current request with ``result`` (and ``errno``)."""
        await self._owed().send(result, errno)

    async def send_with_fds(self, result: Result, fds: Sequence[int], errno: int | OSError = 0) -> None:
        """Answer with descriptors; the master owns and closes ``fds`` afterwards."""
        try:
            call = self._owed()
        except BaseException:
            close_fds(fds)
            raise
        await call.send_with_fds(result, fds, errno)

    async def use_slave_credentials(self) -> None:
        """Tell the slave to do the current call itself."""
        await self._owed().use_slave_credentials()

    def _owed(self) -> Call:
        if self._sock is None:
            raise SessionClosed("the session is closed")
        call = self._current
        if call is None or call.done:
            raise RuntimeError("no request awaits a reply; call receive() first")
        return call
