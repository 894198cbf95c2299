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

This module follows a program from its executable to its libraries; what
one ELF file says is :mod:`.loader_elf`'s to read, where glibc looks for a
library :mod:`.loader_search`'s, a candidate file and its identity
:mod:`.loader_files`', and the system's library directories
(``Sandbox.system_libraries``) :mod:`.loader_system`'s.
"""

from __future__ import annotations

import errno as errno_module
import logging
import os
import shutil
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from libc_service.confinement.loader_elf import Elf, parse_elf_once
from libc_service.confinement.loader_files import FileVersion, LoaderFile, regular_file, witness
from libc_service.confinement.loader_search import (
    HWCAPS,
    LD_SO_CACHE,
    absolute,
    default_dirs,
    expand,
    parse_ld_so_cache,
    read_ld_so_cache,
    search_list,
)
from libc_service.confinement.loader_system import SYSTEM_LIBRARY_DIRS, system_library_dirs

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
#: ``#!`` lines longer than this are cut by the kernel (``BINPRM_BUF_SIZE``).
_SHEBANG_BYTES: Final = 256


@dataclass(frozen=True)
class _Node:
    """A loaded object whose ``DT_NEEDED`` names are still to be found."""

    elf: Elf
    origin: str
    #: The ``RPATH`` directories of this object, then of the object that loaded it, and
    #: so on up to the executable (an object with a ``RUNPATH`` contributes none).
    rpaths: tuple[tuple[str, ...], ...]
    runpath: tuple[str, ...] | None
    depth: int


#: A file's version: device, inode, size, modification and change times.


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
        self.looked_at: list[str] = [os.fspath(LD_SO_CACHE)]
        #: Whether the result also depends on something no path witnesses (a ``PATH`` search).
        self.searched_path = False

    def open(
        self,
        path: str | os.PathLike[str],
        *,
        executable: bool,
    ) -> tuple[LoaderFile, IO[bytes], FileVersion] | None:
        """:func:`regular_file`, counted against the bound on files looked at."""
        if self.probes <= 0:
            return None
        self.probes -= 1
        self.looked_at.append(os.fspath(path))
        if self.probes == 0:
            logger.warning("loader discovery: stopped after %d files; a library may be missing", _MAX_PROBES)
        return regular_file(path, executable=executable)

    def grant(self, file: LoaderFile) -> None:
        """Add ``file``, once per file (the first name it was found under is kept)."""
        self.files.setdefault((file.device, file.inode), file)

    # ------------------------------------------------------------ programs

    def program(self, path: Path, depth: int) -> None:
        """The executable (or script) at ``path`` and what starting it loads."""
        path = Path(absolute(os.fspath(path), self.cwd))
        opened = self.open(path, executable=True)
        if opened is None:
            return  # not a regular executable file: the kernel will refuse it
        file, stream, version = opened
        with stream:
            elf = parse_elf_once(stream, version)
            stream.seek(0)
            head = stream.read(_SHEBANG_BYTES) if elf is None else b""
        self.grant(file)
        if elf is None:
            self.script(head, depth)
            return
        if elf.elf_type not in ("ET_EXEC", "ET_DYN") or elf.interpreter is None:
            return  # static: the kernel maps it alone and no loader runs
        interpreter = absolute(os.fsdecode(elf.interpreter), self.cwd)
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
            elf = parse_elf_once(stream, version)
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

    def node(self, elf: Elf, origin: str, loaders: tuple[tuple[str, ...], ...], depth: int) -> _Node:
        """A loaded object with its search lists expanded (``$ORIGIN`` is its directory).

        An object with a ``RUNPATH`` has its ``RPATH`` ignored, for itself
        and for what it loads (glibc's ``elf_get_dynamic_info``).
        """
        runpath = search_list(elf.runpath, origin, self.cwd) if elf.has_runpath else None
        rpath = search_list(elf.rpath, origin, self.cwd) if runpath is None else ()
        return _Node(elf, origin, (rpath, *loaders), runpath, depth)

    def libraries(self, root: _Node) -> None:
        """Breadth first over the ``DT_NEEDED`` tree, as ld.so maps dependencies.

        A name already looked for is not looked for again (ld.so reuses an
        object loaded under that name).
        """
        # $ORIGIN in LD_LIBRARY_PATH is the executable's directory.
        library_path = search_list(self.env.get("LD_LIBRARY_PATH"), root.origin, self.cwd, ":;")
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
                        origin = os.path.dirname(absolute(str(found.path), self.cwd))
                        queue.append(self.node(elf, origin, loader.rpaths, loader.depth + 1))

    def find(self, name: bytes, loader: _Node, library_path: tuple[str, ...]) -> Iterator[tuple[LoaderFile, Elf]]:
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
            expanded = expand(text, loader.origin)
            if expanded is not None:
                yield from self.library(absolute(expanded, self.cwd), kind)
            return
        directories = [directory for rpath in loader.rpaths for directory in rpath] if loader.runpath is None else []
        directories += library_path
        directories += loader.runpath or ()
        for directory in dict.fromkeys(directories):
            if (yield from self.in_directory(directory, text, kind)):
                return
        if self._cache is None:
            self._cache = read_ld_so_cache(LD_SO_CACHE)
        found_in_cache = False
        for path in self._cache.get(text, ()):  # every hwcaps variant of the name: glibc picks by CPU
            for found in self.library(path, kind):
                found_in_cache = True
                yield found
        if found_in_cache:
            return
        for directory in default_dirs(kind):
            if (yield from self.in_directory(directory, text, kind)):
                return

    def in_directory(
        self,
        directory: str,
        name: str,
        kind: tuple[int, bool, str | int],
    ) -> Generator[tuple[LoaderFile, Elf], None, bool]:
        """Grant ``name`` in ``directory`` (and its hwcaps subdirectories); whether found there."""
        for subdirectory in HWCAPS.get(str(kind[2]), ()):
            yield from self.library(os.path.join(directory, "glibc-hwcaps", subdirectory, name), kind)
        found = False
        for library in self.library(os.path.join(directory, name), kind):
            found = True
            yield library
        return found

    def library(self, path: str, kind: tuple[int, bool, str | int]) -> Iterator[tuple[LoaderFile, Elf]]:
        """Grant ``path`` if it is a shared object ld.so would map for this program."""
        opened = self.open(path, executable=False)
        if opened is None:
            return
        file, stream, version = opened
        with stream:
            elf = parse_elf_once(stream, version)
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
    if cached is not None and all(witness(path) == seen for path, seen in cached[0]):
        return list(cached[1])
    discovery = _Discovery(environment, directory)
    discovery.program(executable, 0)
    files = list(discovery.files.values())
    if not discovery.searched_path and discovery.probes > 0:
        witnesses = tuple((path, witness(path)) for path in dict.fromkeys(discovery.looked_at))
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


def resolve_program(argv0: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Path:
    """The file ``execvp(argv0)`` runs, resolved: a path from ``cwd``, or a name on the slave's ``PATH``."""
    if "/" in argv0:
        base = Path(cwd) if cwd is not None else Path.cwd()
        return (base / argv0).resolve()
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno_module.ENOENT, f"program not found on PATH: {argv0}")
    return Path(found).resolve()
