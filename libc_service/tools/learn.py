"""Write a starting policy from observed runs: ``libc-service learn``.

Finding a sandbox that lets a program work is otherwise trial and error:
under ``--sandbox`` a refused call shows up as the program's symptom
("Unknown <unknown@...>", "bad interpreter"), never as the rule it needed.
``learn`` runs the program once with every arbitrated call *performed by
the master* (:func:`~libc_service.acting.perform`, so the master sees each call's
outcome, not only that it was made), records what succeeded — files read,
directories listed, files written and trees written in, programs executed,
addresses connected to and bound, names looked up — and writes a policy
module (:mod:`libc_service.tools.learnt_source`): a :class:`~libc_service.Sandbox`
with the narrowest trees that covered the run and a router that has the
master make exactly the connections, binds and lookups the run made.

A connection to an address the master itself returned for a name (the
master performs every ``getaddrinfo`` of the run) is written as that name
on that port, ``resolved(NAME, ports=[PORT])``: next time the name may lead
elsewhere, and the address alone would grant whoever holds it then. Only a
connection no answer explains (an address the program had by other means)
stays an address rule, ``to(ADDRESS:PORT)``.
``libc-service run --sandbox`` accepts it as written; review it before
trusting it. ``learn --append`` adds another run to a policy it wrote.

Every name is the kernel's, read in the slave's terms: the name of the
descriptor ``perform`` opened (for ``open``), or of the object the slave's
path leads to, opened ``O_PATH`` the way ``perform`` resolves it (the
slave's ``/proc/self``, its working directory and descriptors) — never a
string the slave wrote, resolved in the master. A slave names its files,
though, so a name may hold anything: the policy writes each as a literal.

What one run cannot show: calls the shim does not see (the dynamic
loader's and libc's own opens, such as NSS's ``/etc/passwd`` or locale
files; static binaries without ``--seccomp``), paths the program takes only
on other inputs, and ``/proc`` (per process: a rule made in the master would
name the master's own entries, so ``/proc`` paths are reported, never
granted).
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import ipaddress
import logging
import os
import stat as stat_module
from collections.abc import Awaitable
from typing import Any, Final

from libc_service.policy.names import Address, NameScope, current_scope, enter, leave, plain_address
from libc_service.protocol.requests import Request
from libc_service.policy.router import Router, WithFds
from libc_service.policy.slavepath import descriptor_name
from libc_service.tools.learnt import BROAD_TREES, Learned, broad_tree, narrowest
from libc_service.tools.learnt_source import render

__all__ = ["BROAD_TREES", "Learned", "broad_tree", "learning_router", "narrowest", "render_policy"]

logger = logging.getLogger(__name__)

_WRITING_FLAGS = frozenset({"write_only", "read_write", "create", "truncate", "append", "temporary"})
_UNGRANTABLE = ("/proc/", "/dev/tty", "/dev/pts/")
_O_PATH_NAME: Final = os.O_PATH | os.O_CLOEXEC


# ------------------------------------------------------- names, in the slave's terms


class _OnePath:
    """A request seen through one of its paths (``rename`` has two), for :func:`_object_name`."""

    def __init__(self, request: Request, path: Any, dirfd: int | None) -> None:
        self._request = request
        self.path = path
        self.dirfd = dirfd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _object_name(request: Any, *, follow: bool = False) -> str | None:
    """The kernel's name of what the request's path leads to now, resolved as the slave's.

    Opened ``O_PATH`` by :func:`~libc_service.acting.perform.open_descriptor` with
    the slave's credentials, its ``/proc/self``, working directory and
    descriptors, then named from the master's descriptor. ``None`` when
    nothing is there, or it has no name in the master's root.
    """
    from libc_service.acting.files import open_descriptor

    path = getattr(request, "path", None)
    if path is None or str(path).startswith("\0"):
        return None  # an abstract socket name is not a file
    flags = _O_PATH_NAME if follow else _O_PATH_NAME | os.O_NOFOLLOW
    try:
        fd = open_descriptor(request, None, flags, 0)
    except OSError:
        return None
    try:
        return descriptor_name(fd)
    finally:
        os.close(fd)


def _parent_of(name: str | None) -> str | None:
    return None if name is None else os.path.dirname(name) or "/"


class _Recorder:
    """What one successful call used, noted in a :class:`Learned`."""

    def __init__(self, learned: Learned) -> None:
        self.learned = learned
        #: The names each address was returned for by the master's look-ups in these runs.
        self.answered: dict[Address, set[str]] = {}

    def before(self, request: Request) -> Any:
        """What must be read before the call changes it: the names a removal or rename takes away,
        and whether a creating open finds its file already there."""
        try:
            return self._before(request)
        except Exception:  # noqa: BLE001 - recording must never fail the program's call
            logger.exception("learn: could not name what %r uses", request)
            return None

    def after(self, request: Request, outcome: Any, before: Any) -> None:
        """Note what the successful call used; a failure to note it is logged, never the call's."""
        try:
            self._after(request, outcome, before)
        except Exception:  # noqa: BLE001 - recording must never fail the program's call
            self.learned.unnamed += 1
            logger.exception("learn: could not record %r", request)

    def _before(self, request: Request) -> Any:
        function = request.function
        if function in ("unlink", "rmdir"):
            return _object_name(request)
        if function == "rename":
            return _object_name(_OnePath(request, getattr(request, "path1"), getattr(request, "dirfd1")))
        if function in ("open", "openat"):
            flags: frozenset[str] = getattr(request, "flags", frozenset())
            if "create" in flags and "exclusive" not in flags:
                return _object_name(request, follow="no_follow" not in flags) is not None
        return None

    def _after(self, request: Request, outcome: Any, before: Any) -> None:
        learned = self.learned
        function = request.function
        if function in ("open", "openat"):
            self._opened(request, outcome, before)
        elif function in ("unlink", "rmdir"):
            self._add(learned.written, before)
        elif function == "rename":
            self._add(learned.written, before)
            second = _OnePath(request, getattr(request, "path2"), getattr(request, "dirfd2"))
            self._add(learned.written, _object_name(second))
        elif function in ("mkdir", "bind_unix"):
            self._add(learned.written, _object_name(request))
        elif function in ("chmod", "chown", "utimens"):
            self._add(learned.changed, _object_name(request, follow=not getattr(request, "no_follow", False)))
        elif function in ("fchmod", "fchown", "futimens"):
            self._add(learned.changed, descriptor_name(getattr(request, "fd")))
        elif function in ("connect_inet", "connect_inet6", "bind_inet", "bind_inet6"):
            address = str(getattr(request, "address")).split("%")[0]
            port = int(getattr(request, "port"))
            if function.startswith("bind"):
                learned.binds.add((address, port))
                return
            explained = self.answered.get(plain_address(address))
            if explained:
                learned.resolved.update((name, port) for name in explained)
            else:
                learned.connects.add((address, port))
        elif function == "getaddrinfo":
            node = getattr(request, "node", None)
            # "*" is no host name, and would read as a wildcard to named(); an
            # address needs no look-up beyond the program's own libc.
            if node is not None and isinstance(outcome, list) and "*" not in node and not _is_address(node):
                learned.names.add(node)
                for answer in outcome:
                    self.answered.setdefault(plain_address(getattr(answer, "address")), set()).add(node)

    def _opened(self, request: Request, outcome: Any, existed: Any) -> None:
        flags: frozenset[str] = getattr(request, "flags", frozenset())
        if "path" in flags or not isinstance(outcome, WithFds) or not outcome.fds:
            return
        fd = outcome.fds[0]
        learned = self.learned
        if "temporary" in flags:
            # An unnamed file in the directory the slave named: the directory must allow it.
            self._add(learned.modified, _object_name(request, follow=True))
            return
        name = descriptor_name(fd)
        if name is None:
            learned.unnamed += 1
            return
        if name == "/proc" or name.startswith(_UNGRANTABLE):
            learned.skipped.add(name)
            return
        if flags & _WRITING_FLAGS:
            created = "create" in flags and existed is not True
            (learned.written if created else learned.modified).add(name)
            return
        try:
            is_directory = stat_module.S_ISDIR(os.fstat(fd).st_mode)
        except OSError:
            is_directory = False
        (learned.listed if is_directory else learned.read).add(name)

    def _add(self, into: set[str], name: str | None) -> None:
        if name is None:
            self.learned.unnamed += 1
        elif name == "/proc" or name.startswith(_UNGRANTABLE):
            self.learned.skipped.add(name)
        else:
            into.add(name)


def _is_address(node: str) -> bool:
    try:
        ipaddress.ip_address(node.split("%")[0])
    except ValueError:
        return False
    return True


def _note_program(learned: Learned, pid: int) -> None:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return
    if exe.endswith(" (deleted)") or not exe.startswith("/"):
        return
    learned.executed.add(exe)


def learning_router(learned: Learned) -> Router:
    """A router that performs every call in the master and records what succeeded.

    The master resolves with ``learned.nameservers`` (the system's
    configuration when there are none), and any name the program looks up
    is looked up: learning is finding out which names it needs.
    """
    from libc_service.acting.perform import perform  # the master performs each call, so it sees the outcome
    from libc_service.policy.rendezvous import Rendezvous
    from libc_service.protocol.requests import FUNCTIONS
    from libc_service.policy.resolver import Resolver

    router = Router(resolver=Resolver(learned.nameservers) if learned.nameservers else None)
    recorder = _Recorder(learned)

    @router.on(*FUNCTIONS)
    def learn(request: Request) -> Any:
        """Every call is performed by the master as the program would have made it, and recorded."""
        learned.calls += 1
        _note_program(learned, request.pid)
        before = recorder.before(request)
        try:
            outcome = _perform_any_name(perform, request)
        except OSError as exc:
            _failed(learned, recorder, request, exc, before)
            raise
        if isinstance(outcome, Rendezvous):  # still waits for another party, not for the policy
            return Rendezvous(_record_later(learned, recorder, request, outcome, before))
        if inspect.isawaitable(outcome):
            return _record_later(learned, recorder, request, outcome, before)
        recorder.after(request, outcome, before)
        return outcome

    return router


def _perform_any_name(perform: Any, request: Request) -> Any:
    """``perform(request)``, a ``getaddrinfo`` of any name included.

    ``perform`` resolves only names the serving policy's patterns allow,
    and the learning router has none: for the call, the tree's scope
    allows every name (its resolver and answers stay the tree's). The
    scope is read when the call is made, so it is put back at once.
    """
    scope = current_scope()
    if request.function != "getaddrinfo" or scope is None:
        return perform(request)
    token = enter(NameScope(scope.resolver, None, scope.answers))
    try:
        return perform(request)
    finally:
        leave(token)


async def _record_later(
    learned: Learned, recorder: _Recorder, request: Request, outcome: Awaitable[Any], before: Any
) -> Any:
    try:
        result = await outcome
    except OSError as exc:
        _failed(learned, recorder, request, exc, before)
        raise
    recorder.after(request, result, before)
    return result


def _failed(learned: Learned, recorder: _Recorder, request: Request, error: OSError, before: Any) -> None:
    """Count a call that failed; a non-blocking connect under way is the program's connection all the same.

    The master connects the program's own socket in place, so a socket the
    program made non-blocking (Python's ``create_connection`` with a
    timeout, every event loop) gets ``EINPROGRESS`` as natively, and the
    program completes the connection itself.
    """
    if request.function in ("connect_inet", "connect_inet6") and error.errno == errno.EINPROGRESS:
        recorder.after(request, None, before)
        return
    learned.failed += 1


def render_policy(learned: Learned, command: list[str] | None = None) -> str:
    """The policy module's source (see :mod:`libc_service.tools.learnt_source`)."""

    if command is not None:
        learned = dataclasses.replace(learned, commands=[*learned.commands, list(command)])
    return render(learned)
