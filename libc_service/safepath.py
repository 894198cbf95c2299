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
  ``/proc/self``, ``/dev/fd/N``, ``/dev/stdin``), keeping the exact text.

:func:`open_beneath` and :func:`stat_beneath` are thin uses of
:func:`libc_service.perform`, which does the call as the slave would have
(its credentials and umask, the exact path, never blocking the event loop).

Where ``openat2`` is missing (Linux < 5.6, or a seccomp filter refuses it)
the same rules are enforced by walking the path one component at a time
with ``O_NOFOLLOW`` from the root's descriptor (see ``_walk_beneath``).

Races: every helper returns or works on a *descriptor* the kernel resolved
beneath the root, so whatever the slave swaps in afterwards, the object
the handler passes back or mutates through is the one that was checked.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import posixpath
import stat as stat_module
import struct
from collections import deque
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import kernel, replies  # loaded on first use (libc_service/__init__.py)
from .openflags import OS_FLAGS, RESOLVE_FLAGS
from .openflags import RESOLVE_BENEATH as RESOLVE_BENEATH
from .openflags import RESOLVE_NO_MAGICLINKS as RESOLVE_NO_MAGICLINKS
from .openflags import RESOLVE_NO_SYMLINKS as RESOLVE_NO_SYMLINKS
from .openflags import RESOLVE_NO_XDEV as RESOLVE_NO_XDEV
from .slavepath import exact_name, join_to_directory

if TYPE_CHECKING:
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

_T = TypeVar("_T")

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
_O_PATH_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
        return value & _O_PATH_FLAGS, resolve
    return value | os.O_NOCTTY, resolve


def resolve(request: Any, *, path: PurePosixPath | None = None, dirfd: int | None = None) -> str | None:
    """The absolute path a request's slave meant, or ``None`` if unknowable.

    Uses the request's ``path`` and ``dirfd`` unless given. The text is the
    slave's, not normalised: a trailing slash stays (it makes the kernel
    insist on a directory) and ``..`` stays for the kernel to resolve (after
    ``link/`` it goes to the parent of the link's *target*, which no string
    fold knows). A relative path is joined to the kernel's name of the
    directory behind ``dirfd``; only the ``..`` that begin it are folded into
    that name, which is canonical (see ``perform.join_to_directory``). ``/proc/self``, ``/proc/thread-self``,
    ``/dev/fd/N`` and ``/dev/stdin|stdout|stderr`` become ``/proc/<pid>/…``
    of the requesting process and thread (``EACCES`` when the request has no
    pid). ``None`` for an abstract socket name, a relative path without a
    directory, and a directory that was removed (it has no name; perform()
    still resolves through its descriptor).
    """
    from .perform import slave_self

    path = path if path is not None else request.path
    dirfd = dirfd if dirfd is not None else getattr(request, "dirfd", None)
    text = os.fspath(path)
    if text.startswith("\0"):
        return None
    if not text.startswith("/"):
        if dirfd is None:
            return None
        try:
            base = exact_name(dirfd)
        except OSError:
            return None  # no exact name: unknowable
        if base is None:
            return None
        text = join_to_directory(base, text)
    own = slave_self(text, int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0)))
    return text if own is None else own


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


def _escapes_refused(root: str | os.PathLike[str], request: Any, call: Callable[[], _T]) -> _T:
    """``call()``, with the kernel's ``EXDEV`` (an escape) as :class:`EscapeError`."""
    try:
        return call()
    except OSError as exc:
        if exc.errno == errno_module.EXDEV and not isinstance(exc, EscapeError):
            raise EscapeError(getattr(request, "path", "?"), root) from None
        raise


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
    there through ``..`` or a symlink — and ``OSError`` as ``open`` does
    (``ELOOP`` for a ``/proc`` magic link). The descriptor is always
    close-on-exec in the master; the shim sets the slave's own flag.

    The open is :func:`libc_service.perform`'s (the slave's credentials and
    umask, the exact path), except that it never waits: a FIFO opened here
    does not wait for its other end (a write open without a reader fails
    with ``ENXIO``), since an ``int`` cannot be awaited. Use
    ``perform(request, beneath=root)`` for the exact blocking behaviour.
    """
    from .perform import open_descriptor

    resolve_bits = 0
    if flags is None:
        flags, resolve_bits = open_flags(request.flags)
    elif flags & os.O_PATH:
        flags = (flags | os.O_CLOEXEC) & _O_PATH_FLAGS
    else:
        flags |= os.O_CLOEXEC | os.O_NOCTTY
    if mode is None:
        mode = getattr(request, "mode", None) or 0
    chosen_flags, chosen_mode = flags, mode
    return _escapes_refused(
        root,
        request,
        lambda: open_descriptor(request, os.fspath(root), chosen_flags, chosen_mode, resolve_bits=resolve_bits),
    )


def stat_beneath(root: str | os.PathLike[str], request: Any) -> Stat:
    """Answer ``stat``/``lstat`` for a path beneath ``root`` from the object itself.

    ``lstat`` of a symlink describes the link; ``stat`` follows it, but only
    to a target beneath ``root``. This is ``perform(request, beneath=root)``
    with an escape reported as :class:`EscapeError`.
    """
    from .perform import perform

    result = _escapes_refused(root, request, lambda: perform(request, beneath=root))
    assert isinstance(result, replies.Stat)
    return result


def parent_beneath(
    root: str | os.PathLike[str],
    request: Any,
    *,
    path: PurePosixPath | None = None,
    dirfd: int | None = None,
) -> tuple[int, str]:
    """Open the parent directory of a path beneath ``root``: ``(dirfd, name)``.

    Mutate with the ``*at`` form on the returned descriptor, e.g.
    ``os.mkdir(name, mode, dir_fd=parent)``; close it afterwards. The final
    component is never ``.`` or ``..``, and is not followed: ``unlink`` of a
    symlink removes the link. For ``rename`` call it once per side, with
    ``path=request.path1, dirfd=request.dirfd1`` and then ``path2``/``dirfd2``.
    """
    if path is None and not hasattr(request, "path"):
        raise TypeError(
            f"parent_beneath() of a {request.function!r} request needs path= and dirfd= "
            "(for rename: path1/dirfd1, then path2/dirfd2)"
        )
    from .perform import same_root_and_mounts

    same_root_and_mounts(request)
    absolute = resolve(request, path=path, dirfd=dirfd)
    if absolute is None:
        raise EscapeError(path or getattr(request, "path", "?"), root)
    relative = relative_to_root(root, absolute)
    parent, _, name = relative.rstrip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise EscapeError(absolute, root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _escapes_refused(
            root,
            request,
            lambda: open_resolved(
                root_fd,
                parent or ".",
                os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                0,
                RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
            ),
        )
    finally:
        os.close(root_fd)
    return fd, name
