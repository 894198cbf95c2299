"""Calls that may wait on a slave, run off the event loop with a bound.

Reading or writing a slave's memory (``process_vm_readv``/``writev``) can
wait as long as the slave likes: a page registered with ``userfaultfd``
that nobody serves, a file mapping on a FUSE or network filesystem. The
seccomp transport (:mod:`libc_service.seccomp.session`) therefore does that work on
:class:`BoundedWorkers`: a few daemon threads per session that take jobs
from one queue. The loop awaits each job's future, which fails with
:class:`Stalled` once the job took longer than the bound; the thread that
is stuck stays stuck (until the slave lets go or exits) and another takes
the queue, so the session goes on and other sessions never notice. What a
job finishes after its bound is handed to its ``discard`` callback (to
close descriptors it opened), never to the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["BoundedWorkers", "Stalled"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Threads per session at most, stuck ones included: past it, jobs wait in the
#: queue (and fail at their bound if every thread stays stuck).
MAX_THREADS: Final = 16


class Stalled(Exception):
    """The job did not finish within its bound."""


class _Job(Generic[T]):
    __slots__ = ("function", "future", "discard", "handle")

    def __init__(
        self,
        function: Callable[[], T],
        future: asyncio.Future[T],
        discard: Callable[[T], None] | None,
    ) -> None:
        self.function = function
        self.future = future
        self.discard = discard
        self.handle: asyncio.TimerHandle | None = None


class _Detached:
    __slots__ = ("function",)

    def __init__(self, function: Callable[[], object]) -> None:
        self.function = function


class BoundedWorkers:
    """Daemon threads that run blocking jobs for one loop; each job has a bound in seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, bound: float) -> None:
        self._loop = loop
        self._name = name
        self.bound = bound
        self._jobs: queue.SimpleQueue[_Job[Any] | _Detached | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False
        #: Jobs that outlived their bound (their callers got :class:`Stalled`).
        self.stalled = 0

    def submit(self, function: Callable[[], T], discard: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Run ``function()`` on a worker; its future fails with :class:`Stalled` after the bound."""
        future: asyncio.Future[T] = self._loop.create_future()
        job = _Job(function, future, discard)
        job.handle = self._loop.call_later(self.bound, self._expire, job)
        self._start_one()
        self._jobs.put(job)
        return future

    def run_detached(self, function: Callable[[], object]) -> None:
        """Run ``function()`` on a worker and forget it: no future, no timer, no wake-up of the loop.

        For a job that hands on its outcome itself and whose bound its caller
        keeps (the seccomp transport answers a call once its Stat is written,
        and its watchdog fails the call past the bound): the loop is not
        woken again for it, which is most of what a job costs. An exception
        is logged.
        """
        self._start_one()
        self._jobs.put(_Detached(function))

    def _start_one(self) -> None:
        """Take an idle thread for a job, or start one (while under :data:`MAX_THREADS`)."""
        with self._lock:
            start = self._idle == 0 and self._threads < MAX_THREADS and not self._closed
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, name=f"{self._name} memory", daemon=True).start()

    def close(self) -> None:
        """Let every thread end once it is idle (a stuck one ends when it comes back)."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _expire(self, job: _Job[Any]) -> None:
        if not job.future.done():
            self.stalled += 1
            job.future.set_exception(Stalled(f"{self._name}: a memory access took more than {self.bound:g} s"))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            if isinstance(job, _Detached):
                try:
                    job.function()
                except Exception:  # noqa: BLE001 - nobody waits for it
                    logger.exception("%s: a detached job failed", self._name)
                with self._lock:
                    self._idle += 1
                continue
            try:
                result: Any = job.function()
                failed = False
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                result, failed = exc, True
            try:
                self._loop.call_soon_threadsafe(self._complete, job, result, failed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                if not failed and job.discard is not None:
                    job.discard(result)
            with self._lock:
                self._idle += 1

    def _complete(self, job: _Job[Any], result: Any, failed: bool) -> None:
        if job.handle is not None:
            job.handle.cancel()
        if job.future.done():  # stalled, or cancelled: the caller has gone on
            if not failed and job.discard is not None:
                try:
                    job.discard(result)
                except Exception:  # noqa: BLE001
                    logger.exception("%s: discarding a late result failed", self._name)
            return
        if failed:
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
