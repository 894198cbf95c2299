"""The calls loading a program needs, done by the master without asking the router.

Under seccomp the loader's own opens are notified (the shim never sees
them, so a policy was never asked about them): the shim, the loader's
cache, the program's interpreter and libraries (``files``), the system's
library directories and, under a sandbox, its static trees (``trees``). A
read-only open, a stat or a non-writing access of an absolute, normalised
path there is done by the master itself, on the path it read (a continued
call would read the path again, after another thread may have changed
it), and an open counts only when the file it opened is one of them by its
own name (a symlink leading elsewhere goes to the router). A policy cannot
be expected to know them, and a sandbox grants them by itself.
"""

from __future__ import annotations

import inspect
import logging
import os
import posixpath
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from libc_service.kernel.descriptors import close_fds
from libc_service.protocol.outcomes import WithFds
from libc_service.policy.slavepath import exact_name

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request

__all__ = ["LoadingCalls"]

logger = logging.getLogger(__name__)

#: Flags of a read-only open (what the loader, and a library reading its data, pass).
_READ_ONLY_OPEN: Final = frozenset({"read_only", "close_on_exec", "large_file", "directory", "non_blocking", "no_ctty"})


class LoadingCalls:
    """Which calls only read what loading the program needs, and doing them."""

    def __init__(self, files: Sequence[str] = (), trees: Sequence[str] = ()) -> None:
        self.files = frozenset(files)
        self.trees = tuple(tree.rstrip("/") + "/" for tree in trees if tree.startswith("/"))
        self._objects = self.files | {os.path.realpath(file) for file in self.files}
        self._object_trees = tuple(
            dict.fromkeys(self.trees + tuple(os.path.realpath(tree).rstrip("/") + "/" for tree in self.trees))
        )

    def __bool__(self) -> bool:
        return bool(self.files or self.trees)

    def includes(self, fields: dict[str, Any]) -> bool:
        """Whether the decoded call only reads one of the files or beneath one of the trees."""
        path = fields.get("path")
        if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
            return False  # relative, "..", "//", a trailing slash: the router decides
        function = fields["function"]
        if function in ("open", "openat"):
            if not fields["flags"] <= _READ_ONLY_OPEN:
                return False
        elif function in ("access", "eaccess"):
            if "w" in fields["amode"]:
                return False
        elif function not in ("stat", "lstat"):
            return False
        return path in self.files or path.startswith(self.trees)

    async def done(self, request: Request, session: str) -> Any:
        """The outcome of the call done by the master; ``None``: the router decides it.

        Handlers, observers and ``trace`` do not see it. The path is the one
        the master read; an open counts only when the file opened is one of
        the program's or beneath one of the trees by its own name.
        """
        from libc_service.acting.perform import perform  # only sessions with loading files need it

        try:
            outcome = perform(request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except OSError as exc:
            return exc
        except Exception:  # noqa: BLE001 - a call perform() cannot do is the router's, never continued
            logger.debug("%s: loading call %r left to the router", session, request, exc_info=True)
            return None
        if isinstance(outcome, WithFds):
            try:
                name = exact_name(outcome.fds[0]) if outcome.fds else None
            except OSError:
                name = None
            if name is None or not (name in self._objects or name.startswith(self._object_trees)):
                close_fds(outcome.fds)
                return None
        return outcome
