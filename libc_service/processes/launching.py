"""Start a slave without running Python in the child: ``subprocess`` with ``vfork`` and the launcher.

A ``preexec_fn`` makes the interpreter ``fork()`` — copying the page
tables of a process that has imported asyncio, pydantic and this package,
then taking a copy-on-write fault for every page either side touches until
the child executes — and run Python in the child. That fork, not the
sandbox, was most of a sandboxed job's cost. Without a ``preexec_fn``,
:class:`subprocess.Popen` uses ``vfork``; what the child must do before the
program runs (setsid, fresh namespaces, Landlock, no capabilities, the
seccomp filters, the seccomp listener's handoff) is then done by the
launcher (``libc_service/_launch``, a small C program) from steps the
parent prepared, just before it executes the program.

:class:`LaunchPlan` collects those steps and the descriptors the launcher
needs; :func:`launcher_argv` turns them into the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LaunchPlan", "launcher_argv", "launcher_path", "program_path"]


def launcher_path() -> Path | None:
    """The installed launcher, or ``None`` (a build without it: the ``preexec_fn`` path is used)."""
    path = Path(__file__).parent.parent / "_launch"
    return path if os.access(path, os.X_OK) else None


@dataclass
class LaunchPlan:
    """What the launcher does before ``exec``, in order, and the descriptors it must inherit."""

    steps: list[str] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def extend(self, steps: Sequence[str], fds: Sequence[int]) -> None:
        self.steps += steps
        self.fds += fds


def program_path(argv0: str, env: Mapping[str, str]) -> str:
    """What ``execvp(argv0)`` with ``env``'s ``PATH`` would execute (relative paths stay relative to ``cwd``).

    Not resolved through symlinks: a script run through a link sees the
    link's path, as it would with ``execvp``.
    """
    if "/" in argv0:
        return argv0
    import shutil  # its archive modules are not what a plain run's start should pay for

    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(2, f"No such file or directory: {argv0!r}")
    return found


def launcher_argv(launcher: Path, plan: LaunchPlan, program: str, argv: Sequence[str]) -> list[str]:
    """The launcher's command line: the steps, then the program's path and its own ``argv``."""
    return [os.fspath(launcher), *plan.steps, "--", program, *argv]
