"""The path a slave meant, as one absolute string: for routing, never for security.

A request's path may be relative to a directory the slave passed as a
descriptor. Conditions, observers and policies that compare paths want it
absolute and normalised; :func:`slave_path` gives that, lexically. The
security decisions open the object instead (:mod:`libc_service.acting.safepath`,
:func:`libc_service.acting.perform`). Kept apart from both so that neither the
routing conditions nor the safe-path code import each other for it.
"""

from __future__ import annotations

import errno
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
    open the object with :mod:`libc_service.acting.safepath` before trusting it.
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


def directory_name(dirfd: int) -> str | None:
    """The absolute name of the directory behind ``dirfd``; ``None`` when it has none (for routing)."""
    return descriptor_name(dirfd)


def exact_name(fd: int) -> str | None:
    """The name that leads to the very object ``fd`` is open on; ``None`` only once it was removed.

    For decisions: a relative path is resolved from this name (beneath a
    root, say), so it must be exact. "Removed" is what the kernel says of
    the object (``st_nlink == 0`` from ``fstat``), not a failed
    ``readlink``. Everything else that cannot be named exactly raises
    ``OSError``: a name longer than ``PATH_MAX`` (``ENAMETOOLONG``, a
    working directory reached one ``chdir`` at a time), an object outside
    the master's root (``"(unreachable)/…"``) and a name that leads to
    another object (``EXDEV``: a detached mount from ``open_tree`` is named
    ``/``; a directory renamed while it was being named).
    """
    try:
        own = os.fstat(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"the directory cannot be named: {exc.strerror}") from None
    if own.st_nlink == 0:
        return None
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise OSError(exc.errno, f"the directory cannot be named: {exc.strerror}") from None
    if name.startswith("/"):
        try:
            named = os.stat(name, follow_symlinks=False)
        except OSError:
            named = None
        if named is not None and (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino):
            return name
    raise OSError(errno.EXDEV, f"no name leads to the directory ({name!r} does not)")


def descriptor_name(fd: int) -> str | None:
    """The absolute name of the file or directory ``fd`` is open on, for routing and reports.

    ``None`` once it was removed, and for an object that has no name the
    master can read (a pipe, a socket, a file of another mount namespace, a
    name longer than ``PATH_MAX``). Decisions that resolve from the name use
    :func:`exact_name`, which tells these apart.
    """
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if not name.startswith("/"):
        return None  # "(unreachable)/…": outside the master's root
    if name.endswith(" (deleted)"):
        try:
            if os.fstat(fd).st_nlink == 0:
                return None
        except OSError:
            return None
    return name


def join_to_directory(base: str, text: str) -> str:
    """The absolute path of relative ``text`` from the directory named ``base``.

    ``base`` is the kernel's name of a directory (``/proc/self/fd/N``): the
    canonical path, with no symlink in it. So the ``..`` components that
    *begin* ``text`` are exactly that directory's ancestors and are folded
    into it (``../beta/x`` from ``/jobs/beta`` is ``/jobs/beta/x``, beneath a
    root at ``/jobs/beta``); every later ``..`` may follow a symlink and is
    left for the kernel, and the rest of the text is kept exactly.
    """
    names = [name for name in base.split("/") if name]
    parts = text.split("/")
    index = 0
    while index < len(parts) - 1 and parts[index] in ("", ".", ".."):
        if parts[index] == ".." and names:
            names.pop()
        index += 1
    rest = "/".join(parts[index:])
    if rest in (".", ".."):
        if rest == ".." and names:
            names.pop()
        rest = ""
    head = "/" + "/".join(names)
    if not rest:
        return head
    return head.rstrip("/") + "/" + rest


def printable(path: str) -> str:
    """``path`` as it may be shown on a terminal: as is when printable, else JSON-quoted.

    A slave names its files: a name with control characters (a terminal
    escape) or undecodable bytes is shown escaped, never written raw.
    """
    if path.isprintable():
        return path
    import json  # a name with control characters: rare

    return json.dumps(path)
