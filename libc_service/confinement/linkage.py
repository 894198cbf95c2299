"""Which programs of a command line are statically linked: the shim cannot see their calls.

The shim is loaded by the dynamic loader (``LD_PRELOAD``); a statically
linked program has no loader (no ``PT_INTERP`` program header), so it
makes every call itself and the master hears of none of them. Under a
sandbox such a program then fails with its own "Permission denied", with
nothing said of why. The seccomp transport sees its system calls whatever
its linkage, so ``run``, ``trace`` and ``learn`` read the executables
first (as data, with pyelftools, as :mod:`libc_service.confinement.loader` does) and
say so.

What is read: the program (found on the slave's ``PATH`` as ``execvp``
would), the interpreters of a ``#!`` script, and the arguments that name
an executable file by a path (``sh -c ./tool``, ``env ./tool``,
``make CC=/opt/bin/cc``): what a program will exec at run time is known
only then, and is not guessed here. This is advice to the user, not a
security decision: the sandbox stands whatever it says.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat as stat_module
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from elftools.elf.elffile import ELFFile

__all__ = ["is_static", "static_note", "static_programs"]

#: ``#!`` interpreters followed (the kernel's own limit is 4 as well), and the bytes of a ``#!`` line read.
_MAX_SCRIPT_DEPTH: Final = 4
_SHEBANG_BYTES: Final = 256
#: Program headers read from one file (the kernel refuses tables larger than 64 KiB).
_MAX_SEGMENTS: Final = 1024
#: Arguments looked at, and words of one argument: a long command line costs a bounded time.
_MAX_ARGUMENTS: Final = 256
_MAX_WORDS: Final = 256


def is_static(path: str | os.PathLike[str]) -> bool | None:
    """Whether ``path`` is a statically linked ELF executable (no ``PT_INTERP``).

    ``None`` when it is not an ELF executable at all (a script, a
    directory, an unreadable or malformed file): nothing can be said.
    Static-PIE executables (``ET_DYN`` without ``PT_INTERP``) are static.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat_module.S_ISREG(info.st_mode):
        return None  # a FIFO or device is never opened
    try:
        with open(path, "rb") as stream:
            if stream.read(4) != b"\x7fELF":
                return None
            stream.seek(0)
            elf = ELFFile(stream)
            if elf.header["e_type"] not in ("ET_EXEC", "ET_DYN") or elf.num_segments() > _MAX_SEGMENTS:
                return None
            kinds = [segment["p_type"] for segment in elf.iter_segments()]
    except Exception:  # noqa: BLE001 - hostile or broken bytes: nothing can be said
        return None
    if "PT_INTERP" in kinds:
        return False
    # A shared library has neither an interpreter nor an entry point worth running.
    return bool(elf.header["e_entry"] != 0)


def _interpreter(path: Path) -> Path | None:
    """The absolute interpreter of a ``#!`` script, else ``None``."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(_SHEBANG_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    if not words or not words[0].startswith(b"/"):
        return None
    return Path(os.fsdecode(words[0]))


def _executable_file(path: Path) -> bool:
    try:
        info = path.stat()
    except (OSError, ValueError):
        return False
    return stat_module.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111)


def _candidates(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> list[Path]:
    """The program and the executables its arguments name by path."""
    found: list[Path] = []
    if "/" in argv[0]:
        found.append(cwd / argv[0])
    else:
        located = shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if located is not None:
            found.append(Path(located))
    for argument in argv[1:_MAX_ARGUMENTS]:
        try:
            words = shlex.split(argument) if any(space in argument for space in " \t\n") else [argument]
        except ValueError:  # an unbalanced quote: not a shell command
            words = [argument]
        for word in words[:_MAX_WORDS]:
            word = word.partition("=")[2] if "=" in word and "/" not in word.partition("=")[0] else word
            if "/" in word and _executable_file(cwd / word):
                found.append(cwd / word)
    return found


def static_programs(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """The statically linked executables ``argv`` runs, as far as the command line shows them.

    ``env`` is the program's environment (its ``PATH``; the master's by
    default), ``cwd`` its working directory. Each executable is named as
    the command line names it (made absolute), once, in order.
    """
    if not argv:
        return []
    environment = os.environ if env is None else env
    base = Path(cwd) if cwd is not None else Path.cwd()
    static: dict[str, Path] = {}
    for candidate in _candidates(argv, environment, base):
        program: Path | None = Path(os.path.normpath(candidate))
        for _ in range(_MAX_SCRIPT_DEPTH + 1):
            if program is None:
                break
            if is_static(program):
                static.setdefault(os.fspath(program), program)
                break
            program = _interpreter(program)
    return list(static.values())


def static_note(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> str | None:
    """``"PROGRAM is statically linked: the shim cannot see its calls"``, or ``None`` when none is.

    The first half of what ``run``, ``trace`` and ``learn`` tell the user
    before they use the seccomp transport (or ask for ``--seccomp``).
    """
    static = static_programs(argv, env, cwd)
    if not static:
        return None
    names = ", ".join(str(path) for path in static)
    return f"{names} {'is' if len(static) == 1 else 'are'} statically linked: the shim cannot see {'its' if len(static) == 1 else 'their'} calls"
