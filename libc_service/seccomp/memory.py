"""Reading the slave: its memory, its descriptors, what ``/proc`` says about the calling thread.

Every read here may wait as long as the slave likes (a page nobody serves,
a mapping of a slow filesystem), so it runs on a receiver or worker thread,
never the loop (:mod:`libc_service.seccomp.session` bounds it). Reads are
bounded in size and never cross a page boundary; what the kernel would
answer for a bad pointer or a missing descriptor is raised as
:class:`~libc_service.seccomp.abi.Refuse`, a thread that went away as
:class:`~libc_service.seccomp.abi.Gone`.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import threading
from dataclasses import dataclass
from typing import Final

from libc_service.kernel import libc as kernel
from libc_service.kernel.descriptors import close_fds
from libc_service.seccomp.abi import SYS_KCMP, SYS_PIDFD_GETFD, Gone, Refuse

__all__ = [
    "AT_FDCWD",
    "PAGE",
    "PATH_MAX",
    "Fetched",
    "ThreadStatus",
    "read_memory",
    "read_string",
    "slave_cloexec",
    "thread_status",
    "write_memory",
]

AT_FDCWD: Final = -100
PATH_MAX: Final = 4096
PAGE: Final = 4096
_KCMP_FILES: Final = 2
_PIDFD_THREAD: Final = 0o200  # O_EXCL


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


# Own function objects (``libc[name]``): the argtypes below stay this module's.
_process_vm_readv = kernel.libc["process_vm_readv"]
_process_vm_writev = kernel.libc["process_vm_writev"]
for _function in (_process_vm_readv, _process_vm_writev):
    _function.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    _function.restype = ctypes.c_ssize_t


class _ReadVectors(threading.local):
    """The reads' buffer and vectors, made once per reading thread."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(PAGE)
        self.local = _IOVec(ctypes.addressof(self.buffer), PAGE)
        self.remote = _IOVec(0, 0)


_VECTORS: Final = _ReadVectors()
#: A first read this long finds most paths' NUL without copying a page.
_FIRST_READ: Final = 256


def read_memory(tid: int, address: int, size: int) -> bytes:
    """Up to ``size`` (at most a page) bytes of the thread's memory at ``address``; fewer at an unmapped page."""
    vectors = _VECTORS
    vectors.local.length = size
    vectors.remote.base = address
    vectors.remote.length = size
    got = _process_vm_readv(tid, ctypes.byref(vectors.local), 1, ctypes.byref(vectors.remote), 1, 0)
    if got < 0:
        code = ctypes.get_errno()
        if code == errno_module.ESRCH:
            raise Gone
        raise Refuse(errno_module.EFAULT)
    return ctypes.string_at(vectors.buffer, got)


def read_string(tid: int, address: int, limit: int = PATH_MAX) -> bytes:
    """A NUL-terminated string (without the NUL), read a page (at first a little) at a time.

    ``EFAULT`` for a bad pointer, ``ENAMETOOLONG`` without a NUL within
    ``limit`` bytes: what the kernel would answer. A read never crosses a
    page boundary, so a string ending just before an unmapped page is read.
    """
    if address == 0 or address >= 2**64:
        raise Refuse(errno_module.EFAULT)
    collected = b""
    while len(collected) < limit:
        at = address + len(collected)
        chunk = min(PAGE - at % PAGE, limit - len(collected), _FIRST_READ if not collected else PAGE)
        data = read_memory(tid, at, chunk)
        end = data.find(b"\0")
        if end >= 0:
            return collected + data[:end]
        if len(data) < chunk:
            raise Refuse(errno_module.EFAULT)
        collected += data
    raise Refuse(errno_module.ENAMETOOLONG)


def write_memory(tid: int, address: int, data: bytes) -> None:
    buffer = ctypes.create_string_buffer(data, len(data))
    local = _IOVec(ctypes.cast(buffer, ctypes.c_void_p), len(data))
    remote = _IOVec(address, len(data))
    if _process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != len(data):
        raise Refuse(errno_module.EFAULT)


@dataclass(frozen=True, slots=True)
class ThreadStatus:
    """What ``/proc/TID/status`` says about the calling thread."""

    pid: int
    umask: int | None
    fsuid: int | None
    fsgid: int | None
    groups: tuple[int, ...] | None


def thread_status(tid: int) -> ThreadStatus:
    """Read ``/proc/TID/status`` (costly: the kernel renders it whole) and pick five fields."""
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Gone from None
    except OSError:
        raise Refuse(errno_module.EPERM) from None
    try:
        text = os.read(fd, 16384)
    except OSError:
        raise Gone from None
    finally:
        os.close(fd)
    try:
        pid = int(_status_field(text, b"\nTgid:"))
        umask_text = _status_field(text, b"\nUmask:")
        umask = int(umask_text, 8) if umask_text else None
        fsuid = int(_status_field(text, b"\nUid:").split()[3])
        fsgid = int(_status_field(text, b"\nGid:").split()[3])
        group_ids = tuple(map(int, _status_field(text, b"\nGroups:").split()))
    except (IndexError, ValueError):
        raise Refuse(errno_module.EPERM) from None
    groups = group_ids if len(group_ids) <= 64 and all(g < 2**32 for g in group_ids) else None
    return ThreadStatus(pid, umask, fsuid, fsgid, groups)


def _status_field(text: bytes, name: bytes) -> bytes:
    """The value of the ``name`` line (``b""`` when absent, as Umask is before Linux 4.7)."""
    start = text.find(name)
    if start < 0:
        return b""
    start += len(name)
    end = text.find(b"\n", start)
    return text[start : end if end >= 0 else len(text)]


def _thread_pidfd(tid: int, pid: int) -> int:
    """A pidfd whose ``pidfd_getfd`` reads the calling thread's own descriptor table.

    A thread made with ``CLONE_THREAD`` but not ``CLONE_FILES`` has a table
    of its own: the kernel resolves its descriptors there, not in the
    thread-group leader's. ``PIDFD_THREAD`` (Linux 6.9) names the thread
    itself. Before it, the leader's pidfd is used only when ``kcmp``
    (``KCMP_FILES``) says the two share one table; otherwise the call cannot
    be decided exactly and is refused with ``EPERM``.
    """
    try:
        return os.pidfd_open(tid, _PIDFD_THREAD)
    except ProcessLookupError:
        raise Gone from None
    except OSError as exc:
        if exc.errno != errno_module.EINVAL:
            raise Refuse(errno_module.EPERM) from None
    if tid != pid and kernel.syscall(SYS_KCMP, pid, tid, _KCMP_FILES, 0, 0) != 0:
        raise Refuse(errno_module.EPERM)
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise Gone from None


class Fetched:
    """Descriptors copied from the slave for one call: owned until its reply went out."""

    __slots__ = ("thread", "tid", "fds", "_pidfd")

    def __init__(self, tid: int, thread: ThreadStatus) -> None:
        self.tid = tid
        self.thread = thread
        self.fds: list[int] = []
        self._pidfd = -1

    def slave_fd(self, number: int) -> int:
        """A copy of the slave's descriptor ``number`` (``EBADF`` when it has none)."""
        if number < 0 or number >= 2**31:
            raise Refuse(errno_module.EBADF)
        if self._pidfd < 0:
            self._pidfd = _thread_pidfd(self.tid, self.thread.pid)
        fd = kernel.syscall(SYS_PIDFD_GETFD, self._pidfd, number, 0)
        if fd < 0:
            code = ctypes.get_errno()
            raise Gone if code == errno_module.ESRCH else Refuse(errno_module.EBADF)
        self.fds.append(fd)
        return int(fd)

    def directory(self, dirfd: int, path: bytes) -> int | None:
        """The directory a relative ``path`` starts from (``None`` for an absolute one)."""
        if path.startswith(b"/"):
            return None
        if dirfd == AT_FDCWD:
            try:
                fd = os.open(f"/proc/{self.tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise Gone from None
            except OSError as exc:
                raise Refuse(exc.errno or errno_module.EACCES) from None
            self.fds.append(fd)
            return fd
        return self.slave_fd(dirfd)

    def close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def close(self) -> None:
        self.close_pidfd()
        fds, self.fds = self.fds, []
        close_fds(fds)


def slave_cloexec(tid: int, number: int) -> bool:
    """Whether the thread's descriptor ``number`` has close-on-exec (from its own ``fdinfo``; ``False`` if unreadable)."""
    try:
        with open(f"/proc/{tid}/fdinfo/{number}", "rb") as file:
            for line in file:
                if line.startswith(b"flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except (OSError, ValueError):
        pass
    return False
