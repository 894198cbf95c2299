"""Loader discovery: which files loading a program needs.

Before the slave runs, the sandbox grants it read and execute on exactly the
files the kernel and the dynamic loader open to start it: the executable,
its ELF interpreter, the shared libraries it links and, for a ``#!`` script,
the same for its interpreter. Everything here reads files the (untrusted)
program chose, so it runs none of them and trusts none of their text.
"""

from __future__ import annotations

import errno as errno_module
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["program_files", "resolve_program"]

_MAX_SCRIPT_DEPTH: Final = 4


def _elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP of an ELF executable (None for static or non-ELF files)."""
    try:
        with path.open("rb") as file:
            ident = file.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
                return None  # only 64-bit little-endian ELF is parsed
            phoff, = struct.unpack_from("<Q", ident, 32)
            phentsize, phnum = struct.unpack_from("<HH", ident, 54)
            file.seek(phoff)
            table = file.read(phentsize * phnum)
            for index in range(phnum):
                kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", table, index * phentsize)
                if kind == 3:  # PT_INTERP
                    file.seek(offset)
                    return file.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _shebang(path: Path) -> list[str] | None:
    """The ``#!`` line of a script as ``[interpreter, optional argument]``."""
    try:
        with path.open("rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line:
        return None
    interpreter, _, argument = line.partition(" ")
    argument = argument.strip()
    return [interpreter, argument] if argument else [interpreter]


_LOADER_NAME: Final = re.compile(r"ld(-linux)?(-[\w.-]+)?\.so(\.\d+)*|ld64\.so(\.\d+)*|ld-musl-[\w.-]+\.so\.1")
_LIBRARY_DIRS: Final = ("/lib/", "/lib64/", "/lib32/", "/usr/lib/", "/usr/lib64/", "/usr/lib32/")


def _is_system_loader(interpreter: str) -> bool:
    """Whether a ``PT_INTERP`` is the system's dynamic loader, safe to run in trace mode.

    The program chooses its ``PT_INTERP``; running whatever it names (a
    shell, a script interpreter) on the program's bytes would execute them
    in the master. Only a file named like a dynamic loader (``ld-linux*.so*``,
    ``ld64.so*``, ``ld-musl-*.so.1``) whose real path is in a system library
    directory is run.
    """
    real = os.path.realpath(interpreter)
    return (
        _LOADER_NAME.fullmatch(Path(interpreter).name) is not None
        and _LOADER_NAME.fullmatch(Path(real).name) is not None
        and real.startswith(_LIBRARY_DIRS)
        and os.path.isfile(real)
    )


def program_files(
    executable: Path, env: Mapping[str, str] | None = None, *, _depth: int = 0
) -> list[Path]:
    """What loading ``executable`` needs: itself, its interpreter, its libraries.

    Libraries are listed by the system's own dynamic loader in trace mode
    (``LD_TRACE_LOADED_OBJECTS``), which runs none of the program's code;
    the program's ``PT_INTERP`` is run only when it is a dynamic loader in
    a system library directory (see ``_is_system_loader``), otherwise only
    the program and its interpreter are listed. For a ``#!``
    script, what its interpreter needs is added (and, for ``#!/usr/bin/env
    NAME``, what ``NAME`` found on ``PATH`` needs). Libraries a program
    ``dlopen`` later are not known here: allow their directories.
    """
    files = [executable]
    interpreter = _elf_interpreter(executable)
    if interpreter is None:
        return files + _script_files(executable, env, _depth)
    files.append(Path(interpreter))
    if not _is_system_loader(interpreter):
        return files  # never run what the (untrusted) program names: it could be /bin/sh
    trace_env = {"LD_TRACE_LOADED_OBJECTS": "1", "PATH": "/usr/bin:/bin"}
    if env and "LD_LIBRARY_PATH" in env:
        trace_env["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
    try:
        output = subprocess.run(
            [interpreter, str(executable)], env=trace_env, capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return files
    for line in output.splitlines():
        # "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "\t/lib64/ld-linux... (0x...)"
        target = line.split("=>")[-1].strip().split(" (")[0].strip()
        if target.startswith("/"):
            files.append(Path(target))
    return files


def _script_files(script: Path, env: Mapping[str, str] | None, depth: int) -> list[Path]:
    """What the kernel execs for a ``#!`` script (nothing for other files)."""
    shebang = _shebang(script)
    if shebang is None or depth >= _MAX_SCRIPT_DEPTH or not shebang[0].startswith("/"):
        return []
    interpreter = Path(shebang[0])
    files = program_files(interpreter, env, _depth=depth + 1)
    if interpreter.name == "env" and len(shebang) > 1:
        # "#!/usr/bin/env NAME" (or "env -S NAME ARGS"): env execs NAME from PATH.
        words = [word for word in shebang[1].split() if not word.startswith("-")]
        search = (env or os.environ).get("PATH", os.defpath)
        found = shutil.which(words[0], path=search) if words else None
        if found is not None:
            files += program_files(Path(found).resolve(), env, _depth=depth + 1)
    return files


def resolve_program(argv0: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Path:
    if "/" in argv0:
        base = Path(cwd) if cwd is not None else Path.cwd()
        return (base / argv0).resolve()
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno_module.ENOENT, f"program not found on PATH: {argv0}")
    return Path(found).resolve()
