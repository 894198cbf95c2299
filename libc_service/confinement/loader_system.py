"""The system's shared-library directories: what ``Sandbox.system_libraries`` grants.

``SYSTEM_LIBRARY_DIRS`` and the directories root's ``/etc/ld.so.conf``
(with its ``include``s) names, for libraries a program ``dlopen``s after
discovery could see what it links.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Final

from libc_service.confinement.loader_files import regular_file, witness

__all__ = ["SYSTEM_LIBRARY_DIRS", "system_library_dirs"]

#: Root's configuration of the library directories, and the most read of it.
_LD_SO_CONF: Final = Path("/etc/ld.so.conf")
_MAX_CONF_BYTES: Final = 1 << 20
_MAX_CONF_FILES: Final = 256

#: Beneath these (and ``/etc/ld.so.conf``'s directories) live the system's shared libraries.
SYSTEM_LIBRARY_DIRS: Final = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")


def _ld_so_conf(path: Path, found: list[str], read: set[str]) -> None:
    """Directories named in an ``ld.so.conf`` and in the files it ``include``s (glob patterns).

    Each file is read once (an ``include`` loop ends), at most
    ``_MAX_CONF_FILES`` of them.
    """
    real = os.path.realpath(path)
    if real in read or len(read) >= _MAX_CONF_FILES:
        return
    read.add(real)
    opened = regular_file(path, executable=False)
    if opened is None:
        return
    with opened[1] as stream:
        text = os.fsdecode(stream.read(_MAX_CONF_BYTES))
    for line in text.splitlines():
        words = line.partition("#")[0].split(None, 1)
        if not words or words[0] == "hwcap":
            continue
        if words[0] == "include" and len(words) == 2:
            for pattern in words[1].split():
                if not pattern.startswith("/"):
                    pattern = os.path.join(os.path.dirname(path), pattern)  # as ldconfig does
                for name in sorted(glob.glob(pattern)):
                    _ld_so_conf(Path(name), found, read)
        else:
            found.append(" ".join(words).partition("=")[0].rstrip())  # "DIR=TYPE": the old libc5 form


def system_library_dirs(conf: Path = _LD_SO_CONF) -> list[Path]:
    """The system's shared-library directories that exist here.

    ``SYSTEM_LIBRARY_DIRS`` and the directories ``/etc/ld.so.conf`` (with
    its ``include``s, root's configuration) lists. Only absolute paths of
    existing directories count; one reached under several names (``/lib``
    as a symlink to ``/usr/lib``) is listed once, under its first name, and
    one beneath another listed one not at all (a rule covers its subtree).
    """
    names: list[str] = list(SYSTEM_LIBRARY_DIRS)
    global _system_dirs
    if _system_dirs is not None and conf == _LD_SO_CONF:
        witnesses, dirs = _system_dirs
        if all(witness(path) == seen for path, seen in witnesses):
            return list(dirs)
    read: set[str] = set()
    _ld_so_conf(conf, names, read)
    directories: dict[str, Path] = {}  # by real path
    for name in names:
        if not name.startswith("/") or not os.path.isdir(name) or os.path.realpath(name) == "/":
            continue  # "/" would be the whole filesystem, whatever a configuration says
        directories.setdefault(os.path.realpath(name), Path(os.path.normpath(name)))
    # A directory beneath another one listed needs no rule of its own.
    found = [
        path
        for real, path in directories.items()
        if not any(real.startswith(other.rstrip("/") + "/") for other in directories if other != real)
    ]
    if conf == _LD_SO_CONF:
        # Valid while every configuration file, the directories holding them (an include's glob)
        # and every name considered (a symlink retargeted changes what it stats as) are unchanged.
        looked_at = [os.fspath(conf), "/", *sorted(read), *sorted({os.path.dirname(path) for path in read}), *names]
        _system_dirs = (tuple((path, witness(path)) for path in dict.fromkeys(looked_at)), tuple(found))
    return found


#: The last :func:`system_library_dirs` of the system's configuration, with what it depended on.
_system_dirs: tuple[tuple[tuple[str, object], ...], tuple[Path, ...]] | None = None
