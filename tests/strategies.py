"""Hypothesis strategies for requests and replies of all 17 functions, and
hand-packed wire messages for tests that must send what the codec would not.

Paths are drawn as bytes (so non-UTF-8 names arrive via surrogateescape),
with repeated, trailing and dot components the slave may well send.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address
from typing import Any, cast

from hypothesis import strategies as st

from libc_service import AddrInfo, Stat
from libc_service.protocol.replies import GAI_ERRORS
from libc_service.protocol.requests import (
    FUNCTIONS,
    MAX_GROUPS,
    NODE_MAX,
    OPEN_FLAGS,
    OPENAT_FLAGS,
    PATH_MAX_BYTES,
    REQUEST_TYPES,
    SERVICE_MAX,
    UNIX_PATH_MAX,
    Request,
)
from libc_service.protocol import wire_fields
from libc_service.protocol import wire_header
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_requests
from libc_service.protocol.wire_header import MAX_ADDRINFO
from libc_service.protocol.catalogue import FILE_TYPES

U32 = st.integers(1, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
PORTS = st.integers(0, 65535)
MODES = st.integers(0, 0o7777)
FDS = st.integers(0, 1 << 20)


def _no_nul(raw: bytes) -> bytes:
    return raw.replace(b"\0", b"\x01")


_PIECES = st.sampled_from([b"/", b"//", b".", b"..", b"./", b"a", b"dir/", b"\xff\xfe", "é".encode()])
# Cheap to draw: the suite makes thousands of these.
_SHORT_PATHS = st.one_of(
    st.binary(min_size=1, max_size=40).map(_no_nul),
    st.lists(_PIECES, min_size=1, max_size=5).map(b"".join),
)
# Long paths repeat a short chunk: hypothesis bounds the bytes it draws per example.
_LONG_PATHS = st.builds(
    lambda chunk, length: (chunk * length)[:length],
    st.binary(min_size=1, max_size=16).map(_no_nul),
    st.integers(PATH_MAX_BYTES - 64, PATH_MAX_BYTES),
)

#: A filesystem path as raw bytes: 1..4095 bytes, no NUL.
path_bytes = st.one_of(_SHORT_PATHS, _LONG_PATHS)
#: The same path as the str a Python program holds (non-UTF-8 via surrogateescape).
paths = path_bytes.map(os.fsdecode)

#: A ``sun_path``: a filesystem name, or an abstract one (leading NUL, any bytes after).
unix_path_bytes = st.one_of(
    st.binary(min_size=1, max_size=UNIX_PATH_MAX).map(_no_nul),
    st.binary(max_size=UNIX_PATH_MAX - 1).map(lambda raw: b"\0" + raw),
    st.lists(_PIECES, min_size=1, max_size=6).map(lambda parts: b"\0" + b"".join(parts)),
)
unix_paths = unix_path_bytes.map(os.fsdecode)

ipv4 = st.ip_addresses(v=4).map(lambda ip: IPv4Address(int(ip)))
#: IPv6 addresses, a third of them with a (numeric, non-zero) scope id.
ipv6 = st.one_of(
    st.ip_addresses(v=6).map(lambda ip: IPv6Address(int(ip))),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 2**32 - 1)).map(
        lambda pair: IPv6Address(f"{IPv6Address(int(pair[0]))}%{pair[1]}")
    ),
)


def _bounded_name(limit: int) -> st.SearchStrategy[str]:
    return st.binary(max_size=limit).map(_no_nul).map(os.fsdecode)


nodes = st.none() | _bounded_name(NODE_MAX) | st.sampled_from(["localhost", "example.org", "::1", "127.0.0.1"])
services = st.none() | _bounded_name(SERVICE_MAX) | st.sampled_from(["http", "443", "domain"])
protocols = st.sampled_from([None, "tcp", "udp"])

_ACCESS = ("read_only", "write_only", "read_write")


@st.composite
def open_flags_and_mode(draw: st.DrawFn, at: bool = False) -> tuple[frozenset[str], int | None]:
    """Exactly one access mode, any other flags; a mode iff create or temporary."""
    vocabulary = OPENAT_FLAGS if at else OPEN_FLAGS
    others = [flag for flag in vocabulary if flag not in _ACCESS]
    flags = frozenset({draw(st.sampled_from(_ACCESS)), *draw(st.sets(st.sampled_from(others)))})
    mode = draw(MODES) if flags & {"create", "temporary"} else None
    return flags, mode


amodes = st.one_of(
    st.just("f"),
    st.sets(st.sampled_from(["r", "w", "x"]), min_size=1).map(frozenset),
)

_ids: dict[str, Any] = {"pid": U32, "tid": U32, "request_id": U64}

IDS = st.integers(0, 2**32 - 1)
#: The caller's umask and credentials: each known or not (``None``), ids
#: at the edges of their range, group lists up to the protocol's limit.
context = st.fixed_dictionaries(
    {
        "umask": st.none() | st.integers(0, 0o777),
        "fsuid": st.none() | IDS | st.sampled_from([0, 65534, 2**32 - 2]),
        "fsgid": st.none() | IDS,
        "groups": st.none() | st.lists(IDS, max_size=4).map(tuple) | st.lists(IDS, max_size=MAX_GROUPS).map(tuple),
    }
)


@st.composite
def _open(draw: st.DrawFn, function: str) -> dict[str, Any]:
    flags, mode = draw(open_flags_and_mode(at=function == "openat"))
    return {"path": draw(paths), "flags": flags, "mode": mode, "dirfd": draw(st.none() | FDS)}


@st.composite
def _unix(draw: st.DrawFn) -> dict[str, Any]:
    """A socket path; a relative one may come with the slave's working directory."""
    path = draw(unix_paths)
    relative = not path.startswith(("\0", "/"))
    return {"path": path, "socket": draw(FDS), "dirfd": draw(st.none() | FDS) if relative else None}


@st.composite
def _getaddrinfo(draw: st.DrawFn) -> dict[str, Any]:
    node = draw(nodes)
    service = draw(services if node is not None else services.filter(lambda s: s is not None))
    return {"node": node, "service": service, "protocol": draw(protocols)}


_PATH_ONLY = {"path": paths, "dirfd": st.none() | FDS}
#: A metadata change's path, or the slave's descriptor for the f-variants.
_META_PATH = {**_PATH_ONLY, "no_follow": st.booleans()}
_META_FD = {"fd": FDS}
_OWNERS = {"owner": st.none() | IDS, "group": st.none() | IDS}
#: A new timestamp: ns at the edges of int64, or UTIME_NOW / UTIME_OMIT.
times = st.one_of(I64, st.sampled_from([0, -1, 10**9, "now", "omit"]))
_TIMES = {"atime": times, "mtime": times}

ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "open": _open("open"),
    "openat": _open("openat"),
    "unlink": st.fixed_dictionaries(_PATH_ONLY),
    "rmdir": st.fixed_dictionaries(_PATH_ONLY),
    "stat": st.fixed_dictionaries(_PATH_ONLY),
    "lstat": st.fixed_dictionaries(_PATH_ONLY),
    "access": st.fixed_dictionaries({**_PATH_ONLY, "amode": amodes}),
    "eaccess": st.fixed_dictionaries({**_PATH_ONLY, "amode": amodes}),
    "mkdir": st.fixed_dictionaries({**_PATH_ONLY, "mode": MODES}),
    "rename": st.fixed_dictionaries(
        {
            "path1": paths,
            "path2": paths,
            "dirfd1": st.none() | FDS,
            "dirfd2": st.none() | FDS,
            "no_replace": st.booleans(),
        }
    ),
    "connect_unix": _unix(),
    "bind_unix": _unix(),
    "connect_inet": st.fixed_dictionaries({"address": ipv4, "port": PORTS, "socket": FDS}),
    "bind_inet": st.fixed_dictionaries({"address": ipv4, "port": PORTS, "socket": FDS}),
    "connect_inet6": st.fixed_dictionaries({"address": ipv6, "port": PORTS, "socket": FDS}),
    "bind_inet6": st.fixed_dictionaries({"address": ipv6, "port": PORTS, "socket": FDS}),
    "getaddrinfo": _getaddrinfo(),
    "chmod": st.fixed_dictionaries({**_META_PATH, "mode": MODES}),
    "fchmod": st.fixed_dictionaries({**_META_FD, "mode": MODES}),
    "chown": st.fixed_dictionaries({**_META_PATH, **_OWNERS}),
    "fchown": st.fixed_dictionaries({**_META_FD, **_OWNERS}),
    "utimens": st.fixed_dictionaries({**_META_PATH, **_TIMES}),
    "futimens": st.fixed_dictionaries({**_META_FD, **_TIMES}),
}
assert set(ARGUMENTS) == set(FUNCTIONS), "a strategy for every function"


def requests_of(function: str) -> st.SearchStrategy[Request]:
    """Validated requests of one function, with ids, context and descriptor numbers."""
    model: Any = REQUEST_TYPES[function]

    def build(ids: dict[str, int], known: dict[str, Any], arguments: dict[str, Any]) -> Request:
        return cast(Request, model(function=function, **ids, **known, **arguments))

    return st.builds(build, st.fixed_dictionaries(_ids), context, ARGUMENTS[function])


#: A request of any of the functions.
requests = st.sampled_from(FUNCTIONS).flatmap(requests_of)

# -------------------------------------------------------------------- replies

#: A time in ns as wide as struct timespec (int64 seconds), past 2262 too.
TIMESPECS = I64 | st.integers(-(2**63) * 10**9, 2**63 * 10**9 - 1)

stats = st.builds(
    Stat,
    dev=U64,
    ino=U64,
    mode=MODES,
    type=st.sampled_from(FILE_TYPES),
    nlink=U64,
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    rdev=U64,
    size=I64,
    blksize=I64,
    blocks=I64,
    atime=TIMESPECS,
    mtime=TIMESPECS,
    ctime=TIMESPECS,
    btime=st.none() | TIMESPECS,
    attributes=U64,
    attributes_mask=U64,
    mnt_id=st.none() | U64,
)

addrinfos = st.builds(AddrInfo, ipv4 | ipv6, PORTS)
addrinfo_lists = st.lists(addrinfos, max_size=MAX_ADDRINFO) | st.lists(addrinfos, max_size=4)
gai_errors = st.sampled_from([name for name in GAI_ERRORS if name != "system"])
errnos = st.integers(1, 2**31 - 1)

# ------------------------------------------------------ hand-packed messages

_FIELDS = (
    "magic",
    "version",
    "function",
    "pid",
    "tid",
    "request_id",
    "flags",
    "arg",
    "address",
    "scope",
    "len1",
    "len2",
    "roles",
    "context",
    "umask",
    "ngroups",
    "reserved",
    "fsuid",
    "fsgid",
)


def raw_request(
    string1: bytes = b"/etc/hostname", string2: bytes = b"", groups: tuple[int, ...] = (), **fields: Any
) -> bytes:
    """A request datagram packed by hand; by default a valid ``stat("/etc/hostname")``
    that says nothing of the caller's umask and credentials."""
    values: dict[str, Any] = {
        "magic": b"LCSq",
        "version": wire_header.VERSION,
        "function": wire_header.CODE["stat"],
        "pid": 7,
        "tid": 8,
        "request_id": 9,
        "flags": 0,
        "arg": 0,
        "address": bytes(16),
        "scope": 0,
        "len1": len(string1),
        "len2": len(string2),
        "roles": 0,
        "context": 0,
        "umask": 0,
        "ngroups": len(groups),
        "reserved": bytes(3),
        "fsuid": 0,
        "fsgid": 0,
    }
    legacy_reserved = fields.pop("reserved", None) if len(fields.get("reserved", b"")) == 7 else None
    values.update(fields)
    header = bytearray(wire_requests.REQUEST.pack(*(values[name] for name in _FIELDS)))
    if legacy_reserved is not None:
        # Version 1's seven reserved bytes after the fd roles (57-63): its
        # last bits are reserved in version 2 too.
        header[57:64] = legacy_reserved
    packed_groups = b"".join(wire_fields.GROUP.pack(gid) for gid in groups)
    return bytes(header) + packed_groups + string1 + string2


_REPLY_FIELDS = (
    "magic",
    "version",
    "function",
    "tid",
    "errno",
    "request_id",
    "result",
    "action",
    "kind",
    "count",
    "reserved",
)


def raw_reply(payload: bytes = b"", **fields: Any) -> bytes:
    """A reply datagram packed by hand; by default ``open`` answered with 3."""
    values: dict[str, Any] = {
        "magic": b"LCSr",
        "version": wire_header.VERSION,
        "function": wire_header.CODE["open"],
        "tid": 8,
        "errno": 0,
        "request_id": 9,
        "result": 3,
        "action": 0,
        "kind": 0,
        "count": 0,
        "reserved": bytes(12),
    }
    values.update(fields)
    return wire_replies.REPLY.pack(*(values[name] for name in _REPLY_FIELDS)) + payload
