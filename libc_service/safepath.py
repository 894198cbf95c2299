"""Decide on the resolved object, not the string: safe opens for handlers.

A handler that grants access must not check a path string and then open
the string: a symlink (or ``..``) inside the allowed tree can point outside
it, and the slave can swap one in between the check and the open. The
helpers here let the *kernel* resolve the slave's path beneath a root with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` — no ``..`` above the
root, no absolute or escaping symlinks, no ``/proc`` magic links — and then
work on the opened descriptor:

- :func:`open_beneath` opens a slave's path beneath a root; the descriptor
  is what you pass back (``WithFds(0, [fd])``).
- :func:`stat_beneath` answers ``stat``/``lstat`` from the opened object.
- :func:`parent_beneath` opens the parent directory of a path beneath a root,
  for mutations with ``*at`` calls (``os.unlink(name, dir_fd=parent)``).
- :func:`resolve` turns a request's path into the absolute path the slave
  meant (its working directory or dirfd for relative paths, its own pid for
  ``/proc/self``).

Where ``openat2`` is missing (Linux < 5.6) the same rules are enforced by
walking the path one component at a time with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import platform
import struct
from pathlib import PurePosixPath
from typing import Any, Final

from .conditions import slave_path
from .replies import Stat

__all__ = [
    "EscapeError",
    "open_beneath",
    "open_flags",
    "parent_beneath",
    "relative_to_root",
    "resolve",
    "stat_beneath",
]

_OPENAT2: Final = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None

_OS_FLAGS: Final = {
    "read_only": os.O_RDONLY,
    "write_only": os.O_WRONLY,
    "read_write": os.O_RDWR,
    "append": os.O_APPEND,
    "create": os.O_CREAT,
    "directory": os.O_DIRECTORY,
    "exclusive": os.O_EXCL,
    "no_follow": os.O_NOFOLLOW,
    "path": os.O_PATH,
    "sync_all_on_write": os.O_SYNC,
    "temporary": getattr(os, "O_TMPFILE", 0),
    "truncate": os.O_TRUNC,
}
_RESOLVE_FLAGS: Final = {
    "resolve_beneath": RESOLVE_BENEATH,
    "resolve_in_root": RESOLVE_IN_ROOT,
    "resolve_no_magiclinks": RESOLVE_NO_MAGICLINKS,
    "resolve_no_symlinks": RESOLVE_NO_SYMLINKS,
    "resolve_no_xdev": RESOLVE_NO_XDEV,
    "resolve_cached": 0x20,
}


class EscapeError(PermissionError):
    """The path leads outside the root (``EACCES`` for the slave)."""

    def __init__(self, path: object, root: object) -> None:
        super().__init__(errno_module.EACCES, f"{path} is not beneath {root}")


def open_flags(flags: frozenset[str] | set[str]) -> tuple[int, int]:
    """``(os flags, openat2 resolve bits)`` for a request's flag names.

    ``O_CLOEXEC`` is always added: the master's copy must not leak into the
    master's own children; the slave's close-on-exec is set by the shim.
    """
    value = os.O_CLOEXEC | os.O_NOCTTY
    resolve = 0
    for name in flags:
        if name in _OS_FLAGS:
            value |= _OS_FLAGS[name]
        elif name in _RESOLVE_FLAGS:
            resolve |= _RESOLVE_FLAGS[name]
        else:
            raise ValueError(f"unknown open flag {name!r}")
    return value, resolve


def resolve(request: Any, *, path: PurePosixPath | None = None, dirfd: int | None = None) -> str | None:
    """The absolute path a request's slave meant, or ``None`` if unknowable.

    Uses the request's ``path`` and ``dirfd`` unless given; ``/proc/self`` and
    ``/proc/thread-self`` become the slave's own pid and tid.
    """
    path = path if path is not None else request.path
    dirfd = dirfd if dirfd is not None else getattr(request, "dirfd", None)
    absolute = slave_path(path, dirfd)
    if absolute is None:
        return None
    for prefix, ident in (("/proc/self", request.pid), ("/proc/thread-self", f"{request.pid}/task/{request.tid}")):
        if absolute == prefix or absolute.startswith(prefix + "/"):
            return f"/proc/{ident}{absolute[len(prefix):]}"
    return absolute


def relative_to_root(root: str | os.PathLike[str], absolute: str) -> str:
    """``absolute`` relative to ``root`` (``"."`` for the root itself).

    Only a string split: ``..`` components are kept for the kernel to refuse.
    Raises :class:`EscapeError` when ``absolute`` does not start with ``root``.
    """
    root_text = "/" + os.fspath(root).strip("/")
    if absolute == root_text or absolute.rstrip("/") == root_text:
        return "."
    prefix = root_text.rstrip("/") + "/"
    if not absolute.startswith(prefix):
        raise EscapeError(absolute, root_text)
    return absolute[len(prefix):] or "."


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve_bits: int) -> int:
    global _have_openat2
    if _OPENAT2 is not None and _have_openat2 is not False:
        how = struct.pack("<QQQ", flags, mode, resolve_bits)
        fd = _libc.syscall(_OPENAT2, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_char_p(how),
                           ctypes.c_size_t(len(how)))
        if fd >= 0:
            _have_openat2 = True
            return int(fd)
        code = ctypes.get_errno()
        if code not in (errno_module.ENOSYS, errno_module.EPERM) or _have_openat2:
            raise OSError(code, os.strerror(code), path)
        _have_openat2 = False  # ENOSYS, or EPERM from a seccomp filter that predates openat2
    return _walk_beneath(dirfd, path, flags, mode)


def _walk_beneath(dirfd: int, path: str, flags: int, mode: int) -> int:
    """The fallback: one component at a time, no symlinks, no ``..``."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise EscapeError(path, "its root")
    current = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = step
        last = parts[-1] if parts else "."
        return os.open(last, flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(
    root: str | os.PathLike[str],
    request: Any,
    flags: int | None = None,
    mode: int | None = None,
) -> int:
    """Open the request's path beneath ``root``; the new descriptor is yours.

    ``flags``/``mode`` default to the request's own (an ``open``/``openat``
    request); give them for other requests. Raises :class:`EscapeError`
    (``EACCES``) for a path outside ``root`` — including one that gets
    there through ``..`` or a symlink — and ``OSError`` as ``open`` does.
    """
    absolute = resolve(request)
    if absolute is None:
        raise EscapeError(getattr(request, "path", "?"), root)
    relative = relative_to_root(root, absolute)
    resolve_bits = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
    if flags is None:
        flags, extra = open_flags(request.flags)
        resolve_bits |= extra & ~RESOLVE_IN_ROOT
    if mode is None:
        mode = getattr(request, "mode", None) or 0
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _openat2(root_fd, relative, flags | os.O_CLOEXEC, mode, resolve_bits)
    except OSError as exc:
        if exc.errno == errno_module.EXDEV:
            raise EscapeError(absolute, root) from None  # the kernel refused an escape
        raise
    finally:
        os.close(root_fd)


def stat_beneath(root: str | os.PathLike[str], request: Any) -> Stat:
    """Answer ``stat``/``lstat`` for a path beneath ``root`` from the object itself."""
    no_follow = os.O_NOFOLLOW if request.function == "lstat" else 0
    fd = open_beneath(root, request, os.O_PATH | no_follow, 0)
    try:
        return Stat.from_os(os.fstat(fd))
    finally:
        os.close(fd)


def parent_beneath(
    root: str | os.PathLike[str], request: Any, *, path: PurePosixPath | None = None,
    dirfd: int | None = None,
) -> tuple[int, str]:
    """Open the parent directory of a path beneath ``root``: ``(dirfd, name)``.

    Mutate with the ``*at`` form on the returned descriptor, e.g.
    ``os.mkdir(name, mode, dir_fd=parent)``; close it afterwards. The final
    component is never ``.`` or ``..``.
    """
    absolute = resolve(request, path=path, dirfd=dirfd)
    if absolute is None:
        raise EscapeError(path or getattr(request, "path", "?"), root)
    relative = relative_to_root(root, absolute)
    parent, _, name = relative.rstrip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise EscapeError(absolute, root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _openat2(root_fd, parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                      RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    except OSError as exc:
        if exc.errno == errno_module.EXDEV:
            raise EscapeError(absolute, root) from None
        raise
    finally:
        os.close(root_fd)
    return fd, name
