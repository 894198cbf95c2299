"""A file the dynamic loader may open, and which file it was when checked.

Every grant of loader discovery names a file by what the kernel says it
is (device and inode), never by its path alone; a cache of discovery is
valid while each path it looked at still stats the same.
"""

from __future__ import annotations

import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

__all__ = ["MAX_NAME", "FileVersion", "LoaderFile", "regular_file", "witness"]

#: The longest name read from a file the slave controls (``PATH_MAX``).
MAX_NAME: Final = 4096


@dataclass(frozen=True)
class LoaderFile:
    """A file loading the program needs, and which file it was when checked.

    ``path`` is the name the loader will use (it may be a symlink);
    ``device`` and ``inode`` are those of the regular file it led to when
    discovery validated it. A rule is put on that file only if the path
    still leads to it: otherwise a file swapped in after the check (a
    secret, a directory) would be granted instead.
    """

    path: Path
    device: int
    inode: int


#: A file's version: device, inode, size, modification and change times.
#: An unprivileged user cannot set the change time back, so a file written
#: since has another version.
FileVersion = tuple[int, int, int, int, int]


def regular_file(
    path: str | os.PathLike[str],
    *,
    executable: bool,
) -> tuple[LoaderFile, IO[bytes], FileVersion] | None:
    """Open ``path`` for reading if it is a regular file (with an execute bit, if asked).

    ``stat`` first, so that a FIFO or device is never opened (opening can
    block or have effects); then the opened descriptor must be that same
    file, whose identity the caller's grant will carry.
    """
    try:
        before = os.stat(path)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    if not stat_module.S_ISREG(before.st_mode) or (executable and not before.st_mode & 0o111):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat_module.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        return None
    version = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return LoaderFile(Path(path), info.st_dev, info.st_ino), os.fdopen(fd, "rb"), version


def witness(path: str) -> object:
    """What ``path`` is now, for a cache's validation: the file's identity and times, or the errno."""
    try:
        status = os.stat(path)
    except OSError as error:
        return error.errno
    return (status.st_dev, status.st_ino, status.st_mode, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
