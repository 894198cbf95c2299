"""Typed requests: one frozen pydantic model per arbitrated function.

Every model carries a ``function`` literal tag, so :data:`Request` is a
discriminated union a handler can narrow with ``match`` or ``isinstance``.
Besides the call's arguments a request says who asked (``pid``, ``tid``) and
which call it is (``request_id``, echoed in the reply).

Every request also says what the kernel would use for the slave's call
besides its arguments, so that a master performing the call can be exact:

- ``umask``: the slave process's file mode creation mask (``0..0o777``).
- ``fsuid``, ``fsgid``: the calling thread's filesystem user and group ids
  (what the kernel checks permissions with; normally the effective ids).
- ``groups``: the calling thread's supplementary group ids, at most
  :data:`MAX_GROUPS`.

Each is ``None`` when unknown: the slave did not say (the Python
:class:`~libc_service.Slave` says only what its caller gives), or could not
say (``groups`` of a process in more than :data:`MAX_GROUPS` groups, whose
list the protocol does not carry). They are the slave's *word*: the shim
tells the truth, but a hostile slave speaking the protocol itself may claim
any value. So they make an honest slave's calls exact — a program that
dropped to ``nobody`` is not served as root — and never widen what the
policy lets the master do: :func:`~libc_service.acting.perform` acts at most with
the master's own authority, takes unknown supplementary groups as none, and
an unknown fsuid, fsgid or umask as the master's own.

Descriptors that travel with a request are fields too, holding descriptor
numbers *in the master*, valid until the reply goes out:

- ``dirfd`` (``dirfd1``/``dirfd2`` for rename): the directory a relative path
  is resolved against, i.e. the slave's dirfd or working directory; ``None``
  for an absolute path. ``connect_unix``/``bind_unix`` carry one for a
  relative socket path too (the slave's working directory).
- ``socket``: the slave's socket, for ``connect_*``/``bind_*``.

Models built from slave bytes by :mod:`libc_service.protocol.wire_requests` are validated by the
codec once and constructed without a second pass; models a program builds
itself (for :class:`~libc_service.Slave`) are validated by pydantic.
"""

from __future__ import annotations

import functools
import os
import socket as socket_module
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

__all__ = [
    "SERVICE_MAX",
    "NODE_MAX",
    "UNIX_PATH_MAX",
    "PATH_MAX_BYTES",
    "ACCESS_MODES",
    "FUNCTIONS",
    "OPENAT_FLAGS",
    "OPEN_FLAGS",
    "AccessMode",
    "AccessRequest",
    "BindInet6Request",
    "BindInetRequest",
    "BindUnixRequest",
    "ChmodRequest",
    "ChownRequest",
    "ConnectInet6Request",
    "ConnectInetRequest",
    "ConnectUnixRequest",
    "EaccessRequest",
    "FchmodRequest",
    "FchownRequest",
    "Function",
    "FutimensRequest",
    "GetaddrinfoRequest",
    "LstatRequest",
    "MkdirRequest",
    "OpenFlag",
    "OpenRequest",
    "OpenatFlag",
    "OpenatRequest",
    "RenameRequest",
    "Request",
    "RmdirRequest",
    "StatRequest",
    "UnlinkRequest",
    "UtimensRequest",
    "TIME_NS_MAX",
    "TIME_NS_MIN",
    "TimeSpec",
    "MAX_GROUPS",
]

from libc_service.protocol.catalogue import (  # the vocabulary, re-exported: requests are where users look for it
    ACCESS_MODES,
    FUNCTIONS,
    MAX_GROUPS,
    NODE_MAX,
    OPEN_FLAGS,
    OPENAT_FLAGS,
    PATH_MAX_BYTES,
    SERVICE_MAX,
    UNIX_PATH_MAX,
    AccessMode,
    Function,
    OpenatFlag,
    OpenFlag,
)

from libc_service.protocol.paths import check_fs_path, path_in

_ACCESS_MODE_FLAGS: Final = frozenset({"read_only", "write_only", "read_write"})

Port = Annotated[int, Field(ge=0, le=65535)]
Mode = Annotated[int, Field(ge=0, le=0o7777)]
Descriptor = Annotated[int, Field(ge=0)]
Id = Annotated[int, Field(ge=0, lt=2**32)]


class _Request(BaseModel):
    """Fields every request has: who asked, which call this is, and the
    caller's umask and filesystem credentials (``None``: unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    #: Positional order of ``arguments()`` for this function.
    ARGUMENTS: ClassVar[tuple[str, ...]] = ()
    #: Descriptor fields, in wire role order.
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ()

    pid: Annotated[int, Field(ge=0, lt=2**32)] = 0
    tid: Annotated[int, Field(ge=0, lt=2**32)] = 0
    request_id: Annotated[int, Field(ge=0, lt=2**64)] = 0
    umask: Annotated[int, Field(ge=0, le=0o777)] | None = None
    fsuid: Id | None = None
    fsgid: Id | None = None
    groups: Annotated[tuple[Id, ...], Field(max_length=MAX_GROUPS)] | None = None

    def arguments(self) -> tuple[Any, ...]:
        """The call's arguments in the function's positional order (as libc takes them)."""
        return tuple(getattr(self, name) for name in self.ARGUMENTS)

    def descriptors(self) -> tuple[int, ...]:
        """Descriptors that came with the request (master-side numbers)."""
        found = (getattr(self, name) for name in self.DESCRIPTORS)
        return tuple(fd for fd in found if fd is not None)


class _PathRequest(_Request):
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path",)
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("dirfd",)

    path: PurePosixPath
    dirfd: Descriptor | None = None

    path_in = field_validator("path", mode="before")(path_in)
    _check_path = field_validator("path")(check_fs_path)


def _frozen_flags(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError("flags are a collection of flag names, not a string")
    return frozenset(value) if isinstance(value, list | tuple | set) else value


def _check_open(flags: frozenset[str], mode: int | None) -> None:
    access = flags & _ACCESS_MODE_FLAGS
    if len(access) != 1:
        raise ValueError("exactly one of read_only, write_only, read_write must be given")
    takes_mode = bool(flags & {"create", "temporary"})
    if mode is not None and not takes_mode:
        raise ValueError("mode is only given with create or temporary")
    if mode is None and takes_mode:
        raise ValueError("create and temporary need a mode")


class OpenRequest(_PathRequest):
    """``open(path, flags, mode)``; ``mode`` only with ``create``/``temporary``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "flags", "mode")

    function: Literal["open"] = "open"
    flags: frozenset[OpenFlag]
    mode: Mode | None = None

    _flags_in = field_validator("flags", mode="before")(_frozen_flags)

    @model_validator(mode="after")
    def _mode_matches_flags(self) -> OpenRequest:
        _check_open(self.flags, self.mode)
        return self


class OpenatRequest(_PathRequest):
    """``openat(dirfd, path, flags, mode)``; the slave's dirfd is ``dirfd``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "flags", "mode")

    function: Literal["openat"] = "openat"
    flags: frozenset[OpenatFlag]
    mode: Mode | None = None

    _flags_in = field_validator("flags", mode="before")(_frozen_flags)

    @model_validator(mode="after")
    def _mode_matches_flags(self) -> OpenatRequest:
        _check_open(self.flags, self.mode)
        return self


class UnlinkRequest(_PathRequest):
    """``unlink(path)``."""

    function: Literal["unlink"] = "unlink"


class RmdirRequest(_PathRequest):
    """``rmdir(path)``."""

    function: Literal["rmdir"] = "rmdir"


class StatRequest(_PathRequest):
    """``stat(path)``: follows symlinks; answer with a :class:`~libc_service.Stat`."""

    function: Literal["stat"] = "stat"


class LstatRequest(_PathRequest):
    """``lstat(path)``: does not follow a final symlink."""

    function: Literal["lstat"] = "lstat"


def _amode_in(value: Any) -> Any:
    if value == "f":
        return "f"
    if isinstance(value, str):
        value = list(value)
    return frozenset(value) if isinstance(value, list | tuple | set | frozenset) else value


class _AccessRequest(_PathRequest):
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "amode")

    amode: Literal["f"] | frozenset[AccessMode]

    _amode_in = field_validator("amode", mode="before")(_amode_in)

    @field_validator("amode")
    @classmethod
    def _amode_not_empty(cls, value: Any) -> Any:
        if value != "f" and not value:
            raise ValueError('amode is "f" or a non-empty collection of "r", "w", "x"')
        return value


class AccessRequest(_AccessRequest):
    """``access(path, amode)`` with the real ids."""

    function: Literal["access"] = "access"


class EaccessRequest(_AccessRequest):
    """``eaccess(path, amode)`` with the effective ids."""

    function: Literal["eaccess"] = "eaccess"


class MkdirRequest(_PathRequest):
    """``mkdir(path, mode)``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "mode")

    function: Literal["mkdir"] = "mkdir"
    mode: Mode


class RenameRequest(_Request):
    """``rename(path1, path2)``; each path has its own directory descriptor.

    ``no_replace`` is ``renameat2``'s ``RENAME_NOREPLACE``: the call must fail
    with ``EEXIST`` instead of replacing an existing ``path2`` (``mv`` asks
    for it first). A handler that performs the rename itself must honour it.
    """

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path1", "path2")
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("dirfd1", "dirfd2")

    function: Literal["rename"] = "rename"
    path1: PurePosixPath
    path2: PurePosixPath
    dirfd1: Descriptor | None = None
    dirfd2: Descriptor | None = None
    no_replace: bool = False

    _paths_in = field_validator("path1", "path2", mode="before")(path_in)
    _check_paths = field_validator("path1", "path2")(check_fs_path)


def _check_unix_path(path: PurePosixPath) -> PurePosixPath:
    raw = os.fsencode(str(path))
    if not raw:
        raise ValueError("a unix socket path must not be empty")
    if raw[0] != 0 and b"\0" in raw:
        raise ValueError("a unix socket path contains NUL only as an abstract name's first byte")
    if len(raw) > UNIX_PATH_MAX:
        raise ValueError(f"a unix socket path is at most {UNIX_PATH_MAX} bytes")
    return path


class _UnixRequest(_Request):
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path",)
    #: The socket first: a caller's one descriptor is the socket.
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("socket", "dirfd")

    #: ``sun_path``; an abstract name starts with ``"\\0"``.
    path: PurePosixPath
    socket: Descriptor
    #: The slave's working directory, for a relative ``path`` only: the
    #: kernel resolves a relative socket path there, the master must too.
    dirfd: Descriptor | None = None

    path_in = field_validator("path", mode="before")(path_in)
    _check_path = field_validator("path")(_check_unix_path)

    @property
    def abstract(self) -> bool:
        """Whether ``path`` is an abstract socket name (leading NUL)."""
        return str(self.path).startswith("\0")

    @model_validator(mode="after")
    def _dirfd_only_when_relative(self) -> _UnixRequest:
        if self.dirfd is not None and (self.abstract or self.path.is_absolute()):
            raise ValueError("dirfd is only given with a relative socket path")
        return self


class ConnectUnixRequest(_UnixRequest):
    """``connect`` of a unix socket to ``path``."""

    function: Literal["connect_unix"] = "connect_unix"


class BindUnixRequest(_UnixRequest):
    """``bind`` of a unix socket to ``path``."""

    function: Literal["bind_unix"] = "bind_unix"


class _InetRequest(_Request):
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("address", "port")
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("socket",)

    address: IPv4Address
    port: Port
    socket: Descriptor


class ConnectInetRequest(_InetRequest):
    """``connect`` of an IPv4 socket to ``address:port``."""

    function: Literal["connect_inet"] = "connect_inet"


class BindInetRequest(_InetRequest):
    """``bind`` of an IPv4 socket to ``address:port``."""

    function: Literal["bind_inet"] = "bind_inet"


def numeric_scope(value: Any) -> Any:
    """Give an IPv6 address's scope id in its wire form: a decimal interface index.

    An interface name (``fe80::1%eth0``) becomes its index, ``%0`` (no
    scope) is dropped, and an index must fit the protocol's 32 bits.
    """
    if isinstance(value, IPv6Address) and value.scope_id is not None:
        value = str(value)
    if not isinstance(value, str) or "%" not in value:
        return value
    address, scope = value.rsplit("%", 1)
    if scope.isascii() and scope.isdigit():
        index = int(scope)
    else:
        try:
            index = socket_module.if_nametoindex(scope)
        except OSError:
            raise ValueError(f"unknown network interface {scope!r} in scope id") from None
    if index >= 2**32:
        raise ValueError(f"scope id {index} does not fit in 32 bits")
    return f"{address}%{index}" if index else address


class _Inet6Request(_Request):
    ARGUMENTS: ClassVar[tuple[str, ...]] = ("address", "port")
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("socket",)

    #: The address, with the scope id (interface index) as in ``fe80::1%2``.
    address: IPv6Address
    port: Port
    socket: Descriptor

    _scope = field_validator("address", mode="before")(numeric_scope)


class ConnectInet6Request(_Inet6Request):
    """``connect`` of an IPv6 socket to ``[address]:port``."""

    function: Literal["connect_inet6"] = "connect_inet6"


class BindInet6Request(_Inet6Request):
    """``bind`` of an IPv6 socket to ``[address]:port``."""

    function: Literal["bind_inet6"] = "bind_inet6"


class GetaddrinfoRequest(_Request):
    """``getaddrinfo(node, service, hints)``; hints reduced to a protocol.

    The caller's family and flags hints are applied by the shim to the
    answer, so the policy answers with every address it knows.
    """

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("node", "service", "protocol")

    function: Literal["getaddrinfo"] = "getaddrinfo"
    node: str | None = None
    service: str | None = None
    protocol: Literal["tcp", "udp"] | None = None

    @field_validator("node", "service")
    @classmethod
    def _bounded(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        limit = NODE_MAX if info.field_name == "node" else SERVICE_MAX
        raw = os.fsencode(value)
        if b"\0" in raw:
            raise ValueError(f"{info.field_name} must not contain NUL")
        if len(raw) > limit:
            raise ValueError(f"{info.field_name} is at most {limit} bytes")
        return value

    @model_validator(mode="after")
    def _node_or_service(self) -> GetaddrinfoRequest:
        if self.node is None and self.service is None:
            raise ValueError("getaddrinfo needs a node or a service")
        return self


# ------------------------------------------------------------ metadata changes

#: A timestamp in ns since the epoch (``struct timespec`` as one int64).
TIME_NS_MIN: Final = -(2**63)
TIME_NS_MAX: Final = 2**63 - 1
#: A new timestamp: ns since the epoch, ``"now"`` (``UTIME_NOW``) or
#: ``"omit"`` (``UTIME_OMIT``: leave it as it is).
TimeSpec: TypeAlias = Union[Annotated[int, Field(ge=TIME_NS_MIN, le=TIME_NS_MAX)], Literal["now", "omit"]]


class _MetadataPathRequest(_PathRequest):
    #: ``AT_SYMLINK_NOFOLLOW`` (``lchown``, ``lutimes``): change a final
    #: symlink itself rather than what it points to.
    no_follow: bool = False


class _MetadataFdRequest(_Request):
    DESCRIPTORS: ClassVar[tuple[str, ...]] = ("fd",)

    #: The slave's descriptor of the file to change (``fchmod(fd, ...)``).
    fd: Descriptor


class ChmodRequest(_MetadataPathRequest):
    """``chmod(path, mode)``, ``fchmodat(dirfd, path, mode, flags)``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "mode")

    function: Literal["chmod"] = "chmod"
    mode: Mode


class FchmodRequest(_MetadataFdRequest):
    """``fchmod(fd, mode)``; the slave's descriptor is ``fd``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("fd", "mode")

    function: Literal["fchmod"] = "fchmod"
    mode: Mode


class ChownRequest(_MetadataPathRequest):
    """``chown``, ``lchown`` (``no_follow``), ``fchownat``; ``None``: leave unchanged (-1)."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "owner", "group")

    function: Literal["chown"] = "chown"
    owner: Id | None = None
    group: Id | None = None


class FchownRequest(_MetadataFdRequest):
    """``fchown(fd, owner, group)``; ``None``: leave unchanged (-1)."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("fd", "owner", "group")

    function: Literal["fchown"] = "fchown"
    owner: Id | None = None
    group: Id | None = None


class UtimensRequest(_MetadataPathRequest):
    """``utimensat(dirfd, path, times, flags)``, and ``utimes``/``utime`` as it.

    ``times == NULL`` is ``atime = mtime = "now"``.
    """

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("path", "atime", "mtime")

    function: Literal["utimens"] = "utimens"
    atime: TimeSpec = "now"
    mtime: TimeSpec = "now"


class FutimensRequest(_MetadataFdRequest):
    """``futimens(fd, times)``, and ``utimensat(fd, NULL, times, 0)``."""

    ARGUMENTS: ClassVar[tuple[str, ...]] = ("fd", "atime", "mtime")

    function: Literal["futimens"] = "futimens"
    atime: TimeSpec = "now"
    mtime: TimeSpec = "now"


Request: TypeAlias = Annotated[
    Union[
        OpenRequest,
        OpenatRequest,
        UnlinkRequest,
        RenameRequest,
        StatRequest,
        LstatRequest,
        AccessRequest,
        EaccessRequest,
        MkdirRequest,
        RmdirRequest,
        ConnectUnixRequest,
        ConnectInetRequest,
        ConnectInet6Request,
        BindUnixRequest,
        BindInetRequest,
        BindInet6Request,
        GetaddrinfoRequest,
        ChmodRequest,
        FchmodRequest,
        ChownRequest,
        FchownRequest,
        UtimensRequest,
        FutimensRequest,
    ],
    Field(discriminator="function"),
]

#: Request model by function name, in protocol order.
REQUEST_TYPES: Final[dict[str, type[_Request]]] = {
    model.model_fields["function"].default: model for model in get_args(get_args(Request)[0])
}


@functools.cache
def _request_adapter() -> TypeAdapter[Request]:
    # Built at first use, like the models (``defer_build``): the decoder
    # builds requests with ``model_construct``, which needs no validator,
    # so a run that never validates a request never pays for the schemas.
    return TypeAdapter(Request)


def parse_request(data: dict[str, Any]) -> Request:
    """Validate a request given as plain data (``{"function": "open", ...}``)."""
    return _request_adapter().validate_python(data)
