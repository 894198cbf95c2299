"""Waiting until a descriptor is readable or writable: on the loop, or in a thread.

The master waits on descriptors in a few places (the seccomp listener's
handoff, a pidfd, the registration socket, a connect in progress, the
seccomp receiver thread). Each wait has the same pitfalls: the loop's
registration must end however the wait ends (done, timed out, cancelled,
or ended from outside before the descriptor is closed, since a closed
number may be reused by the next ``open``), and a thread must not block
the loop. This module is the one place that gets them right.

On the loop: :class:`Watch` (one registration, ended once) and the
:func:`readable` / :func:`writable` waits built on it. In a thread:
:func:`poll_events`, one ``poll(2)`` over several descriptors.
"""

from __future__ import annotations

import select
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
else:  # a run whose every call the shim decides never starts a loop: no asyncio at start-up
    asyncio = on_first_use("asyncio", globals())

__all__ = ["HANG_UP", "READABLE", "WRITABLE", "Watch", "poll_events", "readable", "writable"]

#: ``poll(2)`` events, for :func:`poll_events`.
READABLE: Final = select.POLLIN
WRITABLE: Final = select.POLLOUT
#: What ``poll`` reports for an end that will never be readable again.
HANG_UP: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Watch:
    """The running loop watching ``fd``; :attr:`ready` completes when it is readable (writable).

    Use it as a context manager around the ``await``; :meth:`end` may also
    be called from outside the waiting coroutine (by whoever is about to
    close ``fd``): it unregisters at once and wakes the waiter, and the
    waiter's own exit then does nothing.
    """

    def __init__(self, fd: int, *, write: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._write = write
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._ended = False
        if write:
            self._loop.add_writer(fd, self._wake)
        else:
            self._loop.add_reader(fd, self._wake)

    def _wake(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def end(self) -> None:
        """Stop watching (once; a closed loop has nothing left to unregister) and wake the waiter."""
        if self._ended:
            return
        self._ended = True
        if not self._loop.is_closed():
            if self._write:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.remove_reader(self._fd)
        self._wake()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.end()


async def readable(fd: int, timeout: float | None = None) -> bool:
    """Wait on the loop until ``fd`` is readable: ``False`` when ``timeout`` (seconds) passed first."""
    with Watch(fd) as watch:
        try:
            await asyncio.wait_for(watch.ready, timeout)
        except TimeoutError:
            return False
    return True


async def writable(fd: int) -> None:
    """Wait on the loop until ``fd`` is writable (a connect in progress has finished)."""
    with Watch(fd, write=True) as watch:
        await watch.ready


def poll_events(wanted: Mapping[int, int], timeout: float | None = None) -> dict[int, int]:
    """One ``poll(2)`` over ``wanted`` (fd → events): fd → the events that happened.

    Blocks the calling thread up to ``timeout`` seconds (``None``: until
    something happens; ``0``: only asks), so it is for threads and for the
    loop only with ``timeout=0``. ``HANG_UP`` events are reported whether
    asked for or not, as ``poll`` does.
    """
    poller = select.poll()
    for fd, events in wanted.items():
        poller.register(fd, events)
    return dict(poller.poll(None if timeout is None else int(timeout * 1000)))
