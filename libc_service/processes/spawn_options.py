"""The keywords of :func:`~libc_service.processes.spawn` and :class:`~libc_service.processes.spawn.SlaveProcess`, declared once.

``spawn()`` passes its keywords on to ``SlaveProcess`` unchanged, and each
part of starting and serving a program reads the ones it needs: a new
option is a key here and the line that reads it, nowhere else. A key left
out takes its default, which its description below states (``.get()``
gives ``None`` for the ones that default to nothing). A keyword that is
not one of them is refused at the call, as a misspelt keyword of a plain
signature is: a ``sandbx=`` silently ignored would run the program
unconfined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from libc_service.confinement.sandbox import Sandbox

__all__ = ["File", "SpawnOptions", "check_options"]

#: A stdio argument, as for :func:`asyncio.create_subprocess_exec`: a descriptor, a file, ``PIPE`` or ``None``.
File = int | IO[Any] | None


class SpawnOptions(TypedDict, total=False):
    """What :func:`~libc_service.processes.spawn` takes after ``argv`` and the router; every key may be left out."""

    env: Mapping[str, str] | None
    """The program's environment instead of the master's (the shim's variables are added)."""
    cwd: str | os.PathLike[str] | None
    """The program's working directory instead of the master's."""
    sandbox: Sandbox | None
    """Confines the program with the kernel before it runs (default: none)."""
    stdin: File
    """The program's stdin: passed through unless given (``PIPE``, a file or a descriptor)."""
    stdout: File
    """The program's stdout, as ``stdin``."""
    stderr: File
    """The program's stderr, as ``stdin``."""
    shim: str | os.PathLike[str] | None
    """The preload shim to use instead of the installed one."""
    max_sessions: int
    """Bounds the processes of the tree served at once (default 1024; each costs the master a
    descriptor): a registration past it is refused and that process falls back as without a master."""
    seccomp: bool
    """Also decides the tree's arbitrated system calls that the shim does not see, through seccomp user
    notifications (:mod:`libc_service.seccomp`; raises :class:`~libc_service.SeccompUnavailable`
    where the kernel cannot). Without ``sandbox`` a call the policy forwards is then unconfined: a
    warning is logged. Default off."""
    rules: bool
    """Lets the shim answer by itself the calls the router provably answers with a constant
    (``FORWARD`` or ``deny``), with no round trip (:mod:`libc_service.policy.rules`); off, every call is
    asked. Default on."""
    reports: bool | Literal["wait"]
    """A router with observers gets no rule table (the observers see every call in its session, as
    it is decided) unless ``reports=True``: then the shim decides too and tells the master
    afterwards, without waiting, and the observers get those calls as the default's decisions.
    ``"wait"``: the same, but a report the registration socket has no room for is waited for instead
    of dropped (the program runs at the observers' pace, and they see every call: ``trace`` does
    this). Default off."""


def check_options(options: Mapping[str, object], caller: str) -> None:
    """Raise ``TypeError`` for a keyword that is not one of :class:`SpawnOptions`' (type checkers say so first)."""
    for name in options:
        if name not in SpawnOptions.__optional_keys__:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
