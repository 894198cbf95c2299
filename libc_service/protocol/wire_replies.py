"""The reply: the master's answer to one call, with its stat record or addresses (``docs/protocol.md``)."""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Final

from libc_service.protocol.catalogue import FILE_TYPES, FUNCTIONS, GAI_ERRORS
from libc_service.protocol import replies  # loaded on first use (libc_service/__init__.py)
from libc_service.protocol.wire_header import (
    CODE,
    MAX_ADDRINFO,
    MAX_MESSAGE,
    REPLY_MAGIC,
    VERSION,
    LocalProtocolError,
    RemoteProtocolError,
    reply_fd_limit,
)

if TYPE_CHECKING:
    from libc_service.protocol.replies import AddrInfo, Result, Stat

__all__ = [
    "ACTION_FORWARD",
    "ACTION_RESULT",
    "ADDRINFO",
    "KIND_ADDRINFO",
    "KIND_GAI_ERROR",
    "KIND_NONE",
    "KIND_STAT",
    "REPLY",
    "STAT",
    "STAT_BTIME",
    "STAT_MNT_ID",
    "ReplyMessage",
    "decode_reply",
    "encode_reply",
    "encode_reply_to",
]

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
_RESERVED_REPLY: Final = bytes(12)

_FILE_TYPE_CODE: Final = {name: code for code, name in enumerate(FILE_TYPES, 1)}

ACTION_RESULT: Final = 0
ACTION_FORWARD: Final = 1
KIND_NONE: Final = 0
KIND_STAT: Final = 1
KIND_ADDRINFO: Final = 2
KIND_GAI_ERROR: Final = 3


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
