"""The filesystem calls done as the slave: open, stat, access, mkdir, rmdir, unlink, rename, metadata changes.

Each resolves the slave's path with :mod:`libc_service.acting.target` and
runs as the slave with :mod:`libc_service.acting.identity`. An open adds
``O_NONBLOCK`` (cleared afterwards unless the slave asked for it), so a
terminal or device never stalls the event loop; a FIFO opened blocking is
opened on a daemon thread the loop awaits, and released by opening its
other end when the wait is cancelled. Mutations use the ``*at`` call on
the last name in the parent opened as the path resolves; a followed
metadata change acts on the master's descriptor of the very object.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import fcntl
import logging
import os
import stat as stat_module
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from libc_service.kernel import libc as kernel

from libc_service.acting import beneath as safepath_beneath

from libc_service.acting import slavewalk
from libc_service.acting.identity import Switch, as_slave, on_thread, running_loop, switch_for
from libc_service.acting.target import AT_FDCWD, check_beneath, open_at, open_parent, path_target, same_root_and_mounts
from libc_service.acting.statx import stat_of
from libc_service.policy.rendezvous import Rendezvous
from libc_service.protocol.outcomes import WithFds

if TYPE_CHECKING:
    from libc_service.protocol.replies import Stat

__all__ = [
    "installable",
    "open_descriptor",
    "perform_access",
    "perform_fd_metadata",
    "perform_metadata",
    "perform_mkdir",
    "perform_open",
    "perform_rename",
    "perform_rmdir",
    "perform_stat",
    "perform_unlink",
]

#: Named as the module that documents these calls, where a policy's logging looks for them.
logger = logging.getLogger("libc_service.acting.perform")

_AT_EACCESS: Final = 0x200
_AT_EMPTY_PATH: Final = 0x1000
_RENAME_NOREPLACE: Final = 1
_O_PATH_FLAGS: Final = safepath_beneath.O_PATH_FLAGS
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)


# ----------------------------------------------------------------- open


@dataclass(frozen=True)
class _Fifo:
    """A FIFO the slave opens blocking: the ``O_PATH`` descriptor of the very object."""

    path_fd: int
    flags: int


def _open_flags(request: Any) -> tuple[int, int, bool]:
    """The master's flags for the slave's open, its resolve bits, whether it asked for O_NONBLOCK."""
    flags, resolve_bits = safepath_beneath.open_flags(request.flags)
    return flags, resolve_bits, bool(flags & os.O_NONBLOCK)


def perform_open(request: Any, root: str | None) -> Any:
    flags, resolve_bits, nonblocking = _open_flags(request)
    mode = int(getattr(request, "mode", None) or 0)
    creates = safepath_beneath.takes_mode(flags)
    switch = switch_for(request, creates=creates)
    opened = as_slave(switch, lambda: _open_now(request, root, flags, mode, resolve_bits, nonblocking, fifo_wait=True))
    if isinstance(opened, int):
        return WithFds(opened, [opened])
    return _open_fifo(opened, switch)


def open_descriptor(
    request: Any,
    root: str | None,
    flags: int,
    mode: int,
    *,
    resolve_bits: int = 0,
) -> int:
    """Open the request's path with explicit ``flags``, never blocking (for :mod:`safepath`).

    A FIFO opened this way does not wait for its other end: a read open
    returns at once and a write open without a reader fails with ``ENXIO``.
    """
    nonblocking = bool(flags & os.O_NONBLOCK)
    same_root_and_mounts(request)
    slavewalk.prepare()
    switch = switch_for(request, creates=safepath_beneath.takes_mode(flags))
    fd = as_slave(switch, lambda: _open_now(request, root, flags, mode, resolve_bits, nonblocking, fifo_wait=False))
    assert isinstance(fd, int)
    return fd


def _open_now(
    request: Any,
    root: str | None,
    flags: int,
    mode: int,
    resolve_bits: int,
    nonblocking: bool,
    *,
    fifo_wait: bool,
) -> int | _Fifo:
    """The open itself, as the slave; a :class:`_Fifo` when it must wait for the other end."""
    with path_target(request, request.path, getattr(request, "dirfd", None), root) as where:
        if flags & os.O_PATH:
            return open_at(where, flags & _O_PATH_FLAGS, 0, resolve_bits)
        accmode = flags & os.O_ACCMODE
        may_wait = (
            fifo_wait
            and not nonblocking
            and accmode != os.O_RDWR
            and not flags & (os.O_DIRECTORY | os.O_EXCL)
            and flags & _O_TMPFILE != _O_TMPFILE
        )
        if may_wait:
            # Look before opening: even a non-blocking open of a FIFO is seen
            # by a process blocked at its other end.
            try:
                path_fd = open_at(where, os.O_PATH | os.O_CLOEXEC | (flags & os.O_NOFOLLOW), 0, resolve_bits)
            except OSError:
                path_fd = -1  # not there (yet): the real open says why, or creates it
            if path_fd >= 0:
                try:
                    is_fifo = stat_module.S_ISFIFO(os.fstat(path_fd).st_mode)
                except BaseException:
                    os.close(path_fd)
                    raise
                if is_fifo:
                    return _Fifo(path_fd, flags & ~(os.O_CREAT | os.O_NOFOLLOW | os.O_TRUNC))
                os.close(path_fd)
        fd = open_at(where, flags | os.O_NONBLOCK, mode, resolve_bits)
        if not nonblocking:
            try:
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
        return fd


def _open_fifo(fifo: _Fifo, switch: Switch | None) -> Any:
    """Open a FIFO blocking, without blocking a running event loop."""
    reopen = f"/proc/self/fd/{fifo.path_fd}"

    def blocking_open() -> int:
        return os.open(reopen, fifo.flags & ~os.O_NONBLOCK)

    if running_loop() is None:
        try:
            fd = as_slave(switch, blocking_open)
        finally:
            os.close(fifo.path_fd)
        return WithFds(fd, [fd])
    return Rendezvous(_await_fifo(fifo, switch, blocking_open))


async def _await_fifo(fifo: _Fifo, switch: Switch | None, blocking_open: Callable[[], int]) -> WithFds:
    lock = threading.Lock()
    state: dict[str, Any] = {"done": False, "peer": -1}

    def opener() -> int:
        try:
            return blocking_open()
        finally:
            with lock:
                state["done"] = True
                if state["peer"] >= 0:
                    os.close(state["peer"])
                os.close(fifo.path_fd)

    def release() -> None:
        # Open the other end without blocking, through the master's own O_PATH
        # descriptor of the same FIFO; keep it open until the thread is out.
        with lock:
            if state["done"]:
                return
            other = os.O_WRONLY if fifo.flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDONLY
            for mode in (os.O_RDWR, other):
                try:
                    state["peer"] = os.open(f"/proc/self/fd/{fifo.path_fd}", mode | os.O_NONBLOCK | os.O_CLOEXEC)
                    return
                except OSError as exc:
                    failure = exc
            logger.warning("cannot release a thread blocked opening a FIFO (%s); it waits for a peer", failure)

    fd = await on_thread(switch, opener, discard=os.close, cancel=release)
    return WithFds(fd, [fd])


def installable(request: Any, fd: int) -> int:
    """A descriptor of ``fd``'s object that another process can be given: ``fd`` itself, or a new one.

    The seccomp transport installs descriptors with ``SECCOMP_IOCTL_NOTIF_ADDFD``,
    which refuses an ``O_PATH`` descriptor (``EBADF``). An ``O_PATH``
    descriptor of a directory or a regular file is reopened read-only from
    the very object (through the master's descriptor, so no name is walked
    again) with the slave's credentials: it then also lists or reads what
    the slave may list or read, which the policy's conditions count an
    ``O_PATH`` open as (it writes nothing). Of any other object — a
    symlink, a FIFO, a socket, a device, whose open is not free of effects
    or not possible — no such descriptor exists: ``EOPNOTSUPP`` (which is
    also what glibc's ``fchmodat(AT_SYMLINK_NOFOLLOW)`` says of a symlink
    after its ``O_PATH`` open). A new descriptor is the caller's to close;
    ``fd`` stays the caller's either way.
    """
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        return fd
    mode = os.fstat(fd).st_mode
    if stat_module.S_ISDIR(mode):
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    elif stat_module.S_ISREG(mode):
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    else:
        raise OSError(errno_module.EOPNOTSUPP, "an O_PATH descriptor of this kind of file cannot be installed")
    reopened = as_slave(switch_for(request), lambda: os.open(f"/proc/self/fd/{fd}", flags))
    if flags & os.O_NONBLOCK:
        os.set_blocking(reopened, True)
    return reopened


# ------------------------------------------------------------ stat, access


def perform_stat(request: Any, root: str | None) -> Stat:
    no_follow = os.O_NOFOLLOW if request.function == "lstat" else 0
    return as_slave(switch_for(request), lambda: _stat_now(request, root, no_follow))


def _stat_now(request: Any, root: str | None, no_follow: int) -> Stat:
    with path_target(request, request.path, request.dirfd, root) as where:
        fd = open_at(where, os.O_PATH | os.O_CLOEXEC | no_follow)
    try:
        return stat_of(fd)
    finally:
        os.close(fd)


def perform_access(request: Any, root: str | None) -> int:
    amode = 0
    if request.amode != "f":
        amode = sum({"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}[name] for name in request.amode)
    effective = request.function == "eaccess"
    switch = switch_for(request, real_ids=not effective)
    return as_slave(switch, lambda: _access_now(request, root, amode, effective))


def _access_now(request: Any, root: str | None, amode: int, effective: bool) -> int:
    with path_target(request, request.path, request.dirfd, root) as where:
        fd = open_at(where, os.O_PATH | os.O_CLOEXEC)
    try:
        if amode == 0:
            return 0  # F_OK: it exists, the open found it
        flags = _AT_EMPTY_PATH | (_AT_EACCESS if effective else 0)
        try:
            kernel.call("faccessat2", ctypes.c_int(fd), b"", ctypes.c_int(amode), ctypes.c_int(flags))
        except OSError as exc:
            if exc.errno not in (errno_module.ENOSYS, errno_module.EINVAL):
                raise OSError(exc.errno, os.strerror(exc.errno or 0), str(request.path)) from None
            # Linux < 5.8: the same object through the master's own descriptor.
            if not os.access(f"/proc/self/fd/{fd}", amode, effective_ids=effective):
                raise OSError(errno_module.EACCES, os.strerror(errno_module.EACCES), str(request.path)) from None
        return 0
    finally:
        os.close(fd)


# ------------------------------------------------------------ mutations


def perform_mkdir(request: Any, root: str | None) -> int:
    def mkdir(parent: int, name: str) -> None:
        os.mkdir(name, request.mode, dir_fd=parent)

    return as_slave(switch_for(request, creates=True), lambda: _in_parent(request, root, mkdir))


def perform_rmdir(request: Any, root: str | None) -> int:
    return as_slave(switch_for(request), lambda: _in_parent(request, root, lambda p, n: os.rmdir(n, dir_fd=p)))


def perform_unlink(request: Any, root: str | None) -> int:
    return as_slave(switch_for(request), lambda: _in_parent(request, root, lambda p, n: os.unlink(n, dir_fd=p)))


def _in_parent(request: Any, root: str | None, change: Callable[[int, str], None]) -> int:
    with path_target(request, request.path, request.dirfd, root) as where:
        parent, name = open_parent(where)
    try:
        change(parent, name)
    finally:
        os.close(parent)
    return 0


def perform_rename(request: Any, root: str | None) -> int:
    return as_slave(switch_for(request), lambda: _rename_now(request, root))


def _rename_now(request: Any, root: str | None) -> int:
    with path_target(request, request.path1, request.dirfd1, root) as old:
        old_parent, old_name = open_parent(old)
    try:
        with path_target(request, request.path2, request.dirfd2, root) as new:
            new_parent, new_name = open_parent(new)
        try:
            if getattr(request, "no_replace", False):
                kernel.call(
                    "renameat2",
                    ctypes.c_int(old_parent),
                    os.fsencode(old_name),
                    ctypes.c_int(new_parent),
                    os.fsencode(new_name),
                    ctypes.c_uint(_RENAME_NOREPLACE),
                )
            else:
                os.rename(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent)
        finally:
            os.close(new_parent)
    finally:
        os.close(old_parent)
    return 0


# ------------------------------------------------------------ metadata changes

_AT_SYMLINK_NOFOLLOW: Final = 0x100
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2
_NS: Final = 1_000_000_000
_Change = Callable[[int, bytes, int], int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_call(name: str, *args: Any) -> int:
    """A libc function (a ``-1`` with errno becomes ``OSError``)."""
    result = int(getattr(kernel.libc, name)(*args))
    if result < 0:
        raise kernel.last_error()
    return result


def _times(request: Any) -> Any:
    """The request's atime and mtime as utimensat's ``struct timespec[2]``."""
    specs = (_Timespec * 2)()
    for spec, value in zip(specs, (request.atime, request.mtime)):
        if value == "now":
            spec.tv_nsec = _UTIME_NOW
        elif value == "omit":
            spec.tv_nsec = _UTIME_OMIT
        else:
            spec.tv_sec, spec.tv_nsec = divmod(int(value), _NS)
    return specs


def _metadata_change(request: Any) -> _Change:
    """``change(dirfd, name, at_flags)``: the request's ``*at`` call on one name."""
    function = request.function.removeprefix("f")
    if function == "chmod":
        mode = int(request.mode)
        return lambda fd, name, flags: _libc_call(
            "fchmodat", ctypes.c_int(fd), name, ctypes.c_uint(mode), ctypes.c_int(flags)
        )
    if function == "chown":
        owner = 0xFFFFFFFF if request.owner is None else int(request.owner)
        group = 0xFFFFFFFF if request.group is None else int(request.group)
        return lambda fd, name, flags: _libc_call(
            "fchownat", ctypes.c_int(fd), name, ctypes.c_uint(owner), ctypes.c_uint(group), ctypes.c_int(flags)
        )
    times = _times(request)
    return lambda fd, name, flags: _libc_call("utimensat", ctypes.c_int(fd), name, times, ctypes.c_int(flags))


def perform_metadata(request: Any, root: str | None) -> int:
    change = _metadata_change(request)
    return as_slave(switch_for(request), lambda: _metadata_now(request, root, change))


def _metadata_now(request: Any, root: str | None, change: _Change) -> int:
    with path_target(request, request.path, request.dirfd, root) as where:
        if request.no_follow and not where.text.endswith("/"):
            # The final name itself, never followed: an *at call on it in
            # its parent (opened as the slave's path is resolved).
            parent, name = open_parent(where)
            try:
                change(parent, os.fsencode(name), _AT_SYMLINK_NOFOLLOW)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(request.path)) from None
            finally:
                os.close(parent)
            return 0
        # Followed: the object the slave's path leads to, found with the
        # kernel's rules (beneath a root, no magic links), then changed
        # through the master's own descriptor of it.
        fd = open_at(where, os.O_PATH | os.O_CLOEXEC)
    try:
        change(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), 0)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(request.path)) from None
    finally:
        os.close(fd)
    return 0


def perform_fd_metadata(request: Any, root: str | None) -> int:
    fd = int(request.fd)
    if root is not None:
        check_beneath(fd, root)
    function = request.function
    arguments: tuple[Any, ...]
    if function == "fchmod":
        arguments = (ctypes.c_uint(request.mode),)
    elif function == "fchown":
        owner = 0xFFFFFFFF if request.owner is None else int(request.owner)
        group = 0xFFFFFFFF if request.group is None else int(request.group)
        arguments = (ctypes.c_uint(owner), ctypes.c_uint(group))
    else:
        arguments = (_times(request),)
    as_slave(switch_for(request), lambda: _libc_call(function, ctypes.c_int(fd), *arguments))
    return 0
