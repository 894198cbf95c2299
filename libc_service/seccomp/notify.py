"""The seccomp user-notification transport: the same Router, below libc.

The shim sees only calls made through libc's exported symbols. A static
binary, a raw ``syscall()``, or the opens libc and the loader make
themselves (``dlopen``, NSS reading ``/etc/passwd``, locale files) never
reach it. With ``spawn(..., seccomp=True)`` (``libc-service run
--seccomp``) the program also runs under a seccomp filter
(:mod:`.notify_filter`) that suspends each arbitrated system call and
queues it on a *listener* descriptor the master reads:

1. **Handoff.** The filter is installed in the forked child just before
   ``exec`` (``SECCOMP_FILTER_FLAG_NEW_LISTENER``); the child sends the
   listener to the parent over a socketpair (``SCM_RIGHTS``,
   ``MSG_DONTWAIT``) and closes its copy. Nothing the child does after
   installing the filter is notified, so it cannot wait on the master
   (which is still inside ``fork``/``exec`` until the program runs); the
   parent waits for the listener at most :data:`HANDOFF_TIMEOUT` seconds.
2. **Requests.** Each notification becomes the same typed request the shim's
   calls become (``OpenRequest``, ``StatRequest``, ...): strings are read
   from the thread's memory with ``process_vm_readv`` on the thread that
   received the notification, never the loop's, and bounded (memory may
   make a reader wait; see :class:`SeccompSession`), a ``dirfd`` is
   copied with ``pidfd_getfd`` from the calling thread's own descriptor
   table (``AT_FDCWD``: the thread's working
   directory, opened ``O_PATH`` through ``/proc/TID/cwd``), ``pid``, umask and
   filesystem credentials come from ``/proc/TID/status``. Only then is
   ``SECCOMP_IOCTL_NOTIF_ID_VALID`` asked: the notification still pending
   means the thread is still blocked in that call, so what was read came
   from it and not from a process that reused its id. The request goes
   through the router's public :meth:`~libc_service.Router.decide`.
3. **Replies.** ``FORWARD`` continues the call in the kernel
   (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``); an errno fails it; a descriptor
   for ``open`` is installed in the slave with ``SECCOMP_IOCTL_NOTIF_ADDFD``
   and ``SECCOMP_ADDFD_FLAG_SEND`` (installing and answering in one step,
   ``O_CLOEXEC`` as the slave asked); one for ``connect``/``bind`` replaces
   the slave's socket (``SECCOMP_ADDFD_FLAG_SETFD``, keeping its
   close-on-exec flag) before the result is sent; a ``Stat`` is written
   into the slave's buffer in the kernel's ``struct stat`` (or
   ``struct statx``) layout with ``process_vm_writev``, after a last
   ``ID_VALID``.

``FORWARD`` is only as safe as the sandbox: a continued call is performed
by the kernel with the slave's own authority, reading its arguments again
from the slave's memory, which another of its threads may have changed
since the master read them. Landlock still confines that call; without a
sandbox it is unconfined (``docs/security.md``).

The shim stays preloaded for ``getaddrinfo``, which is no system call; its
other calls are answered ``FORWARD`` without asking the router
(:func:`shim_relay`), so that each call is decided exactly once, when
it reaches the kernel, whoever made it (the program, libc, the shim).

Handlers can tell the transports apart with :func:`current_transport`;
observers with :attr:`Decision.transport <libc_service.policy.router.Decision.transport>`.
"""

from __future__ import annotations

import array
import contextvars
import dataclasses
import ctypes
import errno as errno_module
import fcntl
import functools
import inspect
import ipaddress
import logging
import os
import posixpath
import socket
import stat as stat_module
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from pydantic import ValidationError

from libc_service.kernel import libc as kernel

from libc_service.kernel import readiness
from libc_service.endpoints.master import close_fds
from libc_service.acting.files import installable
from libc_service.policy.rendezvous import WAITING
from libc_service.seccomp.filter import NOTIFIED, build_notify_filter, notified_numbers
from libc_service.kernel.offloop import BoundedWorkers, Stalled
from libc_service.protocol.replies import Stat
from libc_service.protocol.catalogue import UNIX_PATH_MAX
from libc_service.protocol.requests import REQUEST_TYPES, Request, exact_path
from libc_service.policy.router import FORWARD, Decision, Transport, WithFds, named_directories
from libc_service.policy.slavepath import exact_name

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.policy.router import Router
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["SeccompUnavailable", "current_transport", "seccomp_unavailable"]

logger = logging.getLogger(__name__)

#: Seconds the parent waits for the child's listener after the program started.
HANDOFF_TIMEOUT: Final = 5.0
#: Seconds a read or write of a slave's memory may take (a page nobody serves,
#: a mapping of a slow filesystem) before its call fails with ``EFAULT``.
MEMORY_BOUND: Final = 10.0

# ------------------------------------------------------------------ kernel ABI

# The transport runs on x86_64 only (see seccomp_unavailable).
_SYS_SECCOMP: Final = kernel.SYSCALLS["x86_64"]["seccomp"]
_SYS_PIDFD_GETFD: Final = kernel.SYSCALLS["x86_64"]["pidfd_getfd"]
_SYS_KCMP: Final = kernel.SYSCALLS["x86_64"]["kcmp"]
_KCMP_FILES: Final = 2
_PIDFD_THREAD: Final = 0o200  # O_EXCL
_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_GET_ACTION_AVAIL: Final = 2
_FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5
_RET_USER_NOTIF: Final = 0x7FC00000
_PR_SET_NO_NEW_PRIVS: Final = 38

# ioctl requests: _IOWR('!', 0, struct seccomp_notif) and friends.
_NOTIF_RECV: Final = 0xC0502100
_NOTIF_SEND: Final = 0xC0182101
_NOTIF_ID_VALID: Final = 0x40082102
_NOTIF_ADDFD: Final = 0x40182103
_NOTIF_SET_FLAGS: Final = 0x40082104
_FD_SYNC_WAKE_UP: Final = 1
_FLAG_CONTINUE: Final = 1
_ADDFD_FLAG_SETFD: Final = 1
_ADDFD_FLAG_SEND: Final = 2

#: struct seccomp_notif: id, pid, flags, then seccomp_data (nr, arch, ip, args[6]).
_NOTIF: Final = struct.Struct("<QIIiIQ6Q")
#: struct seccomp_notif_resp: id, val, error, flags.
_RESP: Final = struct.Struct("<QqiI")
#: struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags.
_ADDFD: Final = struct.Struct("<QIIII")
_ID: Final = struct.Struct("<Q")
_INT: Final = struct.Struct("i")

_AT_FDCWD: Final = -100
_AT_SYMLINK_NOFOLLOW: Final = 0x100
_AT_REMOVEDIR: Final = 0x200
_AT_EACCESS: Final = 0x200
_AT_NO_AUTOMOUNT: Final = 0x800
_AT_EMPTY_PATH: Final = 0x1000
_AT_STATX_SYNC_TYPE: Final = 0x6000
_RENAME_NOREPLACE: Final = 1
_PATH_MAX: Final = 4096
_PAGE: Final = 4096
_SOCKADDR_MAX: Final = 128

# Open flags as the kernel sees them on x86_64 (userspace O_LARGEFILE is 0 there).
_O_ACCMODE: Final = 0o3
_O_CREAT: Final = 0o100
_O_TRUNC: Final = 0o1000
_O_CLOEXEC: Final = 0o2000000
_O_SYNC: Final = 0o4010000
_O_DSYNC: Final = 0o10000
_O_TMPFILE: Final = 0o20200000
_O_DIRECTORY: Final = 0o200000
_OPEN_FLAG_NAMES: Final[tuple[tuple[int, str], ...]] = (
    (0o200, "exclusive"),
    (0o400, "no_ctty"),
    (0o1000, "truncate"),
    (0o2000, "append"),
    (0o4000, "non_blocking"),
    (0o20000, "async_signals"),
    (0o40000, "direct"),
    (0o100000, "large_file"),
    (0o400000, "no_follow"),
    (0o1000000, "no_atime"),
    (_O_CLOEXEC, "close_on_exec"),
    (0o10000000, "path"),
    (_O_CREAT, "create"),
)
_O_KNOWN: Final = sum(bit for bit, _ in _OPEN_FLAG_NAMES) | _O_ACCMODE | _O_SYNC | _O_TMPFILE
_ACCESS_MODE_NAMES: Final = ("read_only", "write_only", "read_write")
_RESOLVE_NAMES: Final[tuple[tuple[int, str], ...]] = (
    (0x01, "resolve_no_xdev"),
    (0x02, "resolve_no_magiclinks"),
    (0x04, "resolve_no_symlinks"),
    (0x08, "resolve_beneath"),
    (0x10, "resolve_in_root"),
    (0x20, "resolve_cached"),
)
_OPEN_HOW_SIZE: Final = 24

#: struct stat on x86_64: dev, ino, nlink, mode, uid, gid, pad, rdev, size,
#: blksize, blocks, atime, atime_nsec, mtime, mtime_nsec, ctime, ctime_nsec, 3 unused.
_STAT: Final = struct.Struct("<QQQIIIiQqqqqqqqqq24x")
#: struct statx (256 bytes): mask, blksize, attributes, nlink, uid, gid, mode,
#: spare, ino, size, blocks, attributes_mask, atime/btime/ctime/mtime
#: (sec, nsec, reserved), rdev major/minor, dev major/minor, mnt_id, then spare.
_STATX: Final = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIIIQ104x")
_STATX_BASIC_STATS: Final = 0x7FF
_STATX_BTIME: Final = 0x800
_STATX_MNT_ID: Final = 0x1000
_STATX_MNT_ID_UNIQUE: Final = 0x4000

_libc = kernel.libc
_syscall = kernel.syscall


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


# Own function objects (``libc[name]``): the argtypes below stay this module's.
_process_vm_readv = _libc["process_vm_readv"]
_process_vm_writev = _libc["process_vm_writev"]
_getsockopt = _libc["getsockopt"]
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_connect = _libc["connect"]
_bind = _libc["bind"]
for _function in (_connect, _bind):
    _function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

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


class SeccompUnavailable(RuntimeError):
    """The kernel cannot run the seccomp transport (or the listener never arrived)."""


def seccomp_unavailable() -> str | None:
    """Why the seccomp transport cannot work here, or ``None`` when it can.

    Needs x86_64, Linux 5.14+ (``SECCOMP_ADDFD_FLAG_SEND``; ``pidfd_getfd``
    is 5.6) and ``SECCOMP_RET_USER_NOTIF`` available.
    """
    if notified_numbers() is None:
        return "the seccomp transport supports x86_64 only"
    release = os.uname().release.split("-")[0].split(".")
    try:
        version = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        version = (0, 0)
    if version < (5, 14):
        return f"the seccomp transport needs Linux 5.14+ (SECCOMP_ADDFD_FLAG_SEND), not {os.uname().release}"
    action = ctypes.c_uint32(_RET_USER_NOTIF)
    if _syscall(_SYS_SECCOMP, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) != 0:
        return f"the kernel has no SECCOMP_RET_USER_NOTIF ({os.strerror(ctypes.get_errno())})"
    return None


# ----------------------------------------------------------------- transport

_TRANSPORT: Final[contextvars.ContextVar[Transport]] = contextvars.ContextVar("libc_service_transport", default="shim")


def current_transport() -> Transport:
    """How the request being decided reached the master: ``"shim"`` or ``"seccomp"``.

    For handlers (requests carry no transport field: the models are the
    same, so one policy serves both). A handler may want to know because
    ``FORWARD`` means different things: the shim does the call itself with
    the arguments the handler saw, while a continued seccomp call is done
    by the kernel, which reads its arguments again from the slave's memory.
    """
    return _TRANSPORT.get()


# ------------------------------------------------------------------- handoff


class ListenerHandoff:
    """Built in the parent before the fork; installs the filter in the child; receives the listener.

    Everything that can fail or allocate is prepared here: the BPF program,
    its ``sock_fprog`` and the socketpair. The child only calls ``prctl``,
    ``seccomp`` and ``sendmsg`` (with ``MSG_DONTWAIT``), none of which the
    new filter notifies and none of which can block.
    """

    def __init__(self) -> None:
        reason = seccomp_unavailable()
        if reason is not None:
            raise SeccompUnavailable(f"cannot use --seccomp: {reason}")
        self._program = ctypes.create_string_buffer(build_notify_filter())
        self._prog = ctypes.create_string_buffer(
            struct.pack("<HxxxxxxQ", len(self._program.raw) // 8, ctypes.addressof(self._program))
        )
        self._parent, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._message = [b"k"]
        self._failed = [b"-"]

    def install_in_child(self) -> None:
        """Runs between fork and exec, last: install the filter and send the listener.

        After the filter is in place nothing here may make a notified call
        (the parent would serve it only after ``exec``): no imports, no file
        access. A failure is written to stderr and stops the ``exec``.
        """
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            self._fail("prctl(PR_SET_NO_NEW_PRIVS)")
        message = self._message
        flags = _FILTER_FLAG_NEW_LISTENER | _FILTER_FLAG_WAIT_KILLABLE_RECV
        listener = _syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, flags, self._prog)
        if listener < 0 and ctypes.get_errno() == errno_module.EINVAL:
            # Before Linux 5.19: no WAIT_KILLABLE_RECV; a signal may then restart a notified call.
            message = self._failed
            listener = _syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _FILTER_FLAG_NEW_LISTENER, self._prog)
        if listener < 0:
            self._fail("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)")
        try:
            self._child.sendmsg(
                message,
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _INT.pack(listener))],
                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
            )
        finally:
            os.close(listener)

    def launch_steps(self) -> tuple[list[str], list[int]]:
        """What :meth:`install_in_child` does, as the launcher's steps (:mod:`libc_service.processes.launching`), and its descriptor."""
        fd = self._child.fileno()
        return [f"h={fd}:{self._program.raw[:-1].hex()}", f"x={fd}"], [fd]

    def _fail(self, what: str) -> None:
        error = kernel.last_error(what)
        try:
            os.write(2, f"libc-service: cannot install the seccomp listener: {error.strerror}\n".encode())
        except OSError:
            pass
        raise error

    async def receive(self, timeout: float = HANDOFF_TIMEOUT) -> tuple[int, bool]:
        """The listener descriptor and whether received calls are killable only.

        Called once the program runs (its ``exec`` succeeded, so the child
        sent the listener before). Raises :class:`SeccompUnavailable` when
        nothing arrives within ``timeout`` seconds.
        """
        self._child.close()
        sock = self._parent
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                data, ancdata, flags, _ = sock.recvmsg(16, socket.CMSG_SPACE(2 * _INT.size), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise SeccompUnavailable(
                        f"the program did not hand over its seccomp listener within {timeout:g} s"
                    ) from None
                await readiness.readable(sock.fileno(), remaining)
                continue
            if not data and not ancdata:
                raise SeccompUnavailable("the program closed the handoff without sending its seccomp listener")
            fds = [
                fd
                for level, kind, raw in ancdata
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for fd in array.array("i", raw[: len(raw) - len(raw) % _INT.size])
            ]
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 1 or data not in (b"k", b"-"):
                close_fds(fds)
                raise SeccompUnavailable("the program sent a malformed seccomp listener handoff")
            return fds[0], data == b"k"

    def close(self) -> None:
        """Close both ends of the socketpair (idempotent)."""
        self._parent.close()
        self._child.close()


# ------------------------------------------------------------ slave memory


class _Gone(Exception):
    """The notification is no longer pending (the thread died or was interrupted)."""


class _Refuse(Exception):
    """Answer the call with this errno without asking the router (what the kernel would say; 0: success)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Continue(Exception):
    """Continue the call unasked: only for sockets of domains no request models (netlink, packet ...)."""


class _ReadVectors(threading.local):
    """The reads' buffer and vectors, made once per reading thread."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(_PAGE)
        self.local = _IOVec(ctypes.addressof(self.buffer), _PAGE)
        self.remote = _IOVec(0, 0)


_VECTORS: Final = _ReadVectors()
#: A first read this long finds most paths' NUL without copying a page.
_FIRST_READ: Final = 256


def _read_memory(tid: int, address: int, size: int) -> bytes:
    """Up to ``size`` (at most a page) bytes of the thread's memory at ``address``; fewer at an unmapped page."""
    vectors = _VECTORS
    vectors.local.length = size
    vectors.remote.base = address
    vectors.remote.length = size
    got = _process_vm_readv(tid, ctypes.byref(vectors.local), 1, ctypes.byref(vectors.remote), 1, 0)
    if got < 0:
        code = ctypes.get_errno()
        if code == errno_module.ESRCH:
            raise _Gone
        raise _Refuse(errno_module.EFAULT)
    return ctypes.string_at(vectors.buffer, got)


def _read_string(tid: int, address: int, limit: int = _PATH_MAX) -> bytes:
    """A NUL-terminated string (without the NUL), read a page (at first a little) at a time.

    ``EFAULT`` for a bad pointer, ``ENAMETOOLONG`` without a NUL within
    ``limit`` bytes: what the kernel would answer. A read never crosses a
    page boundary, so a string ending just before an unmapped page is read.
    """
    if address == 0 or address >= 2**64:
        raise _Refuse(errno_module.EFAULT)
    collected = b""
    while len(collected) < limit:
        at = address + len(collected)
        chunk = min(_PAGE - at % _PAGE, limit - len(collected), _FIRST_READ if not collected else _PAGE)
        data = _read_memory(tid, at, chunk)
        end = data.find(b"\0")
        if end >= 0:
            return collected + data[:end]
        if len(data) < chunk:
            raise _Refuse(errno_module.EFAULT)
        collected += data
    raise _Refuse(errno_module.ENAMETOOLONG)


def _write_memory(tid: int, address: int, data: bytes) -> None:
    buffer = ctypes.create_string_buffer(data, len(data))
    local = _IOVec(ctypes.cast(buffer, ctypes.c_void_p), len(data))
    remote = _IOVec(address, len(data))
    if _process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != len(data):
        raise _Refuse(errno_module.EFAULT)


@dataclass(frozen=True, slots=True)
class _Thread:
    """What ``/proc/TID/status`` says about the calling thread."""

    pid: int
    umask: int | None
    fsuid: int | None
    fsgid: int | None
    groups: tuple[int, ...] | None


def _thread_status(tid: int) -> _Thread:
    """Read ``/proc/TID/status`` (costly: the kernel renders it whole) and pick five fields."""
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Gone from None
    except OSError:
        raise _Refuse(errno_module.EPERM) from None
    try:
        text = os.read(fd, 16384)
    except OSError:
        raise _Gone from None
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
        raise _Refuse(errno_module.EPERM) from None
    groups = group_ids if len(group_ids) <= 64 and all(g < 2**32 for g in group_ids) else None
    return _Thread(pid, umask, fsuid, fsgid, groups)


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
        raise _Gone from None
    except OSError as exc:
        if exc.errno != errno_module.EINVAL:
            raise _Refuse(errno_module.EPERM) from None
    if tid != pid and _syscall(_SYS_KCMP, pid, tid, _KCMP_FILES, 0, 0) != 0:
        raise _Refuse(errno_module.EPERM)
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise _Gone from None


class _Fetched:
    """Descriptors copied from the slave for one call: owned until its reply went out."""

    __slots__ = ("thread", "tid", "fds", "_pidfd")

    def __init__(self, tid: int, thread: _Thread) -> None:
        self.tid = tid
        self.thread = thread
        self.fds: list[int] = []
        self._pidfd = -1

    def slave_fd(self, number: int) -> int:
        """A copy of the slave's descriptor ``number`` (``EBADF`` when it has none)."""
        if number < 0 or number >= 2**31:
            raise _Refuse(errno_module.EBADF)
        if self._pidfd < 0:
            self._pidfd = _thread_pidfd(self.tid, self.thread.pid)
        fd = _syscall(_SYS_PIDFD_GETFD, self._pidfd, number, 0)
        if fd < 0:
            code = ctypes.get_errno()
            raise _Gone if code == errno_module.ESRCH else _Refuse(errno_module.EBADF)
        self.fds.append(fd)
        return int(fd)

    def directory(self, dirfd: int, path: bytes) -> int | None:
        """The directory a relative ``path`` starts from (``None`` for an absolute one)."""
        if path.startswith(b"/"):
            return None
        if dirfd == _AT_FDCWD:
            try:
                fd = os.open(f"/proc/{self.tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise _Gone from None
            except OSError as exc:
                raise _Refuse(exc.errno or errno_module.EACCES) from None
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


# ------------------------------------------------------------ notifications


@dataclass(frozen=True, slots=True)
class _Notification:
    id: int
    tid: int
    nr: int
    args: tuple[int, ...]


#: What the reply to a request needs besides the request: the stat buffer
#: (address, "stat" or "statx"), the slave's socket number.
@dataclass(frozen=True, slots=True)
class _Context:
    stat_buffer: tuple[int, Literal["stat", "statx"]] | None = None
    socket_number: int | None = None
    statx_mask: int = 0


_BY_NUMBER: Final = {number: name for name, number in NOTIFIED.items()}
#: The request functions each system call of the common families may become
#: (:func:`_decode`): when the router forwards them all unasked, a receiver
#: continues the call at once (``SeccompSession._continue_unasked``).
_FUNCTIONS_OF: Final = {
    NOTIFIED[name]: functions
    for names, functions in (
        (("stat", "lstat", "newfstatat", "statx"), ("stat", "lstat")),
        (("open", "openat", "openat2", "creat"), ("open", "openat")),
        (("access", "faccessat", "faccessat2"), ("access", "eaccess")),
    )
    for name in names
    if name in NOTIFIED
}


def _signed(value: int) -> int:
    """A register as the kernel's ``int`` argument sees it (dirfds, descriptors)."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _open_fields(flags: int, mode: int, resolve: int, strict: bool) -> dict[str, Any]:
    if flags & _O_ACCMODE == _O_ACCMODE:
        raise _Refuse(errno_module.EINVAL)  # "3" (ioctl-only access): no request says it; never continued
    unknown = flags & ~_O_KNOWN & 0xFFFFFFFF
    if unknown and strict:
        raise _Refuse(errno_module.EINVAL)
    names = {_ACCESS_MODE_NAMES[flags & _O_ACCMODE]}
    names.update(name for bit, name in _OPEN_FLAG_NAMES if flags & bit)
    if flags & _O_SYNC == _O_SYNC:
        names.add("sync_all_on_write")
    elif flags & _O_DSYNC:
        names.add("sync_data_on_write")
    if flags & _O_TMPFILE == _O_TMPFILE:
        names.add("temporary")
    elif flags & _O_DIRECTORY:
        names.add("directory")
    for bit, name in _RESOLVE_NAMES:
        if resolve & bit:
            names.add(name)
    if resolve & ~0x3F:
        raise _Refuse(errno_module.EINVAL)
    takes_mode = "create" in names or "temporary" in names
    if strict and mode and not takes_mode:
        raise _Refuse(errno_module.EINVAL)
    return {"flags": frozenset(names), "mode": (mode & 0o7777) if takes_mode else None}


def _decode(notification: _Notification, fetched: _Fetched) -> tuple[dict[str, Any], _Context]:
    """The request's fields for one notification; raises ``_Refuse``/``_Continue``/``_Gone``."""
    name = _BY_NUMBER[notification.nr]
    args = notification.args
    tid = notification.tid

    def path_at(dirfd_arg: int | None, path_arg: int) -> dict[str, Any]:
        raw = _read_string(tid, args[path_arg])
        if not raw:
            raise _Refuse(errno_module.ENOENT)
        dirfd = fetched.directory(_AT_FDCWD if dirfd_arg is None else _signed(args[dirfd_arg]), raw)
        return {"path": os.fsdecode(raw), "dirfd": dirfd}

    if name in ("open", "openat", "openat2"):
        dirfd_arg, path_arg = (None, 0) if name == "open" else (0, 1)
        if name == "openat2":
            size = args[3]
            if size < _OPEN_HOW_SIZE:
                raise _Refuse(errno_module.EINVAL)
            if size > _PAGE:
                raise _Refuse(errno_module.E2BIG)
            how = _read_memory(tid, args[2], size)
            if len(how) < size:
                raise _Refuse(errno_module.EFAULT)
            if how[_OPEN_HOW_SIZE:].strip(b"\0"):
                raise _Refuse(errno_module.E2BIG)
            flags, mode, resolve = struct.unpack_from("<QQQ", how)
            if flags >= 2**32 or mode >= 2**12:
                raise _Refuse(errno_module.EINVAL)
            fields = _open_fields(flags, mode, resolve, strict=True)
        else:
            flag_arg = 1 if name == "open" else 2
            fields = _open_fields(args[flag_arg] & 0xFFFFFFFF, args[flag_arg + 1], 0, strict=False)
        fields |= path_at(dirfd_arg, path_arg)
        plain = dirfd_arg is None or _signed(args[dirfd_arg]) == _AT_FDCWD
        resolving = any(flag.startswith("resolve_") for flag in fields["flags"])
        fields["function"] = "open" if plain and not resolving else "openat"
        return fields, _Context()
    if name in ("stat", "lstat", "newfstatat", "statx"):
        layout: Literal["stat", "statx"]
        if name in ("stat", "lstat"):
            follow, where, buffer, layout = name == "stat", path_at(None, 0), args[1], "stat"
        else:
            flag_arg = 3 if name == "newfstatat" else 2
            flags = args[flag_arg] & 0xFFFFFFFF
            allowed = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | _AT_EMPTY_PATH
            if name == "statx":
                allowed |= _AT_STATX_SYNC_TYPE
            if flags & ~allowed:
                raise _Refuse(errno_module.EINVAL)
            follow = not flags & _AT_SYMLINK_NOFOLLOW
            where = path_at(0, 1)
            buffer, layout = (args[2], "stat") if name == "newfstatat" else (args[4], "statx")
        mask = args[3] & 0xFFFFFFFF if name == "statx" else 0
        return {"function": "stat" if follow else "lstat", **where}, _Context(
            stat_buffer=(buffer, layout), statx_mask=mask
        )
    if name in ("access", "faccessat", "faccessat2"):
        mode_arg = 1 if name == "access" else 2
        amode = args[mode_arg] & 0xFFFFFFFF
        if amode & ~0o7:
            raise _Refuse(errno_module.EINVAL)
        flags = args[3] & 0xFFFFFFFF if name == "faccessat2" else 0
        if flags & ~(_AT_EACCESS | _AT_SYMLINK_NOFOLLOW | _AT_EMPTY_PATH):
            raise _Refuse(errno_module.EINVAL)
        if flags & (_AT_SYMLINK_NOFOLLOW | _AT_EMPTY_PATH):
            # No request says "do not follow" for access: refused as a kernel
            # without faccessat2 would, so glibc answers it with a stat, decided.
            raise _Refuse(errno_module.ENOSYS)
        modes = "f" if amode == 0 else frozenset(m for bit, m in ((4, "r"), (2, "w"), (1, "x")) if amode & bit)
        where = path_at(None, 0) if name == "access" else path_at(0, 1)
        return {"function": "eaccess" if flags & _AT_EACCESS else "access", "amode": modes, **where}, _Context()
    if name in ("mkdir", "mkdirat"):
        where = path_at(None, 0) if name == "mkdir" else path_at(0, 1)
        mode = args[1 if name == "mkdir" else 2] & 0o7777
        return {"function": "mkdir", "mode": mode, **where}, _Context()
    if name in ("unlink", "rmdir", "unlinkat"):
        if name == "unlinkat":
            flags = args[2] & 0xFFFFFFFF
            if flags & ~_AT_REMOVEDIR:
                raise _Refuse(errno_module.EINVAL)
            return {"function": "rmdir" if flags else "unlink", **path_at(0, 1)}, _Context()
        return {"function": name, **path_at(None, 0)}, _Context()
    if name in ("rename", "renameat", "renameat2"):
        flags = args[4] & 0xFFFFFFFF if name == "renameat2" else 0
        if flags & ~_RENAME_NOREPLACE:
            raise _Refuse(errno_module.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT: as a filesystem without them
        if name == "rename":
            first, second = path_at(None, 0), path_at(None, 1)
        else:
            first, second = path_at(0, 1), path_at(2, 3)
        return {
            "function": "rename",
            "path1": first["path"],
            "dirfd1": first["dirfd"],
            "path2": second["path"],
            "dirfd2": second["dirfd"],
            "no_replace": bool(flags),
        }, _Context()
    if name == "creat":
        fields = _open_fields(_O_CREAT | _O_TRUNC | 1, args[1], 0, strict=False) | path_at(None, 0)
        return fields | {"function": "open"}, _Context()
    if name in _METADATA_CALLS:
        return _metadata_fields(name, notification, fetched, path_at), _Context()
    return _socket_fields(name, notification, fetched)


#: The metadata changes, notified and decided as ``chmod``/``chown``/``utimens`` and their ``f*`` forms.
_METADATA_CALLS: Final = frozenset(
    {"chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat"}
    | {"utime", "utimes", "futimesat", "utimensat"}
)
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2


def _metadata_fields(
    name: str, notification: _Notification, fetched: _Fetched, path_at: Callable[[int | None, int], dict[str, Any]]
) -> dict[str, Any]:
    """The request for a metadata change: ``chmod``/``chown``/``utimens`` on a path, ``f*`` on a descriptor."""
    args = notification.args
    tid = notification.tid
    kind = "chmod" if "chmod" in name else "chown" if "chown" in name else "utimens"
    # Where the call's path, dirfd and flags are: (dirfd, path, flags) argument indexes.
    at = {
        "chmod": (None, 0, None),
        "chown": (None, 0, None),
        "lchown": (None, 0, None),
        "utime": (None, 0, None),
        "utimes": (None, 0, None),
        "fchmodat": (0, 1, None),
        "fchmodat2": (0, 1, 3),
        "fchownat": (0, 1, 4),
        "futimesat": (0, 1, None),
        "utimensat": (0, 1, 3),
    }
    values: dict[str, Any]
    if kind == "chmod":
        values = {"mode": args[1 if name in ("chmod", "fchmod") else 2] & 0o7777}
    elif kind == "chown":
        first = 1 if name in ("chown", "fchown", "lchown") else 2
        owner, group = (args[first] & 0xFFFFFFFF, args[first + 1] & 0xFFFFFFFF)
        values = {"owner": None if owner == 0xFFFFFFFF else owner, "group": None if group == 0xFFFFFFFF else group}
    else:
        values = dict(zip(("atime", "mtime"), _new_times(name, tid, args[{"utime": 1, "utimes": 1}.get(name, 2)])))
    if name in ("fchmod", "fchown"):
        return {"function": f"f{kind}", "fd": fetched.slave_fd(_signed(args[0])), **values}
    dirfd_arg, path_arg, flag_arg = at[name]
    flags = args[flag_arg] & 0xFFFFFFFF if flag_arg is not None else 0
    if flags & ~(_AT_SYMLINK_NOFOLLOW | _AT_EMPTY_PATH):
        raise _Refuse(errno_module.EINVAL)
    empty = False
    if name in ("futimesat", "utimensat") and args[path_arg] == 0:
        empty = True  # a NULL path: the call acts on the descriptor (futimens)
        if flags & _AT_SYMLINK_NOFOLLOW:
            raise _Refuse(errno_module.EINVAL)
    elif flags & _AT_EMPTY_PATH and not _read_string(tid, args[path_arg]):
        empty = True
    if empty:
        assert dirfd_arg is not None
        dirfd = _signed(args[dirfd_arg])
        if dirfd == _AT_FDCWD:
            raise _Refuse(errno_module.EPERM)  # the working directory itself: no request names it
        return {"function": f"f{kind}", "fd": fetched.slave_fd(dirfd), **values}
    no_follow = name == "lchown" or bool(flags & _AT_SYMLINK_NOFOLLOW)
    return {"function": kind, "no_follow": no_follow, **values, **path_at(dirfd_arg, path_arg)}


def _new_times(name: str, tid: int, address: int) -> tuple[int | str, int | str]:
    """The new access and modification times of a ``utime`` family call, as ``TimeSpec`` values."""
    if address == 0:
        return "now", "now"
    size = {"utime": 16, "utimes": 32, "futimesat": 32}.get(name, 32)
    raw = _read_memory(tid, address, size)
    if len(raw) < size:
        raise _Refuse(errno_module.EFAULT)
    if name == "utime":
        access, modification = (seconds * 10**9 for seconds in struct.unpack("<qq", raw))
        if not (-(2**63) <= access < 2**63 and -(2**63) <= modification < 2**63):
            raise _Refuse(errno_module.EINVAL)
        return access, modification
    first, first_part, second, second_part = struct.unpack("<qqqq", raw)
    times: list[int | str] = []
    for sec, part in ((first, first_part), (second, second_part)):
        if name == "utimensat" and part in (_UTIME_NOW, _UTIME_OMIT):
            times.append("now" if part == _UTIME_NOW else "omit")
            continue
        scale = 1 if name == "utimensat" else 1000
        if not 0 <= part < 10**9 // scale:
            raise _Refuse(errno_module.EINVAL)
        ns = sec * 10**9 + part * scale
        if not -(2**63) <= ns < 2**63:
            raise _Refuse(errno_module.EINVAL)
        times.append(ns)
    return times[0], times[1]


def _socket_fields(name: str, notification: _Notification, fetched: _Fetched) -> tuple[dict[str, Any], _Context]:
    """connect/bind: the socket's own domain decides the request, never the address's bytes.

    The kernel reads the address as the socket's domain says (``SO_DOMAIN``
    of the descriptor, which the slave cannot change), whatever family the
    bytes claim, and reads it again when a call is continued. So a unix,
    IPv4 or IPv6 socket is never continued unasked: an address the request
    models express is decided by the router; any other (a family that does
    not match the socket, ``AF_UNSPEC``, a short length, unix autobind) is
    given to the kernel by the master itself, on its copy of the slave's
    socket with its copy of the bytes (:func:`_on_the_slaves_socket`), so the
    answer is the kernel's (``EINVAL``, ``EAFNOSUPPORT``, a disconnect, an
    autobind) and nothing the slave writes afterwards is read. Sockets of
    other domains (netlink, packet, vsock ...) are not arbitrated, as with
    the shim, and are continued.
    """
    args = notification.args
    length = args[2] & 0xFFFFFFFF
    if length > _SOCKADDR_MAX:
        raise _Refuse(errno_module.EINVAL)
    raw = b""
    if length:
        raw = _read_memory(notification.tid, args[1], length)
        if len(raw) < length:
            raise _Refuse(errno_module.EFAULT)
    number = _signed(args[0])
    sock = fetched.slave_fd(number)
    try:
        if not stat_module.S_ISSOCK(os.fstat(sock).st_mode):
            raise _Refuse(errno_module.ENOTSOCK)
        domain = _socket_domain(sock)
    except OSError:
        raise _Refuse(errno_module.EBADF) from None
    if domain not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        raise _Continue  # netlink, packet, vsock ...: the kernel reads the address as this domain's
    family = int.from_bytes(raw[:2], "little") if length >= 2 else -1
    fields = _address_fields(name, domain, family, raw, fetched)
    if fields is None:
        raise _Refuse(_on_the_slaves_socket(name, sock, raw))
    fields["socket"] = sock
    return fields, _Context(socket_number=number)


def _address_fields(name: str, domain: int, family: int, raw: bytes, fetched: _Fetched) -> dict[str, Any] | None:
    """The request's fields for an address of ``family`` on a socket of ``domain``; ``None``: no request says it."""
    length = len(raw)
    if domain == socket.AF_UNIX:
        if family != socket.AF_UNIX or length == 2:
            return None  # a mismatch (EINVAL), AF_UNSPEC (a datagram disconnect), autobind
        sun_path = raw[2:]
        if sun_path[0] != 0:
            sun_path = sun_path.split(b"\0", 1)[0]
            if not sun_path:
                raise _Refuse(errno_module.EINVAL)
        fields: dict[str, Any] = {"path": os.fsdecode(sun_path), "function": f"{name}_unix"}
        if sun_path[0] != 0 and not sun_path.startswith(b"/"):
            fields["dirfd"] = fetched.directory(_AT_FDCWD, sun_path)
        return fields
    inet_bind_any = (
        # inet_bind() takes AF_UNSPEC with INADDR_ANY as AF_INET (an old compatibility rule).
        domain == socket.AF_INET and name == "bind" and family == socket.AF_UNSPEC and raw[4:8] == bytes(4)
    )
    if (family == socket.AF_INET or inet_bind_any) and length >= 16:
        return {
            "port": int.from_bytes(raw[2:4], "big"),
            "address": ipaddress.IPv4Address(raw[4:8]),
            "function": f"{name}_inet",
        }
    if domain == socket.AF_INET6 and family == socket.AF_INET6 and length >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        scope = int.from_bytes(raw[24:28], "little") if length >= 28 else 0
        return {
            "port": int.from_bytes(raw[2:4], "big"),
            "address": ipaddress.IPv6Address(f"{address}%{scope}") if scope else address,
            "function": f"{name}_inet6",
        }
    return None  # the kernel refuses it (EINVAL, EAFNOSUPPORT) or disconnects (AF_UNSPEC)


def _socket_domain(fd: int) -> int:
    """``SO_DOMAIN`` of the socket ``fd``."""
    value = ctypes.c_int(-1)
    size = ctypes.c_uint32(ctypes.sizeof(value))
    if _getsockopt(fd, socket.SOL_SOCKET, socket.SO_DOMAIN, ctypes.byref(value), ctypes.byref(size)) != 0:
        raise kernel.last_error()
    return value.value


def _on_the_slaves_socket(name: str, fd: int, raw: bytes) -> int:
    """Do ``connect``/``bind`` of ``raw`` on the master's copy of the slave's socket: the call's errno (0: done).

    Only for addresses no request expresses (see :func:`_address_fields`):
    the kernel refuses them, or disconnects (``AF_UNSPEC``), or autobinds
    a unix socket — none of which blocks or reaches a name. The copy is the
    slave's open socket itself, so what the kernel does, it does to the
    slave's socket, and the bytes are the master's, which the slave cannot
    change.
    """
    buffer = ctypes.create_string_buffer(raw, max(len(raw), 1))
    call = _connect if name == "connect" else _bind
    if call(fd, buffer, len(raw)) == 0:
        return 0
    return ctypes.get_errno() or errno_module.EINVAL


def _stat_bytes(result: Stat, layout: Literal["stat", "statx"], mask: int = 0) -> bytes:
    """``result`` as the caller's ``struct stat`` or ``struct statx`` (``mask``: what statx asked for).

    As the kernel does, statx reports the birth time when it was asked for
    and the mount id unless the unique one was.
    """
    times = []
    for ns in (result.atime, result.mtime, result.ctime, result.btime or 0):
        times += [ns // 10**9, ns % 10**9]
    if layout == "stat":
        return _STAT.pack(
            result.dev,
            result.ino,
            result.nlink,
            result.st_mode,
            result.uid,
            result.gid,
            0,
            result.rdev,
            result.size,
            result.blksize,
            result.blocks,
            *times[:6],
        )
    got = _STATX_BASIC_STATS
    btime = (0, 0, 0)
    if result.btime is not None and mask & _STATX_BTIME:
        got |= _STATX_BTIME
        btime = (times[6], times[7], 0)
    mnt_id = 0
    if result.mnt_id is not None and not mask & _STATX_MNT_ID_UNIQUE:
        got |= _STATX_MNT_ID
        mnt_id = result.mnt_id
    atime, mtime, ctime = ((times[i], times[i + 1], 0) for i in (0, 2, 4))
    return _STATX.pack(
        got,
        result.blksize & 0xFFFFFFFF,
        result.attributes,
        result.nlink & 0xFFFFFFFF,
        result.uid,
        result.gid,
        result.st_mode,
        0,
        result.ino,
        result.size & (2**64 - 1),
        result.blocks & (2**64 - 1),
        result.attributes_mask,
        *atime,
        *btime,
        *ctime,
        *mtime,
        os.major(result.rdev),
        os.minor(result.rdev),
        os.major(result.dev),
        os.minor(result.dev),
        mnt_id,
    )


# --------------------------------------------------------------- the session


class SeccompSession:
    """Serves one listener (every process under the filter) with a router.

    Notifications are received on receiver threads, which also read each
    call's arguments from the slave (its memory may make a read wait: the
    loop never touches it), and decided on the loop, in the callback that
    receives them from the thread; a call whose handler waits continues in
    a task. With ``router.concurrent`` up to ``router.max_in_flight`` calls
    are in the master at once, else one: past that the receivers wait and
    the callers wait in the kernel.
    """

    def __init__(
        self,
        listener: int,
        router: Router,
        *,
        killable: bool = True,
        name: str = "seccomp",
        own_files: Sequence[str] = (),
        own_trees: Sequence[str] = (),
        continue_connect: bool = True,
    ) -> None:
        self._fd = listener
        #: False under a sandbox without network: a ``connect`` is never continued (``EACCES`` instead), as
        #: the socket it names may be a unix one that the kernel would connect unchecked (:mod:`.socket_filter`).
        self._refused_nr = -1 if continue_connect else NOTIFIED["connect"]
        #: What loading the program needs — the shim, the loader's cache, the
        #: program's interpreter and libraries (``own_files``), the system's
        #: library directories and, under a sandbox, its static trees
        #: (``own_trees``): a read-only open, a stat or a non-writing access
        #: of an absolute, normalised path there is answered without asking
        #: the router, as the shim never asks about the loader's opens (it
        #: does not see them) nor about its static trees. A policy cannot be
        #: expected to know them, and a sandbox grants them by itself.
        #: The master does such a call itself, on the path it read (a
        #: continued call would read the path again, after another thread
        #: may have changed it), and an open only when the file it opened is
        #: one of them by its own name (a symlink leading elsewhere goes to
        #: the router).
        self.own_files = frozenset(own_files)
        self.own_trees = tuple(tree.rstrip("/") + "/" for tree in own_trees if tree.startswith("/"))
        self._own_objects = self.own_files | {os.path.realpath(file) for file in self.own_files}
        self._own_object_trees = tuple(
            dict.fromkeys(self.own_trees + tuple(os.path.realpath(tree).rstrip("/") + "/" for tree in self.own_trees))
        )
        self.router = router
        self.name = name
        #: Whether a received call ignores non-fatal signals (Linux 5.19+).
        self.killable = killable
        self._limit = router.max_in_flight if router.concurrent else 1
        self._tasks: set[asyncio.Task[None]] = set()
        #: Tasks whose call waits for another party (a Rendezvous): they do not count against the limit.
        self._waiting: set[asyncio.Task[None]] = set()
        self._first_step_waits = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The context :meth:`serve` runs in (the process tree's, with its name scope): the receivers
        #: hand calls to the loop in it, as a thread's own context has none of the tree's values.
        self._context: contextvars.Context | None = None
        self._done: asyncio.Future[None] | None = None
        #: Seconds a read or write of a slave's memory may take before its call fails with ``EFAULT``.
        self.memory_bound = MEMORY_BOUND
        self._workers: BoundedWorkers | None = None
        #: Calls received and not yet answered (or handed to a task): the receivers
        #: take one before each receipt, so at most ``_limit`` are in the master.
        self._slots = threading.Semaphore(self._limit)
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()
        #: Receipts being prepared on receiver threads, with their deadlines.
        self._in_flight: dict[int, _Receipt] = {}
        #: Stats being written by workers on their own (notification id -> answer, deadline, tid).
        self._writes: dict[int, tuple[_Answer, float, int]] = {}
        self._receivers = 0
        self._watchdog: asyncio.TimerHandle | None = None
        #: Calls decided, and calls dropped because their thread went away.
        self.calls = 0
        self.dropped = 0
        try:
            fcntl.ioctl(listener, _NOTIF_SET_FLAGS, bytearray(_ID.pack(_FD_SYNC_WAKE_UP)), True)
        except OSError:
            pass  # before Linux 6.6: ordinary wake-ups

    @property
    def closed(self) -> bool:
        """Whether the listener is closed."""
        return self._fd < 0

    async def serve(self) -> None:
        """Serve until every process under the filter has exited, or :meth:`close`."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._context = contextvars.copy_context()
        self._workers = BoundedWorkers(loop, self.name, self.memory_bound)
        self._done = loop.create_future()
        self._start_receiver()
        self._watchdog = loop.call_later(self.memory_bound / 4, self._watch)
        try:
            await self._done
        finally:
            self.close()
            await self._receivers_left(_RECEIVERS_LEAVE)

    async def _receivers_left(self, bound: float) -> None:
        """Wait, at most ``bound`` seconds, until every receiver has closed its copy of the listener.

        Woken by :meth:`close`, receivers leave on their own threads; a
        caller that counts its descriptors after the session (or closes the
        tree) must not find their copies still open. A receiver stuck in a
        read of the slave's memory stays until that read returns.
        """
        assert self._loop is not None
        deadline = self._loop.time() + bound
        while self._receivers and self._loop.time() < deadline:
            await asyncio.sleep(0.002)

    def close(self) -> None:
        """Close the listener: calls still waiting in the kernel fail with ``ENOSYS``."""
        with self._lock:  # a memory worker answers through self._fd under the lock
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            os.close(fd)
        # Receivers hold a copy of the listener each: they leave (and close
        # it) once woken, so the listener is released and waiting calls fail.
        # The wake-up is written under the lock: a receiver that leaves
        # claims the eventfd (and closes it) under the same lock, so it is
        # never written after its close nor closed twice.
        with self._lock:
            stop, close_stop = self._stop, False
            if stop >= 0:
                os.eventfd_write(stop, 1)
                if self._receivers == 0:
                    self._stop, close_stop = -1, True
        if close_stop:
            os.close(stop)
        for _ in range(_MAX_RECEIVERS):
            self._slots.release()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._workers is not None:
            self._workers.close()
        for task in list(self._tasks):
            task.cancel()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # ---------------------------------------------------------- receiving

    def _start_receiver(self) -> None:
        """A thread that receives notifications and reads their arguments (see :meth:`_receive`)."""
        with self._lock:
            if self._receivers >= _MAX_RECEIVERS:
                return
            self._receivers += 1
        try:
            listener = os.dup(self._fd)
        except OSError:
            with self._lock:
                self._receivers -= 1
            return
        threading.Thread(target=self._receive, args=(listener,), name=f"{self.name} receiver", daemon=True).start()

    def _receive(self, listener: int) -> None:
        """On a receiver thread: receive a notification, prepare it, hand it to the loop; again.

        The slave's memory is read here, never on the loop: a read that
        waits (a page nobody serves) holds this thread only. The loop's
        watchdog (:meth:`_watch`) fails such a call with ``EFAULT`` past
        the bound and starts another receiver; this one ends when its read
        comes back.
        """
        loop = self._loop
        assert loop is not None
        stop = self._stop
        wanted = {listener: readiness.READABLE, stop: readiness.READABLE}
        buffer = bytearray(_NOTIF.size)
        try:
            while True:
                self._slots.acquire()
                events = readiness.poll_events(wanted)
                if stop in events or self._fd < 0:
                    return
                revents = events.get(listener, 0)
                if not revents & readiness.READABLE:
                    self._slots.release()
                    if revents & readiness.HANG_UP:
                        logger.debug("%s: every process under the filter has exited", self.name)
                        loop.call_soon_threadsafe(self.close)
                        return
                    continue
                buffer[:] = bytes(len(buffer))
                try:
                    fcntl.ioctl(listener, _NOTIF_RECV, buffer, True)
                except OSError as exc:
                    self._slots.release()
                    if exc.errno in (errno_module.ENOENT, errno_module.EINTR):
                        continue  # the caller was killed, or another receiver took it
                    logger.error("%s: receiving a notification failed (%s); closing the listener", self.name, exc)
                    loop.call_soon_threadsafe(self.close)
                    return
                notif_id, tid, _, nr, _, _, *args = _NOTIF.unpack(buffer)
                functions = _FUNCTIONS_OF.get(nr)
                if functions is not None and nr != self._refused_nr and self.router.forwards_unasked(functions):
                    self._continue_unasked(listener, notif_id)
                    continue
                notification = _Notification(notif_id, tid, nr, tuple(args))
                receipt = _Receipt(notification, time.monotonic() + self.memory_bound)
                with self._lock:
                    self._in_flight[notif_id] = receipt
                prepared: _Prepared | BaseException
                try:
                    prepared = self._prepare(notification, listener)
                except BaseException as exc:  # noqa: BLE001 - handed to the loop
                    prepared = exc
                with self._lock:
                    self._in_flight.pop(notif_id, None)
                    abandoned = receipt.abandoned
                if abandoned:  # answered EFAULT meanwhile; another receiver took over
                    if not isinstance(prepared, BaseException):
                        _discard_prepared(prepared)
                    return
                try:
                    loop.call_soon_threadsafe(self._prepared, notification, prepared, context=self._context)
                except RuntimeError:  # the loop is closed
                    if not isinstance(prepared, BaseException):
                        _discard_prepared(prepared)
                    return
        finally:
            os.close(listener)
            with self._lock:
                self._receivers -= 1
                last = self._receivers == 0 and self._fd < 0 and self._stop >= 0
                stop, self._stop = (self._stop, -1) if last else (-1, self._stop)
            if stop >= 0:
                os.close(stop)

    def _continue_unasked(self, listener: int, notif_id: int) -> None:
        """On a receiver thread: continue a call the router forwards whatever its arguments.

        Nothing is read from the slave and the loop is not woken: deciding
        would give ``FORWARD`` and nobody observes it (``Router.forwards_unasked``).
        The reply goes through this receiver's own copy of the listener.
        """
        try:
            fcntl.ioctl(listener, _NOTIF_SEND, bytearray(_RESP.pack(notif_id, 0, 0, _FLAG_CONTINUE)), True)
            counted = "calls"
        except OSError as exc:
            if exc.errno not in (errno_module.ENOENT, errno_module.EINPROGRESS):
                logger.error("%s: continuing a call failed (%s)", self.name, exc)
            counted = "dropped"
        with self._lock:
            setattr(self, counted, getattr(self, counted) + 1)
        self._slots.release()

    def _watch(self) -> None:
        """On the loop, every quarter bound: fail calls whose arguments could not be read in time."""
        now = time.monotonic()
        with self._lock:
            late = [receipt for receipt in self._in_flight.values() if receipt.deadline <= now]
            for receipt in late:
                receipt.abandoned = True
                del self._in_flight[receipt.notification.id]
        for receipt in late:
            logger.warning(
                "%s: reading the arguments of tid %d took more than %g s; failing its call with EFAULT",
                self.name,
                receipt.notification.tid,
                self.memory_bound,
            )
            if self._fd >= 0:
                self._finish_early(receipt.notification, None, errno_module.EFAULT)
            self._slots.release()
            self._start_receiver()  # the stuck one comes back only when its read does
        with self._lock:
            late_writes = [write for write in self._writes.values() if write[1] <= now]
            for answer, _, _ in late_writes:
                del self._writes[answer.id]
        for answer, _, tid in late_writes:
            try:
                if self._answer_once(answer, -errno_module.EFAULT, give_back=True):
                    logger.warning(
                        "%s: writing a stat for tid %d stalled; failing its call with EFAULT", self.name, tid
                    )
            except _Gone:
                pass
        if self._fd >= 0 and self._loop is not None:
            self._watchdog = self._loop.call_later(self.memory_bound / 4, self._watch)

    def _prepare(self, notification: _Notification, listener: int) -> _Prepared:
        """On a receiver thread: everything that reads the slave (its memory may make a read wait).

        Then ``ID_VALID`` (through the receiver's own copy of the listener):
        the call still pending means what was read came from its thread.
        """
        if notification.nr not in _BY_NUMBER:
            raise _Refuse(errno_module.ENOSYS)  # the filter notifies nothing else; be safe anyway
        fetched: _Fetched | None = None
        try:
            fetched = _Fetched(notification.tid, _thread_status(notification.tid))
            fields, context = _decode(notification, fetched)
            fetched.close_pidfd()
            try:
                fcntl.ioctl(listener, _NOTIF_ID_VALID, bytearray(_ID.pack(notification.id)), True)
            except OSError:
                raise _Gone from None
            loading = bool(self.own_files or self.own_trees) and _loading_call(fields, self.own_files, self.own_trees)
            return fields, context, fetched, loading
        except BaseException:
            if fetched is not None:
                fetched.close()
            raise

    def _prepared(self, notification: _Notification, prepared: _Prepared | BaseException) -> None:
        """On the loop: turn the prepared notification into a request (or an immediate answer), and decide it."""
        deciding = False
        try:
            deciding = self._start_deciding(notification, prepared)
        finally:
            if not deciding:
                self._slots.release()

    def _start_deciding(self, notification: _Notification, prepared: _Prepared | BaseException) -> bool:
        """Whether a task now decides the call (it gives its slot back when done)."""
        if self._fd < 0:
            if not isinstance(prepared, BaseException):
                _discard_prepared(prepared)
            return False
        fetched: _Fetched | None = None
        try:
            if isinstance(prepared, BaseException):
                raise prepared
            fields, context, fetched, loading = prepared  # checked valid after reading (_prepare)
            request = _build(fields, notification, fetched.thread)
        except _Gone:
            self._drop(notification, fetched)
            return False
        except _Continue:
            self._finish_early(notification, fetched, None)
            return False
        except _Refuse as refusal:
            self._finish_early(notification, fetched, refusal.code)
            return False
        except Exception:  # noqa: BLE001 - a slave's bytes must never crash the master
            logger.exception("%s: cannot decode %r; failing the call with EINVAL", self.name, notification)
            self._finish_early(notification, fetched, errno_module.EINVAL)
            return False
        # The decision starts here, in the callback: with sync handlers (the
        # common case) it finishes here too, with no task and no wake-up.
        # Only a handler that waits makes a task, which continues it. It
        # runs in a context of its own, where current_transport() is "seccomp".
        answer = _Answer(notification.id)
        coroutine = self._decide(request, context, notification, fetched, loading, answer)
        context_vars = contextvars.copy_context()
        context_vars.run(_TRANSPORT.set, "seccomp")
        context_vars.run(WAITING.set, self._waits_for_a_peer)
        assert self._loop is not None
        if not loading and not self.router.decides_synchronously(request.function):
            # An async handler may decide: it runs in a task from its first step.
            task = self._loop.create_task(coroutine, context=context_vars)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, answer))
            return True
        self._first_step_waits = False
        try:
            first = context_vars.run(coroutine.send, None)
        except StopIteration:
            return answer.detached  # a worker answers it and gives its slot back
        except Exception:  # noqa: BLE001 - a failed reply must not end the session
            logger.exception("%s: answering %r failed", self.name, request)
            return False
        assert self._loop is not None
        task = self._loop.create_task(_continue(coroutine, first), context=context_vars)
        self._tasks.add(task)
        if self._first_step_waits:
            self._first_step_waits = False
            self._waiting.add(task)
            self._slots.release()  # waiting for its peer, it no longer holds a place among the calls decided
        task.add_done_callback(functools.partial(self._finished, answer))
        return True

    def _waits_for_a_peer(self) -> None:
        """A decision now waits for another party (a FIFO's other end): it no longer holds the session."""
        task = asyncio.current_task()
        if task is None or task not in self._tasks:
            self._first_step_waits = True  # in the reader callback: its task is made next
            return
        if task not in self._waiting:
            self._waiting.add(task)
            self._slots.release()  # a receiver may take the next call (the FIFO's other end) meanwhile

    def _finished(self, answer: _Answer, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._waiting:
            self._waiting.discard(task)  # its slot was given back when it began to wait
        elif not (answer.released or answer.detached):  # else the worker that answers gives it back
            self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: answering a call failed", self.name, exc_info=task.exception())

    def _finish_early(self, notification: _Notification, fetched: _Fetched | None, code: int | None) -> None:
        if fetched is not None:
            fetched.close()
        if code is None and notification.nr == self._refused_nr:
            code = errno_module.EACCES
        try:
            if code is None:
                self._send(notification.id, 0, 0, _FLAG_CONTINUE)
            else:
                self._send(notification.id, 0, -code, 0)
        except _Gone:
            self.dropped += 1

    def _drop(self, notification: _Notification, fetched: _Fetched | None) -> None:
        if fetched is not None:
            fetched.close()
        self.dropped += 1
        logger.debug("%s: tid %d went away during its notification", self.name, notification.tid)

    # ----------------------------------------------------------- deciding

    async def _decide(
        self,
        request: Request,
        context: _Context,
        notification: _Notification,
        fetched: _Fetched,
        loading: bool,
        answer: _Answer,
    ) -> None:
        try:
            if loading:
                outcome = await self._loaded(request)
                if outcome is not None:
                    try:
                        await self._written(
                            notification,
                            self._reply(request, context, notification, "loading", outcome),
                            answer,
                            count=False,
                        )
                    except _Gone:
                        self.dropped += 1
                    return
            started = time.perf_counter_ns()  # deciding only, as for the shim's calls
            route, outcome = await self.router.decide(request)
            latency = time.perf_counter_ns() - started
            try:
                summary = await self._written(
                    notification, self._reply(request, context, notification, route, outcome), answer
                )
            except _Gone:
                self.dropped += 1
                logger.debug(
                    "%s: tid %d went away before its %s reply was sent", self.name, notification.tid, request.function
                )
                return
            if summary is None:
                return  # a worker writes the Stat, answers and counts the call
            with self._lock:
                self.calls += 1
            if self.router.observed:
                named = named_directories(request)  # its descriptors are open until the end
                self.router.report(Decision(request, route, *summary, latency, self.name, "seccomp", *named))
        finally:
            fetched.close()

    async def _loaded(self, request: Request) -> Any:
        """A loading call done by the master (see ``own_files``); ``None``: the router decides it.

        Handlers, observers and ``trace`` do not see it. The path is the one
        the master read; an open counts only when the file opened is one of
        the program's or beneath one of the trees by its own name.
        """
        from libc_service.acting.perform import perform  # only sessions with loading files need it

        try:
            outcome = perform(request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except OSError as exc:
            return exc
        except Exception:  # noqa: BLE001 - a call perform() cannot do is the router's, never continued
            logger.debug("%s: loading call %r left to the router", self.name, request, exc_info=True)
            return None
        if isinstance(outcome, WithFds):
            try:
                name = exact_name(outcome.fds[0]) if outcome.fds else None
            except OSError:
                name = None
            if name is None or not (name in self._own_objects or name.startswith(self._own_object_trees)):
                close_fds(outcome.fds)
                return None
        return outcome

    async def _written(
        self,
        notification: _Notification,
        summary: tuple[Any, Any, int, int] | _StatWrite,
        answer: _Answer,
        count: bool = True,
    ) -> tuple[Any, Any, int, int] | None:
        """The reply's summary, once a ``Stat`` to write was written into the slave's buffer (off the loop).

        ``None``: the Stat is being written by a worker, which answers and
        counts the call itself (nobody observes it).
        """
        if not isinstance(summary, _StatWrite):
            return summary
        assert self._workers is not None
        tid, write = notification.tid, summary
        if not self.router.observed:
            # Nobody needs the outcome: the worker answers, counts and gives
            # the slot back; the watchdog keeps the bound. The loop is done.
            answer.detached = True
            with self._lock:
                self._writes[answer.id] = (answer, time.monotonic() + self.memory_bound, tid)
            self._workers.run_detached(lambda: self._write_detached(answer, tid, write, count))
            return None
        try:
            # The worker answers the call itself once the Stat is written: the
            # slave goes on without waiting for the loop to wake up again.
            return await self._workers.submit(lambda: self._write_and_answer(answer, tid, write))
        except Stalled:
            if self._answer_once(answer, -errno_module.EFAULT):
                logger.warning("%s: writing a stat for tid %d stalled; failing its call with EFAULT", self.name, tid)
                return "error", -1, errno_module.EFAULT, 0
            return "reply", write.result, 0, write.fds  # answered just as the bound passed

    def _write_detached(self, answer: _Answer, tid: int, write: _StatWrite, count: bool) -> None:
        """On a memory worker: write the Stat, answer the call, count it (see :meth:`_written`)."""
        try:
            self._write_and_answer(answer, tid, write)
            counted = "calls" if count else ""
        except _Gone:
            counted = "dropped"
        with self._lock:
            self._writes.pop(answer.id, None)
            if counted:
                setattr(self, counted, getattr(self, counted) + 1)

    def _write_and_answer(self, answer: _Answer, tid: int, write: _StatWrite) -> tuple[Any, Any, int, int]:
        """On a memory worker: write the Stat into the slave's buffer, then answer the call.

        The call still pending right before the write means its thread is
        still the caller, so the memory written is the caller's.
        """
        try:
            with self._lock:
                self._check_valid(answer.id)
        except _Gone:
            with self._lock:
                if not answer.sent:  # nobody answers a call that is gone: give its slot back
                    answer.sent = answer.released = True
                    self._slots.release()
            raise
        try:
            _write_memory(tid, write.address, write.data)
        except _Refuse as refusal:
            self._answer_once(answer, -refusal.code, give_back=True)
            return "error", -1, refusal.code, 0
        self._answer_once(answer, 0, give_back=True)
        return "reply", write.result, 0, write.fds

    def _answer_once(self, answer: _Answer, error: int, give_back: bool = False) -> bool:
        """Answer ``answer``'s call with ``error`` (0: success) unless it was answered; whether this did.

        From the loop or a worker: the lock makes one of them answer, and
        keeps :meth:`close` from closing the listener (and its number being
        reused) during the ioctl. ``give_back``: the call's slot is given
        back at once, so a receiver takes the next call while the loop
        still finishes this one (its observers, its counts).
        """
        with self._lock:
            if answer.sent:
                return False
            answer.sent = True
            answer.released = give_back
            try:
                self._send(answer.id, 0, error, 0)
            finally:
                if give_back:  # answered or gone: the call no longer holds its slot
                    self._slots.release()
        return True

    def _reply(
        self, request: Request, context: _Context, notification: _Notification, route: str, outcome: Any
    ) -> tuple[Any, Any, int, int] | _StatWrite:
        """Answer the notification as ``outcome`` says; what went out, for observers."""
        notif_id = notification.id
        if outcome is FORWARD and notification.nr == self._refused_nr:
            outcome = PermissionError(errno_module.EACCES, "a forwarded connect is not continued without a network")
        if outcome is FORWARD:
            self._send(notif_id, 0, 0, _FLAG_CONTINUE)
            return "forward", None, 0, 0
        if isinstance(outcome, OSError) and isinstance(outcome.errno, int) and 0 < outcome.errno < 4096:
            self._send(notif_id, 0, -outcome.errno, 0)
            return "error", -1, outcome.errno, 0
        if isinstance(outcome, BaseException):
            self.router.handler_failed(route, request, outcome)  # one log for both transports
            return self._fail(notif_id)
        fds: Sequence[int] = ()
        result = outcome
        if isinstance(outcome, WithFds):
            result, fds = outcome.result, list(outcome.fds)
        try:
            return self._reply_result(request, context, notification, route, result, fds)
        except (_Gone, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a Stat built unvalidated that does not pack
            logger.error(
                "policy bug: handler %s answered %r with %r (%s); failing the call with %s",
                route,
                request,
                result,
                exc,
                errno_module.errorcode.get(self.router.error_errno),
            )
            return self._fail(notif_id)
        finally:
            close_fds(fd for fd in fds if isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0)

    def _reply_result(
        self,
        request: Request,
        context: _Context,
        notification: _Notification,
        route: str,
        result: Any,
        fds: Sequence[int],
    ) -> tuple[Any, Any, int, int] | _StatWrite:
        notif_id = notification.id
        problem = _unusable(fds)
        if problem is None and not (type(result) is int or isinstance(result, Stat)):
            problem = f"{type(result).__name__} is no result for {request.function}"
        if problem is None and isinstance(result, Stat) and context.stat_buffer is None:
            problem = f"a Stat is no result for {request.function}"
        if problem is not None:
            logger.error(
                "policy bug: handler %s answered %r with %r (%s); failing the call with %s",
                route,
                request,
                result,
                problem,
                errno_module.errorcode.get(self.router.error_errno),
            )
            return self._fail(notif_id)
        function = request.function
        if fds and function in ("open", "openat"):
            cloexec = _O_CLOEXEC if "close_on_exec" in getattr(request, "flags", ()) else 0
            try:
                # ADDFD refuses an O_PATH descriptor: an equivalent, or the call's errno.
                given = installable(request, fds[0])
            except OSError as exc:
                code = exc.errno or errno_module.EACCES
                self._send(notif_id, 0, -code, 0)
                return "error", -1, code, 0
            try:
                installed = self._addfd(notif_id, given, _ADDFD_FLAG_SEND, 0, cloexec)
            finally:
                if given != fds[0]:
                    os.close(given)
            if installed < 0:
                return "error", -1, -installed, 0
            return "reply", installed, 0, len(fds)
        if fds and context.socket_number is not None and not _same_socket(fds[0], getattr(request, "socket", -1)):
            # A new socket replaces the slave's number. Another thread may have
            # closed that number and made something else there meanwhile, which
            # is then replaced: so the slave's own socket is used when it is the
            # one the handler connected (perform() does so for a bound socket).
            cloexec = _slave_cloexec(notification.tid, context.socket_number)
            code = self._addfd(notif_id, fds[0], _ADDFD_FLAG_SETFD, context.socket_number, cloexec)
            if code < 0:
                return "error", -1, -code, 0
        if isinstance(result, Stat):
            assert context.stat_buffer is not None
            address, layout = context.stat_buffer
            # The worker that writes it checks the call is still pending first.
            return _StatWrite(address, _stat_bytes(result, layout, context.statx_mask), result, len(fds))
        if not -(2**63) <= result < 2**63:
            return self._fail(notif_id)
        self._send(notif_id, result, 0, 0)
        return "reply", result, 0, len(fds)

    def _fail(self, notif_id: int) -> tuple[Any, Any, int, int]:
        code = self.router.error_errno
        self._send(notif_id, 0, -code, 0)
        return "failure", -1, code, 0

    # ------------------------------------------------------------- ioctls

    def _check_valid(self, notif_id: int) -> None:
        if self._fd < 0:
            raise _Gone
        try:
            fcntl.ioctl(self._fd, _NOTIF_ID_VALID, bytearray(_ID.pack(notif_id)), True)
        except OSError:
            raise _Gone from None

    def _send(self, notif_id: int, value: int, error: int, flags: int) -> None:
        if self._fd < 0:
            raise _Gone
        try:
            fcntl.ioctl(self._fd, _NOTIF_SEND, bytearray(_RESP.pack(notif_id, value, error, flags)), True)
        except OSError as exc:
            if exc.errno in (errno_module.ENOENT, errno_module.EINPROGRESS):
                raise _Gone from None
            raise

    def _addfd(self, notif_id: int, fd: int, flags: int, newfd: int, newfd_flags: int) -> int:
        """Install ``fd`` in the slave: its number there, or ``-errno`` after failing the call with it."""
        if self._fd < 0:
            raise _Gone
        try:
            return int(
                fcntl.ioctl(
                    self._fd, _NOTIF_ADDFD, bytearray(_ADDFD.pack(notif_id, flags, fd, newfd, newfd_flags)), True
                )
            )
        except OSError as exc:
            if exc.errno in (errno_module.ENOENT, errno_module.EINPROGRESS):
                raise _Gone from None
            # EMFILE and the like: the slave cannot take the descriptor; the call fails with that.
            code = exc.errno or errno_module.EMFILE
            self._send(notif_id, 0, -code, 0)
            return -code


@dataclass(slots=True)
class _Receipt:
    """A notification a receiver is preparing, and until when it may take."""

    notification: _Notification
    deadline: float
    abandoned: bool = False


#: Receiver threads per session at most, stuck ones included.
_MAX_RECEIVERS: Final = 16
#: Seconds a closed session waits for its receivers to leave (see SeccompSession._receivers_left).
_RECEIVERS_LEAVE: Final = 2.0


@dataclass(slots=True)
class _Answer:
    """A call one of two parties may answer (the worker that wrote its Stat, or the loop past the bound)."""

    id: int
    sent: bool = False
    #: Whether the worker that answered gave the call's slot back.
    released: bool = False
    #: Whether a worker answers the call on its own (the loop no longer waits for it).
    detached: bool = False


@dataclass(frozen=True, slots=True)
class _StatWrite:
    """A ``Stat`` reply still to be written into the slave's buffer (then answered)."""

    address: int
    data: bytes
    result: Stat
    fds: int


#: What a worker reads for one notification: the request's fields, the reply's
#: context, the descriptors copied from the slave, whether it is a loading call.
_Prepared: TypeAlias = "tuple[dict[str, Any], _Context, _Fetched, bool]"


def _discard_prepared(prepared: _Prepared) -> None:
    """A notification prepared after its bound (its call already failed): close what was copied."""
    prepared[2].close()


class _Resumed:
    """Awaiting it continues a coroutine that already ran up to its first suspension.

    The first step of a decision runs in the reader callback; when it has
    to wait, a task takes the coroutine over from there: what it yielded
    goes to the task, what the task sends or throws goes to the coroutine.
    """

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, None], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, value = self._coroutine, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation goes to the coroutine
                try:
                    value = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration:
                    return


async def _continue(coroutine: Coroutine[Any, Any, None], first: Any) -> None:
    await _Resumed(coroutine, first)


def _loading_call(fields: dict[str, Any], files: frozenset[str], trees: tuple[str, ...]) -> bool:
    """Whether the call only reads what loading the program needs (see ``SeccompSession.own_files``)."""
    path = fields.get("path")
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
        return False  # relative, "..", "//", a trailing slash: the router decides
    function = fields["function"]
    if function in ("open", "openat"):
        if not fields["flags"] <= _READ_ONLY_OPEN:
            return False
    elif function in ("access", "eaccess"):
        if "w" in fields["amode"]:
            return False
    elif function not in ("stat", "lstat"):
        return False
    return path in files or path.startswith(trees)


#: Flags of a read-only open (what the loader, and a library reading its data, pass).
_READ_ONLY_OPEN: Final = frozenset({"read_only", "close_on_exec", "large_file", "directory", "non_blocking", "no_ctty"})


def _build(fields: dict[str, Any], notification: _Notification, thread: _Thread) -> Request:
    """The request: validated by the decoder above, built without a second pass.

    ``_decode`` checks what the models check (paths are NUL-free C strings
    of at most 4095 bytes, flags and modes come from tables, addresses are
    ``ipaddress`` objects); building with pydantic's validation would cost
    more than the rest of the call (docs/performance.md), and
    ``model_construct`` as much. Models that are not
    plain data (validators that derive fields) are validated instead.
    """
    function = fields["function"]
    model = REQUEST_TYPES[function]
    values: dict[str, Any] = {
        "pid": thread.pid,
        "tid": notification.tid,
        "request_id": notification.id,
        "umask": thread.umask,
        "fsuid": thread.fsuid,
        "fsgid": thread.fsgid,
        "groups": thread.groups,
    }
    values |= {key: value for key, value in fields.items() if value is not None}
    for name in ("path", "path1", "path2"):
        if name in values:
            values[name] = exact_path(values[name])
    if function in ("connect_unix", "bind_unix") and len(os.fsencode(str(values["path"]))) > UNIX_PATH_MAX:
        raise _Refuse(errno_module.EINVAL)
    if function in _PLAIN_MODELS:
        try:
            ordered = {
                name: values[name] if name in values else info.default for name, info in model.model_fields.items()
            }
        except KeyError:
            pass  # a required field the decoder did not give: let pydantic say which
        else:
            request = model.__new__(model)
            _set_attribute(request, "__dict__", ordered)
            _set_attribute(request, "__pydantic_fields_set__", set(values) & set(ordered))
            _set_attribute(request, "__pydantic_extra__", None)
            _set_attribute(request, "__pydantic_private__", None)
            return request  # type: ignore[return-value]
    values = {key: value for key, value in values.items() if key in model.model_fields}
    try:
        return model.model_validate(values)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _Refuse(_errno_for(exc)) from None


_set_attribute: Final = object.__setattr__


def _plain(model: type[Any]) -> bool:
    """Whether a model is plain data: no private attributes, post-init hooks, aliases or factories."""
    return (
        not getattr(model, "__pydantic_post_init__", True)
        and not getattr(model, "__private_attributes__", True)
        and all(
            f.alias is None and f.validation_alias is None and f.default_factory is None
            for f in model.model_fields.values()
        )
    )


_PLAIN_MODELS: Final = frozenset(name for name, model in REQUEST_TYPES.items() if _plain(model))


def _errno_for(error: ValidationError) -> int:
    """What the kernel says for an argument a request model refuses."""
    text = str(error)
    if "at most" in text and "path" in text:
        return errno_module.ENAMETOOLONG
    return errno_module.EINVAL


def _unusable(fds: Sequence[int]) -> str | None:
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int) or not 0 <= fd < 2**31:
            return f"{fd!r} is not a descriptor"
        try:
            os.fstat(fd)
        except OSError as exc:
            return f"descriptor {fd} is not open: {exc.strerror}"
    return None


def _same_socket(fd: int, slave_socket: int) -> bool:
    """Whether ``fd`` is the slave's socket itself (the master's copy of it, or a ``dup``)."""
    try:
        one, other = os.fstat(fd), os.fstat(slave_socket)
    except (OSError, TypeError):
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _slave_cloexec(tid: int, number: int) -> int:
    """``O_CLOEXEC`` if the thread's descriptor ``number`` has close-on-exec (from its own ``fdinfo``)."""
    try:
        with open(f"/proc/{tid}/fdinfo/{number}", "rb") as file:
            for line in file:
                if line.startswith(b"flags:"):
                    return _O_CLOEXEC if int(line.split()[1], 8) & _O_CLOEXEC else 0
    except (OSError, ValueError):
        pass
    return 0


# ------------------------------------------------- the shim beside seccomp


def shim_relay(router: Router) -> Router:
    """The router for the shim sessions of a program that also runs under the seccomp filter.

    Only ``getaddrinfo`` (no system call, so the filter never sees it) is
    decided by ``router``, whose observers then see it as usual; every
    other call is answered ``FORWARD`` at once (by the router's fast path,
    in the reader callback), so the shim makes it through libc and the
    filter hands it to ``router`` then: each call is decided once, with the
    kernel's view of it.
    """
    # Imported here: router.py imports nothing of this module, and spawn
    # imports this module only when seccomp is asked for.
    from libc_service.policy.router import Router as RouterType

    relay = RouterType(default=FORWARD, concurrent=router.concurrent, error_errno=router.error_errno)
    #: The deciding route of ``router`` for each getaddrinfo in flight, by request identity.
    deciding: dict[int, str] = {}

    @relay.on("getaddrinfo")
    async def decided_by_the_policy(request: Any) -> Any:
        route, outcome = await router.decide(request)
        deciding[id(request)] = route
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @relay.observe
    def reported_to_the_policy(decision: Decision) -> None:
        route = deciding.pop(id(decision.request), None)
        if route is not None:
            router.report(dataclasses.replace(decision, route=route))

    return relay
