"""A descriptor's :class:`~libc_service.Stat` with what only ``statx`` reports.

``os.fstat`` has no birth time, attributes or mount id (Python has no
``os.statx`` before 3.15), so a ``statx`` the master answers would lose
them. This asks the kernel with glibc's ``statx`` (Linux 4.11+) and falls
back to ``os.fstat`` where that is missing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_module
import struct
from typing import TYPE_CHECKING, Any, Final

from libc_service.kernel import libc as kernel

if TYPE_CHECKING:
    from libc_service.protocol.replies import Stat

__all__ = [
    "STATX_BASIC_STATS",
    "STATX_BTIME",
    "STATX_LAYOUT",
    "STATX_MNT_ID",
    "STATX_MNT_ID_UNIQUE",
    "STATX_SIZE",
    "stat_of",
]

_AT_EMPTY_PATH: Final = 0x1000
_AT_STATX_DONT_SYNC: Final = 0x4000
STATX_BASIC_STATS: Final = 0x7FF
STATX_BTIME: Final = 0x800
STATX_MNT_ID: Final = 0x1000
STATX_MNT_ID_UNIQUE: Final = 0x4000
#: struct statx up to stx_mnt_id: mask, blksize, attributes, nlink, uid, gid,
#: mode, spare, ino, size, blocks, attributes_mask, atime/btime/ctime/mtime
#: (sec, nsec, reserved), rdev major/minor, dev major/minor, mnt_id. The one
#: layout: read here from the kernel, written by the seccomp transport into a slave.
STATX_LAYOUT: Final = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIIIQ")
#: The whole struct statx (the rest is spare).
STATX_SIZE: Final = 256
_NS: Final = 1_000_000_000

_statx: Any = kernel.libc["statx"] if hasattr(kernel.libc, "statx") else None  # None: glibc < 2.28
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int


def stat_of(fd: int) -> Stat:
    """What ``statx(fd, "", AT_EMPTY_PATH)`` says of ``fd``, as a ``Stat``.

    ``btime`` is ``None`` where the filesystem keeps no birth time and
    ``mnt_id`` where the kernel does not report one; the times are the
    kernel's (seconds, ns), so a time past 2262 arrives whole.
    """
    from libc_service.protocol.replies import Stat, file_type

    if _statx is None:
        return Stat.from_os(os.fstat(fd))
    buffer = ctypes.create_string_buffer(STATX_SIZE)
    mask = STATX_BASIC_STATS | STATX_BTIME | STATX_MNT_ID
    if _statx(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, mask, buffer) != 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            return Stat.from_os(os.fstat(fd))
        raise kernel.last_error()
    (
        got,
        blksize,
        attributes,
        nlink,
        uid,
        gid,
        mode,
        _,
        ino,
        size,
        blocks,
        attributes_mask,
        asec,
        ansec,
        _,
        bsec,
        bnsec,
        _,
        csec,
        cnsec,
        _,
        msec,
        mnsec,
        _,
        rdev_major,
        rdev_minor,
        dev_major,
        dev_minor,
        mnt_id,
    ) = STATX_LAYOUT.unpack_from(buffer.raw)
    return Stat.model_construct(
        dev=os.makedev(dev_major, dev_minor),
        ino=ino,
        mode=stat_module.S_IMODE(mode),
        type=file_type(mode),
        nlink=nlink,
        uid=uid,
        gid=gid,
        rdev=os.makedev(rdev_major, rdev_minor),
        size=size,
        blksize=blksize,
        blocks=blocks,
        atime=asec * _NS + ansec,
        mtime=msec * _NS + mnsec,
        ctime=csec * _NS + cnsec,
        btime=bsec * _NS + bnsec if got & STATX_BTIME else None,
        attributes=attributes,
        attributes_mask=attributes_mask,
        mnt_id=mnt_id if got & STATX_MNT_ID else None,
    )
