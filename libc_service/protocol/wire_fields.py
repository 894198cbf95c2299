"""The fields of a request's header, field by field (``docs/protocol.md``).

:mod:`libc_service.protocol.wire_requests` frames a request; the fields whose
encoding is more than a number are encoded and checked here: the open
flags (their bits are :mod:`libc_service.protocol.openflags`'), the caller's umask
and credentials (the context), a metadata change's flags and address bytes
(chmod, chown, utimens), paths, names and modes. Each decoder raises
:class:`~libc_service.protocol.wire_header.RemoteProtocolError` for what the peer got
wrong; each encoder :class:`~libc_service.protocol.wire_header.LocalProtocolError`
for a value the protocol cannot carry.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final

from libc_service.protocol.paths import exact_path
from libc_service.protocol.catalogue import MAX_GROUPS, METADATA_FD_FUNCTIONS, OPEN_FLAGS, PATH_MAX_BYTES, UNIX_PATH_MAX
from libc_service.protocol import requests  # loaded on first use (libc_service/__init__.py)
from libc_service.protocol.openflags import OPEN_FLAG_BITS
from libc_service.protocol.wire_header import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
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
    "ATIME_NOW",
    "ATIME_OMIT",
    "CHOWN_GROUP",
    "CHOWN_OWNER",
    "CONTEXT_BITS",
    "CONTEXT_FSGID",
    "CONTEXT_FSUID",
    "CONTEXT_GROUPS",
    "CONTEXT_UMASK",
    "GROUP",
    "IDS",
    "META_NO_FOLLOW",
    "MTIME_NOW",
    "MTIME_OMIT",
    "NO_ADDRESS",
    "ROLE_DIR1",
    "ROLE_DIR2",
    "ROLE_SOCKET",
    "TIMES",
    "context_fields",
    "context_of",
    "encode_metadata",
    "fs_path",
    "groups_of",
    "metadata_fields",
    "mode_of",
    "name_of",
    "open_fields",
    "unix_path",
]

#: One supplementary group id; a request's groups follow its header.
GROUP: Final = struct.Struct("<I")
#: The address field of a request that carries no address.
NO_ADDRESS: Final = bytes(16)

_OPEN_ONLY_MASK: Final = sum(OPEN_FLAG_BITS[name] for name in OPEN_FLAGS)
_OPENAT_MASK: Final = sum(OPEN_FLAG_BITS.values())
_OPEN_FLAG_BY_BIT: Final = tuple(OPEN_FLAG_BITS.items())
_ACCESS_MODE_BITS: Final = OPEN_FLAG_BITS["read_only"] | OPEN_FLAG_BITS["write_only"] | OPEN_FLAG_BITS["read_write"]
_TAKES_MODE_BITS: Final = OPEN_FLAG_BITS["create"] | OPEN_FLAG_BITS["temporary"]

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

#: Descriptor roles: which of a request's descriptor fields travel (in this bit order).
ROLE_DIR1: Final = 1
ROLE_DIR2: Final = 2
ROLE_SOCKET: Final = 4

#: Context bits: which of the caller's umask and credentials the request carries.
CONTEXT_UMASK: Final = 1
CONTEXT_FSUID: Final = 2
CONTEXT_FSGID: Final = 4
CONTEXT_GROUPS: Final = 8
CONTEXT_BITS: Final = CONTEXT_UMASK | CONTEXT_FSUID | CONTEXT_FSGID | CONTEXT_GROUPS


def encode_metadata(
    request: ChmodRequest | FchmodRequest | ChownRequest | FchownRequest | UtimensRequest | FutimensRequest,
) -> tuple[int, int, bytes]:
    """Flags, arg and address field of a metadata change."""
    flags = META_NO_FOLLOW if getattr(request, "no_follow", False) else 0
    match request:
        case requests.ChmodRequest() | requests.FchmodRequest():
            return flags, request.mode, NO_ADDRESS
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


def context_of(request: Request) -> tuple[int, int, int, int, bytes]:
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


def metadata_fields(
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
            "path": fs_path(string1, "path", text),
            "dirfd": next(fds) if roles else None,
            "no_follow": bool(flags & META_NO_FOLLOW),
        }
    kind = function.removeprefix("f")
    if kind == "chmod":
        if flags & ~META_NO_FOLLOW or address != NO_ADDRESS:
            raise RemoteProtocolError(f"{function} carries only a mode")
        fields["mode"] = mode_of(arg)
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


_NO_CONTEXT: Final[dict[str, Any]] = {"umask": None, "fsuid": None, "fsgid": None, "groups": None}


def context_fields(context: int, umask: int, fsuid: int, fsgid: int, ngroups: int, groups: bytes) -> dict[str, Any]:
    """The umask and credential fields of a request header (``None``: not sent); ``groups`` are the raw group ids."""
    if not context:
        if umask or fsuid or fsgid or ngroups:
            raise RemoteProtocolError("context values without their context bits")
        return _NO_CONTEXT
    if context & ~CONTEXT_BITS:
        raise RemoteProtocolError(f"unknown context bits {context & ~CONTEXT_BITS:#x}")
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
        "groups": groups_of(groups) if context & CONTEXT_GROUPS else None,
    }


@functools.lru_cache(maxsize=64)
def groups_of(raw: bytes) -> tuple[int, ...]:
    # A process sends the same groups on every call: decode them once.
    return struct.unpack(f"<{len(raw) // GROUP.size}I", raw)


def fs_path(raw: bytes, what: str, text: bool = False) -> PurePosixPath | str:
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
    return exact_path(os.fsdecode(raw))


@functools.lru_cache(maxsize=1024)
def _text_of(raw: bytes) -> str:
    return os.fsdecode(raw)


def unix_path(raw: bytes, text: bool = False) -> PurePosixPath | str:
    if not raw or len(raw) > UNIX_PATH_MAX:
        raise RemoteProtocolError(f"unix socket path of {len(raw)} bytes (1..{UNIX_PATH_MAX})")
    if raw[0] != 0 and b"\0" in raw:
        raise RemoteProtocolError("unix socket path contains NUL")
    return os.fsdecode(raw) if text else exact_path(os.fsdecode(raw))


def name_of(raw: bytes, present: int, limit: int, what: str) -> str | None:
    if not present:
        if raw:
            raise RemoteProtocolError(f"absent {what} has bytes")
        return None
    if len(raw) > limit:
        raise RemoteProtocolError(f"{what} of {len(raw)} bytes exceeds {limit}")
    if b"\0" in raw:
        raise RemoteProtocolError(f"{what} contains NUL")
    return os.fsdecode(raw)


def mode_of(arg: int) -> int:
    if arg > 0o7777:
        raise RemoteProtocolError(f"mode {arg:#o} has bits beyond 0o7777")
    return arg


def open_fields(function: str, flags: int, arg: int) -> dict[str, Any]:
    allowed = _OPENAT_MASK if function == "openat" else _OPEN_ONLY_MASK
    if flags & ~allowed:
        raise RemoteProtocolError(f"unknown {function} flag bits {flags & ~allowed:#x}")
    if (flags & _ACCESS_MODE_BITS).bit_count() != 1:
        raise RemoteProtocolError("exactly one access mode flag must be set")
    takes_mode = bool(flags & _TAKES_MODE_BITS)
    if arg and not takes_mode:
        raise RemoteProtocolError("mode given without create or temporary")
    return {"flags": _open_flag_names(flags), "mode": mode_of(arg) if takes_mode else None}


@functools.lru_cache(maxsize=256)
def _open_flag_names(flags: int) -> frozenset[str]:
    return frozenset(name for name, bit in _OPEN_FLAG_BY_BIT if flags & bit)
