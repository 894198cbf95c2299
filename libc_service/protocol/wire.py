"""Sans-I/O codec for the slave ⇄ master protocol (see ``docs/protocol.md``).

Pure functions between bytes + descriptor numbers and typed messages: no
sockets, no asyncio, no closing of descriptors. The caller owns the I/O and
the descriptors, and must close received descriptors when decoding fails.

Errors follow h11's split, under one base, :class:`ProtocolError`:
:class:`RemoteProtocolError` means the *peer* sent something malformed (the
session is closed); :class:`LocalProtocolError` (also a ``ValueError``) and
``TypeError`` mean the *local caller* asked for something impossible (a
policy bug, raised at once). ``ProtocolError`` is not a ``ValueError``, so
an ``except ValueError`` meant for a caller's mistake never swallows a
hostile peer's message.
"""

from __future__ import annotations

import functools
import operator
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast

from libc_service.protocol.catalogue import (
    FD_RESULT_FUNCTIONS,
    FILE_TYPES,
    GAI_ERRORS,
    INET6_FUNCTIONS,
    INET_FUNCTIONS,
    METADATA_FD_FUNCTIONS,
    METADATA_FUNCTIONS,
    PATH_FUNCTIONS,
    UNIX_FUNCTIONS,
)
from libc_service.protocol.catalogue import (
    FUNCTIONS,
    MAX_GROUPS,
    NODE_MAX,
    OPENAT_FLAGS,
    OPEN_FLAGS,
    PATH_MAX_BYTES,
    SERVICE_MAX,
    UNIX_PATH_MAX,
)
from libc_service.protocol import replies  # loaded on first use (libc_service/__init__.py)
from libc_service.protocol import requests

if TYPE_CHECKING:
    from libc_service.protocol.replies import AddrInfo, Result, Stat
    from libc_service.protocol.requests import (
        ChmodRequest,
        ChownRequest,
        FchmodRequest,
        FchownRequest,
        FutimensRequest,
        Request,
        UtimensRequest,
    )

__all__ = [
    "MAX_ADDRINFO",
    "MAX_MESSAGE",
    "MAX_REPLY_FDS",
    "MAX_REQUEST_FDS",
    "REGISTRATION",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "REPORT",
    "REPORT_CALL",
    "REPORT_ARGV_MAX",
    "REPORT_NAMES",
    "REPORT_MAGIC",
    "ForwardResult",
    "PlainReport",
    "Report",
    "ReplyMessage",
    "decode_registration",
    "decode_report",
    "decode_reply",
    "decode_request",
    "plain_report",
    "request_fields",
    "encode_registration",
    "encode_reply",
    "encode_reply_to",
    "encode_request",
    "reply_fd_limit",
]

#: 2: requests carry the caller's umask and filesystem credentials, every
#: open flag, and a relative unix socket path's directory.
VERSION: Final = 3
REQUEST_MAGIC: Final = b"LCSq"
REPLY_MAGIC: Final = b"LCSr"
HELLO_MAGIC: Final = b"LCSh"
REPORT_MAGIC: Final = b"LCSo"

MAX_REQUEST_FDS: Final = 2
MAX_REPLY_FDS: Final = 4
MAX_ADDRINFO: Final = 128
#: The largest datagram: a request header, the most groups and two strings
#: of ``PATH_MAX`` (a rename of two ``PATH_MAX_BYTES`` paths by a process in
#: ``MAX_GROUPS`` groups is ``72 + 4 * 64 + 2 * 4095`` bytes).
MAX_MESSAGE: Final = 8518

#: magic, version, function, pid, tid, request id, flags, arg, address,
#: scope id, len1, len2, fd roles, context bits, umask, group count,
#: 3 reserved bytes, fsuid, fsgid.
REQUEST: Final = struct.Struct("<4sHHIIQII16sIHHBBHB3sII")
GROUP: Final = struct.Struct("<I")
#: magic, version, function, tid, errno, request id, result, action,
#: payload kind, count, 12 reserved bytes.
REPLY: Final = struct.Struct("<4sHHIIQqBBH12s")
#: dev, ino, nlink, rdev, size, blksize, blocks, atime/mtime/ctime seconds,
#: mode, type, uid, gid, atime/mtime/ctime/btime ns parts, btime seconds,
#: attributes, attributes mask, mount id, which of btime (bit 0) and mount
#: id (bit 1) are known, 4 reserved bytes. Times are (seconds, ns) as in
#: ``struct timespec``: int64 ns would end in 2262.
STAT: Final = struct.Struct("<QQQQqqqqqqIIIIIIIIqQQQII")
STAT_BTIME: Final = 1
STAT_MNT_ID: Final = 2
_NS: Final = 1_000_000_000
ADDRINFO: Final = struct.Struct("<BxHI16s")
REGISTRATION: Final = struct.Struct("<4sHHII")

_RESERVED_REQUEST: Final = bytes(3)
_RESERVED_REPLY: Final = bytes(12)
_NO_ADDRESS: Final = bytes(16)

CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(FUNCTIONS, 1)}

#: Bits 0-11: the original open flags; 16-21: openat's resolve flags; 24-31: flags
#: that grant nothing but change the call (``docs/protocol.md``).
OPEN_FLAG_BITS: Final[dict[str, int]] = {
    **{name: 1 << bit for bit, name in enumerate(OPEN_FLAGS[:12])},
    **{name: 1 << bit for bit, name in enumerate(OPEN_FLAGS[12:], 24)},
    **{name: 1 << bit for bit, name in enumerate(OPENAT_FLAGS[len(OPEN_FLAGS) :], 16)},
}
_OPEN_ONLY_MASK: Final = sum(OPEN_FLAG_BITS[name] for name in OPEN_FLAGS)
_OPENAT_MASK: Final = sum(OPEN_FLAG_BITS.values())
_OPEN_FLAG_BY_BIT: Final = tuple(OPEN_FLAG_BITS.items())
_ACCESS_MODE_BITS: Final = OPEN_FLAG_BITS["read_only"] | OPEN_FLAG_BITS["write_only"] | OPEN_FLAG_BITS["read_write"]
_TAKES_MODE_BITS: Final = OPEN_FLAG_BITS["create"] | OPEN_FLAG_BITS["temporary"]

#: rename's only flag: fail with EEXIST rather than replace path2
#: (``renameat2``'s ``RENAME_NOREPLACE``, which ``mv`` asks for first).
RENAME_NO_REPLACE: Final = 1
AMODE_BITS: Final[dict[str, int]] = {"r": 4, "w": 2, "x": 1}
PROTOCOL_NUMBER: Final[dict[str | None, int]] = {None: 0, "tcp": 6, "udp": 17}
_PROTOCOL_BY_NUMBER: Final = {number: name for name, number in PROTOCOL_NUMBER.items()}

_FILE_TYPE_CODE: Final = {name: code for code, name in enumerate(FILE_TYPES, 1)}

#: Metadata changes (``docs/protocol.md``): flag bit 0 is ``AT_SYMLINK_NOFOLLOW``
#: (path forms only); chown's owner and group (u32 each) travel in the address
#: field's first 8 bytes, present by bits 1 and 2; utimens's atime and mtime
#: (int64 ns each) in its 16 bytes, bits 1/2 and 3/4 saying "now"/"omit".
META_NO_FOLLOW: Final = 1
CHOWN_OWNER: Final = 2
CHOWN_GROUP: Final = 4
ATIME_NOW: Final = 2
ATIME_OMIT: Final = 4
MTIME_NOW: Final = 8
MTIME_OMIT: Final = 16
IDS: Final = struct.Struct("<II8x")
TIMES: Final = struct.Struct("<qq")

ROLE_DIR1: Final = 1
ROLE_DIR2: Final = 2
ROLE_SOCKET: Final = 4

#: Context bits: which of the caller's umask and credentials the request carries.
CONTEXT_UMASK: Final = 1
CONTEXT_FSUID: Final = 2
CONTEXT_FSGID: Final = 4
CONTEXT_GROUPS: Final = 8
_CONTEXT_BITS: Final = CONTEXT_UMASK | CONTEXT_FSUID | CONTEXT_FSGID | CONTEXT_GROUPS

ACTION_RESULT: Final = 0
ACTION_FORWARD: Final = 1
KIND_NONE: Final = 0
KIND_STAT: Final = 1
KIND_ADDRINFO: Final = 2
KIND_GAI_ERROR: Final = 3

#: Each function's descriptor fields by role, in role bit (= wire) order.
_ROLE_FIELDS: Final[dict[str, tuple[tuple[int, str], ...]]] = {
    name: ((ROLE_DIR1, "dirfd1"), (ROLE_DIR2, "dirfd2"))
    if name == "rename"
    else ((ROLE_DIR1, "dirfd"), (ROLE_SOCKET, "socket"))
    if name in ("connect_unix", "bind_unix")
    else ((ROLE_SOCKET, "socket"),)
    if name.startswith(("connect_", "bind_"))
    else ()
    if name == "getaddrinfo"
    else ((ROLE_DIR1, "fd"),)
    if name in METADATA_FD_FUNCTIONS
    else ((ROLE_DIR1, "dirfd"),)
    for name in FUNCTIONS
}
#: The longest string1 and string2 each function may carry.
_STRING_LIMITS: Final[dict[str, tuple[int, int]]] = {
    name: (PATH_MAX_BYTES, PATH_MAX_BYTES)
    if name == "rename"
    else (UNIX_PATH_MAX, 0)
    if name in UNIX_FUNCTIONS
    else (0, 0)
    if name in INET_FUNCTIONS or name in INET6_FUNCTIONS
    else (NODE_MAX, SERVICE_MAX)
    if name == "getaddrinfo"
    else (0, 0)
    if name in METADATA_FD_FUNCTIONS
    else (PATH_MAX_BYTES, 0)
    for name in FUNCTIONS
}
_PORT_FUNCTIONS: Final = INET_FUNCTIONS | INET6_FUNCTIONS


class ProtocolError(Exception):
    """The base of the protocol's errors: catch it to handle both sides' mistakes at once."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a message that breaks the protocol; end the session."""


class LocalProtocolError(ProtocolError, ValueError):
    """The local caller asked for a message the protocol cannot carry.

    A ``ValueError`` too: a value out of the protocol's range is the
    caller's bad argument, as the encoders documented before the split.
    """


def reply_fd_limit(function: str) -> int:
    """How many descriptors a reply to ``function`` may carry."""
    return 1 if function in FD_RESULT_FUNCTIONS else MAX_REPLY_FDS


# ----------------------------------------------------------------- requests


def encode_request(request: Request) -> tuple[bytes, list[int]]:
    """Encode a request; the descriptors come from its descriptor fields.

    Raises :class:`LocalProtocolError` (a ``ValueError``) for a value the
    protocol cannot carry (possible only for a model built without
    validation): the encoder never produces a message the decoder rejects
    for its sizes or ranges.
    """
    flags = arg = scope = 0
    address = _NO_ADDRESS
    string1 = string2 = b""
    roles = 0
    fds: list[int] = []
    for bit, name in _ROLE_FIELDS[request.function]:
        fd = getattr(request, name)
        if fd is not None:
            roles |= bit
            fds.append(fd)
    context, umask, fsuid, fsgid, groups = _context_of(request)
    match request:
        case requests.OpenRequest() | requests.OpenatRequest():
            string1 = os.fsencode(str(request.path))
            flags = sum(OPEN_FLAG_BITS[name] for name in request.flags)
            arg = request.mode or 0
        case requests.AccessRequest() | requests.EaccessRequest():
            string1 = os.fsencode(str(request.path))
            flags = 0 if request.amode == "f" else sum(AMODE_BITS[m] for m in request.amode)
        case requests.MkdirRequest():
            string1 = os.fsencode(str(request.path))
            arg = request.mode
        case requests.UnlinkRequest() | requests.RmdirRequest() | requests.StatRequest() | requests.LstatRequest():
            string1 = os.fsencode(str(request.path))
        case requests.RenameRequest():
            string1 = os.fsencode(str(request.path1))
            string2 = os.fsencode(str(request.path2))
            flags = RENAME_NO_REPLACE if request.no_replace else 0
        case requests.ConnectUnixRequest() | requests.BindUnixRequest():
            string1 = os.fsencode(str(request.path))
        case (
            requests.ConnectInetRequest()
            | requests.BindInetRequest()
            | requests.ConnectInet6Request()
            | requests.BindInet6Request()
        ):
            ip = request.address
            address = ip.packed.ljust(16, b"\0")
            if isinstance(ip, IPv6Address) and ip.scope_id:
                scope = int(ip.scope_id)
            arg = request.port
        case requests.GetaddrinfoRequest():
            flags = (request.node is not None) | (request.service is not None) << 1
            string1 = os.fsencode(request.node) if request.node is not None else b""
            string2 = os.fsencode(request.service) if request.service is not None else b""
            arg = PROTOCOL_NUMBER[request.protocol]
        case (
            requests.ChmodRequest()
            | requests.FchmodRequest()
            | requests.ChownRequest()
            | requests.FchownRequest()
            | requests.UtimensRequest()
            | requests.FutimensRequest()
        ):
            flags, arg, address = _encode_metadata(request)
            if not isinstance(request, requests.FchmodRequest | requests.FchownRequest | requests.FutimensRequest):
                string1 = os.fsencode(str(request.path))
    limit1, limit2 = _STRING_LIMITS[request.function]
    if len(string1) > limit1 or len(string2) > limit2:
        raise LocalProtocolError(
            f"{request.function} strings of {len(string1)} and {len(string2)} bytes exceed {limit1} and {limit2}"
        )
    if not 0 <= arg <= (65535 if request.function in _PORT_FUNCTIONS else 0o7777):
        raise LocalProtocolError(f"{request.function} argument {arg} (mode or port) out of range")
    try:
        header = REQUEST.pack(
            REQUEST_MAGIC,
            VERSION,
            CODE[request.function],
            request.pid,
            request.tid,
            request.request_id,
            flags,
            arg,
            address,
            scope,
            len(string1),
            len(string2),
            roles,
            context,
            umask,
            len(groups) // GROUP.size,
            _RESERVED_REQUEST,
            fsuid,
            fsgid,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"a {request.function} request field is out of range: {exc}") from None
    return header + groups + string1 + string2, fds


def _encode_metadata(
    request: ChmodRequest | FchmodRequest | ChownRequest | FchownRequest | UtimensRequest | FutimensRequest,
) -> tuple[int, int, bytes]:
    """Flags, arg and address field of a metadata change."""
    flags = META_NO_FOLLOW if getattr(request, "no_follow", False) else 0
    match request:
        case requests.ChmodRequest() | requests.FchmodRequest():
            return flags, request.mode, _NO_ADDRESS
        case requests.ChownRequest() | requests.FchownRequest():
            flags |= (request.owner is not None) * CHOWN_OWNER | (request.group is not None) * CHOWN_GROUP
            try:
                ids = IDS.pack(request.owner or 0, request.group or 0)
            except struct.error as exc:
                raise LocalProtocolError(f"an owner or group id is out of range: {exc}") from None
            return flags, 0, ids
    times = []
    for value, now, omit in ((request.atime, ATIME_NOW, ATIME_OMIT), (request.mtime, MTIME_NOW, MTIME_OMIT)):
        if value == "now":
            flags |= now
        elif value == "omit":
            flags |= omit
        elif isinstance(value, int) and not isinstance(value, bool):
            times.append(value)
            continue
        else:
            raise LocalProtocolError(f"a time is ns, 'now' or 'omit', not {value!r}")
        times.append(0)
    try:
        return flags, 0, TIMES.pack(*times)
    except struct.error as exc:
        raise LocalProtocolError(f"a time is out of range: {exc}") from None


def _context_of(request: Request) -> tuple[int, int, int, int, bytes]:
    """Context bits, umask, fsuid, fsgid and the packed group list of ``request``."""
    context = 0
    umask = fsuid = fsgid = 0
    groups = b""
    if request.umask is not None:
        context |= CONTEXT_UMASK
        umask = request.umask
        if not 0 <= umask <= 0o777:
            raise LocalProtocolError(f"umask {umask:#o} out of range")
    if request.fsuid is not None:
        context |= CONTEXT_FSUID
        fsuid = request.fsuid
    if request.fsgid is not None:
        context |= CONTEXT_FSGID
        fsgid = request.fsgid
    if request.groups is not None:
        context |= CONTEXT_GROUPS
        if len(request.groups) > MAX_GROUPS:
            raise LocalProtocolError(f"at most {MAX_GROUPS} groups, not {len(request.groups)}")
        try:
            groups = struct.pack(f"<{len(request.groups)}I", *request.groups)
        except struct.error as exc:
            raise LocalProtocolError(f"a group id is out of range: {exc}") from None
    return context, umask, fsuid, fsgid, groups


def decode_request(data: bytes, fds: Sequence[int] = ()) -> Request:
    """Decode and fully validate one request datagram.

    ``fds`` are the descriptors received with it (master-side numbers); they
    become the request's ``dirfd``/``socket`` fields. Raises
    :class:`RemoteProtocolError` for anything malformed; the caller then closes
    ``fds``.
    """
    function, fields = _request_fields(data, fds, text=False)
    # The bytes are fully checked: build without a second validation.
    return cast("Request", _construct(function, fields))


def request_fields(data: bytes) -> tuple[str, dict[str, Any]]:
    """One request datagram without descriptors, validated as :func:`decode_request` validates it,
    as its function's name and its fields as plain data: paths are ``str``, no model is built.

    For readers that only show a request (``trace`` writes a report's call
    as a line): the request models are not loaded, and a malformed datagram
    is refused exactly where :func:`decode_request` refuses it.
    """
    return _request_fields(data, (), text=True)


def _request_fields(data: bytes, fds: Sequence[int], *, text: bool) -> tuple[str, dict[str, Any]]:
    """The checks and fields of :func:`decode_request`; paths as ``str`` when ``text``."""
    if len(data) < REQUEST.size:
        raise RemoteProtocolError(f"request of {len(data)} bytes is shorter than its {REQUEST.size}-byte header")
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError(f"request of {len(data)} bytes exceeds {MAX_MESSAGE}")
    (
        magic,
        version,
        code,
        pid,
        tid,
        request_id,
        flags,
        arg,
        address,
        scope,
        len1,
        len2,
        roles,
        context,
        umask,
        ngroups,
        reserved,
        fsuid,
        fsgid,
    ) = REQUEST.unpack_from(data)
    if magic != REQUEST_MAGIC:
        raise RemoteProtocolError(f"bad request magic {magic!r}")
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version}")
    if not 1 <= code <= len(FUNCTIONS):
        raise RemoteProtocolError(f"unknown function code {code}")
    if pid == 0 or tid == 0:
        raise RemoteProtocolError("pid and tid must be non-zero")
    if reserved != _RESERVED_REQUEST or roles & ~7:
        raise RemoteProtocolError("reserved request bits are set")
    start = REQUEST.size + ngroups * GROUP.size
    if start + len1 + len2 != len(data):
        raise RemoteProtocolError(
            f"{ngroups} groups and string lengths {len1}+{len2} disagree with a {len(data)}-byte request"
        )
    if roles.bit_count() != len(fds):
        raise RemoteProtocolError(f"fd roles {roles:#x} announce {roles.bit_count()} descriptors, {len(fds)} came")
    function = FUNCTIONS[code - 1]
    string1 = data[start : start + len1]
    string2 = data[start + len1 :]
    common: dict[str, Any]
    if context == _CONTEXT_BITS and umask <= 0o777 and ngroups <= MAX_GROUPS:  # the shim's every call
        common = {
            "function": function,
            "pid": pid,
            "tid": tid,
            "request_id": request_id,
            "umask": umask,
            "fsuid": fsuid,
            "fsgid": fsgid,
            "groups": _groups_of(data[REQUEST.size : start]),
        }
    else:
        common = {
            "function": function,
            "pid": pid,
            "tid": tid,
            "request_id": request_id,
            **_context(context, umask, fsuid, fsgid, ngroups, data),
        }
    fd_iter = iter(fds)

    def no(what: str, value: object) -> None:
        if value:
            raise RemoteProtocolError(f"{function} does not use {what}")

    if function in PATH_FUNCTIONS:
        if len2 or scope or roles & ~ROLE_DIR1 or address != _NO_ADDRESS:  # one test on the hot path
            no("string2", len2)
            no("an address", address != _NO_ADDRESS or scope)
            no("those descriptor roles", roles & ~ROLE_DIR1)
        fields = common | {"path": _fs_path(string1, "path", text), "dirfd": next(fd_iter) if roles else None}
        if function in ("open", "openat"):
            fields |= _open_fields(function, flags, arg)
        elif function in ("access", "eaccess"):
            no("arg", arg)
            if flags & ~7:
                raise RemoteProtocolError(f"unknown amode bits {flags:#x}")
            fields["amode"] = "f" if flags == 0 else frozenset(m for m, b in AMODE_BITS.items() if flags & b)
        elif function == "mkdir":
            no("flags", flags)
            fields["mode"] = _mode(arg)
        else:
            no("flags", flags)
            no("arg", arg)
    elif function == "rename":
        no("arg", arg)
        if flags & ~RENAME_NO_REPLACE:
            raise RemoteProtocolError(f"unknown rename flag bits {flags & ~RENAME_NO_REPLACE:#x}")
        no("an address", address != _NO_ADDRESS or scope)
        no("the socket role", roles & ROLE_SOCKET)
        fields = common | {
            "path1": _fs_path(string1, "path1", text),
            "path2": _fs_path(string2, "path2", text),
            "dirfd1": next(fd_iter) if roles & ROLE_DIR1 else None,
            "dirfd2": next(fd_iter) if roles & ROLE_DIR2 else None,
            "no_replace": bool(flags & RENAME_NO_REPLACE),
        }
    elif function in UNIX_FUNCTIONS:
        no("flags or arg", flags or arg)
        no("an address", address != _NO_ADDRESS or scope)
        no("string2", len2)
        if roles & ~ROLE_DIR1 != ROLE_SOCKET:
            raise RemoteProtocolError(f"{function} needs the slave's socket, and a directory at most")
        if roles & ROLE_DIR1 and string1[:1] in (b"\0", b"/"):
            raise RemoteProtocolError(f"a directory with the abstract or absolute {function} path")
        dirfd = next(fd_iter) if roles & ROLE_DIR1 else None
        fields = common | {"path": _unix_path(string1, text), "socket": next(fd_iter), "dirfd": dirfd}
    elif function in INET_FUNCTIONS or function in INET6_FUNCTIONS:
        no("flags", flags)
        no("strings", len1 or len2)
        if roles != ROLE_SOCKET:
            raise RemoteProtocolError(f"{function} needs exactly the slave's socket")
        if arg > 65535:
            raise RemoteProtocolError(f"port {arg} out of range")
        ip: IPv4Address | IPv6Address
        if function in INET_FUNCTIONS:
            no("IPv6 address bytes or a scope", address[4:] != bytes(12) or scope)
            ip = IPv4Address(address[:4])
        else:
            ip = IPv6Address(address) if not scope else IPv6Address(f"{IPv6Address(address)}%{scope}")
        fields = common | {"address": ip, "port": arg, "socket": next(fd_iter)}
    elif function in METADATA_FUNCTIONS:
        fields = common | _metadata_fields(function, flags, arg, address, scope, roles, string1, len2, fd_iter, text)
    else:  # getaddrinfo
        no("descriptors", roles)
        no("an address", address != _NO_ADDRESS or scope)
        if flags & ~3 or flags == 0:
            raise RemoteProtocolError(f"getaddrinfo presence bits {flags:#x} invalid")
        if arg not in _PROTOCOL_BY_NUMBER:
            raise RemoteProtocolError(f"unknown getaddrinfo protocol {arg}")
        fields = common | {
            "node": _name(string1, flags & 1, NODE_MAX, "node"),
            "service": _name(string2, flags & 2, SERVICE_MAX, "service"),
            "protocol": _PROTOCOL_BY_NUMBER[arg],
        }
    return function, fields


def _metadata_fields(
    function: str,
    flags: int,
    arg: int,
    address: bytes,
    scope: int,
    roles: int,
    string1: bytes,
    len2: int,
    fds: Any,
    text: bool = False,
) -> dict[str, Any]:
    """The fields of a chmod/chown/utimens request or its descriptor form."""
    if len2 or scope:
        raise RemoteProtocolError(f"{function} does not use string2 or a scope")
    if roles & ~ROLE_DIR1:
        raise RemoteProtocolError(f"{function} does not use those descriptor roles")
    fields: dict[str, Any]
    if function in METADATA_FD_FUNCTIONS:
        if string1 or not roles:
            raise RemoteProtocolError(f"{function} carries the slave's descriptor and no path")
        if flags & META_NO_FOLLOW:
            raise RemoteProtocolError(f"{function} has no no_follow")
        fields = {"fd": next(fds)}
    else:
        fields = {
            "path": _fs_path(string1, "path", text),
            "dirfd": next(fds) if roles else None,
            "no_follow": bool(flags & META_NO_FOLLOW),
        }
    kind = function.removeprefix("f")
    if kind == "chmod":
        if flags & ~META_NO_FOLLOW or address != _NO_ADDRESS:
            raise RemoteProtocolError(f"{function} carries only a mode")
        fields["mode"] = _mode(arg)
        return fields
    if arg:
        raise RemoteProtocolError(f"{function} does not use arg")
    if kind == "chown":
        if flags & ~(META_NO_FOLLOW | CHOWN_OWNER | CHOWN_GROUP):
            raise RemoteProtocolError(f"unknown {function} flag bits {flags:#x}")
        if address[8:] != bytes(8):
            raise RemoteProtocolError(f"{function} uses 8 address bytes")
        owner, group = IDS.unpack(address)
        if (owner and not flags & CHOWN_OWNER) or (group and not flags & CHOWN_GROUP):
            raise RemoteProtocolError(f"{function} id without its bit")
        fields["owner"] = owner if flags & CHOWN_OWNER else None
        fields["group"] = group if flags & CHOWN_GROUP else None
        return fields
    if flags & ~(META_NO_FOLLOW | ATIME_NOW | ATIME_OMIT | MTIME_NOW | MTIME_OMIT):
        raise RemoteProtocolError(f"unknown {function} flag bits {flags:#x}")
    atime, mtime = TIMES.unpack(address)
    fields["atime"] = _time(atime, flags & ATIME_NOW, flags & ATIME_OMIT)
    fields["mtime"] = _time(mtime, flags & MTIME_NOW, flags & MTIME_OMIT)
    return fields


def _time(ns: int, now: int, omit: int) -> int | str:
    if now or omit:
        if (now and omit) or ns:
            raise RemoteProtocolError("a time is a value, now or omit")
        return "now" if now else "omit"
    return ns


_set_attribute: Final = object.__setattr__


def _plain_model(cls: type[Any]) -> bool:
    """Whether ``model_construct`` of ``cls`` only sets the four attributes below."""
    return (
        not getattr(cls, "__pydantic_post_init__", True)
        and not getattr(cls, "__private_attributes__", True)
        and not getattr(cls, "__pydantic_root_model__", True)
        and all(f.alias is None and f.validation_alias is None for f in cls.model_fields.values())
    )


@functools.cache
def _fast_fields() -> dict[str, tuple[str, ...]]:
    """The models built without pydantic's search: their fields in declaration order.

    The order is the one ``model_construct`` fills ``__dict__`` in, which repr
    and dumps follow. Computed on the first decoded request: the models load
    then, not when the codec is imported.
    """
    return {name: tuple(cls.model_fields) for name, cls in requests.REQUEST_TYPES.items() if _plain_model(cls)}


def _construct(function: str, fields: dict[str, Any]) -> Any:
    """``model_construct(**fields)`` for a decoder that fills every field.

    Does what pydantic's ``model_construct`` does for a model without
    aliases, private attributes or post-init hooks, minus its per-field
    alias and default search, which was a third of the decoding cost
    (``bench/hotpath.py``; figures in docs/performance.md).
    """
    cls = requests.REQUEST_TYPES[function]
    order = _fast_fields().get(function)
    if order is None:
        return cls.model_construct(**fields)
    try:
        values = {name: fields[name] for name in order}
    except KeyError:  # a field left to its default: pydantic fills it
        return cls.model_construct(**fields)
    model = cls.__new__(cls)
    _set_attribute(model, "__dict__", values)
    _set_attribute(model, "__pydantic_fields_set__", set(fields))
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model


_NO_CONTEXT: Final[dict[str, Any]] = {"umask": None, "fsuid": None, "fsgid": None, "groups": None}


def _context(context: int, umask: int, fsuid: int, fsgid: int, ngroups: int, data: bytes) -> dict[str, Any]:
    """The umask and credential fields of a request header (``None``: not sent)."""
    if not context:
        if umask or fsuid or fsgid or ngroups:
            raise RemoteProtocolError("context values without their context bits")
        return _NO_CONTEXT
    if context & ~_CONTEXT_BITS:
        raise RemoteProtocolError(f"unknown context bits {context & ~_CONTEXT_BITS:#x}")
    if umask > 0o777 or (umask and not context & CONTEXT_UMASK):
        raise RemoteProtocolError(f"umask {umask:#o} beyond 0o777 or without its bit")
    if (fsuid and not context & CONTEXT_FSUID) or (fsgid and not context & CONTEXT_FSGID):
        raise RemoteProtocolError("fsuid or fsgid without its bit")
    if ngroups > MAX_GROUPS or (ngroups and not context & CONTEXT_GROUPS):
        raise RemoteProtocolError(f"{ngroups} groups (at most {MAX_GROUPS}, and only with the groups bit)")
    return {
        "umask": umask if context & CONTEXT_UMASK else None,
        "fsuid": fsuid if context & CONTEXT_FSUID else None,
        "fsgid": fsgid if context & CONTEXT_FSGID else None,
        "groups": _groups_of(data[REQUEST.size : REQUEST.size + ngroups * GROUP.size])
        if context & CONTEXT_GROUPS
        else None,
    }


@functools.lru_cache(maxsize=64)
def _groups_of(raw: bytes) -> tuple[int, ...]:
    # A process sends the same groups on every call: decode them once.
    return struct.unpack(f"<{len(raw) // GROUP.size}I", raw)


def _fs_path(raw: bytes, what: str, text: bool = False) -> PurePosixPath | str:
    if not raw:
        raise RemoteProtocolError(f"{what} is empty")
    if len(raw) > PATH_MAX_BYTES:
        raise RemoteProtocolError(f"{what} of {len(raw)} bytes exceeds {PATH_MAX_BYTES}")
    if b"\0" in raw:
        raise RemoteProtocolError(f"{what} contains NUL")
    return _text_of(raw) if text else _path_of(raw)


@functools.lru_cache(maxsize=1024)
def _path_of(raw: bytes) -> PurePosixPath:
    # Building a PurePosixPath is a third of decoding a request
    # (docs/performance.md); programs stat and open the same paths over and over. Paths are
    # immutable, so requests may share one.
    return requests.exact_path(os.fsdecode(raw))


@functools.lru_cache(maxsize=1024)
def _text_of(raw: bytes) -> str:
    return os.fsdecode(raw)


def _unix_path(raw: bytes, text: bool = False) -> PurePosixPath | str:
    if not raw or len(raw) > UNIX_PATH_MAX:
        raise RemoteProtocolError(f"unix socket path of {len(raw)} bytes (1..{UNIX_PATH_MAX})")
    if raw[0] != 0 and b"\0" in raw:
        raise RemoteProtocolError("unix socket path contains NUL")
    return os.fsdecode(raw) if text else requests.exact_path(os.fsdecode(raw))


def _name(raw: bytes, present: int, limit: int, what: str) -> str | None:
    if not present:
        if raw:
            raise RemoteProtocolError(f"absent {what} has bytes")
        return None
    if len(raw) > limit:
        raise RemoteProtocolError(f"{what} of {len(raw)} bytes exceeds {limit}")
    if b"\0" in raw:
        raise RemoteProtocolError(f"{what} contains NUL")
    return os.fsdecode(raw)


def _mode(arg: int) -> int:
    if arg > 0o7777:
        raise RemoteProtocolError(f"mode {arg:#o} has bits beyond 0o7777")
    return arg


def _open_fields(function: str, flags: int, arg: int) -> dict[str, Any]:
    allowed = _OPENAT_MASK if function == "openat" else _OPEN_ONLY_MASK
    if flags & ~allowed:
        raise RemoteProtocolError(f"unknown {function} flag bits {flags & ~allowed:#x}")
    if (flags & _ACCESS_MODE_BITS).bit_count() != 1:
        raise RemoteProtocolError("exactly one access mode flag must be set")
    takes_mode = bool(flags & _TAKES_MODE_BITS)
    if arg and not takes_mode:
        raise RemoteProtocolError("mode given without create or temporary")
    return {"flags": _open_flag_names(flags), "mode": _mode(arg) if takes_mode else None}


@functools.lru_cache(maxsize=256)
def _open_flag_names(flags: int) -> frozenset[str]:
    return frozenset(name for name, bit in _OPEN_FLAG_BY_BIT if flags & bit)


# ------------------------------------------------------------------ replies


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    """One reply as it travels: which call it answers, and the answer."""

    function: str
    tid: int
    request_id: int
    result: Result = 0
    errno: int = 0
    forward: bool = False


def encode_reply(reply: ReplyMessage, nfds: int = 0) -> bytes:
    """Encode a reply that will travel with ``nfds`` descriptors.

    Raises ``TypeError`` when the result's type does not fit the function
    and :class:`LocalProtocolError` (a ``ValueError``) for an out-of-range
    value: a policy bug, caught before anything is sent.
    """
    return encode_reply_to(reply.function, reply.tid, reply.request_id, reply.result, reply.errno, reply.forward, nfds)


def encode_reply_to(
    function: str,
    tid: int,
    request_id: int,
    result: Result = 0,
    errno: int = 0,
    forward: bool = False,
    nfds: int = 0,
) -> bytes:
    """:func:`encode_reply` of ``ReplyMessage(function, tid, request_id, result, errno, forward)``.

    For the master's hot path: building the frozen dataclass first is a
    measurable share of a reply's cost (docs/performance.md).
    """
    if function not in CODE:
        raise LocalProtocolError(f"unknown function {function!r}")
    if nfds > reply_fd_limit(function):
        raise LocalProtocolError(
            f"a {function} reply carries at most {reply_fd_limit(function)} descriptors, not {nfds}"
        )
    if not 0 <= errno < 2**31:
        raise LocalProtocolError(f"errno {errno} out of range")
    payload = b""
    kind = KIND_NONE
    count = 0
    if forward:
        if nfds:
            raise LocalProtocolError("a forward reply carries no descriptors")
        value = 0
        errno = 0
    elif function == "getaddrinfo":
        value, kind, payload, count = _getaddrinfo_payload(result, errno)
    elif errno:
        if isinstance(result, bool) or not isinstance(result, int):
            raise TypeError(f"a failed {function} has an int result (-1), not {type(result).__name__}")
        value = -1
    elif function in ("stat", "lstat"):
        if not isinstance(result, replies.Stat):
            raise TypeError(f"{function} succeeds with a Stat, not {type(result).__name__}")
        value, kind, payload = 0, KIND_STAT, _encode_stat(result)
    else:
        if isinstance(result, bool) or not isinstance(result, int):
            raise TypeError(f"{function} results in an int, not {type(result).__name__}")
        if not -(2**63) <= result < 2**63:
            raise LocalProtocolError(f"result {result} does not fit in 64 bits")
        value = result
    try:
        header = REPLY.pack(
            REPLY_MAGIC,
            VERSION,
            CODE[function],
            tid,
            errno,
            request_id,
            value,
            ACTION_FORWARD if forward else ACTION_RESULT,
            kind,
            count,
            _RESERVED_REPLY,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"a {function} reply field is out of range: {exc}") from None
    return header + payload


def _getaddrinfo_payload(result: Result, errno: int) -> tuple[int, int, bytes, int]:
    if errno and (isinstance(result, int) and not isinstance(result, bool)):
        return GAI_ERRORS.index("system") + 1, KIND_GAI_ERROR, b"", 0
    if isinstance(result, str):
        if result not in GAI_ERRORS:
            raise LocalProtocolError(f"unknown getaddrinfo error {result!r}; one of {', '.join(GAI_ERRORS)}")
        if (result == "system") != bool(errno):
            raise LocalProtocolError("the 'system' getaddrinfo error, and only it, carries an errno")
        return GAI_ERRORS.index(result) + 1, KIND_GAI_ERROR, b"", 0
    if not isinstance(result, list) or not all(isinstance(a, replies.AddrInfo) for a in result):
        raise TypeError(f"getaddrinfo results in a list of AddrInfo or an error name, not {type(result).__name__}")
    if errno:
        raise LocalProtocolError("a getaddrinfo answer with addresses carries no errno")
    if len(result) > MAX_ADDRINFO:
        raise LocalProtocolError(f"at most {MAX_ADDRINFO} addresses per answer, not {len(result)}")
    payload = b"".join(_encode_addrinfo(entry) for entry in result)
    return 0, KIND_ADDRINFO, payload, len(result)


def _encode_stat(st: Stat) -> bytes:
    # A Stat built without validation must not produce a record the slave rejects.
    if not 0 <= st.mode <= 0o7777:
        raise LocalProtocolError(f"stat mode {st.mode:#o} is not permission bits")
    if st.type not in _FILE_TYPE_CODE:
        raise LocalProtocolError(f"unknown file type {st.type!r}")
    present = (STAT_BTIME if st.btime is not None else 0) | (STAT_MNT_ID if st.mnt_id is not None else 0)
    try:
        (asec, ansec), (msec, mnsec), (csec, cnsec), (bsec, bnsec) = (
            divmod(operator.index(t), _NS) for t in (st.atime, st.mtime, st.ctime, st.btime or 0)
        )
        return STAT.pack(
            st.dev,
            st.ino,
            st.nlink,
            st.rdev,
            st.size,
            st.blksize,
            st.blocks,
            asec,
            msec,
            csec,
            st.mode,
            _FILE_TYPE_CODE[st.type],
            st.uid,
            st.gid,
            ansec,
            mnsec,
            cnsec,
            bnsec,
            bsec,
            st.attributes,
            st.attributes_mask,
            st.mnt_id or 0,
            present,
            0,
        )
    except (struct.error, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"a stat field is out of range: {exc}") from None


def _encode_addrinfo(entry: AddrInfo) -> bytes:
    ip = entry.address
    scope = int(ip.scope_id) if isinstance(ip, IPv6Address) and ip.scope_id else 0
    try:
        return ADDRINFO.pack(ip.version, entry.port, scope, ip.packed.ljust(16, b"\0"))
    except struct.error as exc:
        raise LocalProtocolError(f"address {ip} port {entry.port}: out of range: {exc}") from None


def decode_reply(data: bytes, nfds: int = 0) -> ReplyMessage:
    """Decode and validate one reply datagram that came with ``nfds`` descriptors."""
    if len(data) < REPLY.size:
        raise RemoteProtocolError(f"reply of {len(data)} bytes is shorter than its {REPLY.size}-byte header")
    if len(data) > MAX_MESSAGE:
        raise RemoteProtocolError(f"reply of {len(data)} bytes exceeds {MAX_MESSAGE}")
    (magic, version, code, tid, errno, request_id, value, action, kind, count, reserved) = REPLY.unpack_from(data)
    if magic != REPLY_MAGIC:
        raise RemoteProtocolError(f"bad reply magic {magic!r}")
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version}")
    if not 1 <= code <= len(FUNCTIONS):
        raise RemoteProtocolError(f"unknown function code {code}")
    if reserved != _RESERVED_REPLY:
        raise RemoteProtocolError("reserved reply bytes are set")
    function = FUNCTIONS[code - 1]
    if nfds > reply_fd_limit(function):
        raise RemoteProtocolError(f"{nfds} descriptors on a {function} reply")
    payload = data[REPLY.size :]
    base = ReplyMessage(function, tid, request_id)
    if action == ACTION_FORWARD:
        if value or errno or kind or count or payload or nfds:
            raise RemoteProtocolError("a forward reply carries nothing else")
        return ReplyMessage(function, tid, request_id, forward=True)
    if action != ACTION_RESULT:
        raise RemoteProtocolError(f"unknown reply action {action}")
    if kind != KIND_ADDRINFO and count:
        raise RemoteProtocolError("count set on a reply without addresses")
    result: Result
    if kind == KIND_NONE:
        if payload:
            raise RemoteProtocolError("payload on a reply of kind none")
        if function == "getaddrinfo":
            raise RemoteProtocolError("a getaddrinfo reply has addresses or an error code")
        if function in ("stat", "lstat") and not errno:
            raise RemoteProtocolError(f"a successful {function} reply carries a stat record")
        if errno and value != -1:
            raise RemoteProtocolError("a failed call's result must be -1")
        result = value
    elif kind == KIND_STAT:
        if function not in ("stat", "lstat") or errno or value:
            raise RemoteProtocolError(f"stat record on a {function} reply")
        if len(payload) != STAT.size:
            raise RemoteProtocolError(f"stat record of {len(payload)} bytes")
        result = _decode_stat(payload)
    elif kind == KIND_ADDRINFO:
        if function != "getaddrinfo" or errno or value:
            raise RemoteProtocolError(f"addresses on a {function} reply")
        if count > MAX_ADDRINFO or len(payload) != count * ADDRINFO.size:
            raise RemoteProtocolError(f"{count} addresses in {len(payload)} payload bytes")
        result = [_decode_addrinfo(payload, i * ADDRINFO.size) for i in range(count)]
    elif kind == KIND_GAI_ERROR:
        if function != "getaddrinfo" or payload:
            raise RemoteProtocolError(f"getaddrinfo error on a {function} reply")
        if not 1 <= value <= len(GAI_ERRORS):
            raise RemoteProtocolError(f"unknown getaddrinfo error code {value}")
        result = GAI_ERRORS[value - 1]
        if (result == "system") != bool(errno):
            raise RemoteProtocolError("errno goes with the system error only")
    else:
        raise RemoteProtocolError(f"unknown payload kind {kind}")
    return ReplyMessage(base.function, tid, request_id, result, errno)


def _decode_stat(payload: bytes) -> Stat:
    (
        dev,
        ino,
        nlink,
        rdev,
        size,
        blksize,
        blocks,
        asec,
        msec,
        csec,
        mode,
        type_code,
        uid,
        gid,
        ansec,
        mnsec,
        cnsec,
        bnsec,
        bsec,
        attributes,
        attributes_mask,
        mnt_id,
        present,
        reserved,
    ) = STAT.unpack(payload)
    if mode > 0o7777:
        raise RemoteProtocolError(f"stat mode {mode:#o} has bits beyond 0o7777")
    if not 1 <= type_code <= len(FILE_TYPES):
        raise RemoteProtocolError(f"unknown file type code {type_code}")
    if max(ansec, mnsec, cnsec, bnsec) >= _NS:
        raise RemoteProtocolError("a stat time's ns part is 10**9 or more")
    if present & ~(STAT_BTIME | STAT_MNT_ID) or reserved:
        raise RemoteProtocolError("reserved stat record bits are set")
    if not present & STAT_BTIME and (bsec or bnsec):
        raise RemoteProtocolError("a birth time on a record that has none")
    if not present & STAT_MNT_ID and mnt_id:
        raise RemoteProtocolError("a mount id on a record that has none")
    return replies.Stat.model_construct(
        dev=dev,
        ino=ino,
        mode=mode,
        type=FILE_TYPES[type_code - 1],
        nlink=nlink,
        uid=uid,
        gid=gid,
        rdev=rdev,
        size=size,
        blksize=blksize,
        blocks=blocks,
        atime=asec * _NS + ansec,
        mtime=msec * _NS + mnsec,
        ctime=csec * _NS + cnsec,
        btime=bsec * _NS + bnsec if present & STAT_BTIME else None,
        attributes=attributes,
        attributes_mask=attributes_mask,
        mnt_id=mnt_id if present & STAT_MNT_ID else None,
    )


def _decode_addrinfo(payload: bytes, offset: int) -> AddrInfo:
    family, port, scope, raw = ADDRINFO.unpack_from(payload, offset)
    ip: IPv4Address | IPv6Address
    if family == 4:
        if raw[4:] != bytes(12) or scope:
            raise RemoteProtocolError("IPv4 address entry with IPv6 bytes or a scope")
        ip = IPv4Address(raw[:4])
    elif family == 6:
        ip = IPv6Address(raw) if not scope else IPv6Address(f"{IPv6Address(raw)}%{scope}")
    else:
        raise RemoteProtocolError(f"unknown address family {family}")
    return replies.AddrInfo.model_construct(address=ip, port=port)


# ------------------------------------------------------------- registration


def encode_registration(pid: int) -> bytes:
    """The hello a new process sends with its channel end."""
    return REGISTRATION.pack(HELLO_MAGIC, VERSION, 0, pid, 0)


def decode_registration(data: bytes, nfds: int) -> int:
    """Validate a registration datagram; returns the registering pid."""
    if len(data) != REGISTRATION.size:
        raise RemoteProtocolError(f"registration of {len(data)} bytes, expected {REGISTRATION.size}")
    magic, version, reserved1, pid, reserved2 = REGISTRATION.unpack(data)
    if magic != HELLO_MAGIC or version != VERSION:
        raise RemoteProtocolError("bad registration magic or version")
    if reserved1 or reserved2 or pid == 0:
        raise RemoteProtocolError("bad registration fields")
    if nfds != 1:
        raise RemoteProtocolError(f"a registration carries exactly one descriptor, not {nfds}")
    return int(pid)


# ---------------------------------------------------------------- reports

#: magic, version, outcome (1 forwarded by the rules, 2 denied by the rules,
#: 3 forwarded by the master), reserved, errno, reports the process lost
#: before this one, the call's result, the nanoseconds the real call took
#: (measured by the shim around it; 0 for a denial); then, for outcomes 1 and 2, the
#: :data:`REPORT_NAMES`, the names and the request as the shim encodes it,
#: for outcome 3 :data:`REPORT_CALL`.
REPORT: Final = struct.Struct("<4sHBBIIqQ")
#: The lengths of the names that follow it, then the request: the
#: directories a decided call's relative paths are relative to (its first
#: path's, its second's: rename's new path; 0 for none), and in a process's
#: first report its executable and its arguments (``/proc/self/cmdline``:
#: each ends with a NUL).
REPORT_NAMES: Final = struct.Struct("<HHHH")
#: The most bytes of arguments a report carries (whole arguments only).
REPORT_ARGV_MAX: Final = 4096
#: The call the master answered "forward": its request's pid, tid, id and function; reserved.
REPORT_CALL: Final = struct.Struct("<IIQHH")
_REPORT_OUTCOMES: Final = {1: "forward", 2: "deny", 3: "result"}


@dataclass(frozen=True, slots=True)
class Report:
    """A call the shim decided with the policy's rule table, told afterwards (``docs/protocol.md``)."""

    request: Request
    #: ``"forward"`` (the slave did the call itself) or ``"deny"`` (failed with ``errno``).
    outcome: Literal["forward", "deny"]
    errno: int
    #: Reports the process could not send before this one (the socket was full).
    lost: int
    #: What the call returned (-1 with ``errno`` on failure; a denial's is -1).
    result: int = -1
    #: The absolute name of the directory the first relative path is relative
    #: to (``path``, ``path1``), as the shim read it; ``None`` for an absolute
    #: path or a directory the shim could not name (no ``/proc``, removed).
    directory: str | None = None
    #: The same for the second path (``rename``'s ``path2``).
    directory2: str | None = None
    #: In a process's first report (after ``exec`` or ``fork``): the program
    #: it runs, its executable and arguments, as the shim read them.
    program: tuple[str, tuple[str, ...]] | None = None
    #: How long the real call took, in nanoseconds, as the shim measured it around the call (0: a denial).
    duration_ns: int = 0


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What the slave's own call returned after the master answered ``FORWARD`` (report outcome 3).

    ``result`` is the call's return value (-1 with ``errno`` on failure); for
    getaddrinfo 0, the protocol's code of an error it names (1-9, see
    :data:`GAI_ERRORS`, ``errno`` set with ``system``) or glibc's own code.
    """

    pid: int
    tid: int
    request_id: int
    function: str
    result: int
    errno: int
    lost: int
    #: How long the slave's own call took, in nanoseconds, as the shim measured it around the call.
    duration_ns: int = 0


class PlainReport(NamedTuple):
    """A :class:`Report` as plain data: its request as the function's name and its fields (:func:`request_fields`).

    A named tuple: built once per report on ``trace``'s path, where a frozen
    dataclass's ``__init__`` cost as much as decoding the request's header.
    """

    function: str
    fields: dict[str, Any]
    outcome: Literal["forward", "deny"]
    errno: int
    lost: int
    result: int
    directory: str | None
    directory2: str | None
    program: tuple[str, tuple[str, ...]] | None
    duration_ns: int


def decode_report(data: bytes) -> Report | ForwardResult:
    """Decode and validate one report datagram (it carries no descriptors)."""
    parts = _report_parts(data, text=False)
    if isinstance(parts, ForwardResult):
        return parts
    return Report(
        cast("Request", _construct(parts.function, parts.fields)),
        parts.outcome,
        parts.errno,
        parts.lost,
        parts.result,
        parts.directory,
        parts.directory2,
        parts.program,
        parts.duration_ns,
    )


def plain_report(data: bytes) -> PlainReport | ForwardResult:
    """One report datagram validated as :func:`decode_report` validates it, with no request model built.

    For observers that only show the call (``trace``): the request models
    are not loaded, and a malformed report is refused where
    :func:`decode_report` refuses it.
    """
    return _report_parts(data, text=True)


def _report_parts(data: bytes, *, text: bool) -> PlainReport | ForwardResult:
    if len(data) < REPORT.size:
        raise RemoteProtocolError(f"report of {len(data)} bytes is shorter than its {REPORT.size}-byte header")
    magic, version, outcome, reserved, errno, lost, result, duration = REPORT.unpack_from(data)
    if magic != REPORT_MAGIC or version != VERSION:
        raise RemoteProtocolError("bad report magic or version")
    if reserved or outcome not in _REPORT_OUTCOMES:
        raise RemoteProtocolError(f"bad report outcome {outcome}")
    if errno >= 4096 or (outcome == 2 and not errno):
        raise RemoteProtocolError(f"report errno {errno} does not fit its outcome")
    if outcome == 2 and duration:
        raise RemoteProtocolError("a denial's report with a duration: there was no call")
    if outcome == 3:
        if len(data) != REPORT.size + REPORT_CALL.size:
            raise RemoteProtocolError(
                f"a forwarded call's report of {len(data)} bytes, expected {REPORT.size + REPORT_CALL.size}"
            )
        pid, tid, request_id, code, reserved = REPORT_CALL.unpack_from(data, REPORT.size)
        if reserved or not 1 <= code <= len(FUNCTIONS):
            raise RemoteProtocolError(f"bad function {code} in a forwarded call's report")
        return ForwardResult(pid, tid, request_id, FUNCTIONS[code - 1], result, errno, lost, duration)
    if len(data) < REPORT.size + REPORT_NAMES.size:
        raise RemoteProtocolError(f"report of {len(data)} bytes has no name lengths")
    dir1, dir2, exe, argv = REPORT_NAMES.unpack_from(data, REPORT.size)
    start = REPORT.size + REPORT_NAMES.size
    end = start + dir1 + dir2 + exe + argv
    if end > len(data):
        raise RemoteProtocolError(f"report name lengths {dir1}+{dir2}+{exe}+{argv} exceed its {len(data)} bytes")
    function, fields = _request_fields(data[end:], (), text=text)
    program = None
    if exe:
        at = start + dir1 + dir2
        program = _program_of(data[at : at + exe], data[at + exe : end])
    elif argv:
        raise RemoteProtocolError("a report's arguments without its executable")
    return PlainReport(
        function,
        fields,
        "forward" if outcome == 1 else "deny",
        errno,
        lost,
        result if outcome == 1 else -1,
        _directory_of(data[start : start + dir1]),
        _directory_of(data[start + dir1 : start + dir1 + dir2]),
        program,
        duration,
    )


def _program_of(exe: bytes, argv: bytes) -> tuple[str, tuple[str, ...]]:
    if len(argv) > REPORT_ARGV_MAX or (argv and not argv.endswith(b"\0")):
        raise RemoteProtocolError("a report's arguments are not NUL-terminated within their limit")
    return _directory_of(exe) or "", tuple(os.fsdecode(arg) for arg in argv.split(b"\0")[:-1])


def _directory_of(raw: bytes) -> str | None:
    """A report's directory (or executable) name, ``None`` when empty: absolute, no NUL."""
    if not raw:
        return None
    if raw[:1] != b"/" or b"\0" in raw:
        raise RemoteProtocolError("a report's directory or executable name is not an absolute path")
    return os.fsdecode(raw)
