"""Write a starting policy from one observed run: ``libc-service learn``.

Finding a sandbox that lets a program work is otherwise trial and error:
under ``--sandbox`` a refused call shows up as the program's symptom
("Unknown <unknown@...>", "bad interpreter"), never as the rule it needed.
``learn`` runs the program once with every arbitrated call *performed by
the master* (:func:`~libc_service.perform`, so the master sees each call's
outcome, not only that it was made), records what succeeded — files read,
directories listed, trees written, programs executed, network used — and
writes a policy module: a :class:`~libc_service.Sandbox` with the narrowest
trees that covered the run and a router that forwards (or, for the
network, performs) the rest. ``libc-service run --sandbox`` accepts it as
written; review it before trusting it.

What one run cannot show: calls the shim does not see (the dynamic
loader's and libc's own opens, such as NSS's ``/etc/passwd`` or locale
files; static binaries), paths the program takes only on other inputs,
and ``/proc`` (per process: a rule made in the master would name the
master's own entries, so ``/proc`` paths are reported, never granted).
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import shlex
import stat as stat_module
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .requests import Request
from .router import Router
from .slavepath import descriptor_name

__all__ = ["Learned", "learning_router", "narrowest", "render_policy"]

logger = logging.getLogger(__name__)

#: A directory with at least this many used entries is granted whole.
MERGE_AT = 3
#: Never grant a directory this shallow or shallower whole (``/``, ``/etc``, ``/home``).
MIN_MERGE_DEPTH = 2
_WRITING_FLAGS = frozenset({"write_only", "read_write", "create", "truncate", "append", "temporary"})
_UNGRANTABLE = ("/proc/", "/dev/tty", "/dev/pts/")


@dataclass
class Learned:
    """What one run used, as absolute real paths."""

    read: set[str] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    executed: set[str] = field(default_factory=set)
    network: set[str] = field(default_factory=set)
    #: Files whose mode, owner or times the run changed (the master does those calls).
    changed: set[str] = field(default_factory=set)
    #: Paths that cannot be granted (``/proc``, the terminal): reported in the policy.
    skipped: set[str] = field(default_factory=set)
    calls: int = 0
    failed: int = 0

    def sandbox_arguments(self) -> dict[str, list[str]]:
        """The ``Sandbox`` lists: narrowest trees covering the run.

        Written trees are the parent directories of what was created,
        removed, renamed or written (creating needs rights on the
        directory); character devices (``/dev/null``) are granted as files.
        Read trees merge files of one directory once ``MERGE_AT`` of them
        were used. Executables are granted as files.
        """
        written = {_existing(self._write_target(path)) for path in self.written}
        read = set(self.read) | set(self.listed)
        allow_write = narrowest(written)
        allow_read = [path for path in narrowest(read) if not _covered(path, allow_write)]
        allow_exec = sorted(self.executed)
        return {"allow_read": allow_read, "allow_write": allow_write, "allow_exec": allow_exec}

    def metadata_trees(self) -> list[str]:
        """The narrowest trees holding every file whose mode, owner or times the run changed.

        Landlock does not mediate those changes, so the sandbox refuses them
        to the program (``Sandbox(metadata=False)``) and the learnt router
        has the master do them beneath these trees only.
        """
        return narrowest(_existing(os.path.dirname(path) or "/") for path in self.changed)

    @staticmethod
    def _write_target(path: str) -> str:
        try:
            if stat_module.S_ISCHR(os.stat(path).st_mode):
                return path
        except OSError:
            pass
        return os.path.dirname(path) or "/"


def _existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists now the run is over.

    A directory the run created and removed (``/tmp/pip-target-x8k2``,
    ``/tmp/cc1234.d``) will have another name next time: the rule names the
    directory it was made in.
    """
    while path != "/" and not os.path.lexists(path):
        path = os.path.dirname(path) or "/"
    return path


def _covered(path: str, trees: Iterable[str]) -> bool:
    return any(path == tree or path.startswith(tree.rstrip("/") + "/") for tree in trees)


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def narrowest(paths: Iterable[str]) -> list[str]:
    """The smallest list of trees covering ``paths``, merging busy directories.

    A path inside another listed one is dropped; a directory (deeper than
    ``MIN_MERGE_DEPTH``) holding ``MERGE_AT`` or more listed entries
    replaces them, repeatedly, so a program's library tree becomes one rule
    while ``/etc/passwd`` and ``/etc/group`` stay two.
    """
    current = {os.path.normpath(path) for path in paths}
    while True:
        current = {path for path in current if not _covered(path, current - {path})}
        parents: dict[str, int] = {}
        for path in current:
            parent = os.path.dirname(path)
            if path != "/" and _depth(parent) >= MIN_MERGE_DEPTH:
                parents[parent] = parents.get(parent, 0) + 1
        busy = {parent for parent, count in parents.items() if count >= MERGE_AT}
        if not busy:
            return sorted(current)
        current = {path for path in current if os.path.dirname(path) not in busy} | busy


def _absolute(request: Request, name: str = "path", dirfd_name: str = "dirfd") -> str | None:
    """The request's path as an absolute real path, resolved in the master while its dirfd is open."""
    path = getattr(request, name, None)
    if path is None:
        return None
    text: str = os.fsdecode(os.fspath(path))
    if not text.startswith("/"):
        dirfd = getattr(request, dirfd_name, None)
        if dirfd is None:
            return None
        try:
            text = os.path.join(os.readlink(f"/proc/self/fd/{dirfd}"), text)
        except OSError:
            return None
    return os.path.realpath(text)


def _record(learned: Learned, request: Request) -> None:
    """Note what the successful ``request`` used."""
    function = request.function
    if function in ("open", "openat"):
        path = _absolute(request)
        flags: frozenset[str] = getattr(request, "flags", frozenset())
        if path is None or "path" in flags:
            return
        if path.startswith(_UNGRANTABLE):
            learned.skipped.add(path)
        elif flags & _WRITING_FLAGS:
            learned.written.add(path)
        elif os.path.isdir(path):
            learned.listed.add(path)
        else:
            learned.read.add(path)
    elif function in ("mkdir", "rmdir", "unlink", "bind_unix"):
        path = _absolute(request)
        if path is not None:
            learned.written.add(path)
    elif function in ("chmod", "chown", "utimens"):
        path = _absolute(request)
        if path is not None:
            learned.changed.add(path)
    elif function in ("fchmod", "fchown", "futimens"):
        path = descriptor_name(getattr(request, "fd"))
        if path is not None:
            learned.changed.add(path)
    elif function == "rename":
        for name, dirfd in (("path1", "dirfd1"), ("path2", "dirfd2")):
            path = _absolute(request, name, dirfd)
            if path is not None:
                learned.written.add(path)
    elif function in ("connect_inet", "connect_inet6", "bind_inet", "bind_inet6", "getaddrinfo"):
        learned.network.add(function)


def _note_program(learned: Learned, pid: int) -> None:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return
    if exe.endswith(" (deleted)"):
        return
    learned.executed.add(exe)


def learning_router(learned: Learned) -> Router:
    """A router that performs every call in the master and records what succeeded."""
    from .perform import perform  # the master performs each call, so it sees the outcome
    from .rendezvous import Rendezvous
    from .requests import FUNCTIONS

    router = Router()

    @router.on(*FUNCTIONS)
    def learn(request: Request) -> Any:
        """Every call is performed by the master as the program would have made it, and recorded."""
        learned.calls += 1
        _note_program(learned, request.pid)
        try:
            outcome = perform(request)
        except OSError:
            learned.failed += 1
            raise
        if isinstance(outcome, Rendezvous):  # still waits for another party, not for the policy
            return Rendezvous(_record_later(learned, request, outcome))
        if inspect.isawaitable(outcome):
            return _record_later(learned, request, outcome)
        _record(learned, request)
        return outcome

    return router


async def _record_later(learned: Learned, request: Request, outcome: Awaitable[Any]) -> Any:
    try:
        result = await outcome
    except OSError:
        learned.failed += 1
        raise
    _record(learned, request)
    return result


def render_policy(learned: Learned, command: Sequence[str]) -> str:
    """The policy module's source: a ``Sandbox`` and a forwarding router."""
    lists = learned.sandbox_arguments()
    network = bool(learned.network)

    def listing(name: str) -> str:
        items = lists[name]
        if not items:
            return f"    {name}=[],\n"
        inner = "".join(f"        {item!r},\n" for item in items)
        return f"    {name}=[\n{inner}    ],\n"

    skipped = "".join(f"#   {path}\n" for path in sorted(learned.skipped)) or "#   (none)\n"
    metadata = learned.metadata_trees()
    imports = "from libc_service import FORWARD, Router, Sandbox"
    metadata_routes = ""
    if metadata:
        imports = "from libc_service import FORWARD, Router, Sandbox, perform, under"
        trees = "".join(f"    {tree!r},\n" for tree in metadata)
        metadata_routes = (
            "\n\n# The run changed modes, owners or times of files here (a linker making its\n"
            "# output executable, touch, tar -x). The sandbox refuses those changes to\n"
            "# the program itself (Landlock does not mediate them): the master does them,\n"
            "# beneath these trees only.\n"
            f"METADATA_TREES = [\n{trees}]\n\n\n"
            '@router.on("chmod", "fchmod", "chown", "fchown", "utimens", "futimens", when=under(*METADATA_TREES))\n'
            "def change_metadata(request):\n"
            '    """Mode, owner and time changes beneath the trees the learnt run changed."""\n'
            "    return perform(request)\n"
        )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    network_note = (
        f"# The run used the network ({', '.join(sorted(learned.network))}): network=True keeps the host's.\n"
        if network
        else "# The run used no network: the sandbox gets none.\n"
    )
    return (
        f'"""Starting policy learnt from one run of: {shlex.join(command)}\n\n'
        f"Written by `libc-service learn` on {when} from {learned.calls} calls. Every tree\n"
        "below was used by that run; review them, narrow what you can, and run:\n\n"
        f"    libc-service run --sandbox THIS_FILE -- {shlex.join(command)}\n"
        '"""\n\n'
        f"{imports}\n\n"
        + network_note
        + "# Not granted (per-process or terminal paths; /proc would name every process):\n"
        + skipped
        + "sandbox = Sandbox(\n"
        + listing("allow_read")
        + listing("allow_write")
        + listing("allow_exec")
        + f"    network={network!r},\n"
        + ")\n\n"
        "# Everything the sandbox allows, the program does itself; add handlers for\n"
        "# what the master should decide, e.g.:\n"
        '#   @router.on("open", "openat", when=under("/srv/data"))\n'
        '#   def serve(req): return perform(req, beneath="/srv/data")\n'
        "router = Router(default=FORWARD)\n" + metadata_routes
    )
