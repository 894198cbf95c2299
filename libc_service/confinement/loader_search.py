"""Where the dynamic loader looks for a library: glibc's search lists, directories and ``ld.so.cache``.

The lists are followed here, in Python, as glibc builds them
(``fillin_rpath``, ``$ORIGIN``, the multiarch and ``glibc-hwcaps``
directories); no text the program controls decides anything but which
directory names are tried.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import sys
from pathlib import Path
from typing import Final

from libc_service.confinement.loader_files import MAX_NAME, FileVersion, regular_file

__all__ = [
    "HWCAPS",
    "LD_SO_CACHE",
    "absolute",
    "default_dirs",
    "expand",
    "parse_ld_so_cache",
    "read_ld_so_cache",
    "search_list",
]

#: Entries of one search list (``RPATH``, ``RUNPATH``, ``LD_LIBRARY_PATH``).
_MAX_SEARCH_DIRS: Final = 256

#: The cache ldconfig writes, and the most of it read.
LD_SO_CACHE: Final = Path("/etc/ld.so.cache")
_MAX_CACHE_BYTES: Final = 64 << 20

#: Debian-style multiarch directory names, by (machine, class).
_MULTIARCH: Final = {
    ("EM_X86_64", 64): "x86_64-linux-gnu",
    ("EM_X86_64", 32): "x86_64-linux-gnux32",
    ("EM_386", 32): "i386-linux-gnu",
    ("EM_AARCH64", 64): "aarch64-linux-gnu",
    ("EM_ARM", 32): "arm-linux-gnueabihf",
    ("EM_RISCV", 64): "riscv64-linux-gnu",
    ("EM_PPC64", 64): "powerpc64le-linux-gnu",
    ("EM_S390", 64): "s390x-linux-gnu",
}
#: ``glibc-hwcaps`` subdirectories glibc (2.33+) tries in each search directory, by machine.
HWCAPS: Final = {
    "EM_X86_64": ("x86-64-v4", "x86-64-v3", "x86-64-v2"),
    "EM_PPC64": ("power10", "power9"),
    "EM_S390": ("z16", "z15", "z14", "z13"),
}

#: A dynamic string token as glibc reads one: ``$NAME`` not followed by a name character, or ``${NAME}``.
_DST: Final = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")

#: The last cache read, with the version of the file it was read from.
_ld_so_cache: tuple[FileVersion, dict[str, list[str]]] | None = None


def expand(entry: str, origin: str) -> str | None:
    """``entry`` with ``$ORIGIN`` replaced; ``None`` for ``$LIB``/``$PLATFORM``, which are ignored."""
    parts: list[str] = []
    position = 0
    for match in _DST.finditer(entry):
        if (match.group(1) or match.group(2)) != "ORIGIN":
            return None
        parts += [entry[position : match.start()], origin]
        position = match.end()
    parts.append(entry[position:])
    return "".join(parts)


def absolute(path: str, cwd: str) -> str:
    """``path`` from ``cwd``, not normalised: ``..`` after a symlink means what the kernel says it means."""
    return os.path.join(cwd, path)


def search_list(text: bytes | str | None, origin: str, cwd: str, separators: str = ":") -> tuple[str, ...]:
    """The directories of a search list, as glibc's ``fillin_rpath`` makes them.

    An empty entry is the current directory (of the slave: ``cwd``), a
    relative one is taken from there, duplicates count once.
    """
    if text is None:
        return ()
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    directories: dict[str, None] = {}
    for entry in re.split(f"[{re.escape(separators)}]", text)[:_MAX_SEARCH_DIRS]:
        expanded = expand(entry, origin) if entry else ""
        if expanded is None:
            continue
        directories.setdefault(absolute(expanded, cwd), None)
    return tuple(directories)


def default_dirs(kind: tuple[int, bool, str | int]) -> tuple[str, ...]:
    """glibc's built-in directories, for Debian-style multiarch and lib64/lib32 layouts alike.

    Which of them a distribution's glibc really uses differs; a candidate of
    the wrong class or machine is skipped anyway, so trying them all is safe.
    """
    elfclass, _, machine = kind
    triplet = _MULTIARCH.get((str(machine), elfclass))
    multiarch = (f"/lib/{triplet}", f"/usr/lib/{triplet}") if triplet else ()
    sized = ("/lib64", "/usr/lib64") if elfclass == 64 else ("/lib32", "/usr/lib32")
    return (*multiarch, *sized, "/lib", "/usr/lib")


def parse_ld_so_cache(data: bytes) -> list[tuple[str, str]]:
    """The (library name, path) entries of an ``/etc/ld.so.cache``, in file order.

    The ``glibc-ld.so.cache1.1`` format, alone or after an old
    ``ld.so-1.7.0`` table (which is then ignored, as glibc does); an old
    table alone is read too. The file is root's, but every count and string
    offset is still checked against its size: a broken cache gives fewer
    entries, never an exception or a read out of bounds.
    """
    new_magic, old_magic = b"glibc-ld.so.cache1.1", b"ld.so-1.7.0"
    base = 0
    old_entries: list[tuple[int, int]] = []
    old_strings = 0
    if data.startswith(old_magic):
        if len(data) < 16:
            return []
        (nlibs,) = struct.unpack_from("=I", data, 12)
        end = 16 + nlibs * 12
        if end > len(data):
            return []
        old_entries = [struct.unpack_from("=iII", data, 16 + index * 12)[1:] for index in range(nlibs)]
        old_strings = end
        align = ctypes.alignment(ctypes.c_uint64)
        base = (end + align - 1) & ~(align - 1)
        if not data.startswith(new_magic, base):
            return _cache_entries(data, old_entries, old_strings)
    elif not data.startswith(new_magic):
        return []
    if len(data) < base + 48:
        return []
    (nlibs,) = struct.unpack_from("=I", data, base + 20)
    byte_order = data[base + 28]  # 0: unset, 2: little, 3: big endian
    if byte_order not in (0, 2 if sys.byteorder == "little" else 3):
        return []
    if base + 48 + nlibs * 24 > len(data):
        return []
    entries = [struct.unpack_from("=iII", data, base + 48 + index * 24)[1:] for index in range(nlibs)]
    return _cache_entries(data, entries, base)  # new-format offsets count from the new header


def _cache_entries(data: bytes, entries: list[tuple[int, int]], strings: int) -> list[tuple[str, str]]:
    """Entries whose key and value are NUL-terminated strings within the file."""

    def text(offset: int) -> str | None:
        start = strings + offset
        end = data.find(b"\0", start, start + MAX_NAME)
        return os.fsdecode(data[start:end]) if start < len(data) and end > start else None

    found: list[tuple[str, str]] = []
    for key, value in entries:
        name, path = text(key), text(value)
        if name is not None and path is not None:
            found.append((name, path))
    return found


def read_ld_so_cache(path: Path) -> dict[str, list[str]]:
    """The system's ld.so.cache as name → paths; empty when missing, odd or too large.

    Read again only when the file changed (ldconfig writes a new one).
    """
    global _ld_so_cache
    opened = regular_file(path, executable=False)
    if opened is None:
        return {}
    _, stream, version = opened
    with stream:
        known = _ld_so_cache
        if known is not None and known[0] == version:
            return known[1]
        data = stream.read(_MAX_CACHE_BYTES + 1)
    cache: dict[str, list[str]] = {}
    if len(data) <= _MAX_CACHE_BYTES:
        for name, library in parse_ld_so_cache(data):
            cache.setdefault(name, []).append(library)
    _ld_so_cache = (version, cache)
    return cache
