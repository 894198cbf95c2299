"""Resolve a path beneath a directory as the kernel does: ``openat2``, or a walk where it is missing.

The part of path safety that both :mod:`libc_service.acting.safepath` (the
handlers' helpers) and the modules that act for the slave
(:mod:`libc_service.acting.perform`, :mod:`libc_service.acting.slavewalk`) stand on:
``openat2`` with its ``RESOLVE_*`` bits, probed once; the component walker
that enforces ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` by hand where
``openat2`` is missing (Linux < 5.6, or a seccomp filter refuses it); a
request's open-flag names as the master's flags and resolve bits; a path
made relative to a root, and the error for one outside it. It knows nothing
of requests' processes or identities, so everything above can use it.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import posixpath
import stat as stat_module
import struct
from collections import deque
from typing import Final

from libc_service.kernel import libc as kernel
from libc_service.protocol.openflags import OS_FLAGS, RESOLVE_FLAGS
from libc_service.protocol.openflags import RESOLVE_IN_ROOT as RESOLVE_IN_ROOT
from libc_service.protocol.openflags import RESOLVE_BENEATH as RESOLVE_BENEATH
from libc_service.protocol.openflags import RESOLVE_NO_MAGICLINKS as RESOLVE_NO_MAGICLINKS
from libc_service.protocol.openflags import RESOLVE_NO_SYMLINKS as RESOLVE_NO_SYMLINKS
from libc_service.protocol.openflags import RESOLVE_NO_XDEV as RESOLVE_NO_XDEV

__all__ = [
    "O_PATH_FLAGS",
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "EscapeError",
    "open_flags",
    "open_resolved",
    "openat2_available",
    "raw_openat2",
    "relative_to_root",
    "takes_mode",
]


_OPENAT2: Final = kernel.NUMBERS.get("openat2")

#: The resolve bits a slave may add to the master's own (RESOLVE_IN_ROOT and
#: RESOLVE_CACHED would change the meaning of the root or loop on EAGAIN).
_RESOLVE_KEPT: Final = RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
_MAX_SYMLINKS: Final = 40  # the kernel's own limit
_EAGAIN_RETRIES: Final = 16
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)

_have_openat2: bool | None = None

#: O_ASYNC is left out: open(2) ignores it too, only fcntl(F_SETFL) makes it work.
_OS_FLAGS: Final = OS_FLAGS | {"async_signals": 0}
#: What ``O_PATH`` keeps: open(2) ignores every other flag with it, openat2(2) refuses them.
O_PATH_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EscapeError(PermissionError):
    """The path leads outside the root (``EACCES`` for the slave)."""

    def __init__(self, path: object, root: object) -> None:
        super().__init__(errno_module.EACCES, f"{path} is not beneath {root}")


def open_flags(flags: frozenset[str] | set[str]) -> tuple[int, int]:
    """``(os flags, openat2 resolve bits)`` for a request's flag names.

    ``O_CLOEXEC`` is always added: the master's copy must not leak into the
    master's own children; the slave's close-on-exec is set by the shim.
    ``O_NOCTTY`` is added too (a terminal the master opens must not become
    the master's controlling terminal) — except with ``O_PATH``, where only
    ``O_DIRECTORY``/``O_NOFOLLOW``/``O_CLOEXEC`` are kept, as ``open(2)``
    ignores the rest and ``openat2(2)`` fails with ``EINVAL`` on them.
    """
    value = os.O_CLOEXEC
    resolve = 0
    for name in flags:
        if name in _OS_FLAGS:
            value |= _OS_FLAGS[name]
        elif name in RESOLVE_FLAGS:
            resolve |= RESOLVE_FLAGS[name]
        else:
            raise ValueError(f"unknown open flag {name!r}")
    if value & os.O_PATH:
        return value & O_PATH_FLAGS, resolve
    return value | os.O_NOCTTY, resolve


def relative_to_root(root: str | os.PathLike[str], absolute: str) -> str:
    """``absolute`` relative to ``root`` (``"."`` for the root itself).

    Only a string split, component by component (empty and ``.`` components
    do not count): ``..`` components are kept for the kernel to resolve
    beneath the root, and the rest of the text is kept exactly, trailing
    slash included. ``root`` matches as written (normalised) or as its real
    path, so a root reached through a symlink (``/var/run``) still matches
    the canonical names the master reads back from a slave's directory
    descriptor. Raises :class:`EscapeError` when ``absolute`` is under neither.
    """
    written = "/" + posixpath.normpath(os.fspath(root)).lstrip("/")
    spellings = [written]
    real = os.path.realpath(written)
    if real != written:
        spellings.append(real)
    for root_text in spellings:
        rest = _strip_prefix(absolute, [part for part in root_text.split("/") if part])
        if rest is not None:
            return rest or "."
    raise EscapeError(absolute, written)


def _strip_prefix(text: str, names: list[str]) -> str | None:
    """``text`` after its leading components ``names`` (``None`` if they differ)."""
    if not text.startswith("/"):
        return None
    position = 0
    for name in names:
        while True:
            end = text.find("/", position)
            part = text[position:] if end < 0 else text[position:end]
            following = len(text) if end < 0 else end + 1
            if part not in ("", "."):
                break
            if end < 0:
                return None  # the text ends before the root does
            position = following
        if part != name:
            return None
        position = following
    return text[position:].lstrip("/")


def raw_openat2(dirfd: int, path: str, flags: int, mode: int, resolve_bits: int) -> int:
    assert _OPENAT2 is not None
    how = struct.pack("<QQQ", flags, mode, resolve_bits)
    fd = kernel.syscall(
        _OPENAT2, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_char_p(how), ctypes.c_size_t(len(how))
    )
    if fd < 0:
        raise kernel.last_error(filename=path)
    return int(fd)


def _probe_openat2(dirfd: int) -> bool:
    """Whether ``openat2`` works here: ENOSYS (Linux < 5.6) or EPERM (a
    seccomp filter that predates it) on a harmless open means no."""
    try:
        fd = raw_openat2(dirfd, ".", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH)
    except OSError as exc:
        if exc.errno in (errno_module.ENOSYS, errno_module.EPERM):
            return False
        raise
    os.close(fd)
    return True


def openat2_available() -> bool:
    """Whether ``openat2`` works on this kernel (probed once)."""
    global _have_openat2
    if _OPENAT2 is None:
        return False
    if _have_openat2 is None:
        _have_openat2 = _probe_openat2(-100)  # AT_FDCWD
    return _have_openat2


def takes_mode(flags: int) -> bool:
    """Whether open ``flags`` use the mode argument (``O_CREAT`` or ``O_TMPFILE``)."""
    return bool(flags & os.O_CREAT) or (_O_TMPFILE != 0 and flags & _O_TMPFILE == _O_TMPFILE)


def open_resolved(dirfd: int, path: str, flags: int, mode: int, resolve_bits: int) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``, or the walking fallback."""
    global _have_openat2
    if not takes_mode(flags):
        mode = 0  # openat2 refuses a mode without O_CREAT/O_TMPFILE
    resolve_bits &= _RESOLVE_KEPT
    if _OPENAT2 is not None and _have_openat2 is None:
        _have_openat2 = _probe_openat2(dirfd)
    if _OPENAT2 is None or not _have_openat2:
        return _walk_beneath(dirfd, path, flags, mode, resolve_bits)
    for _ in range(_EAGAIN_RETRIES):
        try:
            return raw_openat2(dirfd, path, flags, mode, resolve_bits)
        except BlockingIOError:
            continue  # a rename or mount raced with a ".." step: the kernel asks to retry
    raise OSError(errno_module.EAGAIN, "openat2 kept racing with renames", path)


def _proc_dev() -> int | None:
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return None


def _walk_beneath(root_fd: int, path: str, flags: int, mode: int, resolve_bits: int) -> int:
    """The fallback where ``openat2`` is missing: ``RESOLVE_BENEATH`` by hand.

    One component at a time from ``root_fd``, each opened ``O_NOFOLLOW``
    relative to the directory descriptor before it, so what is checked is
    what is used. ``..`` pops back towards the root and never above it;
    a symlink is read from the link itself and its (relative) target
    walked the same way; an absolute target escapes. Symlinks on procfs
    (magic links such as ``/proc/PID/root`` among them) are refused with
    ``RESOLVE_NO_MAGICLINKS``, all symlinks with ``RESOLVE_NO_SYMLINKS``
    (``ELOOP``); ``RESOLVE_NO_XDEV`` is approximated by the device number.
    Escapes raise ``OSError(EXDEV)``, as the kernel does.
    """
    if path.startswith("/"):
        raise OSError(errno_module.EXDEV, "an absolute path is not beneath the root", path)
    if path.endswith("/") and path.strip("/"):
        # A trailing slash makes the kernel insist on a directory (and follow a
        # final symlink to it); creating "name/" is EISDIR, as open(2) says.
        if flags & os.O_CREAT:
            raise OSError(errno_module.EISDIR, os.strerror(errno_module.EISDIR), path)
        flags = (flags | os.O_DIRECTORY) & ~os.O_NOFOLLOW
    follow_last = not flags & os.O_NOFOLLOW
    pending = deque(part for part in path.split("/") if part not in ("", "."))
    proc_dev = _proc_dev() if resolve_bits & RESOLVE_NO_MAGICLINKS else None
    root_dev = os.fstat(root_fd).st_dev
    stack = [os.dup(root_fd)]  # the directories from the root down to the current one
    links = 0

    def follow(link_dir: int, target: str) -> None:
        nonlocal links
        links += 1
        if links > _MAX_SYMLINKS or resolve_bits & RESOLVE_NO_SYMLINKS:
            raise OSError(errno_module.ELOOP, os.strerror(errno_module.ELOOP), path)
        if proc_dev is not None and os.fstat(link_dir).st_dev == proc_dev:
            raise OSError(errno_module.ELOOP, "a procfs link (magic links are refused)", path)
        if target.startswith("/"):
            raise OSError(errno_module.EXDEV, "a symlink to an absolute path leaves the root", path)
        pending.extendleft(reversed([part for part in target.split("/") if part not in ("", ".")]))

    def check_dev(fd: int) -> None:
        if resolve_bits & RESOLVE_NO_XDEV and os.fstat(fd).st_dev != root_dev:
            raise OSError(errno_module.EXDEV, "the path crosses a mount point", path)

    try:
        while pending:
            part = pending.popleft()
            current = stack[-1]
            if part == "..":
                if len(stack) == 1:
                    raise OSError(errno_module.EXDEV, "'..' leads above the root", path)
                os.close(stack.pop())
                continue
            if pending:  # an intermediate component: a directory, or a symlink to follow
                step = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
                link: str | None = None
                try:
                    kind = os.fstat(step).st_mode
                    if stat_module.S_ISLNK(kind):
                        link = os.readlink("", dir_fd=step)  # the link we opened, not the name again
                    elif not stat_module.S_ISDIR(kind):
                        raise OSError(errno_module.ENOTDIR, os.strerror(errno_module.ENOTDIR), path)
                    else:
                        check_dev(step)
                except BaseException:
                    os.close(step)
                    raise
                if link is None:
                    stack.append(step)
                else:
                    os.close(step)
                    follow(current, link)
                continue
            # The last component: open it for real, never through a symlink.
            try:
                fd = os.open(part, flags | os.O_NOFOLLOW, mode, dir_fd=current)
            except OSError as exc:
                if not follow_last or exc.errno not in (errno_module.ELOOP, errno_module.ENOTDIR):
                    raise
                try:
                    target = os.readlink(part, dir_fd=current)
                except OSError:
                    raise exc from None  # not a symlink after all: the open's own error
                follow(current, target)
                continue
            link = None
            try:
                if follow_last and stat_module.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH opens a link itself
                    link = os.readlink("", dir_fd=fd)
                else:
                    check_dev(fd)
            except BaseException:
                os.close(fd)
                raise
            if link is None:
                return fd
            os.close(fd)
            follow(current, link)
        # The path ended in ".." or was empty: the directory we are in.
        fd = os.open(".", flags, mode, dir_fd=stack[-1])
        try:
            check_dev(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        for fd in stack:
            os.close(fd)
