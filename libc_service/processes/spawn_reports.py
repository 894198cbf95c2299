"""Reports: what the shim of a program's tree tells the master after deciding a call itself.

With a rule table (:mod:`libc_service.policy.rules`) the shim answers the calls
the router answers with a constant, and, when the router has observers,
reports each one afterwards over the registration socket, with the results
of the calls the master forwarded. :class:`TreeReports` turns those
datagrams into what the observers see — the router's decisions, or plain
data for :meth:`~libc_service.processes.spawn.SlaveProcess.observe_reports` — served
by the loop's :class:`~libc_service.processes.spawn_register.RegistrationListener`, or
without a loop (:meth:`TreeReports.serve_queued`) while the program has
asked nothing yet. A report is believed only when the kernel says its
sender is the process it is about, and of the program's tree.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from libc_service.protocol import wire_header
from libc_service.protocol import wire_reports
from libc_service.protocol.catalogue import GAI_ERRORS
from libc_service.kernel.descriptors import close_fds, received_fds
from libc_service.kernel.senders import ProcessTree, sender_pid
from libc_service.processes.spawn_register import ANCILLARY_SPACE, DATAGRAM_BUFFER, hung_up

if TYPE_CHECKING:
    from libc_service.protocol.replies import Result
    from libc_service.policy.router import Router

__all__ = ["TreeReports"]

#: The spawn family logs under one name: what a user configures, and what ``trace`` filters.
logger = logging.getLogger("libc_service.processes.spawn")

#: Flags of the reports served without a loop, as plain ints (an enum's ``|`` costs more than the call).
_PEEK_NOW: Final = int(socket.MSG_PEEK) | int(socket.MSG_DONTWAIT)
_RECEIVE_NOW: Final = int(socket.MSG_CMSG_CLOEXEC) | int(socket.MSG_DONTWAIT)


def _forwarded_result(function: str, report: wire_reports.Report | wire_reports.ForwardResult) -> tuple[Result, int]:
    """A forwarded call's result and errno as a :class:`~libc_service.policy.router.Decision` carries them.

    getaddrinfo's code becomes the error's name (``"noname"``, ``"system"``
    with its errno), as the master's own answers name it.
    """
    if function == "getaddrinfo" and report.result:
        if 1 <= report.result <= len(GAI_ERRORS):
            name = GAI_ERRORS[report.result - 1]
            return name, report.errno if name == "system" else 0
        return report.result, 0
    return report.result, report.errno if report.result < 0 else 0


class TreeReports:
    """The reports of one program's tree, given to ``router`` (its observers and held forwarded decisions).

    :meth:`receive` takes each report datagram and its sender's pid, as the
    kernel names it. :attr:`tree` is set once the program runs: until then no
    report is believed.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        #: The program's tree, once it runs (who may report).
        self.tree: ProcessTree | None = None
        #: Reports dropped because their sender (as the kernel names it) is not the process they are
        #: about, or is not of the program's tree: what a process of the tree tried to make up.
        self.dropped = 0
        self._dropped_told = 0  # how many of them the user was told of
        #: Reports lost so far, by pid, as the shim counted them.
        self._lost: dict[int, int] = {}
        #: Whether the router holds forwarded decisions for their results (the shim reports them).
        self._holding = False
        #: Every pid that registered: their held decisions are released at the end.
        self._pids: set[int] = set()
        #: Observers of the calls the shim decided, as plain data (observe()).
        self._plain_observers: list[Callable[[wire_reports.PlainReport], None]] = []

    def observe(self, observer: Callable[[wire_reports.PlainReport], None]) -> None:
        """Give the calls the shim decided to ``observer`` as plain data, not to the router's observers
        (see :meth:`~libc_service.processes.spawn.SlaveProcess.observe_reports`)."""
        self._plain_observers.append(observer)

    def hold_forwarded(self) -> None:
        """Have the router hold forwarded decisions until their results are reported."""
        self.router.hold_forwarded(True)
        self._holding = True

    def registered(self, pid: int) -> None:
        """A process registered (again, after an ``exec``): its previous program's held decisions are done.

        A registration follows, on the same socket, every report the pid's
        previous program sent: a forwarded call of it still waiting for its
        result lost its report.
        """
        if self._holding:
            self.router.release_forwarded((pid,))
            self._pids.add(pid)

    def release(self) -> None:
        """At the tree's end: release every decision still held, and hold no more."""
        if self._holding:
            self._holding = False
            self.router.release_forwarded(self._pids)
            self.router.hold_forwarded(False)

    def receive(self, data: bytes, sender: int | None) -> None:
        """A report: a call the shim decided with the rule table (the observers see it as the router's
        default, with its result), or the result of a call the master forwarded (given to its decision).

        Believed only when the kernel says its sender is the process it is about, and of the tree.
        """
        if self._plain_observers:
            self._plain_report(data, sender)
            return
        from libc_service.policy.observers import Decision

        try:
            report = wire_reports.decode_report(data)
        except wire_header.RemoteProtocolError as exc:
            logger.warning("ignoring a malformed report: %s", exc)
            return
        pid = report.pid if isinstance(report, wire_reports.ForwardResult) else report.request.pid
        if not self._believed(pid, sender):
            return
        self._count_lost(pid, report.lost)
        if isinstance(report, wire_reports.ForwardResult):
            self.router.forward_result(
                report.pid,
                report.tid,
                report.request_id,
                *_forwarded_result(report.function, report),
                report.duration_ns,
            )
            return
        if report.outcome == "forward":
            result, errno = _forwarded_result(report.request.function, report)
            decision = Decision(
                report.request,
                "default",
                "forward",
                result,
                errno,
                0,
                0,
                f"rules {report.request.pid}",
                directory=report.directory,
                directory2=report.directory2,
                program=report.program,
                duration_ns=report.duration_ns,
            )
        else:
            decision = Decision(
                report.request,
                "default",
                "error",
                -1,
                report.errno,
                0,
                0,
                f"rules {report.request.pid}",
                directory=report.directory,
                directory2=report.directory2,
                program=report.program,
            )
        self.router.report(decision)

    def serve_queued(self, sock: socket.socket, idle: Callable[[], None]) -> bool:
        """Serve the reports queued in the registration socket, without a loop; ``idle`` once it is empty.

        Returns ``False`` at the first datagram that is not a report (a
        registration, left queued for the loop's listener), ``True`` when
        the socket was drained.
        """
        while True:
            try:
                magic = sock.recv(len(wire_header.REPORT_MAGIC), _PEEK_NOW)
            except (BlockingIOError, InterruptedError):
                idle()
                return True
            except OSError:
                return False  # the listener meets the error and reports it
            if not magic and hung_up(sock):  # every process of the tree has closed its end
                idle()
                return True
            if magic != wire_header.REPORT_MAGIC:
                return False
            try:
                data, ancdata, _, _ = sock.recvmsg(DATAGRAM_BUFFER, ANCILLARY_SPACE, _RECEIVE_NOW)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            fds = received_fds(ancdata)
            if fds:  # a report carries none: not one of the shim's
                close_fds(fds)
                logger.warning("ignoring a report that carries descriptors")
                continue
            self.receive(data, sender_pid(ancdata))

    def tell_dropped(self) -> None:
        """Say, once the tree's reports are all in, how many were dropped (the user reads the trace or the
        refusals believing they are the program's own account: what was left out is counted there)."""
        if self.dropped > self._dropped_told:
            self._dropped_told = self.dropped
            logger.warning(
                "%d report(s) dropped: their sender was not the process they named, or not of the program's tree",
                self.dropped,
            )

    def _believed(self, pid: int, sender: int | None) -> bool:
        """Whether a report about ``pid`` is believed: its sender is ``pid`` (the kernel says so), of the tree."""
        tree = self.tree
        if pid != sender or tree is None or (sender not in tree.members and sender not in tree):
            self._drop(pid, sender)
            return False
        return True

    def _drop(self, pid: int, sender: int | None) -> None:
        """Count (and log, the first time) a report whose sender is not the process it names, or not of the tree."""
        self.dropped += 1
        if self.dropped == 1:
            why = "not of the program's tree" if pid == sender else f"sent by pid {sender}"
            logger.warning("dropped a report about pid %d: %s (a process of the tree made it up)", pid, why)

    def _plain_report(self, data: bytes, sender: int | None) -> None:
        """A report for plain observers: validated, no model built, its sender checked."""
        try:
            report = wire_reports.plain_report(data)
        except wire_header.RemoteProtocolError as exc:
            logger.warning("ignoring a malformed report: %s", exc)
            return
        pid = report.pid if isinstance(report, wire_reports.ForwardResult) else report.fields["pid"]
        if not self._believed(pid, sender):
            return
        if isinstance(report, wire_reports.ForwardResult):
            self._count_lost(report.pid, report.lost)
            self.router.forward_result(
                report.pid,
                report.tid,
                report.request_id,
                *_forwarded_result(report.function, report),
                report.duration_ns,
            )
            return
        self._count_lost(report.fields["pid"], report.lost)
        for observer in self._plain_observers:
            observer(report)

    def _count_lost(self, pid: int, lost: int) -> None:
        """Warn of the reports ``pid``'s shim counted as lost since the last it told."""
        if lost and lost > self._lost.get(pid, 0):
            logger.warning(
                "pid %d: %d report(s) of calls its shim decided or forwarded were lost (the socket was full)",
                pid,
                lost - self._lost.get(pid, 0),
            )
            self._lost[pid] = lost
