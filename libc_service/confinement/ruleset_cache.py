"""Landlock rulesets built once and reused by every spawn whose rules name the same objects.

Building a ruleset opens, checks and adds one rule per path (the program,
its libraries, the shim, the system's library directories, the policy's
trees): a server starting the same sandboxed program again and again would
redo it each time. A Landlock rule is attached to the *object* a path led
to when it was added, not to the path, so a built ruleset stays right
exactly as long as every path still leads to the object it was built for.
That is checked at each reuse: every path is ``stat``-ed again (following
symlinks, as the rule's ``O_PATH`` open did) and its ``(st_dev, st_ino)``
compared with the one recorded when its rule was added. The rule holds a
reference to that inode, so its number cannot meanwhile be given to another
file: equal identities mean the same object. A tree replaced, renamed over
or retargeted through a symlink gives another identity, and the ruleset is
built again.

Only rulesets where every rule was added are kept (a path that does not
exist, or a loader file that changed, is built for again, with its
warning). Each user of a kept ruleset gets its own duplicate of the
descriptor, so dropping an entry never closes one in use.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Final

from libc_service.confinement.loader_files import LoaderFile

__all__ = ["cached_ruleset", "clear"]

Rule = tuple[Path | LoaderFile, int, bool]
#: Builds a ruleset from rules: its descriptor and, per rule, the identity of the object its rule is on
#: (``None``: no rule added).
Builder = Callable[[Sequence[Rule]], tuple[int, list[tuple[int, int] | None]]]

#: Distinct (program, sandbox) combinations kept; the least recently used goes first.
_LIMIT: Final = 32
_lock = threading.Lock()
#: key -> (descriptor, the identity of every rule's object when it was added)
_kept: OrderedDict[Hashable, tuple[int, tuple[tuple[int, int], ...]]] = OrderedDict()


def _identities(rules: Sequence[Rule]) -> tuple[tuple[int, int], ...] | None:
    """What each rule's path leads to now, or ``None`` when one leads nowhere."""
    found = []
    for target, _, _ in rules:
        try:
            status = os.stat(target.path if isinstance(target, LoaderFile) else target)
        except OSError:
            return None
        found.append((status.st_dev, status.st_ino))
    return tuple(found)


def _key(abi: int, network: bool, rules: Sequence[Rule]) -> Hashable:
    described = tuple(
        (os.fspath(target.path), access, (target.device, target.inode))
        if isinstance(target, LoaderFile)
        else (os.fspath(target), access, None)
        for target, access, _ in rules
    )
    return abi, network, described


def cached_ruleset(abi: int, network: bool, rules: Sequence[Rule], build: Builder) -> tuple[int, list[bool]]:
    """A ruleset descriptor for ``rules`` (the caller's to close) and which rules it holds.

    Reused when the same rules were built before and every path still
    leads to the object its rule is on; built with ``build`` otherwise.
    """
    key = _key(abi, network, rules)
    now = _identities(rules)
    with _lock:
        kept = _kept.get(key)
        if kept is not None and now is not None and kept[1] == now:
            _kept.move_to_end(key)
            return os.dup(kept[0]), [True] * len(rules)
    fd, objects = build(rules)
    added = [identity is not None for identity in objects]
    if all(added):
        # The identities of the objects the rules were added on, as the builder saw them.
        identities = tuple(identity for identity in objects if identity is not None)
        with _lock:
            old = _kept.pop(key, None)
            _kept[key] = (os.dup(fd), identities)
            while len(_kept) > _LIMIT:
                os.close(_kept.popitem(last=False)[1][0])
        if old is not None:
            os.close(old[0])
    return fd, added


def clear() -> None:
    """Drop every kept ruleset (closing the descriptors kept here)."""
    with _lock:
        while _kept:
            os.close(_kept.popitem()[1][0])
