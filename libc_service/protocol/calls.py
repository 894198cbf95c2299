"""The protocol state of one channel end, apart from both the codec and the I/O.

The codec (:mod:`libc_service.protocol.wire_requests`, :mod:`libc_service.protocol.wire_replies`) turns bytes into messages and back; this module
keeps the rules that span messages, the way h11's ``Connection`` does for
HTTP: which calls are in flight, that each gets exactly one reply, that a
reply matches the request it answers, how many calls may be in flight at
once and how many descriptors a message may carry. It never touches a
socket nor closes a descriptor, so the rules are tested without processes
(``tests/test_channel.py``) and are the same for the asyncio
:class:`~libc_service.Master`, the threaded :class:`~libc_service.Slave`
and the benchmarks.

Errors: :class:`~libc_service.protocol.wire_header.RemoteProtocolError` for what the peer
did wrong (the session ends), :class:`~libc_service.protocol.wire_header.LocalProtocolError`
or ``TypeError`` for a reply the protocol cannot carry, and ``RuntimeError``
for a call answered twice (the caller's bug, as answering an asyncio
future twice is).
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from libc_service.protocol import wire_header

from libc_service.protocol import wire_replies

from libc_service.protocol import wire_requests

if TYPE_CHECKING:
    from libc_service.protocol.outcomes import Answer
    from libc_service.protocol.replies import Result
    from libc_service.protocol.requests import Request

__all__ = ["TRUNCATED", "MasterChannel", "SlaveChannel", "check_received"]

#: ``recvmsg`` flags that mean the kernel cut a message or its descriptors.
#: A plain int: ``IntFlag`` arithmetic on the hot path costs more than the test.
TRUNCATED: Final = int(socket.MSG_CTRUNC | socket.MSG_TRUNC)

CallT = TypeVar("CallT", bound=Hashable)


def check_received(data: bytes, nfds: int, flags: int, max_fds: int) -> None:
    """The size rules every received datagram obeys, before it is decoded.

    Raises :class:`~libc_service.protocol.wire_header.RemoteProtocolError`: a message the
    kernel truncated (too large, or more descriptors than the receiver's
    buffer holds), one longer than the protocol allows, or one carrying more
    descriptors than any message of its direction may.
    """
    if flags & TRUNCATED or len(data) > wire_header.MAX_MESSAGE:
        raise wire_header.RemoteProtocolError("message or its descriptors truncated (too large or too many)")
    if nfds > max_fds:
        raise wire_header.RemoteProtocolError(f"{nfds} descriptors on one message")


class MasterChannel(Generic[CallT]):
    """The master end's state: the calls in flight and their replies.

    A *call* is whatever object the caller uses to stand for one request
    (the :class:`~libc_service.endpoints.master.Call` of the asyncio master; any
    hashable object in tests): it is compared by identity. A call is
    *waiting* from :meth:`open` until its reply is encoded, then *sending*
    until :meth:`sent` (the socket took it) or :meth:`drop`. Both count
    against :attr:`max_in_flight`, since both hold the call's descriptors.
    """

    __slots__ = (
        "max_in_flight",
        "_waiting",
        "_sending",
        "closed",
        "unanswered_at_close",
        "unsent_at_close",
        "late_replies",
    )

    def __init__(self, *, max_in_flight: int = 64) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight is at least 1, not {max_in_flight}")
        #: Calls in flight at most (see :attr:`full`); a caller that reads
        #: no further while it is reached gives the slave backpressure.
        self.max_in_flight = max_in_flight
        self._waiting: set[CallT] = set()
        self._sending: set[CallT] = set()
        self.closed = False
        #: At :meth:`close`: calls never answered (their process went away mid-call).
        self.unanswered_at_close = 0
        #: At :meth:`close`: calls answered whose reply had not gone out.
        self.unsent_at_close = 0
        #: Replies attempted after the channel closed (their slave was gone).
        self.late_replies = 0

    # --------------------------------------------------------------- receiving

    @staticmethod
    def receive(data: bytes, fds: Sequence[int], flags: int = 0) -> Request:
        """The request a received datagram carries.

        ``fds`` are the descriptors that came with it (they become the
        request's descriptor fields); ``flags`` are ``recvmsg``'s. Raises
        :class:`~libc_service.protocol.wire_header.RemoteProtocolError` for anything
        malformed; the descriptors stay the caller's to close.
        """
        # check_received's rules, inline: this runs once per call on the hot path.
        if flags & TRUNCATED or len(data) > wire_header.MAX_MESSAGE:
            raise wire_header.RemoteProtocolError("message or its descriptors truncated (too large or too many)")
        if len(fds) > wire_header.MAX_REQUEST_FDS:
            raise wire_header.RemoteProtocolError(f"{len(fds)} descriptors on one message")
        return wire_requests.decode_request(data, fds)

    def open(self, call: CallT) -> None:
        """Count ``call`` in flight until its reply goes out."""
        self._waiting.add(call)

    # ---------------------------------------------------------------- replying

    def reply(self, call: CallT, request: Request, result: Result, errno: int, nfds: int) -> bytes:
        """The reply datagram answering ``call``, which is then no longer waiting.

        Raises ``RuntimeError`` if ``call`` is not waiting (answered already,
        or never opened), and as :func:`~libc_service.protocol.wire_replies.encode_reply_to`
        for a reply the protocol cannot carry; the call then stays waiting.
        """
        data = wire_replies.encode_reply_to(
            request.function, request.tid, request.request_id, result, errno, False, nfds
        )
        try:
            self._waiting.remove(call)
        except KeyError:
            raise RuntimeError(f"the {request.function} call was already answered") from None
        self._sending.add(call)
        return data

    def answer(self, call: CallT, request: Request, answer: Answer) -> bytes:
        """The reply datagram carrying ``answer`` to ``call`` (see :meth:`reply`, :meth:`forward`)."""
        result = answer.result
        if answer.outcome == "forward":
            data = wire_replies.encode_reply_to(request.function, request.tid, request.request_id, forward=True)
        elif result is None:
            raise TypeError(f"a {answer.outcome} answer has a result")
        else:
            data = wire_replies.encode_reply_to(
                request.function, request.tid, request.request_id, result, answer.errno, False, len(answer.fds)
            )
        try:
            self._waiting.remove(call)
        except KeyError:
            raise RuntimeError(f"the {request.function} call was already answered") from None
        self._sending.add(call)
        return data

    def forward(self, call: CallT, request: Request) -> bytes:
        """The reply telling the slave to do ``call`` itself (see :meth:`reply`)."""
        if call not in self._waiting:
            raise RuntimeError(f"the {request.function} call was already answered")
        data = wire_replies.encode_reply_to(request.function, request.tid, request.request_id, forward=True)
        self._waiting.discard(call)
        self._sending.add(call)
        return data

    def sent(self, call: CallT) -> None:
        """The reply to ``call`` went out: it leaves the flight."""
        self._sending.discard(call)

    def drop(self, call: CallT) -> None:
        """``call`` leaves the flight unanswered (its session is over)."""
        self._waiting.discard(call)
        self._sending.discard(call)

    def answered(self, call: CallT) -> bool:
        """Whether ``call`` is no longer waiting for its reply."""
        return call not in self._waiting

    # ------------------------------------------------------------------ counts

    @property
    def in_flight(self) -> int:
        """Calls opened and not yet sent or dropped."""
        return len(self._waiting) + len(self._sending)

    @property
    def unanswered(self) -> int:
        """Calls still waiting for their reply."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        """Whether :attr:`max_in_flight` calls are in flight."""
        return len(self._waiting) + len(self._sending) >= self.max_in_flight

    def calls(self) -> list[CallT]:
        """Every call in flight, waiting or sending."""
        return [*self._waiting, *self._sending]

    def close(self) -> list[CallT]:
        """End the channel: the calls still in flight, for the caller to drop.

        Records how the session ended (:attr:`unanswered_at_close`,
        :attr:`unsent_at_close`) before they are dropped. Idempotent.
        """
        if self.closed:
            return []
        self.closed = True
        self.unanswered_at_close = len(self._waiting)
        self.unsent_at_close = len(self._sending)
        return self.calls()


class SlaveChannel:
    """The slave end's state: one call in flight per thread, replies matched to them.

    Request ids are this channel's; a reply is accepted only for a thread
    with a call in flight, with that call's request id and function. Not
    thread-safe: the threaded :class:`~libc_service.Slave` holds its lock
    around every method.
    """

    __slots__ = ("_ids", "_in_flight")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._in_flight: dict[int, Request] = {}

    def next_request_id(self) -> int:
        """A request id not used before on this channel."""
        return next(self._ids)

    def send(self, request: Request) -> tuple[bytes, list[int]]:
        """The datagram and descriptors asking ``request``; the thread then waits for its reply.

        Raises :class:`~libc_service.protocol.wire_header.LocalProtocolError` if the
        request's thread already has a call in flight (replies are routed
        by thread id), and as :func:`~libc_service.protocol.wire_requests.encode_request`.
        """
        if request.tid in self._in_flight:
            raise wire_header.LocalProtocolError(f"thread {request.tid} already has a call in flight")
        encoded = wire_requests.encode_request(request)
        self._in_flight[request.tid] = request
        return encoded

    def cancel(self, tid: int) -> None:
        """Forget the call of thread ``tid`` (its request could not be sent)."""
        self._in_flight.pop(tid, None)

    def receive(self, data: bytes, nfds: int, flags: int = 0) -> wire_replies.ReplyMessage:
        """The reply a received datagram carries, matched to the call it answers.

        Raises :class:`~libc_service.protocol.wire_header.RemoteProtocolError` for a
        malformed reply, one for a thread with no call in flight, or one
        whose request id or function is not its call's (the channel is then
        out of step: nothing later on it can be trusted).
        """
        check_received(data, nfds, flags, wire_header.MAX_REPLY_FDS)
        message = wire_replies.decode_reply(data, nfds)
        request = self._in_flight.get(message.tid)
        if request is None:
            raise wire_header.RemoteProtocolError(f"a reply for thread {message.tid}, which has no call in flight")
        if message.request_id != request.request_id or message.function != request.function:
            raise wire_header.RemoteProtocolError(
                f"reply for request {message.request_id} ({message.function}) "
                f"answered request {request.request_id} ({request.function})"
            )
        del self._in_flight[message.tid]
        return message

    @property
    def in_flight(self) -> int:
        """Threads waiting for a reply."""
        return len(self._in_flight)
