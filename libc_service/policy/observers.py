"""What a router tells its observers: one :class:`Decision` per call, after its reply went out.

The router decides; this module keeps the observers and, for a transport
whose shim reports what forwarded calls returned, holds each forwarded
decision until its result arrives (bounded: reports lost en masse do not
grow it). An observer's bug is logged and never ends a session.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from libc_service.policy.signatures import handler_name
from libc_service.policy.slavepath import directory_name
from libc_service.protocol.outcomes import Outcome

if TYPE_CHECKING:
    from libc_service.protocol.replies import Result
    from libc_service.protocol.requests import Request

__all__ = ["UNNAMED", "Decision", "Observer", "Observers", "Transport", "named_directories"]

logger = logging.getLogger("libc_service.policy.router")

Transport: TypeAlias = Literal["shim", "seccomp"]
"""How a call reached the master (:attr:`Decision.transport`): the shim's channel or a seccomp notification."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What an observer sees for every call, after the reply went out.

    ``directory`` is the directory a relative path is relative to, as the
    transport named it: the absolute name of the request's ``dirfd`` (the
    slave's working directory or its dirfd), read while the descriptor was
    open; ``None`` for an absolute path, or when it could not be named (no
    ``/proc``, as under a sandbox; a removed directory). For ``rename`` it
    is ``path1``'s and ``directory2`` is ``path2``'s. The shim names them
    in its reports of the calls it decided itself (read just after the
    call); the master names them for the calls that reach it, when the
    router has observers (:func:`named_directories`).
    """

    request: Request
    #: The deciding route's handler name, or ``"default"``.
    route: str
    outcome: Outcome
    result: Result | None
    errno: int
    nfds: int
    #: Time spent deciding (handlers and conditions), in nanoseconds.
    latency_ns: int
    session: str = field(default="")
    #: How the call reached the master: the preloaded shim's channel, or a
    #: seccomp user notification (:mod:`libc_service.seccomp.session`).
    transport: Transport = field(default="shim")
    #: The directory a relative ``path`` (``path1``) is relative to, as the transport named it.
    directory: str | None = field(default=None)
    #: The directory a relative ``path2`` (``rename``) is relative to, as the transport named it.
    directory2: str | None = field(default=None)
    #: The program the process runs (its executable and arguments), when the
    #: transport named it: the shim does with its first report of a process
    #: (after ``exec`` or ``fork``), read from its own ``/proc/self``.
    program: tuple[str, tuple[str, ...]] | None = field(default=None)
    #: How long the slave's own call of a forwarded request took, in nanoseconds, as its shim
    #: measured it around the call (reports); ``None`` when not measured.
    duration_ns: int | None = field(default=None)


UNNAMED: Final[tuple[None, None]] = (None, None)


def named_directories(request: Request) -> tuple[str | None, str | None]:
    """The directories ``request``'s relative paths are relative to, named from its descriptors.

    For :attr:`Decision.directory` and :attr:`Decision.directory2`: call it
    while the request's descriptors are open (before its reply closes them).
    """
    first = getattr(request, "dirfd", None)
    if first is None:
        first = getattr(request, "dirfd1", None)
    second = getattr(request, "dirfd2", None)
    if first is None and second is None:
        return UNNAMED
    return (
        None if first is None else directory_name(first),
        None if second is None else directory_name(second),
    )


Observer: TypeAlias = Callable[[Decision], None]


class Observers:
    """The observers of one router, and the forwarded decisions held for their results."""

    def __init__(self) -> None:
        self.observers: list[Observer] = []
        #: Transports whose shims report the results of forwarded calls (:meth:`hold`).
        self._holding = 0
        #: Forwarded decisions waiting for their result, by (pid, tid, request id).
        self._held: dict[tuple[int, int, int], Decision] = {}
        #: Results that arrived before their decision was given to the observers.
        self._early: dict[tuple[int, int, int], tuple[Result, int, int | None]] = {}

    def hold(self, on: bool = True) -> None:
        """Hold each decision the master answers ``FORWARD`` until the slave reports its result.

        For a transport whose shim reports what the forwarded calls returned
        (``spawn(..., reports=True)``): the observers then get one
        :class:`Decision` per call, outcome ``"forward"`` with the real
        ``result`` and ``errno`` (:meth:`forward_result`). Counted: each
        transport turns it on for its run and off after; when the last one
        turns it off, what is still held goes to the observers without a
        result. Nothing waits on the slave: a held decision only delays
        what the observers see.
        """
        self._holding += 1 if on else -1
        if self._holding <= 0:
            self._holding = 0
            self.release()

    def forward_result(
        self, pid: int, tid: int, request_id: int, result: Result, errno: int, duration_ns: int | None = None
    ) -> None:
        """The slave's own call of a forwarded request returned ``result`` (-1 and ``errno`` on failure),
        after ``duration_ns`` (when measured)."""
        key = (pid, tid, request_id)
        decision = self._held.pop(key, None)
        if decision is None:
            if self._holding:  # its decision is still on its way to the observers
                if len(self._early) >= _HELD_MAX:
                    del self._early[next(iter(self._early))]
                self._early[key] = (result, errno, duration_ns)
            return
        self._deliver(dataclasses.replace(decision, result=result, errno=errno, duration_ns=duration_ns))

    def release(self, pids: Container[int] | None = None) -> None:
        """Give the observers the forwarded decisions still held (of ``pids``, or all), without a result.

        Their result will not come: the report was lost, the process ran
        another program or died, the run ended.
        """
        keys = [key for key in self._held if pids is None or key[0] in pids]
        for key in keys:
            self._deliver(self._held.pop(key))
        for key in [key for key in self._early if pids is None or key[0] in pids]:
            del self._early[key]

    def notify(self, decision: Decision) -> None:
        if self._holding and decision.outcome == "forward" and decision.result is None and decision.transport == "shim":
            request = decision.request
            key = (request.pid, request.tid, request.request_id)
            early = self._early.pop(key, None)
            if early is None:
                if len(self._held) >= _HELD_MAX:  # reports lost en masse: do not grow without bound
                    self._deliver(self._held.pop(next(iter(self._held))))
                self._held[key] = decision
                return
            decision = dataclasses.replace(decision, result=early[0], errno=early[1], duration_ns=early[2])
        self._deliver(decision)

    def _deliver(self, decision: Decision) -> None:
        for observer in self.observers:
            try:
                observer(decision)
            except Exception:  # noqa: BLE001 - an observer bug must not end the session
                logger.exception("observer %s failed", handler_name(observer))


#: At most this many forwarded decisions wait for their result (and results for their decision).
_HELD_MAX: Final = 65536
