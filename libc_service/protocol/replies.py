"""What a call gives back: ``Stat``, ``AddrInfo``, getaddrinfo error names, ``Reply``.

``Stat`` and ``AddrInfo`` are what a policy hands to ``Master.send`` (or
returns from a router handler) for ``stat``/``lstat`` and ``getaddrinfo``;
``Reply`` is what a :class:`~libc_service.Slave` gets back.
"""

from __future__ import annotations

import os
import stat as stat_module
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Final, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libc_service.protocol.catalogue import GAI_ERRORS, FileType, GaiError
from libc_service.protocol.requests import numeric_scope

__all__ = [
    "AddrInfo",
    "FileType",
    "GAI_ERRORS",
    "GaiError",
    "Reply",
    "Result",
    "Stat",
]

U32 = Annotated[int, Field(ge=0, lt=2**32)]
U64 = Annotated[int, Field(ge=0, lt=2**64)]
I64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
#: A time in ns since the epoch: any ``struct timespec`` with a 64-bit
#: ``tv_sec`` (a filesystem may store times past 2262, beyond int64 ns).
Nanoseconds = Annotated[int, Field(ge=-(2**63) * 10**9, lt=2**63 * 10**9)]


_TYPE_BY_IFMT: Final[dict[int, FileType]] = {
    stat_module.S_IFREG: "regular",
    stat_module.S_IFDIR: "directory",
    stat_module.S_IFLNK: "symlink",
    stat_module.S_IFCHR: "character_device",
    stat_module.S_IFBLK: "block_device",
    stat_module.S_IFIFO: "fifo",
    stat_module.S_IFSOCK: "socket",
}


def file_type(st_mode: int) -> FileType:
    """The kind of file an ``st_mode`` names (``"regular"`` for a type it does not know)."""
    return _TYPE_BY_IFMT.get(stat_module.S_IFMT(st_mode), "regular")


class Stat(BaseModel):
    """A stat result as the slave will see it.

    ``mode`` holds the permission bits only and ``type`` the kind of file, so
    a policy cannot produce a mode whose type bits disagree with its type.
    Times are nanoseconds since the epoch, as wide as the kernel's
    ``struct timespec`` (not int64 ns: ext4 stores times past 2262). Every
    field defaults to 0 (and ``type`` to ``"regular"``), so a faked result
    names only what it fakes: ``Stat(size=4242)``.

    The fields only ``statx`` reports — ``btime`` (the birth time, ``None``
    where the filesystem does not keep one), ``attributes`` and
    ``attributes_mask`` (``STATX_ATTR_*``) and ``mnt_id`` (``None``: not
    known) — let a ``statx`` answered through the master say what the
    kernel says; ``stat`` ignores them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    dev: U64 = 0
    ino: U64 = 0
    mode: Annotated[int, Field(ge=0, le=0o7777)] = 0
    type: FileType = "regular"
    nlink: U64 = 0
    uid: U32 = 0
    gid: U32 = 0
    rdev: U64 = 0
    size: I64 = 0
    blksize: I64 = 0
    blocks: I64 = 0
    atime: Nanoseconds = 0
    mtime: Nanoseconds = 0
    ctime: Nanoseconds = 0
    btime: Nanoseconds | None = None
    attributes: U64 = 0
    attributes_mask: U64 = 0
    mnt_id: U64 | None = None

    @classmethod
    def from_os(cls, result: os.stat_result) -> Stat:
        """Convert ``os.stat``/``os.lstat``/``os.fstat`` output, keeping ns precision."""
        return cls(
            dev=result.st_dev,
            ino=result.st_ino,
            mode=stat_module.S_IMODE(result.st_mode),
            type=_TYPE_BY_IFMT.get(stat_module.S_IFMT(result.st_mode), "regular"),
            nlink=result.st_nlink,
            uid=result.st_uid,
            gid=result.st_gid,
            rdev=result.st_rdev,
            size=result.st_size,
            blksize=result.st_blksize,
            blocks=result.st_blocks,
            atime=result.st_atime_ns,
            mtime=result.st_mtime_ns,
            ctime=result.st_ctime_ns,
        )

    @property
    def st_mode(self) -> int:
        """The full ``st_mode`` (type bits and permission bits) the slave sees."""
        ifmt = next(k for k, v in _TYPE_BY_IFMT.items() if v == self.type)
        return ifmt | self.mode


class AddrInfo(BaseModel):
    """One address of a getaddrinfo answer: ``AddrInfo(address, port)``.

    The IPv6 scope id travels inside the address (``fe80::1%2``; an
    interface name, ``fe80::1%eth0``, becomes its index). The slave's
    shim expands each entry per socket type and filters by the caller's hints,
    so a policy answers with addresses, not with ``addrinfo`` structures.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    address: IPv4Address | IPv6Address
    port: Annotated[int, Field(ge=0, le=65535)] = 0

    _scope = field_validator("address", mode="before")(numeric_scope)

    def __init__(self, address: Any = None, port: Any = 0, /, **data: Any) -> None:
        if address is not None:
            data["address"] = address
        data.setdefault("port", port)
        super().__init__(**data)


#: What a call can result in: an int, a ``Stat``, a list of ``AddrInfo`` or a
#: getaddrinfo error name.
Result: TypeAlias = int | Stat | list[AddrInfo] | GaiError


@dataclass(frozen=True, slots=True)
class Reply:
    """What a slave got back for one call.

    ``fds`` are descriptors received with the reply; they belong to the caller,
    who must close them. ``forwarded`` means the master said "do it yourself
    with your own credentials"; ``result`` and ``errno`` are then 0.
    """

    result: Result
    errno: int = 0
    fds: tuple[int, ...] = field(default=())
    forwarded: bool = False
