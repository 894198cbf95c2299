"""The path a slave meant, as one absolute string: for routing, never for security.

A request's path may be relative to a directory the slave passed as a
descriptor. Conditions, observers and policies that compare paths want it
absolute and normalised; :func:`slave_path` gives that, lexically. The
security decisions open the object instead (:mod:`libc_service.safepath`,
:func:`libc_service.perform`). Kept apart from both so that neither the
routing conditions nor the safe-path code import each other for it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import PurePosixPath

__all__ = ["slave_path"]


def slave_path(path: PurePosixPath, dirfd: int | None) -> str | None:
    """The absolute, lexically normalised path a slave meant.

    A relative path is joined to the directory behind ``dirfd`` (as the
    master sees it through ``/proc/self/fd``). ``None`` when a relative path
    came without a directory or the directory cannot be named. ``..`` is
    folded lexically, which is right for routing and wrong for security:
    open the object with :mod:`libc_service.safepath` before trusting it.
    """
    text = str(path)
    if text.startswith("\0"):
        return None  # an abstract socket name is not a filesystem path
    if not text.startswith("/"):
        if dirfd is None:
            return None
        try:
            base = os.readlink(f"/proc/self/fd/{dirfd}")
        except OSError:
            return None
        if not base.startswith("/"):
            return None  # an unreachable directory: "(unreachable)/..."
        if base.endswith(" (deleted)") and _removed(dirfd):
            return None  # the kernel names a removed directory "/old/path (deleted)"
        text = f"{base}/{text}"
    normal = posixpath.normpath(text)
    return "/" + normal.lstrip("/")


def _removed(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True
