"""Loader discovery: which files loading a program needs.

Before the slave runs, the sandbox grants it read and execute on the files
the kernel and the dynamic loader open to start it: the executable, its ELF
interpreter, the shared libraries it links and, for a ``#!`` script, the
same for its interpreter. The program is untrusted and so is everything it
names, so nothing here is run: the ELF files are read as data (with
pyelftools) and the glibc search order is followed here, in Python.

A file is granted only when the loader could map it: a regular file that
is an ELF object of the executable's class, byte order and machine (a shared
object, for a library). Granting "the first file of that name" would let a
program name ``id_rsa`` as a library, put ``/root/.ssh`` on its ``RUNPATH``,
and read the key: the loader refuses to map it, but the rule is on it all
the same. A candidate that is not a loadable object is skipped and the
search goes on (as glibc goes on past an object of another class or
machine), so the library a program really loads is still found, and every
file granted is one the loader might have mapped. Nor does any text the
program controls decide *where* a grant goes: a directory named
``x => / (`` is only ever a directory name here.

Each granted file is returned with the identity (device, inode) it had when
it was checked, so that the sandbox can refuse a path swapped for another
file between the check and the rule.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import glob
import logging
import os
import re
import shutil
import stat as stat_module
import struct
import sys
import threading
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

__all__ = [
    "SYSTEM_LIBRARY_DIRS",
    "LoaderFile",
    "parse_ld_so_cache",
    "program_files",
    "resolve_program",
    "system_library_dirs",
]

logger = logging.getLogger(__name__)

#: ``#!`` interpreters followed (the kernel's own limit is 4 as well).
_MAX_SCRIPT_DEPTH: Final = 4
#: Shared objects read for one program, and how deep their ``DT_NEEDED`` tree goes.
_MAX_OBJECTS: Final = 512
_MAX_DEPTH: Final = 32
#: Files looked at for one program: every candidate on every search path costs one.
_MAX_PROBES: Final = 50_000
#: Entries of one search list (``RPATH``, ``RUNPATH``, ``LD_LIBRARY_PATH``).
_MAX_SEARCH_DIRS: Final = 256
#: Dynamic entries read from one object, names it may need, and the longest name (``PATH_MAX``).
_MAX_TAGS: Final = 4096
_MAX_NEEDED: Final = 256
_MAX_NAME: Final = 4096
#: The kernel refuses program header tables larger than this (``load_elf_phdrs``).
_MAX_PHDR_BYTES: Final = 65536
#: ``#!`` lines longer than this are cut by the kernel (``BINPRM_BUF_SIZE``).
_SHEBANG_BYTES: Final = 256

_LD_SO_CACHE: Final = Path("/etc/ld.so.cache")
_LD_SO_CONF: Final = Path("/etc/ld.so.conf")
_MAX_CACHE_BYTES: Final = 64 << 20
_MAX_CONF_BYTES: Final = 1 << 20
_MAX_CONF_FILES: Final = 256

#: Beneath these (and ``/etc/ld.so.conf``'s directories) live the system's shared libraries.
SYSTEM_LIBRARY_DIRS: Final = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")

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
_HWCAPS: Final = {
    "EM_X86_64": ("x86-64-v4", "x86-64-v3", "x86-64-v2"),
    "EM_PPC64": ("power10", "power9"),
    "EM_S390": ("z16", "z15", "z14", "z13"),
}

#: A dynamic string token as glibc reads one: ``$NAME`` not followed by a name character, or ``${NAME}``.
_DST: Final = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


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


@dataclass(frozen=True)
class _Elf:
    """What the loader reads from one ELF file (strings still raw bytes)."""

    #: (class, little endian, machine): a library must match the executable's.
    kind: tuple[int, bool, str | int]
    elf_type: str | int
    interpreter: bytes | None
    dynamic: bool
    needed: tuple[bytes, ...]
    rpath: bytes | None
    #: ``DT_RUNPATH`` present (even unreadable): then ``DT_RPATH`` is ignored.
    has_runpath: bool
    runpath: bytes | None


@dataclass(frozen=True)
class _Node:
    """A loaded object whose ``DT_NEEDED`` names are still to be found."""

    elf: _Elf
    origin: str
    #: The ``RPATH`` directories of this object, then of the object that loaded it, and
    #: so on up to the executable (an object with a ``RUNPATH`` contributes none).
    rpaths: tuple[tuple[str, ...], ...]
    runpath: tuple[str, ...] | None
    depth: int


#: A file's version: device, inode, size, modification and change times.
#: An unprivileged user cannot set the change time back, so a file written
#: since has another version.
_Version = tuple[int, int, int, int, int]

#: Files read so far, by version: a program started again (one sandboxed
#: worker per job) is not parsed again. Bounded; the oldest entry goes first.
_PARSED: dict[_Version, _Elf | None] = {}
_MAX_PARSED: Final = 4096
_parsed_lock = threading.Lock()
_ld_so_cache: tuple[_Version, dict[str, list[str]]] | None = None


def _regular_file(
    path: str | os.PathLike[str],
    *,
    executable: bool,
) -> tuple[LoaderFile, IO[bytes], _Version] | None:
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


def _cstring(stream: IO[bytes], offset: int) -> bytes | None:
    """The non-empty NUL-terminated string at ``offset``, if it ends within ``_MAX_NAME`` bytes.

    Names are short: a first small read usually holds the whole string.
    """
    stream.seek(offset)
    head = stream.read(256)
    if b"\0" not in head and len(head) == 256:
        head += stream.read(_MAX_NAME - 256)
    text, nul, _ = head.partition(b"\0")
    return text if nul and text else None


def _parse_elf(stream: IO[bytes]) -> _Elf | None:
    """Read what the loader uses from an ELF file; ``None`` when it is not one it would load.

    Only the program headers count (``PT_INTERP``, ``PT_LOAD``,
    ``PT_DYNAMIC``), as for the kernel and ld.so: section headers, which
    the loader ignores, could say anything. The input is hostile and the
    parser is not ours, so whatever it raises (``ELFError``, struct and
    construct errors, ``ValueError``, ``IndexError``, ...) means "not a
    loadable object", never a failure of the caller.
    """
    try:
        return _read_elf(stream)
    except Exception:  # any failure on hostile bytes means "not loadable"
        return None


def _parse_elf_once(stream: IO[bytes], version: _Version) -> _Elf | None:
    """:func:`_parse_elf`, remembered for this version of the file."""
    with _parsed_lock:
        if version in _PARSED:
            return _PARSED[version]
    elf = _parse_elf(stream)
    with _parsed_lock:
        if len(_PARSED) >= _MAX_PARSED:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[version] = elf
    return elf


def _read_elf(stream: IO[bytes]) -> _Elf | None:
    """:func:`_parse_elf` without the safety net: raises on a malformed file."""
    elf = ELFFile(stream)
    header = elf.header
    ident = header["e_ident"]
    # glibc's open_verify: current version, a System V or GNU ABI, program headers of our size.
    if ident["EI_VERSION"] != "EV_CURRENT" or header["e_version"] != "EV_CURRENT":
        return None
    if ident["EI_OSABI"] not in ("ELFOSABI_SYSV", "ELFOSABI_LINUX"):
        return None
    phdr = elf.structs.Elf_Phdr
    phnum, phentsize = header["e_phnum"], header["e_phentsize"]
    if phentsize != phdr.sizeof() or phnum * phentsize > _MAX_PHDR_BYTES:
        return None
    segments = [struct_parse(phdr, stream, header["e_phoff"] + index * phentsize) for index in range(phnum)]
    interpreter = None
    dynamic = None
    for segment in segments:
        if segment["p_type"] == "PT_INTERP" and interpreter is None:
            interpreter = _cstring(stream, segment["p_offset"])
            if interpreter is None:
                return None  # the kernel refuses an unterminated or empty interpreter
        elif segment["p_type"] == "PT_DYNAMIC" and dynamic is None:
            dynamic = segment
    kind = (elf.elfclass, elf.little_endian, header["e_machine"])
    if dynamic is None:
        return _Elf(kind, header["e_type"], interpreter, False, (), None, False, None)
    # The dynamic entries as ld.so reads them: up to DT_NULL; for a tag that
    # appears twice the last one counts (elf_get_dynamic_info).
    dyn = elf.structs.Elf_Dyn
    size = dyn.sizeof()
    count = min(dynamic["p_filesz"] // size, _MAX_TAGS)
    stream.seek(dynamic["p_offset"])
    table = stream.read(count * size)
    needed: list[int] = []
    single: dict[str, int] = {}
    for index in range(len(table) // size):
        entry = dyn.parse(table[index * size : (index + 1) * size])
        tag = entry["d_tag"]
        if tag == "DT_NULL":
            break
        if tag == "DT_NEEDED" and len(needed) < _MAX_NEEDED:
            needed.append(entry["d_val"])
        elif tag in ("DT_STRTAB", "DT_RPATH", "DT_RUNPATH"):
            single[tag] = entry["d_val"]
    strtab = None
    if "DT_STRTAB" in single:
        address = single["DT_STRTAB"]
        for segment in segments:  # the file offset of that address, through the first PT_LOAD holding it
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + segment["p_filesz"]:
                strtab = address - start + segment["p_offset"]
                break

    def string(offset: int | None) -> bytes | None:
        return None if strtab is None or offset is None else _cstring(stream, strtab + offset)

    names = tuple(name for name in (string(offset) for offset in needed) if name is not None)
    return _Elf(
        kind,
        header["e_type"],
        interpreter,
        True,
        names,
        string(single.get("DT_RPATH")),
        "DT_RUNPATH" in single,
        string(single.get("DT_RUNPATH")),
    )


def _expand(entry: str, origin: str) -> str | None:
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


def _absolute(path: str, cwd: str) -> str:
    """``path`` from ``cwd``, not normalised: ``..`` after a symlink means what the kernel says it means."""
    return os.path.join(cwd, path)


def _search_list(text: bytes | str | None, origin: str, cwd: str, separators: str = ":") -> tuple[str, ...]:
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
        expanded = _expand(entry, origin) if entry else ""
        if expanded is None:
            continue
        directories.setdefault(_absolute(expanded, cwd), None)
    return tuple(directories)


def _default_dirs(kind: tuple[int, bool, str | int]) -> tuple[str, ...]:
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
        end = data.find(b"\0", start, start + _MAX_NAME)
        return os.fsdecode(data[start:end]) if start < len(data) and end > start else None

    found: list[tuple[str, str]] = []
    for key, value in entries:
        name, path = text(key), text(value)
        if name is not None and path is not None:
            found.append((name, path))
    return found


def _read_ld_so_cache(path: Path) -> dict[str, list[str]]:
    """The system's ld.so.cache as name → paths; empty when missing, odd or too large.

    Read again only when the file changed (ldconfig writes a new one).
    """
    global _ld_so_cache
    opened = _regular_file(path, executable=False)
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


class _Discovery:
    """One program's discovery: what was granted, what is left of the bounds."""

    def __init__(self, env: Mapping[str, str], cwd: str) -> None:
        self.env = env
        self.cwd = cwd
        self.files: dict[tuple[int, int], LoaderFile] = {}
        self.probes = _MAX_PROBES
        self.objects = 0
        self._cache: dict[str, list[str]] | None = None
        #: Every path looked at, in order: what the result depends on (see :func:`program_files`).
        self.looked_at: list[str] = [os.fspath(_LD_SO_CACHE)]
        #: Whether the result also depends on something no path witnesses (a ``PATH`` search).
        self.searched_path = False

    def open(
        self,
        path: str | os.PathLike[str],
        *,
        executable: bool,
    ) -> tuple[LoaderFile, IO[bytes], _Version] | None:
        """:func:`_regular_file`, counted against the bound on files looked at."""
        if self.probes <= 0:
            return None
        self.probes -= 1
        self.looked_at.append(os.fspath(path))
        if self.probes == 0:
            logger.warning("loader discovery: stopped after %d files; a library may be missing", _MAX_PROBES)
        return _regular_file(path, executable=executable)

    def grant(self, file: LoaderFile) -> None:
        """Add ``file``, once per file (the first name it was found under is kept)."""
        self.files.setdefault((file.device, file.inode), file)

    # ------------------------------------------------------------ programs

    def program(self, path: Path, depth: int) -> None:
        """The executable (or script) at ``path`` and what starting it loads."""
        path = Path(_absolute(os.fspath(path), self.cwd))
        opened = self.open(path, executable=True)
        if opened is None:
            return  # not a regular executable file: the kernel will refuse it
        file, stream, version = opened
        with stream:
            elf = _parse_elf_once(stream, version)
            stream.seek(0)
            head = stream.read(_SHEBANG_BYTES) if elf is None else b""
        self.grant(file)
        if elf is None:
            self.script(head, depth)
            return
        if elf.elf_type not in ("ET_EXEC", "ET_DYN") or elf.interpreter is None:
            return  # static: the kernel maps it alone and no loader runs
        interpreter = _absolute(os.fsdecode(elf.interpreter), self.cwd)
        if not self.interpreter(interpreter, elf.kind):
            return  # the kernel cannot start it: nothing else gets loaded
        if elf.dynamic:
            origin = os.path.dirname(os.path.realpath(path))  # the kernel's /proc/self/exe
            self.libraries(self.node(elf, origin, (), 0))

    def interpreter(self, path: str, kind: tuple[int, bool, str | int]) -> bool:
        """Grant ``PT_INTERP`` if it is an ELF executable or shared object like the program."""
        opened = self.open(path, executable=True)
        if opened is None:
            return False
        file, stream, version = opened
        with stream:
            elf = _parse_elf_once(stream, version)
        if elf is None or elf.kind != kind or elf.elf_type not in ("ET_EXEC", "ET_DYN"):
            return False
        self.grant(file)
        return True

    def script(self, head: bytes, depth: int) -> None:
        """What the kernel execs for a ``#!`` script (nothing for other files)."""
        shebang = _shebang(head)
        if shebang is None or depth >= _MAX_SCRIPT_DEPTH or not shebang[0].startswith("/"):
            return
        interpreter = Path(shebang[0])
        self.program(interpreter, depth + 1)
        if interpreter.name == "env" and len(shebang) > 1:
            # "#!/usr/bin/env NAME" (or "env -S NAME ARGS"): env execs NAME from PATH.
            words = [word for word in shebang[1].split() if not word.startswith("-")]
            self.searched_path = True
            found = shutil.which(words[0], path=self.env.get("PATH", os.defpath)) if words else None
            if found is not None:
                self.program(Path(found).resolve(), depth + 1)

    # ----------------------------------------------------------- libraries

    def node(self, elf: _Elf, origin: str, loaders: tuple[tuple[str, ...], ...], depth: int) -> _Node:
        """A loaded object with its search lists expanded (``$ORIGIN`` is its directory).

        An object with a ``RUNPATH`` has its ``RPATH`` ignored, for itself
        and for what it loads (glibc's ``elf_get_dynamic_info``).
        """
        runpath = _search_list(elf.runpath, origin, self.cwd) if elf.has_runpath else None
        rpath = _search_list(elf.rpath, origin, self.cwd) if runpath is None else ()
        return _Node(elf, origin, (rpath, *loaders), runpath, depth)

    def libraries(self, root: _Node) -> None:
        """Breadth first over the ``DT_NEEDED`` tree, as ld.so maps dependencies.

        A name already looked for is not looked for again (ld.so reuses an
        object loaded under that name).
        """
        # $ORIGIN in LD_LIBRARY_PATH is the executable's directory.
        library_path = _search_list(self.env.get("LD_LIBRARY_PATH"), root.origin, self.cwd, ":;")
        seen: set[bytes] = set()
        queue = deque([root])
        while queue:
            loader = queue.popleft()
            for name in loader.elf.needed:
                if name in seen:
                    continue
                seen.add(name)
                for found, elf in self.find(name, loader, library_path):
                    if loader.depth + 1 < _MAX_DEPTH and self.objects < _MAX_OBJECTS and elf.dynamic:
                        self.objects += 1
                        origin = os.path.dirname(_absolute(str(found.path), self.cwd))
                        queue.append(self.node(elf, origin, loader.rpaths, loader.depth + 1))

    def find(self, name: bytes, loader: _Node, library_path: tuple[str, ...]) -> Iterator[tuple[LoaderFile, _Elf]]:
        """The libraries granted for one ``DT_NEEDED`` name of ``loader``, in glibc's order.

        ``RPATH`` (of the loader and up its chain, only when the loader has
        no ``RUNPATH``), ``LD_LIBRARY_PATH``, the loader's own ``RUNPATH``,
        ``ld.so.cache``, the default directories. The search ends at the
        first valid library; valid ones met in ``glibc-hwcaps``
        subdirectories on the way are granted too (which one glibc takes
        depends on the CPU), and invalid candidates of any kind never are.
        """
        text = os.fsdecode(name)
        kind = loader.elf.kind
        if "/" in text:  # a path, not a name to search for
            expanded = _expand(text, loader.origin)
            if expanded is not None:
                yield from self.library(_absolute(expanded, self.cwd), kind)
            return
        directories = [directory for rpath in loader.rpaths for directory in rpath] if loader.runpath is None else []
        directories += library_path
        directories += loader.runpath or ()
        for directory in dict.fromkeys(directories):
            if (yield from self.in_directory(directory, text, kind)):
                return
        if self._cache is None:
            self._cache = _read_ld_so_cache(_LD_SO_CACHE)
        found_in_cache = False
        for path in self._cache.get(text, ()):  # every hwcaps variant of the name: glibc picks by CPU
            for found in self.library(path, kind):
                found_in_cache = True
                yield found
        if found_in_cache:
            return
        for directory in _default_dirs(kind):
            if (yield from self.in_directory(directory, text, kind)):
                return

    def in_directory(
        self,
        directory: str,
        name: str,
        kind: tuple[int, bool, str | int],
    ) -> Generator[tuple[LoaderFile, _Elf], None, bool]:
        """Grant ``name`` in ``directory`` (and its hwcaps subdirectories); whether found there."""
        for subdirectory in _HWCAPS.get(str(kind[2]), ()):
            yield from self.library(os.path.join(directory, "glibc-hwcaps", subdirectory, name), kind)
        found = False
        for library in self.library(os.path.join(directory, name), kind):
            found = True
            yield library
        return found

    def library(self, path: str, kind: tuple[int, bool, str | int]) -> Iterator[tuple[LoaderFile, _Elf]]:
        """Grant ``path`` if it is a shared object ld.so would map for this program."""
        opened = self.open(path, executable=False)
        if opened is None:
            return
        file, stream, version = opened
        with stream:
            elf = _parse_elf_once(stream, version)
        if elf is None or elf.kind != kind or elf.elf_type != "ET_DYN":
            return
        self.grant(file)
        yield file, elf


def _shebang(head: bytes) -> list[str] | None:
    """The ``#!`` line of a script as ``[interpreter, optional argument]``."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line:
        return None
    interpreter, _, argument = line.partition(" ")
    argument = argument.strip()
    return [interpreter, argument] if argument else [interpreter]


def program_files(
    executable: Path,
    env: Mapping[str, str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> list[LoaderFile]:
    """What starting ``executable`` loads: itself, its interpreter, its libraries.

    ``env`` is the slave's environment (its ``LD_LIBRARY_PATH`` and, for
    ``#!/usr/bin/env NAME``, its ``PATH``; the master's own by default);
    ``cwd`` the slave's working directory, from which relative search
    entries are taken. Only regular files are returned, each with the
    identity it had when checked; the executable and ``#!`` interpreters
    must have an execute bit, ``PT_INTERP`` and libraries must be ELF
    objects matching the executable. For a ``#!`` script, what its
    interpreter loads is added (and, for ``#!/usr/bin/env NAME``, what
    ``NAME`` found on ``PATH`` loads). Nothing is run. Libraries a program
    ``dlopen``s later are not known here: see ``Sandbox.system_libraries``.
    """
    environment = os.environ if env is None else env
    directory = os.fspath(cwd) if cwd is not None else os.getcwd()
    key = (os.fspath(executable), directory, environment.get("LD_LIBRARY_PATH"), environment.get("PATH"))
    cached = _discovered.get(key)
    if cached is not None and all(_witness(path) == seen for path, seen in cached[0]):
        return list(cached[1])
    discovery = _Discovery(environment, directory)
    discovery.program(executable, 0)
    files = list(discovery.files.values())
    if not discovery.searched_path and discovery.probes > 0:
        witnesses = tuple((path, _witness(path)) for path in dict.fromkeys(discovery.looked_at))
        if len(_discovered) >= _MAX_DISCOVERED:
            _discovered.pop(next(iter(_discovered)))
        _discovered[key] = (witnesses, tuple(files))
    return files


#: What starting a program needs, by (executable, cwd, LD_LIBRARY_PATH, PATH): the paths discovery
#: looked at with what each was then, and the files found. Starting the same program again (a server
#: running jobs) re-reads no ELF file: every path is stat()ed again, and one that changed in any way
#: (created, removed, replaced, written: its identity, size, mtime or ctime) means discovering anew.
_discovered: dict[
    tuple[str, str, str | None, str | None], tuple[tuple[tuple[str, object], ...], tuple[LoaderFile, ...]]
] = {}
_MAX_DISCOVERED: Final = 64


def _witness(path: str) -> object:
    """What ``path`` is now, for a cache's validation: the file's identity and times, or the errno."""
    try:
        status = os.stat(path)
    except OSError as error:
        return error.errno
    return (status.st_dev, status.st_ino, status.st_mode, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _ld_so_conf(path: Path, found: list[str], read: set[str]) -> None:
    """Directories named in an ``ld.so.conf`` and in the files it ``include``s (glob patterns).

    Each file is read once (an ``include`` loop ends), at most
    ``_MAX_CONF_FILES`` of them.
    """
    real = os.path.realpath(path)
    if real in read or len(read) >= _MAX_CONF_FILES:
        return
    read.add(real)
    opened = _regular_file(path, executable=False)
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
        if all(_witness(path) == seen for path, seen in witnesses):
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
        _system_dirs = (tuple((path, _witness(path)) for path in dict.fromkeys(looked_at)), tuple(found))
    return found


#: The last :func:`system_library_dirs` of the system's configuration, with what it depended on.
_system_dirs: tuple[tuple[tuple[str, object], ...], tuple[Path, ...]] | None = None


def resolve_program(argv0: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Path:
    """The file ``execvp(argv0)`` runs, resolved: a path from ``cwd``, or a name on the slave's ``PATH``."""
    if "/" in argv0:
        base = Path(cwd) if cwd is not None else Path.cwd()
        return (base / argv0).resolve()
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno_module.ENOENT, f"program not found on PATH: {argv0}")
    return Path(found).resolve()
