"""Descriptors as the kernel hands them over: taken from ``SCM_RIGHTS``, closed once.

Every end of a channel (the asyncio master, the Python slave, the launcher's
registration, the seccomp transport) receives descriptors in control
messages and must close what it does not keep; the two helpers live here,
below all of them, so none takes them from another transport.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterable
from typing import Final

__all__ = ["close_fds", "not_open", "received_fds"]

_INT_SIZE: Final = array.array("i").itemsize


def close_fds(fds: Iterable[int]) -> None:
    """Close descriptors, ignoring ones already gone."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Descriptors in ``SCM_RIGHTS`` control messages (partial ints dropped)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds


def not_open(fds: Iterable[int]) -> str | None:
    """Why one of ``fds`` cannot be handed over: the first that is not open (``None``: all are).

    ``sendmsg`` (or seccomp's ``ADDFD``) fails for a descriptor that is not
    open; asked first, a transport fails only the call that carried it
    instead of the session.
    """
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError as exc:
            return f"descriptor {fd} is not open: {exc.strerror}"
    return None
