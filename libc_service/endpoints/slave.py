"""A blocking, thread-safe Python slave: ask the master explicitly.

It is the test peer of :class:`~libc_service.Master` and a public API for
Python code that wants a decision from the master (``slave.call("open",
...)``) instead of relying on the C shim.

Unlike the shim, it does not fill in the caller's umask and filesystem
credentials (``umask``, ``fsuid``, ``fsgid``, ``groups``): a Python program
asking explicitly may be asking on behalf of someone else, and reading its
own would cost a ``/proc`` read per call. They stay ``None`` (unknown, so a
master will not act as this slave) unless the caller passes them, as it
passes any other request field.

Threads share one socket. Each thread sends its request and waits for the
reply carrying its thread id; whichever waiting thread holds the *reader*
role receives for everybody and hands other threads' replies over (a
leader/follower scheme), so requests from many threads pipeline without a
lock held across the blocking receive.
"""

from __future__ import annotations

import array
import os
import socket
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, cast

from libc_service.protocol import wire_replies
from libc_service.protocol import wire_header
from libc_service.protocol.calls import SlaveChannel
from libc_service.kernel.descriptors import close_fds, received_fds
from libc_service.protocol.replies import Reply
from libc_service.protocol.requests import REQUEST_TYPES, Request

__all__ = ["Slave"]

_CMSG_SPACE: Final = socket.CMSG_SPACE((wire_header.MAX_REPLY_FDS + 1) * array.array("i").itemsize)


class Slave:
    """The slave end of a channel (a socket from :meth:`Master.pair`).

    ``call`` blocks the calling thread until the master answers. If the
    channel breaks (the master hung up or sent garbage), every waiting and
    later call raises ``ConnectionError``.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        #: The protocol state (request ids, one call per thread, reply matching),
        #: guarded by ``_cond``.
        self._channel = SlaveChannel()
        self._cond = threading.Condition()
        self._reading = False
        self._replies: dict[int, tuple[wire_replies.ReplyMessage, list[int]]] = {}
        self._broken: BaseException | None = None

    def call(self, function: str, /, *, fds: Sequence[int] = (), **arguments: Any) -> Reply:
        """Ask the master to decide ``function(**arguments)``.

        ``fds`` are descriptors to send, mapped in order onto the function's
        descriptor fields: ``dirfd`` for path functions, ``dirfd1``/``dirfd2``
        for rename, ``socket`` for connect/bind, then ``dirfd`` (the
        directory of a relative socket path) for ``connect_unix``/``bind_unix``.
        They stay the caller's. ``umask``, ``fsuid``, ``fsgid`` and
        ``groups`` are sent only when given.
        """
        model = REQUEST_TYPES.get(function)
        if model is None:
            raise ValueError(f"unknown function {function!r}; one of {', '.join(REQUEST_TYPES)}")
        if len(fds) > len(model.DESCRIPTORS):
            raise ValueError(f"{function} takes at most {len(model.DESCRIPTORS)} descriptors")
        arguments.update(zip(model.DESCRIPTORS, fds))
        tid = threading.get_native_id()
        with self._cond:
            request_id = self._channel.next_request_id()
        arguments.update(function=function, pid=os.getpid(), tid=tid, request_id=request_id)
        return self.send_request(cast(Request, model.model_validate(arguments)))

    def send_request(self, request: Request) -> Reply:
        """Send an already-built request and wait for its reply.

        The request's ``tid`` must be the calling thread's native id, since
        replies are routed by it.
        """
        with self._cond:
            if self._broken is not None:
                raise ConnectionError("the channel to the master is broken") from self._broken
            data, fds = self._channel.send(request)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self._sock.sendmsg([data], ancillary, socket.MSG_NOSIGNAL)
        except OSError as exc:
            with self._cond:
                self._channel.cancel(request.tid)
            raise ConnectionError(f"cannot send to the master: {exc}") from exc
        message, received = self._wait(request.tid)
        return Reply(message.result, message.errno, tuple(received), message.forward)

    def _wait(self, tid: int) -> tuple[wire_replies.ReplyMessage, list[int]]:
        with self._cond:
            while True:
                if tid in self._replies:
                    return self._replies.pop(tid)
                if self._broken is not None:
                    raise ConnectionError("the channel to the master is broken") from self._broken
                if not self._reading:
                    self._reading = True
                    break
                self._cond.wait()
        try:
            while True:
                message, fds = self._receive_one()
                if message.tid == tid:
                    return message, fds
                with self._cond:
                    self._replies[message.tid] = (message, fds)
                    self._cond.notify_all()
        except BaseException as exc:
            with self._cond:
                if self._broken is None:
                    self._broken = exc
            raise
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _receive_one(self) -> tuple[wire_replies.ReplyMessage, list[int]]:
        while True:
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    wire_header.MAX_MESSAGE + 1, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC
                )
                break
            except InterruptedError:
                continue
            except OSError as exc:
                raise ConnectionError(f"cannot receive from the master: {exc}") from exc
        fds = received_fds(ancdata)
        if not data and not fds:
            raise ConnectionError("the master closed the channel")
        try:
            with self._cond:
                return self._channel.receive(data, len(fds), flags), fds
        except wire_header.RemoteProtocolError as exc:
            close_fds(fds)
            raise ConnectionError(f"malformed reply from the master: {exc}") from exc

    def fileno(self) -> int:
        """The channel socket's descriptor."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the channel; the master sees the end of the session."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked receiving
        except OSError:
            pass
        self._sock.close()
        with self._cond:
            for _, fds in self._replies.values():
                close_fds(fds)
            self._replies.clear()

    def __enter__(self) -> Slave:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
