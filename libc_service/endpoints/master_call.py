"""One call on a master's channel: the request, its descriptors, its one reply.

A :class:`Call` is what :meth:`Master.serve <libc_service.Master.serve>`
hands a :class:`Dispatcher` (the :class:`~libc_service.Router` is one) and
what :meth:`Master.receive_call <libc_service.Master.receive_call>` returns.
It answers with :meth:`Call.answer` (or the seed's ``send`` family) and asks
the master end it came on only what :class:`CallSession` names: send an
encoded reply now or later, and take the call out of the flight. The
protocol state it consults is the public
:class:`~libc_service.protocol.calls.MasterChannel`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

from libc_service.kernel.descriptors import close_fds, not_open

if TYPE_CHECKING:
    from libc_service.protocol.calls import MasterChannel
    from libc_service.protocol.outcomes import Answer
    from libc_service.protocol.replies import Result
    from libc_service.protocol.requests import Request

__all__ = ["Call", "CallSession", "Dispatcher", "OneCallAtATime", "SessionClosed", "discard"]

#: The master's logger: a closing failure is the session's.
logger = logging.getLogger("libc_service.endpoints.master")


class SessionClosed(EOFError):
    """The session is over: the slave hung up, or broke the protocol.

    ``errno`` is ``None`` for a clean end of file and ``EBADMSG`` when the
    master closed the session because of a malformed message.
    """

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno


def _errno_value(errno: int | OSError) -> int:
    if isinstance(errno, OSError):
        if not errno.errno:
            raise ValueError(f"{errno!r} carries no errno")
        return errno.errno
    if isinstance(errno, bool) or not isinstance(errno, int):
        raise TypeError(f"errno is an int or an OSError, not {type(errno).__name__}")
    return errno


class Dispatcher(Protocol):
    """What :meth:`Master.serve` hands each call to (the :class:`~libc_service.Router` is one).

    :meth:`decide_now` is called once per call, synchronously: from the
    session's task, or, in sequential mode, from the master's reader
    callback while the task waits, so that a call a plain function can
    decide costs no task switch. It either answers the call before
    returning (with :meth:`Call.answer`, or drops it with
    :meth:`Call.abandon`) and returns ``None``, or returns an
    awaitable that answers it: in sequential mode the session's task awaits
    it before the next call, in concurrent mode it runs in a task of the
    session's task group. An awaitable never awaited (the session ended
    first) is discarded: its ``close()`` is called if it has one, so it
    should close whatever unfinished work it holds.

    Raising :class:`SessionClosed` means the call was dropped because the
    session ended; anything else raised is the dispatcher's bug, logged,
    and ends the session (a bug must not leave the slave waiting).
    """

    def decide_now(self, call: Call) -> Awaitable[None] | None:
        """Answer ``call`` now, or return what answers it."""
        ...


class CallSession(Protocol):
    """What a :class:`Call` asks of the master end it came on (:class:`~libc_service.Master` is one)."""

    #: The session's name, for observers.
    name: str

    @property
    def channel(self) -> MasterChannel[Call]:
        """The channel's protocol state: calls in flight, one reply each, whether it is closed."""
        ...

    def transmit_now(self, data: bytes, fds: Sequence[int]) -> bool:
        """Send an encoded reply if the socket takes it now (``False``: it would block)."""
        ...

    async def transmit(self, data: bytes, fds: Sequence[int]) -> None:
        """Send an encoded reply, waiting for room."""
        ...

    def left_flight(self) -> None:
        """A call left the flight (its reply went out, or never will): a reader waiting for room reads on."""
        ...


class Call:
    """One request awaiting its reply, with the descriptors that came with it.

    Reply exactly once: with :meth:`answer` (what a dispatcher does), with
    :meth:`send`, :meth:`send_with_fds` or :meth:`use_slave_credentials`
    from a coroutine, or with :meth:`try_send`/:meth:`try_forward` from
    synchronous code (then :meth:`flush` if they return ``False``). A call
    asks its master only what :class:`CallSession` names. Descriptor ownership: the descriptors
    received with the request belong to the call and are closed exactly
    once, when its reply goes out or when it is abandoned (the session
    ended); descriptors passed to a reply belong to that reply from the
    moment of the call and are closed after it, whether or not it went out.
    """

    __slots__ = ("request", "_master", "_channel", "_fds", "_unsent")

    def __init__(self, master: CallSession, request: Request, fds: list[int]) -> None:
        self.request: Final = request
        self._master = master
        #: The master's protocol state, asked once: whether the session is closed, the reply's encoding.
        self._channel = master.channel
        self._fds = fds
        #: A reply encoded but not yet taken by the socket, and its descriptors.
        self._unsent: tuple[bytes, Sequence[int]] | None = None

    @property
    def function(self) -> str:
        """The function's name, e.g. ``"openat"``."""
        return self.request.function

    @property
    def session(self) -> str:
        """The name of the session the call came on (its master's ``name``)."""
        return self._master.name

    @property
    def done(self) -> bool:
        """Whether the call was answered (its reply may still be waiting for room) or abandoned."""
        return self._channel.answered(self)

    def descriptors(self) -> tuple[int, ...]:
        """The descriptors that came with the request, in role order (the call's until it is answered)."""
        return tuple(self._fds)

    def answer(self, answer: Answer) -> bool:
        """Reply with ``answer`` (what :func:`~libc_service.protocol.outcomes.answer_for` gives), without awaiting.

        The one way a transport answers a call: encoded and sent if the
        socket takes it now (``True``); ``False``: the socket would block,
        the reply waits on the call and :meth:`flush` sends it. The
        answer's descriptors are the reply's: closed once sent, or at once
        if it cannot be encoded or one of them is not open (``ValueError``:
        the call then stays owed). Raises as :meth:`try_send`.
        """
        fds = answer.fds
        channel = self._channel
        try:
            if channel.closed:
                self._late()
            if fds and (problem := not_open(fds)) is not None:
                raise ValueError(problem)
            data = channel.answer(self, self.request, answer)
        except BaseException:
            if fds:
                close_fds(fds)
            raise
        return self._finish(data, fds)

    async def send(self, result: Result, errno: int | OSError = 0) -> None:
        """Reply with ``result`` (and ``errno`` on failure)."""
        await self.send_with_fds(result, (), errno)

    async def send_with_fds(self, result: Result, fds: Sequence[int], errno: int | OSError = 0) -> None:
        """Reply with ``result`` and descriptors; ``fds`` are closed afterwards, always."""
        if not self.try_send(result, fds, errno):
            await self.flush()

    async def use_slave_credentials(self) -> None:
        """Tell the slave to perform the call itself, with its own authority."""
        if not self.try_forward():
            await self.flush()

    def try_send(self, result: Result, fds: Sequence[int] = (), errno: int | OSError = 0) -> bool:
        """Encode the reply and send it if the socket takes it now, without awaiting.

        ``fds`` are the reply's from this moment: closed once sent, or at
        once if the reply cannot be encoded. Raises as :meth:`send_with_fds`
        (``SessionClosed``, ``RuntimeError`` for a second reply, the codec's
        ``LocalProtocolError``/``TypeError`` for a result the protocol cannot
        carry; the call then stays owed). ``False``: the socket would block;
        the reply waits on the call, and :meth:`flush` sends it.
        """
        fds = list(fds) if fds else []
        channel = self._channel
        try:
            if channel.closed:
                self._late()
            data = channel.reply(
                self, self.request, result, errno if type(errno) is int else _errno_value(errno), len(fds)
            )
        except BaseException:
            close_fds(fds)
            raise
        return self._finish(data, fds)

    def try_forward(self) -> bool:
        """:meth:`use_slave_credentials` if the socket takes it now (see :meth:`try_send`)."""
        channel = self._channel
        if channel.closed:
            self._late()
        return self._finish(channel.forward(self, self.request), ())

    def _late(self) -> NoReturn:
        # A call the session's end abandoned is "done" too: its late reply
        # (an async handler finishing after the slave died) is the ordinary
        # SessionClosed, not a policy bug.
        self._channel.late_replies += 1
        self.abandon()
        raise SessionClosed("the session is closed")

    def _finish(self, data: bytes, fds: Sequence[int]) -> bool:
        master = self._master
        try:
            sent = master.transmit_now(data, fds)
        except BaseException:
            close_fds(fds)
            self.abandon()
            raise
        if not sent:
            self._unsent = (data, fds)
            return False
        if fds:
            close_fds(fds)
        # abandon()'s work for a reply that went out, without its checks for an unsent one.
        received, self._fds = self._fds, []
        if received:
            close_fds(received)
        self._channel.sent(self)
        master.left_flight()
        return True

    async def flush(self) -> None:
        """Send the reply the socket did not take at once (a no-op without one).

        The reply's descriptors and the call's own are closed afterwards,
        whether it went out or the session ended (``SessionClosed``).
        """
        unsent, self._unsent = self._unsent, None
        if unsent is None:
            return
        data, fds = unsent
        try:
            await self._master.transmit(data, fds)
        finally:
            close_fds(fds)
            self.abandon()

    def abandon(self) -> None:
        """Leave the flight: close the received descriptors (and an unsent reply's) without replying.

        What the session's end does to every call still in flight; after a
        reply went out it only releases the call. Idempotent.
        """
        fds, self._fds = self._fds, []
        if fds:
            close_fds(fds)
        unsent, self._unsent = self._unsent, None
        if unsent is not None:
            close_fds(unsent[1])
        self._channel.drop(self)
        self._master.left_flight()


def discard(pending: object) -> None:
    """Close an awaitable a dispatcher returned that will not be awaited.

    Runs while a session closes: a failure here must not stop the other
    calls' descriptors from being closed.
    """
    close = getattr(pending, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - the policy's awaitable, closed unfinished
            logger.exception("closing the unfinished %r failed", pending)


class OneCallAtATime:
    """The seed's level of a master: ``await receive()``, then exactly one reply to it.

    ``receive``, ``function_``, ``arguments()``, ``descriptors()``,
    ``send``, ``send_with_fds`` and ``use_slave_credentials`` (the names
    ``shared/DESIGN.md`` fixes), over :meth:`receive_call` and the
    :class:`Call` it returns: :class:`~libc_service.Master` has them.
    """

    #: The call received last, until the next receive.
    _current: Call | None = None

    @property
    def closed(self) -> bool:
        """Whether the session is over."""
        raise NotImplementedError

    async def receive_call(self) -> Call:
        """Wait for the next request and return it as a :class:`Call`."""
        raise NotImplementedError

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
        """The current request's arguments in positional order (:meth:`Request.arguments`)."""
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
        if self.closed:
            raise SessionClosed("the session is closed")
        call = self._current
        if call is None or call.done:
            raise RuntimeError("no request awaits a reply; call receive() first")
        return call
