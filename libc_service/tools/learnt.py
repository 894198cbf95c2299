"""What learnt runs used, as the kernel names it, and the narrowest trees that grant it.

The data :mod:`libc_service.tools.learn` gathers while a program runs and
:mod:`libc_service.tools.learnt_source` writes as a policy: both read it,
neither is needed to read the other.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["BROAD_TREES", "MERGE_AT", "MIN_MERGE_DEPTH", "Learned", "broad_tree", "existing", "narrowest"]

#: A directory with at least this many used entries is granted whole.
MERGE_AT = 3
#: Never grant a directory this shallow or shallower whole (``/``, ``/etc``, ``/home``).
MIN_MERGE_DEPTH = 2

#: Trees that hold far more than one program needs, and what the policy says
#: when it grants one whole (fixed text: a comment never carries a name).
BROAD_TREES: Final[dict[str, str]] = {
    "/": "the whole file system",
    "/tmp": "a whole shared temporary directory: every program's temporary files",
    "/var/tmp": "a whole shared temporary directory: every program's temporary files",
    "/dev/shm": "a whole shared temporary directory: every program's shared memory",
    "/etc": "the whole of /etc: the host's configuration, its secrets included",
    "/home": "every user's home directory",
    "/root": "a whole home directory: keys, tokens and history included",
    "/usr": "a whole system tree",
    "/var": "a whole system tree",
}
_HOME: Final = "a whole home directory: keys, tokens and history included"


def broad_tree(path: str) -> str | None:
    """Why granting ``path`` whole grants far more than a program needs; ``None`` when it does not.

    A home directory is any directory right beneath ``/home`` and the
    invoking user's ``$HOME``.
    """
    reason = BROAD_TREES.get(path)
    if reason is not None:
        return reason
    if os.path.dirname(path) == "/home" or path == os.path.expanduser("~"):
        return _HOME
    return None


@dataclass
class Learned:
    """What the runs used, as the kernel names it.

    ``written`` holds names created, removed or renamed (their directory is
    granted: creating needs rights on it); ``modified`` holds existing files
    written in place and directories that must allow writing as they are
    (granted themselves). ``trees`` of a previous policy (``--append``) are
    kept as they were narrowed.
    """

    read: set[str] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)
    modified: set[str] = field(default_factory=set)
    executed: set[str] = field(default_factory=set)
    #: Files whose mode, owner or times the run changed (the master does those calls).
    changed: set[str] = field(default_factory=set)
    #: Trees where the master changes metadata, from a previous policy.
    changed_trees: set[str] = field(default_factory=set)
    #: Paths that cannot be granted (``/proc``, the terminal): listed in the policy.
    skipped: set[str] = field(default_factory=set)
    #: ``(address, port)`` the runs connected to that no answer of the master explains, and bound.
    connects: set[tuple[str, int]] = field(default_factory=set)
    binds: set[tuple[str, int]] = field(default_factory=set)
    #: Names the runs looked up (getaddrinfo's node).
    names: set[str] = field(default_factory=set)
    #: ``(name, port)`` the runs connected to at an address the master returned for that name.
    resolved: set[tuple[str, int]] = field(default_factory=set)
    #: The nameservers the master asked (``learn --nameserver``); empty: the system's.
    nameservers: list[str] = field(default_factory=list)
    #: The commands learnt from, oldest first.
    commands: list[list[str]] = field(default_factory=list)
    #: ``Sandbox(network=True)``: kept from a previous policy whose author chose it.
    host_network: bool = False
    calls: int = 0
    failed: int = 0
    #: Successful calls whose object had no name to grant (removed, another mount namespace).
    unnamed: int = 0

    def sandbox_arguments(self) -> dict[str, list[str]]:
        """The ``Sandbox`` lists: narrowest trees covering the run.

        Written trees are the parent directories of what was created,
        removed or renamed, and the files written in place; character
        devices (``/dev/null``) are granted as files. Read trees merge files
        of one directory once ``MERGE_AT`` of them were used. Executables
        are granted as files.
        """
        written = {existing(self._write_target(path)) for path in self.written}
        written |= {existing(path) for path in self.modified}
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
        parents = {existing(os.path.dirname(path) or "/") for path in self.changed}
        return narrowest(parents | self.changed_trees)

    def broad(self) -> list[tuple[str, str]]:
        """``(tree, reason)`` for each tree the policy grants whole that holds far more than the program."""
        lists = self.sandbox_arguments()
        granted = [*lists["allow_read"], *lists["allow_write"], *self.metadata_trees()]
        found: dict[str, str] = {}
        for tree in granted:
            reason = broad_tree(tree)
            if reason is not None:
                found[tree] = reason
        return sorted(found.items())

    @staticmethod
    def _write_target(path: str) -> str:
        try:
            if stat_module.S_ISCHR(os.stat(path).st_mode):
                return path
        except (OSError, ValueError):
            pass
        return os.path.dirname(path) or "/"


def existing(path: str) -> str:
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
    ``MIN_MERGE_DEPTH``, and not a home or another :func:`broad_tree`)
    holding ``MERGE_AT`` or more listed entries replaces them, repeatedly,
    so a program's library tree becomes one rule while ``/etc/passwd`` and
    ``/etc/group`` stay two.
    """
    current = {os.path.normpath(path) for path in paths}
    while True:
        current = {path for path in current if not _covered(path, current - {path})}
        parents: dict[str, int] = {}
        for path in current:
            parent = os.path.dirname(path)
            if path != "/" and _depth(parent) >= MIN_MERGE_DEPTH and broad_tree(parent) is None:
                parents[parent] = parents.get(parent, 0) + 1
        busy = {parent for parent, count in parents.items() if count >= MERGE_AT}
        if not busy:
            return sorted(current)
        current = {path for path in current if os.path.dirname(path) not in busy} | busy
