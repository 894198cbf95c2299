"""An outcome that waits for another party, not for the policy: it does not hold a session.

A blocking FIFO open waits until some process opens the other end — often
another thread of the same program, or another process under the same
transport, whose own open is a call to the same master. A sequential
session that waited for the first open before reading the next call
would never see the second: both would wait forever. So
:func:`libc_service.acting.perform` returns a :class:`Rendezvous` for such an
open, and the transports keep serving the slave's other calls while it
waits: the shim's sequential session answers it in a task of its own, and
the seccomp transport does not count it among the calls that may wait at
once. The policy has decided by then; only the kernel's wait remains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

__all__ = ["WAITING", "Rendezvous"]

T = TypeVar("T")

#: Called by a :class:`Rendezvous` when it starts to wait, in the context of
#: the decision awaiting it: a transport sets it to stop counting that call
#: among those that hold the session.
WAITING: ContextVar[Callable[[], None] | None] = ContextVar("libc_service_rendezvous_waiting", default=None)


class Rendezvous(Generic[T]):
    """An awaitable outcome that waits for another party (a FIFO's other end)."""

    __slots__ = ("_awaitable",)

    def __init__(self, awaitable: Awaitable[T]) -> None:
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, None, T]:
        waiting = WAITING.get()
        if waiting is not None:
            waiting()
        return (yield from self._awaitable.__await__())

    def close(self) -> None:
        """Close the awaited coroutine unfinished (its session ended first)."""
        close = getattr(self._awaitable, "close", None)
        if callable(close):
            close()
