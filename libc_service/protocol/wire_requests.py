"""The request: a slave's call as one datagram, encoded and fully checked (``docs/protocol.md``).

Its header's fields are encoded and checked by :mod:`libc_service.protocol.wire_fields`;
the models are built without a second validation
(:func:`libc_service.protocol.construct.construct`): the bytes are checked here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from libc_service.protocol.catalogue import (
    FUNCTIONS,
    INET6_FUNCTIONS,
    INET_FUNCTIONS,
    MAX_GROUPS,
    METADATA_FD_FUNCTIONS,
    METADATA_FUNCTIONS,
    NODE_MAX,
    PATH_FUNCTIONS,
    PATH_MAX_BYTES,
    SERVICE_MAX,
    UNIX_FUNCTIONS,
    UNIX_PATH_MAX,
)
from libc_service.protocol import requests  # loaded on first use (libc_service/__init__.py)
from libc_service.protocol.openflags import OPEN_FLAG_BITS
from libc_service.protocol.construct import construct
from libc_service.protocol.wire_fields import (
    CONTEXT_BITS,
    GROUP,
    NO_ADDRESS,
    ROLE_DIR1,
    ROLE_DIR2,
    ROLE_SOCKET,
    context_fields,
    context_of,
    encode_metadata,
    fs_path,
    groups_of,
    metadata_fields,
    mode_of,
    name_of,
    open_fields,
    unix_path,
)
from libc_service.protocol.wire_header import (
    CODE,
    MAX_MESSAGE,
    REQUEST_MAGIC,
    VERSION,
    LocalProtocolError,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request

__all__ = [
    "AMODE_BITS",
    "PROTOCOL_NUMBER",
    "RENAME_NO_REPLACE",
    "REQUEST",
    "build_request",
    "decode_request",
    "decode_request_fields",
    "encode_request",
    "request_fields",
]

#: magic, version, function, pid, tid, request id, flags, arg, address,
#: scope id, len1, len2, fd roles, context bits, umask, group count,
#: 3 reserved bytes, fsuid, fsgid.
REQUEST: Final = struct.Struct("<4sHHIIQII16sIHHBBHB3sII")

_RESERVED_REQUEST: Final = bytes(3)

#: rename's only flag: fail with EEXIST rather than replace path2
#: (``renameat2``'s ``RENAME_NOREPLACE``, which ``mv`` asks for first).
RENAME_NO_REPLACE: Final = 1
AMODE_BITS: Final[dict[str, int]] = {"r": 4, "w": 2, "x": 1}
PROTOCOL_NUMBER: Final[dict[str | None, int]] = {None: 0, "tcp": 6, "udp": 17}
_PROTOCOL_BY_NUMBER: Final = {number: name for name, number in PROTOCOL_NUMBER.items()}

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


def encode_request(request: Request) -> tuple[bytes, list[int]]:
    """Encode a request; the descriptors come from its descriptor fields.

    Raises :class:`LocalProtocolError` (a ``ValueError``) for a value the
    protocol cannot carry (possible only for a model built without
    validation): the encoder never produces a message the decoder rejects
    for its sizes or ranges.
    """
    flags = arg = scope = 0
    address = NO_ADDRESS
    string1 = string2 = b""
    roles = 0
    fds: list[int] = []
    for bit, name in _ROLE_FIELDS[request.function]:
        fd = getattr(request, name)
        if fd is not None:
            roles |= bit
            fds.append(fd)
    context, umask, fsuid, fsgid, groups = context_of(request)
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
            flags, arg, address = encode_metadata(request)
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


def decode_request(data: bytes, fds: Sequence[int] = ()) -> Request:
    """Decode and fully validate one request datagram.

    ``fds`` are the descriptors received with it (master-side numbers); they
    become the request's ``dirfd``/``socket`` fields. Raises
    :class:`RemoteProtocolError` for anything malformed; the caller then closes
    ``fds``.
    """
    function, fields = decode_request_fields(data, fds, text=False)
    # build_request, inline: this runs once per call on the hot path.
    try:
        return construct(function, fields)
    except ValueError as exc:
        raise RemoteProtocolError(f"{function} request: {exc}") from None


def build_request(function: str, fields: dict[str, Any]) -> Request:
    """The model of a request :func:`decode_request_fields` checked, built without a second validation.

    Raises :class:`RemoteProtocolError` if a model that validates (not plain
    data, see :func:`~libc_service.protocol.construct.construct`) refuses
    what the checks let through.
    """
    try:
        return construct(function, fields)
    except ValueError as exc:
        raise RemoteProtocolError(f"{function} request: {exc}") from None


def request_fields(data: bytes) -> tuple[str, dict[str, Any]]:
    """One request datagram without descriptors, validated as :func:`decode_request` validates it,
    as its function's name and its fields as plain data: paths are ``str``, no model is built.

    For readers that only show a request (``trace`` writes a report's call
    as a line): the request models are not loaded, and a malformed datagram
    is refused exactly where :func:`decode_request` refuses it.
    """
    return decode_request_fields(data, (), text=True)


def decode_request_fields(data: bytes, fds: Sequence[int], *, text: bool) -> tuple[str, dict[str, Any]]:
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
    if context == CONTEXT_BITS and umask <= 0o777 and ngroups <= MAX_GROUPS:  # the shim's every call
        common = {
            "function": function,
            "pid": pid,
            "tid": tid,
            "request_id": request_id,
            "umask": umask,
            "fsuid": fsuid,
            "fsgid": fsgid,
            "groups": groups_of(data[REQUEST.size : start]),
        }
    else:
        common = {
            "function": function,
            "pid": pid,
            "tid": tid,
            "request_id": request_id,
            **context_fields(context, umask, fsuid, fsgid, ngroups, data[REQUEST.size : start]),
        }
    fd_iter = iter(fds)

    def no(what: str, value: object) -> None:
        if value:
            raise RemoteProtocolError(f"{function} does not use {what}")

    if function in PATH_FUNCTIONS:
        if len2 or scope or roles & ~ROLE_DIR1 or address != NO_ADDRESS:  # one test on the hot path
            no("string2", len2)
            no("an address", address != NO_ADDRESS or scope)
            no("those descriptor roles", roles & ~ROLE_DIR1)
        fields = common | {"path": fs_path(string1, "path", text), "dirfd": next(fd_iter) if roles else None}
        if function in ("open", "openat"):
            fields |= open_fields(function, flags, arg)
        elif function in ("access", "eaccess"):
            no("arg", arg)
            if flags & ~7:
                raise RemoteProtocolError(f"unknown amode bits {flags:#x}")
            fields["amode"] = "f" if flags == 0 else frozenset(m for m, b in AMODE_BITS.items() if flags & b)
        elif function == "mkdir":
            no("flags", flags)
            fields["mode"] = mode_of(arg)
        else:
            no("flags", flags)
            no("arg", arg)
    elif function == "rename":
        no("arg", arg)
        if flags & ~RENAME_NO_REPLACE:
            raise RemoteProtocolError(f"unknown rename flag bits {flags & ~RENAME_NO_REPLACE:#x}")
        no("an address", address != NO_ADDRESS or scope)
        no("the socket role", roles & ROLE_SOCKET)
        fields = common | {
            "path1": fs_path(string1, "path1", text),
            "path2": fs_path(string2, "path2", text),
            "dirfd1": next(fd_iter) if roles & ROLE_DIR1 else None,
            "dirfd2": next(fd_iter) if roles & ROLE_DIR2 else None,
            "no_replace": bool(flags & RENAME_NO_REPLACE),
        }
    elif function in UNIX_FUNCTIONS:
        no("flags or arg", flags or arg)
        no("an address", address != NO_ADDRESS or scope)
        no("string2", len2)
        if roles & ~ROLE_DIR1 != ROLE_SOCKET:
            raise RemoteProtocolError(f"{function} needs the slave's socket, and a directory at most")
        if roles & ROLE_DIR1 and string1[:1] in (b"\0", b"/"):
            raise RemoteProtocolError(f"a directory with the abstract or absolute {function} path")
        dirfd = next(fd_iter) if roles & ROLE_DIR1 else None
        fields = common | {"path": unix_path(string1, text), "socket": next(fd_iter), "dirfd": dirfd}
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
        fields = common | metadata_fields(function, flags, arg, address, scope, roles, string1, len2, fd_iter, text)
    else:  # getaddrinfo
        no("descriptors", roles)
        no("an address", address != NO_ADDRESS or scope)
        if flags & ~3 or flags == 0:
            raise RemoteProtocolError(f"getaddrinfo presence bits {flags:#x} invalid")
        if arg not in _PROTOCOL_BY_NUMBER:
            raise RemoteProtocolError(f"unknown getaddrinfo protocol {arg}")
        fields = common | {
            "node": name_of(string1, flags & 1, NODE_MAX, "node"),
            "service": name_of(string2, flags & 2, SERVICE_MAX, "service"),
            "protocol": _PROTOCOL_BY_NUMBER[arg],
        }
    return function, fields
