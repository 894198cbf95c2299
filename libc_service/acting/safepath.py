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
:func:`libc_service.acting.perform`, which does the call as the slave would have
(its credentials and umask, the exact path, never blocking the event loop).

Where ``openat2`` is missing (Linux < 5.6, or a seccomp filter refuses it)
the same rules are enforced by walking the path one component at a time
with ``O_NOFOLLOW`` from the root's descriptor (see ``_walk_beneath``).

Races: every helper returns or works on a *descriptor* the kernel resolved
beneath the root, so whatever the slave swaps in afterwards, the object
the handler passes back or mutates through is the one that was checked.
"""

from __future__ import annotations

import errno as errno_module
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from libc_service.protocol import replies  # loaded on first use (libc_service/__init__.py)
from libc_service.acting.perform import perform
from libc_service.acting.files import open_descriptor
from libc_service.acting.target import same_root_and_mounts, slave_self
from libc_service.acting.beneath import (
    O_PATH_FLAGS,
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    open_resolved,
)
from libc_service.acting.beneath import RESOLVE_IN_ROOT as RESOLVE_IN_ROOT
from libc_service.acting.beneath import RESOLVE_NO_SYMLINKS as RESOLVE_NO_SYMLINKS
from libc_service.acting.beneath import RESOLVE_NO_XDEV as RESOLVE_NO_XDEV
from libc_service.acting.beneath import EscapeError as EscapeError
from libc_service.acting.beneath import open_flags as open_flags
from libc_service.acting.beneath import relative_to_root as relative_to_root
from libc_service.policy.slavepath import exact_name, join_to_directory

if TYPE_CHECKING:
    from libc_service.protocol.replies import Stat

__all__ = [
    "EscapeError",
    "open_beneath",
    "parent_beneath",
    "relative_to_root",
    "resolve",
    "stat_beneath",
]

_T = TypeVar("_T")


def resolve(request: Any, *, path: PurePosixPath | None = None, dirfd: int | None = None) -> str | None:
    """The absolute path a request's slave meant, or ``None`` if unknowable.

    Uses the request's ``path`` and ``dirfd`` unless given. The text is the
    slave's, not normalised: a trailing slash stays (it makes the kernel
    insist on a directory) and ``..`` stays for the kernel to resolve (after
    ``link/`` it goes to the parent of the link's *target*, which no string
    fold knows). A relative path is joined to the kernel's name of the
    directory behind ``dirfd``; only the ``..`` that begin it are folded into
    that name, which is canonical (see ``slavepath.join_to_directory``). ``/proc/self``, ``/proc/thread-self``,
    ``/dev/fd/N`` and ``/dev/stdin|stdout|stderr`` become ``/proc/<pid>/…``
    of the requesting process and thread (``EACCES`` when the request has no
    pid). ``None`` for an abstract socket name, a relative path without a
    directory, and a directory that was removed (it has no name; perform()
    still resolves through its descriptor).
    """
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

    The open is :func:`libc_service.acting.perform`'s (the slave's credentials and
    umask, the exact path), except that it never waits: a FIFO opened here
    does not wait for its other end (a write open without a reader fails
    with ``ENXIO``), since an ``int`` cannot be awaited. Use
    ``perform(request, beneath=root)`` for the exact blocking behaviour.
    """
    resolve_bits = 0
    if flags is None:
        flags, resolve_bits = open_flags(request.flags)
    elif flags & os.O_PATH:
        flags = (flags | os.O_CLOEXEC) & O_PATH_FLAGS
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
