"""Decoding a notification: the system call's arguments become the typed request a handler sees.

Each notification becomes the same request the shim's calls become
(``OpenRequest``, ``StatRequest``, ...). Its strings are read from the
calling thread's memory (:mod:`libc_service.seccomp.memory`), a ``dirfd``
is copied from the thread's own descriptor table, and every value is
checked as the request models check it, so that :func:`build_request`
can build the model without a second pass. What no request expresses is
answered here as the kernel would (:class:`~libc_service.seccomp.abi.Refuse`)
or continued (:class:`~libc_service.seccomp.abi.Continue`), never guessed.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import ipaddress
import os
import socket
import stat as stat_module
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import ValidationError

from libc_service.kernel import libc as kernel
from libc_service.protocol import openflags
from libc_service.protocol.catalogue import UNIX_PATH_MAX
from libc_service.seccomp.abi import Continue, Refuse
from libc_service.seccomp.filter import AT_EMPTY_PATH, NOTIFIED
from libc_service.seccomp.memory import AT_FDCWD, PAGE, Fetched, ThreadStatus, read_memory, read_string
from libc_service.protocol.construct import construct
from libc_service.protocol.paths import exact_path
from libc_service.protocol.requests import Request

__all__ = [
    "BY_NUMBER",
    "FUNCTIONS_OF",
    "METADATA_CALLS",
    "O_CLOEXEC",
    "Notification",
    "ReplyContext",
    "address_fields",
    "build_request",
    "decode",
    "new_times",
]

_AT_SYMLINK_NOFOLLOW: Final = 0x100
_AT_REMOVEDIR: Final = 0x200
_AT_EACCESS: Final = 0x200
_AT_NO_AUTOMOUNT: Final = 0x800
_AT_STATX_SYNC_TYPE: Final = 0x6000
_RENAME_NOREPLACE: Final = 1
_SOCKADDR_MAX: Final = 128

# Open flags come from the one table (protocol/openflags.py); the transport runs
# on x86_64 only, where the kernel's values are the os module's, except that
# userspace defines O_LARGEFILE as 0 while a program may pass the kernel's bit.
_O_LARGEFILE: Final = 0o100000
_O_KNOWN: Final = openflags.KNOWN_OS_FLAGS | _O_LARGEFILE
O_CLOEXEC: Final = os.O_CLOEXEC
_OPEN_HOW_SIZE: Final = 24

# Own function objects (``libc[name]``): the argtypes below stay this module's.
_getsockopt = kernel.libc["getsockopt"]
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_connect = kernel.libc["connect"]
_bind = kernel.libc["bind"]
for _function in (_connect, _bind):
    _function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    tid: int
    nr: int
    args: tuple[int, ...]


#: What the reply to a request needs besides the request: the stat buffer
#: (address, "stat" or "statx"), the slave's socket number.
@dataclass(frozen=True, slots=True)
class ReplyContext:
    stat_buffer: tuple[int, Literal["stat", "statx"]] | None = None
    socket_number: int | None = None
    statx_mask: int = 0


BY_NUMBER: Final = {number: name for name, number in NOTIFIED.items()}
#: The request functions each system call of the common families may become
#: (:func:`decode`): when the router forwards them all unasked, a receiver
#: continues the call at once (:class:`~libc_service.seccomp.session.SeccompSession`).
FUNCTIONS_OF: Final = {
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
    if flags & os.O_ACCMODE == os.O_ACCMODE:
        raise Refuse(errno_module.EINVAL)  # "3" (ioctl-only access): no request says it; never continued
    unknown = flags & ~_O_KNOWN & 0xFFFFFFFF
    if unknown and strict:
        raise Refuse(errno_module.EINVAL)
    if resolve & ~0x3F:
        raise Refuse(errno_module.EINVAL)
    names = openflags.names_of(flags, resolve, large_file=_O_LARGEFILE)
    takes_mode = "create" in names or "temporary" in names
    if strict and mode and not takes_mode:
        raise Refuse(errno_module.EINVAL)
    return {"flags": frozenset(names), "mode": (mode & 0o7777) if takes_mode else None}


def decode(notification: Notification, fetched: Fetched) -> tuple[dict[str, Any], ReplyContext]:
    """The request's fields for one notification; raises ``Refuse``/``Continue``/``Gone``."""
    name = BY_NUMBER[notification.nr]
    args = notification.args
    tid = notification.tid

    def path_at(dirfd_arg: int | None, path_arg: int) -> dict[str, Any]:
        raw = read_string(tid, args[path_arg])
        if not raw:
            raise Refuse(errno_module.ENOENT)
        dirfd = fetched.directory(AT_FDCWD if dirfd_arg is None else _signed(args[dirfd_arg]), raw)
        return {"path": os.fsdecode(raw), "dirfd": dirfd}

    if name in ("open", "openat", "openat2"):
        dirfd_arg, path_arg = (None, 0) if name == "open" else (0, 1)
        if name == "openat2":
            size = args[3]
            if size < _OPEN_HOW_SIZE:
                raise Refuse(errno_module.EINVAL)
            if size > PAGE:
                raise Refuse(errno_module.E2BIG)
            how = read_memory(tid, args[2], size)
            if len(how) < size:
                raise Refuse(errno_module.EFAULT)
            if how[_OPEN_HOW_SIZE:].strip(b"\0"):
                raise Refuse(errno_module.E2BIG)
            flags, mode, resolve = struct.unpack_from("<QQQ", how)
            if flags >= 2**32 or mode >= 2**12:
                raise Refuse(errno_module.EINVAL)
            fields = _open_fields(flags, mode, resolve, strict=True)
        else:
            flag_arg = 1 if name == "open" else 2
            fields = _open_fields(args[flag_arg] & 0xFFFFFFFF, args[flag_arg + 1], 0, strict=False)
        fields |= path_at(dirfd_arg, path_arg)
        plain = dirfd_arg is None or _signed(args[dirfd_arg]) == AT_FDCWD
        resolving = any(flag.startswith("resolve_") for flag in fields["flags"])
        fields["function"] = "open" if plain and not resolving else "openat"
        return fields, ReplyContext()
    if name in ("stat", "lstat", "newfstatat", "statx"):
        layout: Literal["stat", "statx"]
        if name in ("stat", "lstat"):
            follow, where, buffer, layout = name == "stat", path_at(None, 0), args[1], "stat"
        else:
            flag_arg = 3 if name == "newfstatat" else 2
            flags = args[flag_arg] & 0xFFFFFFFF
            allowed = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | AT_EMPTY_PATH
            if name == "statx":
                allowed |= _AT_STATX_SYNC_TYPE
            if flags & ~allowed:
                raise Refuse(errno_module.EINVAL)
            follow = not flags & _AT_SYMLINK_NOFOLLOW
            where = path_at(0, 1)
            buffer, layout = (args[2], "stat") if name == "newfstatat" else (args[4], "statx")
        mask = args[3] & 0xFFFFFFFF if name == "statx" else 0
        return {"function": "stat" if follow else "lstat", **where}, ReplyContext(
            stat_buffer=(buffer, layout), statx_mask=mask
        )
    if name in ("access", "faccessat", "faccessat2"):
        mode_arg = 1 if name == "access" else 2
        amode = args[mode_arg] & 0xFFFFFFFF
        if amode & ~0o7:
            raise Refuse(errno_module.EINVAL)
        flags = args[3] & 0xFFFFFFFF if name == "faccessat2" else 0
        if flags & ~(_AT_EACCESS | _AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            raise Refuse(errno_module.EINVAL)
        if flags & (_AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            # No request says "do not follow" for access: refused as a kernel
            # without faccessat2 would, so glibc answers it with a stat, decided.
            raise Refuse(errno_module.ENOSYS)
        modes = "f" if amode == 0 else frozenset(m for bit, m in ((4, "r"), (2, "w"), (1, "x")) if amode & bit)
        where = path_at(None, 0) if name == "access" else path_at(0, 1)
        return {"function": "eaccess" if flags & _AT_EACCESS else "access", "amode": modes, **where}, ReplyContext()
    if name in ("mkdir", "mkdirat"):
        where = path_at(None, 0) if name == "mkdir" else path_at(0, 1)
        mode = args[1 if name == "mkdir" else 2] & 0o7777
        return {"function": "mkdir", "mode": mode, **where}, ReplyContext()
    if name in ("unlink", "rmdir", "unlinkat"):
        if name == "unlinkat":
            flags = args[2] & 0xFFFFFFFF
            if flags & ~_AT_REMOVEDIR:
                raise Refuse(errno_module.EINVAL)
            return {"function": "rmdir" if flags else "unlink", **path_at(0, 1)}, ReplyContext()
        return {"function": name, **path_at(None, 0)}, ReplyContext()
    if name in ("rename", "renameat", "renameat2"):
        flags = args[4] & 0xFFFFFFFF if name == "renameat2" else 0
        if flags & ~_RENAME_NOREPLACE:
            raise Refuse(errno_module.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT: as a filesystem without them
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
        }, ReplyContext()
    if name == "creat":
        fields = _open_fields(os.O_CREAT | os.O_TRUNC | os.O_WRONLY, args[1], 0, strict=False) | path_at(None, 0)
        return fields | {"function": "open"}, ReplyContext()
    if name in METADATA_CALLS:
        return _metadata_fields(name, notification, fetched, path_at), ReplyContext()
    return _socket_fields(name, notification, fetched)


#: The metadata changes, notified and decided as ``chmod``/``chown``/``utimens`` and their ``f*`` forms.
METADATA_CALLS: Final = frozenset(
    {"chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat"}
    | {"utime", "utimes", "futimesat", "utimensat"}
)
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2


def _metadata_fields(
    name: str, notification: Notification, fetched: Fetched, path_at: Callable[[int | None, int], dict[str, Any]]
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
        values = dict(zip(("atime", "mtime"), new_times(name, tid, args[{"utime": 1, "utimes": 1}.get(name, 2)])))
    if name in ("fchmod", "fchown"):
        return {"function": f"f{kind}", "fd": fetched.slave_fd(_signed(args[0])), **values}
    dirfd_arg, path_arg, flag_arg = at[name]
    flags = args[flag_arg] & 0xFFFFFFFF if flag_arg is not None else 0
    if flags & ~(_AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise Refuse(errno_module.EINVAL)
    empty = False
    if name in ("futimesat", "utimensat") and args[path_arg] == 0:
        empty = True  # a NULL path: the call acts on the descriptor (futimens)
        if flags & _AT_SYMLINK_NOFOLLOW:
            raise Refuse(errno_module.EINVAL)
    elif flags & AT_EMPTY_PATH and not read_string(tid, args[path_arg]):
        empty = True
    if empty:
        assert dirfd_arg is not None
        dirfd = _signed(args[dirfd_arg])
        if dirfd == AT_FDCWD:
            raise Refuse(errno_module.EPERM)  # the working directory itself: no request names it
        return {"function": f"f{kind}", "fd": fetched.slave_fd(dirfd), **values}
    no_follow = name == "lchown" or bool(flags & _AT_SYMLINK_NOFOLLOW)
    return {"function": kind, "no_follow": no_follow, **values, **path_at(dirfd_arg, path_arg)}


def new_times(name: str, tid: int, address: int) -> tuple[int | str, int | str]:
    """The new access and modification times of a ``utime`` family call, as ``TimeSpec`` values."""
    if address == 0:
        return "now", "now"
    size = {"utime": 16, "utimes": 32, "futimesat": 32}.get(name, 32)
    raw = read_memory(tid, address, size)
    if len(raw) < size:
        raise Refuse(errno_module.EFAULT)
    if name == "utime":
        access, modification = (seconds * 10**9 for seconds in struct.unpack("<qq", raw))
        if not (-(2**63) <= access < 2**63 and -(2**63) <= modification < 2**63):
            raise Refuse(errno_module.EINVAL)
        return access, modification
    first, first_part, second, second_part = struct.unpack("<qqqq", raw)
    times: list[int | str] = []
    for sec, part in ((first, first_part), (second, second_part)):
        if name == "utimensat" and part in (_UTIME_NOW, _UTIME_OMIT):
            times.append("now" if part == _UTIME_NOW else "omit")
            continue
        scale = 1 if name == "utimensat" else 1000
        if not 0 <= part < 10**9 // scale:
            raise Refuse(errno_module.EINVAL)
        ns = sec * 10**9 + part * scale
        if not -(2**63) <= ns < 2**63:
            raise Refuse(errno_module.EINVAL)
        times.append(ns)
    return times[0], times[1]


def _socket_fields(name: str, notification: Notification, fetched: Fetched) -> tuple[dict[str, Any], ReplyContext]:
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
        raise Refuse(errno_module.EINVAL)
    raw = b""
    if length:
        raw = read_memory(notification.tid, args[1], length)
        if len(raw) < length:
            raise Refuse(errno_module.EFAULT)
    number = _signed(args[0])
    sock = fetched.slave_fd(number)
    try:
        if not stat_module.S_ISSOCK(os.fstat(sock).st_mode):
            raise Refuse(errno_module.ENOTSOCK)
        domain = _socket_domain(sock)
    except OSError:
        raise Refuse(errno_module.EBADF) from None
    if domain not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        raise Continue  # netlink, packet, vsock ...: the kernel reads the address as this domain's
    family = int.from_bytes(raw[:2], "little") if length >= 2 else -1
    fields = address_fields(name, domain, family, raw, fetched)
    if fields is None:
        raise Refuse(_on_the_slaves_socket(name, sock, raw))
    fields["socket"] = sock
    return fields, ReplyContext(socket_number=number)


def address_fields(name: str, domain: int, family: int, raw: bytes, fetched: Fetched) -> dict[str, Any] | None:
    """The request's fields for an address of ``family`` on a socket of ``domain``; ``None``: no request says it."""
    length = len(raw)
    if domain == socket.AF_UNIX:
        if family != socket.AF_UNIX or length == 2:
            return None  # a mismatch (EINVAL), AF_UNSPEC (a datagram disconnect), autobind
        sun_path = raw[2:]
        if sun_path[0] != 0:
            sun_path = sun_path.split(b"\0", 1)[0]
            if not sun_path:
                raise Refuse(errno_module.EINVAL)
        fields: dict[str, Any] = {"path": os.fsdecode(sun_path), "function": f"{name}_unix"}
        if sun_path[0] != 0 and not sun_path.startswith(b"/"):
            fields["dirfd"] = fetched.directory(AT_FDCWD, sun_path)
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

    Only for addresses no request expresses (see :func:`address_fields`):
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


def build_request(fields: dict[str, Any], notification: Notification, thread: ThreadStatus) -> Request:
    """The request: validated by :func:`decode`, built without a second pass.

    ``decode`` checks what the models check (paths are NUL-free C strings
    of at most 4095 bytes, flags and modes come from tables, addresses are
    ``ipaddress`` objects); building with pydantic's validation would cost
    more than the rest of the call (docs/performance.md). The one way to
    build a model from checked fields is :func:`~libc_service.protocol.construct.construct`,
    shared with the codec: models that are not plain data are validated there.
    """
    function = fields["function"]
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
        raise Refuse(errno_module.EINVAL)
    try:
        return construct(function, values)
    except ValidationError as exc:
        raise Refuse(_errno_for(exc)) from None


def _errno_for(error: ValidationError) -> int:
    """What the kernel says for an argument a request model refuses."""
    text = str(error)
    if "at most" in text and "path" in text:
        return errno_module.ENAMETOOLONG
    return errno_module.EINVAL
