"""Where the kernel resolves the slave's path from: its directory, its root, the names that mean "the caller".

A path is resolved as the slave's: relative to its directory descriptor
or working directory (opened from ``/proc/<pid>/task/<tid>/cwd``), by
:mod:`libc_service.acting.slavewalk` name by name so that ``/proc/self`` and the
caller's magic links mean the requesting process and thread wherever the
walk meets them, or beneath a root with the kernel's
``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (:mod:`libc_service.acting.beneath`).
A process whose root directory or mount namespace is not the master's is
refused (:func:`same_root_and_mounts`): the master's resolution would name
the master's files.
"""

from __future__ import annotations

import errno as errno_module
import functools
import os
from dataclasses import dataclass
from typing import Any, Final

from libc_service.acting import beneath as safepath_beneath

from libc_service.acting import slavewalk
from libc_service.policy.slavepath import exact_name, join_to_directory

__all__ = [
    "AT_FDCWD",
    "Target",
    "check_beneath",
    "open_at",
    "open_parent",
    "path_target",
    "same_root_and_mounts",
    "slave_cwd",
    "slave_self",
]

AT_FDCWD: Final = -100
_NO_MAGIC: Final = safepath_beneath.RESOLVE_NO_MAGICLINKS
_BENEATH: Final = safepath_beneath.RESOLVE_BENEATH | safepath_beneath.RESOLVE_NO_MAGICLINKS
_RESOLVE_CACHED: Final = 0x20


#: Names that mean "the caller", as (leading components, what they become).
_SELF_NAMES: Final[tuple[tuple[tuple[str, str], str], ...]] = (
    (("proc", "self"), "/proc/{pid}"),
    (("proc", "thread-self"), "/proc/{pid}/task/{tid}"),
    (("dev", "fd"), "/proc/{pid}/fd"),
    (("dev", "stdin"), "/proc/{pid}/fd/0"),
    (("dev", "stdout"), "/proc/{pid}/fd/1"),
    (("dev", "stderr"), "/proc/{pid}/fd/2"),
)


@functools.cache
def _master_root_and_mounts() -> tuple[tuple[int, int], str]:
    """The master's root directory and mount namespace, read once (a master moves to no other)."""
    root = os.stat("/")
    return (root.st_dev, root.st_ino), os.readlink("/proc/self/ns/mnt")


def same_root_and_mounts(request: Any) -> None:
    """Refuse (``EXDEV``) a path of a process whose root or mount namespace is not the master's.

    The master resolves the slave's paths from its own root and through
    its own mounts: for a slave that called ``chroot`` (possible inside a
    user namespace) or lives in another mount namespace (``unshare -m``) an
    absolute name, or an absolute symlink met on the way, would be the
    master's file, not the slave's. The kernel names both — the root behind
    ``/proc/<pid>/root`` and the namespace behind ``/proc/<pid>/ns/mnt`` —
    and a process that cannot be examined is refused too. Checked in the
    master's own thread: a slave that changed its uid is not dumpable, and
    only root may look at its ``/proc/<pid>``.
    """
    pid = int(getattr(request, "pid", 0))
    if pid <= 0:
        return  # names no process: its root is taken as the master's, as its other unknowns
    try:
        theirs = os.stat(f"/proc/{pid}/root")
        # "mnt:[inode]": readlink is the cheaper way to the namespace's inode.
        their_mounts = os.readlink(f"/proc/{pid}/ns/mnt")
        mine, my_mounts = _master_root_and_mounts()
    except OSError as exc:
        raise OSError(errno_module.EXDEV, f"cannot tell the root and mounts of process {pid}: {exc.strerror}") from None
    if (theirs.st_dev, theirs.st_ino) != mine or their_mounts != my_mounts:
        raise OSError(errno_module.EXDEV, f"process {pid} has another root or mount namespace than the master")


def slave_self(text: str, pid: int, tid: int) -> str | None:
    """``text`` with a leading "the caller" name rewritten for process ``pid``.

    ``/proc/self/x`` becomes ``/proc/<pid>/x``, ``/proc/thread-self`` the
    thread's ``/proc/<pid>/task/<tid>``, ``/dev/fd/N`` and
    ``/dev/stdin|stdout|stderr`` the process's ``/proc/<pid>/fd/N``; the rest
    of the text is kept exactly (a trailing slash too). ``None`` when the text
    does not start with such a name. Raises ``EACCES`` when it does but the
    request did not say which process asked (``pid`` 0).
    """
    if not text.startswith("/"):
        return None
    names: list[str] = []
    ends: list[int] = []
    position = 0
    for part in text.split("/"):
        position += len(part) + 1
        if part in ("", "."):
            continue
        names.append(part)
        ends.append(position - 1)
        if len(names) == 2:
            break
    for prefix, replacement in _SELF_NAMES:
        if tuple(names) == prefix:
            if pid <= 0:
                raise OSError(errno_module.EACCES, f"{text}: names the calling process, which the request does not say")
            return replacement.format(pid=pid, tid=tid or pid) + text[ends[1] :]
    return None


@dataclass
class Target:
    """Where the kernel resolves a path from: a directory descriptor, the exact
    text, the resolve bits the master adds, and whether ``dirfd`` is ours to close."""

    dirfd: int
    text: str
    resolve: int
    beneath: bool
    owned: tuple[int, ...] = ()
    #: Resolved by :func:`slavewalk.open_as_slave` for the requesting process and thread.
    walk: bool = False
    pid: int = 0
    tid: int = 0

    def close(self) -> None:
        for fd in self.owned:
            os.close(fd)
        self.owned = ()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slave_cwd(request: Any) -> int:
    """The requesting thread's working directory, opened ``O_PATH``."""
    pid, tid = int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0))
    if pid <= 0:
        raise OSError(errno_module.EACCES, "a relative path, and the request names neither directory nor process")
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(f"/proc/{pid}/task/{tid or pid}/cwd", flags)
    except FileNotFoundError:
        return os.open(f"/proc/{pid}/cwd", flags)


def path_target(request: Any, path: Any, dirfd: int | None, root: str | None) -> Target:
    """Where and how the kernel must resolve the slave's ``path`` (see :class:`Target`).

    Without a root the slave's text is resolved from its directory (or
    ``/``) by :mod:`libc_service.acting.slavewalk`, which meets ``/proc/self`` and
    the caller's magic links wherever the walk reaches them; the text is
    never joined to a directory's name, so what it contains decides nothing.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    pid, tid = int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0))
    owned: list[int] = []
    try:
        if not text.startswith("/"):
            if dirfd is None:
                dirfd = slave_cwd(request)
                owned.append(dirfd)
            if root is None:
                return Target(dirfd, text, 0, False, tuple(owned), walk=True, pid=pid, tid=tid)
            base = exact_name(dirfd)  # OSError when it cannot be named exactly: refused
            if base is None:
                # A removed directory (st_nlink == 0): nothing beneath it has
                # a name, and ".." from it is refused beneath a root, so
                # resolving from the descriptor itself is exact and cannot escape.
                return Target(dirfd, text, _BENEATH if root is not None else _NO_MAGIC, root is not None, tuple(owned))
            text = join_to_directory(base, text)
        # An absolute text from here on.
        if root is None:
            return Target(AT_FDCWD, text, 0, False, tuple(owned), walk=True, pid=pid, tid=tid)
        own = slave_self(text, pid, tid)
        if own is not None:
            text = own
        try:
            relative = safepath_beneath.relative_to_root(root, text)
        except safepath_beneath.EscapeError:
            raise OSError(errno_module.EXDEV, f"{text} is not beneath {root}") from None
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        owned.append(root_fd)
        return Target(root_fd, relative, _BENEATH, True, tuple(owned))
    except BaseException:
        for fd in owned:
            os.close(fd)
        raise


def open_at(where: Target, flags: int, mode: int = 0, extra: int = 0) -> int:
    """Open ``where`` with the kernel's resolution rules (``extra``: the slave's own resolve bits)."""
    if not safepath_beneath.takes_mode(flags):
        mode = 0
    if where.walk:
        return slavewalk.open_as_slave(where.dirfd, where.text, flags, mode, extra, where.pid, where.tid)
    if where.beneath:
        return safepath_beneath.open_resolved(where.dirfd, where.text, flags, mode, where.resolve | extra)
    bits = where.resolve | extra
    if bits and safepath_beneath.openat2_available():
        retries = 1 if extra & _RESOLVE_CACHED else 16
        for _ in range(retries):
            try:
                return safepath_beneath.raw_openat2(where.dirfd, where.text, flags, mode, bits)
            except BlockingIOError:
                if extra & _RESOLVE_CACHED:
                    raise  # the slave asked for RESOLVE_CACHED: EAGAIN is its answer
        raise OSError(errno_module.EAGAIN, "openat2 kept racing with renames", where.text)
    # No openat2 (Linux < 5.6): the plain walk, without the magic-link guard.
    return os.open(where.text, flags, mode, dir_fd=None if where.dirfd == AT_FDCWD else where.dirfd)


def _split(where: Target) -> tuple[str, str]:
    """``(parent text, last component)`` of ``where.text``, the last with its trailing slashes."""
    text = where.text
    stripped = text.rstrip("/")
    if not stripped:
        return "/", text  # "/" itself: the *at call ignores the directory for it
    head, separator, last = stripped.rpartition("/")
    if not separator:
        head = "."
    elif not head:
        head = "/"
    return head, last + text[len(stripped) :]


def open_parent(where: Target) -> tuple[int, str]:
    """Open the parent of ``where`` (``O_PATH``, resolved as ``where`` says): ``(fd, last)``."""
    head, last = _split(where)
    parent = Target(where.dirfd, head, where.resolve, where.beneath, walk=where.walk, pid=where.pid, tid=where.tid)
    return open_at(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), last


def check_beneath(fd: int, root: str) -> None:
    """Refuse (``EXDEV``) a descriptor whose file is not the one its name beneath ``root`` leads to."""
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
        relative = safepath_beneath.relative_to_root(root, name)
    except (OSError, safepath_beneath.EscapeError):
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}") from None
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        probe = safepath_beneath.open_resolved(root_fd, relative, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0, _BENEATH)
    except OSError:
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}") from None
    finally:
        os.close(root_fd)
    try:
        mine, theirs = os.fstat(probe), os.fstat(fd)
    finally:
        os.close(probe)
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}")
