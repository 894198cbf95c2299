"""Helpers for tests that drive a Master and a slave in one process."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    """Run a blocking slave call in its own thread, as a slave program's thread would.

    The thread is a daemon, so a test that fails while a slave still waits
    reports its failure instead of hanging at the event loop's shutdown.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value = function(*args, **kwargs)
        except BaseException as error:  # handed to the awaiting test
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name=f"slave {getattr(function, '__name__', function)}", daemon=True).start()
    return future


def assert_closed(*fds: int) -> None:
    """Each descriptor number is closed (``fstat`` fails with ``EBADF``)."""
    for fd in fds:
        with pytest.raises(OSError) as raised:
            os.fstat(fd)
        assert raised.value.errno == errno.EBADF, f"descriptor {fd} is still open"


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """``sendmsg`` ancillary data passing ``fds`` (none for an empty list)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, "little", signed=True) for fd in fds))]
