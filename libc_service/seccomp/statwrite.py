"""Writing a ``Stat`` reply into the slave's buffer off the loop, then answering its call.

A ``stat`` is answered by writing the kernel's ``struct stat`` (or
``struct statx``) into the caller's buffer with ``process_vm_writev``,
which may wait as long as the slave likes (a page nobody serves): it runs
on a memory worker (:class:`~libc_service.kernel.offloop.BoundedWorkers`), and
past the session's bound the call fails with ``EFAULT``. Two parties may
then answer one call, the worker that wrote and the loop (or its
watchdog) past the bound: :class:`AnswerOnce` and the session's lock make
exactly one of them answer, and give the call's slot back once.
"""

from __future__ import annotations

import errno as errno_module
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from libc_service.seccomp.abi import Gone, Refuse, check_valid, respond
from libc_service.seccomp.answer import StatWrite
from libc_service.seccomp.memory import write_memory
from libc_service.kernel.offloop import BoundedWorkers, Stalled
from libc_service.protocol.outcomes import Summary

__all__ = ["AnswerOnce", "StatWriter"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AnswerOnce:
    """A call one of two parties may answer (the worker that wrote its Stat, or the loop past the bound)."""

    id: int
    sent: bool = False
    #: Whether the worker that answered gave the call's slot back.
    released: bool = False
    #: Whether a worker answers the call on its own (the loop no longer waits for it).
    detached: bool = False


class StatWriter:
    """A session's Stat writes: on its workers, bounded, each call answered once.

    ``lock`` and ``slots`` are the session's (its lock keeps the listener
    open during an answer; a slot is a call in the master); ``listener``
    says the session's listener now (``-1`` once closed); ``count`` is
    called under the lock with ``"calls"`` or ``"dropped"`` for a call a
    worker finished on its own.
    """

    def __init__(
        self,
        name: str,
        workers: BoundedWorkers,
        bound: float,
        lock: threading.Lock,
        slots: threading.Semaphore,
        listener: Callable[[], int],
        count: Callable[[str], None],
    ) -> None:
        self._name = name
        self._workers = workers
        self._bound = bound
        self._lock = lock
        self._slots = slots
        self._listener = listener
        self._count = count
        #: Stats being written by workers on their own (notification id -> answer, deadline, tid).
        self._writes: dict[int, tuple[AnswerOnce, float, int]] = {}

    async def written(
        self, tid: int, summary: Summary | StatWrite, answer: AnswerOnce, observed: bool, count: bool = True
    ) -> Summary | None:
        """The reply's summary, once a ``Stat`` to write was written into the slave's buffer (off the loop).

        ``None``: the Stat is being written by a worker, which answers and
        counts the call itself (nobody observes it).
        """
        if not isinstance(summary, StatWrite):
            return summary
        write = summary
        if not observed:
            # Nobody needs the outcome: the worker answers, counts and gives
            # the slot back; the watchdog keeps the bound. The loop is done.
            answer.detached = True
            with self._lock:
                self._writes[answer.id] = (answer, time.monotonic() + self._bound, tid)
            self._workers.run_detached(lambda: self._write_detached(answer, tid, write, count))
            return None
        try:
            # The worker answers the call itself once the Stat is written: the
            # slave goes on without waiting for the loop to wake up again.
            return await self._workers.submit(lambda: self._write_and_answer(answer, tid, write))
        except Stalled:
            if self.answer_once(answer, -errno_module.EFAULT):
                logger.warning("%s: writing a stat for tid %d stalled; failing its call with EFAULT", self._name, tid)
                return "error", -1, errno_module.EFAULT, 0
            return "reply", write.result, 0, write.fds  # answered just as the bound passed

    def fail_late(self, now: float) -> None:
        """On the loop (the session's watchdog): fail the detached writes past their bound with ``EFAULT``."""
        with self._lock:
            late_writes = [write for write in self._writes.values() if write[1] <= now]
            for answer, _, _ in late_writes:
                del self._writes[answer.id]
        for answer, _, tid in late_writes:
            try:
                if self.answer_once(answer, -errno_module.EFAULT, give_back=True):
                    logger.warning(
                        "%s: writing a stat for tid %d stalled; failing its call with EFAULT", self._name, tid
                    )
            except Gone:
                pass

    def _write_detached(self, answer: AnswerOnce, tid: int, write: StatWrite, count: bool) -> None:
        """On a memory worker: write the Stat, answer the call, count it (see :meth:`written`)."""
        try:
            self._write_and_answer(answer, tid, write)
            counted = "calls" if count else ""
        except Gone:
            counted = "dropped"
        with self._lock:
            self._writes.pop(answer.id, None)
            if counted:
                self._count(counted)

    def _write_and_answer(self, answer: AnswerOnce, tid: int, write: StatWrite) -> Summary:
        """On a memory worker: write the Stat into the slave's buffer, then answer the call.

        The call still pending right before the write means its thread is
        still the caller, so the memory written is the caller's.
        """
        try:
            with self._lock:
                check_valid(self._listener(), answer.id)
        except Gone:
            with self._lock:
                if not answer.sent:  # nobody answers a call that is gone: give its slot back
                    answer.sent = answer.released = True
                    self._slots.release()
            raise
        try:
            write_memory(tid, write.address, write.data)
        except Refuse as refusal:
            self.answer_once(answer, -refusal.code, give_back=True)
            return "error", -1, refusal.code, 0
        self.answer_once(answer, 0, give_back=True)
        return "reply", write.result, 0, write.fds

    def answer_once(self, answer: AnswerOnce, error: int, give_back: bool = False) -> bool:
        """Answer ``answer``'s call with ``error`` (0: success) unless it was answered; whether this did.

        From the loop or a worker: the lock makes one of them answer, and
        keeps the session from closing the listener (and its number being
        reused) during the ioctl. ``give_back``: the call's slot is given
        back at once, so a receiver takes the next call while the loop
        still finishes this one (its observers, its counts).
        """
        with self._lock:
            if answer.sent:
                return False
            answer.sent = True
            answer.released = give_back
            try:
                respond(self._listener(), answer.id, 0, error, 0)
            finally:
                if give_back:  # answered or gone: the call no longer holds its slot
                    self._slots.release()
        return True
