"""Registration: each process of a program's tree registers a channel, served as its own session.

The program inherits one end of a ``SOCK_SEQPACKET`` pair (``LIBC_SERVICE_FD``).
Every process of its tree — the program, its forked children, whatever they
exec — sends a fresh channel socket over it, and the master serves that
channel as one session of a task group. The kernel names each datagram's
sender (``SO_PASSCRED`` is set before the program starts): a registration
that names another process than its sender, or whose sender is not of the
program's tree, is refused. Reports (calls the shim decided itself) share
the socket; :class:`RegistrationListener` hands them to whoever reads them
(:mod:`libc_service.processes.spawn_reports`).
"""

from __future__ import annotations

import array
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from libc_service.kernel import readiness

from libc_service.protocol import wire_header
from libc_service.protocol import wire_registration
from libc_service.protocol import wire_reports
from libc_service.protocol.catalogue import PATH_MAX_BYTES
from libc_service.kernel.lazyimport import on_first_use
from libc_service.endpoints.master import Master
from libc_service.kernel.descriptors import close_fds, received_fds
from libc_service.kernel.senders import CREDENTIALS_SPACE, sender_pid

if TYPE_CHECKING:
    import asyncio
    from libc_service.policy.router import Router
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = [
    "ANCILLARY_SPACE",
    "DATAGRAM_BUFFER",
    "RegistrationListener",
    "TreeSessions",
    "hung_up",
    "pending",
]

#: The spawn family logs under one name: what a user configures, and what ``trace`` filters.
logger = logging.getLogger("libc_service.processes.spawn")

#: A registration's descriptor (and room to see a second one, refused) and the sender's credentials.
ANCILLARY_SPACE: Final = socket.CMSG_SPACE(2 * array.array("i").itemsize) + CREDENTIALS_SPACE

#: A registration (16 bytes) or a report (its header, its names and a request).
DATAGRAM_BUFFER: Final = (
    wire_reports.REPORT.size
    + wire_reports.REPORT_NAMES.size
    + 3 * PATH_MAX_BYTES
    + wire_reports.REPORT_ARGV_MAX
    + wire_header.MAX_MESSAGE
)


class RegistrationListener:
    """The registration socket as an async iterator of channels, one per process of the tree.

    ``async for pid, channel in listener`` yields each registered process's
    id and its channel socket (the caller's from then on). A malformed
    registration is logged and skipped: it only costs its sender the
    master. So is a registration that names another process than the one
    that sent it (the kernel names the sender: ``SO_PASSCRED`` is set on
    the socket; only datagrams sent after that carry a sender), or whose
    sender ``accepts`` refuses (not of the program's tree). Iteration ends
    when every process of the tree has exited (the socket hangs up) or
    :meth:`close` is called, from anywhere on the loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_report: Callable[[bytes, int | None], None] | None = None,
        accepts: Callable[[int], bool] | None = None,
    ) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock: socket.socket | None = sock
        #: Gets each report datagram (calls the shim decided itself, wire_header.REPORT_MAGIC) and its sender's pid.
        self._on_report = on_report
        self._accepts = accepts
        self._watch: readiness.Watch | None = None

    def __aiter__(self) -> RegistrationListener:
        return self

    async def __anext__(self) -> tuple[int, socket.socket]:
        while True:
            sock = self._sock
            if sock is None:
                raise StopAsyncIteration
            try:
                data, ancdata, flags, _ = sock.recvmsg(DATAGRAM_BUFFER, ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable(sock)
                continue
            fds = received_fds(ancdata)
            if not data and not fds:
                if hung_up(sock):
                    self.close()  # every process of the tree has exited
                    raise StopAsyncIteration
                logger.warning("ignoring an empty registration datagram")
                continue
            if data[:4] == wire_header.REPORT_MAGIC and not fds and self._on_report is not None:
                self._on_report(data, sender_pid(ancdata))
                continue
            registered = _registration(data, fds, flags, sender_pid(ancdata), self._accepts)
            if registered is not None:
                return registered

    def drain_reports(self, limit: int = 65536) -> None:
        """Give the reports still queued to ``on_report``, without waiting (before :meth:`close`).

        A program that exits right after its last calls leaves their reports
        in the socket: observers (``trace``) must still see those calls.
        Registrations that arrive this late are refused (their descriptors
        closed): the tree is being closed.
        """
        sock = self._sock
        if sock is None or self._on_report is None:
            return
        for _ in range(limit):
            try:
                data, ancdata, _, _ = sock.recvmsg(DATAGRAM_BUFFER, ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError, OSError):
                return
            fds = received_fds(ancdata)
            if fds:
                close_fds(fds)
            elif data[:4] == wire_header.REPORT_MAGIC:
                self._on_report(data, sender_pid(ancdata))
            elif not data:
                return

    async def _wait_readable(self, sock: socket.socket) -> None:
        with readiness.Watch(sock.fileno()) as watch:
            self._watch = watch
            try:
                await watch.ready
            finally:
                self._watch = None

    def close(self) -> None:
        """Stop listening: close the socket (later registrations fail) and end the iteration."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._watch is not None:
            self._watch.end()  # before the close: the number may be reused at once
        sock.close()


def _registration(
    data: bytes, fds: list[int], flags: int, sender: int | None, accepts: Callable[[int], bool] | None
) -> tuple[int, socket.socket] | None:
    """The registering process's id and channel, or ``None`` (logged) for a malformed registration
    or one that names another process than its sender."""
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise wire_header.RemoteProtocolError("registration truncated")
        pid = wire_registration.decode_registration(data, len(fds))
        if pid != sender:
            raise wire_header.RemoteProtocolError(f"it names pid {pid} but was sent by pid {sender}")
        if accepts is not None and not accepts(pid):
            raise wire_header.RemoteProtocolError(f"pid {pid} is not of the program's process tree")
        return pid, socket.socket(fileno=fds[0])
    except (wire_header.RemoteProtocolError, OSError) as exc:
        close_fds(fds)
        logger.warning("ignoring a malformed registration: %s", exc)
        return None


class TreeSessions:
    """The sessions of a program's tree: one per registered channel, all in one task group.

    :meth:`serve` owns the task group (trio's ``serve_listeners``, on
    asyncio): cancelling its task cancels every session still deciding.
    """

    def __init__(self, max_sessions: int) -> None:
        self._max_sessions = max_sessions
        #: The live sessions, by channel identity.
        self._masters: dict[Master, tuple[int, int]] = {}
        #: How many sessions (processes of the tree) registered so far.
        self.started = 0
        #: Set when the tree is being closed: a session ending then is no news.
        self.closing = False

    async def serve(self, listener: RegistrationListener, router: Router, on_registered: Callable[[int], None]) -> None:
        """Serve each registered process's channel with ``router`` in a task of one task group, until the
        listener ends; ``on_registered`` hears of each registration first."""
        async with asyncio.TaskGroup() as sessions:
            async for pid, sock in listener:
                on_registered(pid)
                master = self._admit(pid, sock)
                if master is not None:
                    sessions.create_task(self._serve(master, router), name=f"libc-service session {master.name}")

    def close(self) -> None:
        """Close every live session's channel (their tasks then end)."""
        for master in list(self._masters):
            master.close()

    def _admit(self, pid: int, sock: socket.socket) -> Master | None:
        """A session for a registered channel, or ``None`` (logged) when it is refused."""
        channel = _identity(sock)
        refusal = None
        if channel in self._masters.values():
            refusal = "that channel is already being served"
        elif len(self._masters) >= self._max_sessions:
            refusal = f"the program already has {self._max_sessions} live sessions"
        if refusal is not None:
            sock.close()
            logger.warning("refusing a registration from pid %s: %s", pid, refusal)
            return None
        try:
            master = Master(sock, name=f"pid {pid}", pid=pid)
        except ValueError as exc:
            sock.close()
            logger.warning("ignoring a registration from pid %s: %s", pid, exc)
            return None
        self.started += 1
        self._masters[master] = channel
        return master

    async def _serve(self, master: Master, router: Router) -> None:
        """One session; how it ended is read from its channel state once it is closed.

        A process that dies during a call (killed, crashed) ends its session
        with that call unanswered, or with its reply unsent: that is logged,
        without a traceback, the same whether the session's task or the
        master's reader callback was answering when it died.
        """
        try:
            await router.serve(master)
        except Exception:  # noqa: BLE001 - one session's failure must not end the others
            logger.exception("session %s failed", master.name)
        else:
            channel = master.channel
            if self.closing:
                pass
            elif channel.unanswered_at_close:
                logger.warning(
                    "session %s dropped: the process went away with %d call(s) unanswered",
                    master.name,
                    channel.unanswered_at_close,
                )
            elif channel.unsent_at_close or channel.late_replies:
                logger.warning("session %s dropped: the process went away before its reply was sent", master.name)
            else:
                logger.debug("session %s ended", master.name)
        finally:
            master.close()
            self._masters.pop(master, None)


def pending(sock: socket.socket) -> bool:
    """Whether the registration socket holds a datagram, not only the tree's hang-up.

    Peeked without room for descriptors: a registration's channel stays
    queued with it, none is received here.
    """
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # let the listener meet the error and report it
    return bool(data) or not hung_up(sock)


def _identity(sock: socket.socket) -> tuple[int, int]:
    """A socket's (st_dev, st_ino): one socket, one session, however many descriptors name it."""
    status = os.fstat(sock.fileno())
    return status.st_dev, status.st_ino


def hung_up(sock: socket.socket) -> bool:
    """Whether an empty read meant the end (every sender gone), not an empty datagram."""
    events = readiness.poll_events({sock.fileno(): readiness.READABLE}, 0)
    return any(happened & (select.POLLHUP | select.POLLRDHUP) for happened in events.values())
