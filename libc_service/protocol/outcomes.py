"""What a handler's outcome becomes on the wire.

A handler returns or raises; the slave gets one reply. The mapping lives
here, apart from deciding (:mod:`libc_service.policy.router`) and from the I/O
(:mod:`libc_service.endpoints.master`), the way Starlette keeps exception-to-response
in a module of its own:

| handler outcome | reply |
|---|---|
| ``int``; ``Stat``; ``list[AddrInfo]`` or an error name (getaddrinfo) | the result |
| ``WithFds(result, fds)`` | the result with the descriptors |
| ``raise Errno(code)`` / any ``OSError`` | ``-1`` with that errno (getaddrinfo: ``system``) |
| ``socket.gaierror`` (getaddrinfo) | its error name, e.g. ``noname`` |
| ``FORWARD`` | the slave does the call itself |
| anything else, or an exception | logged; the slave gets ``error_errno`` (fail closed) |

A policy's mistake fails only its call, never the session: an unsendable
result or descriptor is logged and answered with ``error_errno``.
"""

from __future__ import annotations

import errno as errno_module
import logging
import os
import socket
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from libc_service.protocol.catalogue import GAI_ERROR_NAMES
from libc_service.endpoints.master import Call, SessionClosed, close_fds

if TYPE_CHECKING:
    from libc_service.protocol.replies import Result
    from libc_service.protocol.requests import Request

__all__ = ["FORWARD", "PASS", "BugLog", "Errno", "Outcome", "Summary", "WithFds", "deny", "reply_now"]

#: The router's logger, not this module's: a policy's failures are reported
#: under the router that runs it, where log filters and tools look for them.
logger = logging.getLogger("libc_service.policy.router")


class Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


FORWARD: Final = Sentinel("FORWARD")
"""Return (or use as a default) to let the slave do the call itself."""
PASS: Final = Sentinel("PASS")
"""Return to let the next matching route (or the default) decide."""


class Errno(OSError):
    """A refusal: the call fails with ``errno``, whoever spells it.

    A handler raises it (``raise Errno(errno.EACCES)``) or returns it; a
    router's default is one (``deny(errno.EPERM)`` builds it), so a refusal
    has one type wherever it is made, and :meth:`Router.routes
    <libc_service.policy.router.Router.routes>` shows the default as the same
    object. Any other ``OSError`` a handler lets through (the kernel's,
    from :func:`~libc_service.acting.perform`) is answered the same way.
    """

    #: Always set, positive (``OSError.errno`` may be ``None``).
    errno: int

    def __init__(self, code: int, message: str | None = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int) or code <= 0:
            raise ValueError(f"Errno takes a positive errno value, not {code!r}")
        super().__init__(code, message or os.strerror(code))

    @property
    def errno_name(self) -> str:
        """The errno's symbolic name, e.g. ``EPERM``."""
        return errno_module.errorcode.get(self.errno, str(self.errno))

    def __eq__(self, other: object) -> bool:
        # Two refusals with the same errno are the same refusal (a default compares equal to deny(code)).
        if isinstance(other, Errno):
            return self.errno == other.errno
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Errno, self.errno))


@dataclass(frozen=True, slots=True)
class WithFds:
    """A result sent together with descriptors, which the reply then owns."""

    result: Result
    fds: Sequence[int]


def deny(errno: int = errno_module.EPERM) -> Errno:
    """A refusal with ``errno``: the :class:`Errno` a router's default or a handler gives."""
    if isinstance(errno, bool) or not isinstance(errno, int) or errno <= 0:
        raise ValueError(f"deny() takes a positive errno value, not {errno!r}")
    return Errno(errno)


Outcome: TypeAlias = Literal["reply", "forward", "error", "failure"]
"""What kind of reply went out (:class:`~libc_service.policy.router.Decision`'s ``outcome``): a result,
``FORWARD``, an errno, or ``error_errno`` for a policy bug."""
#: What went out for one call: outcome, result, errno, descriptor count.
Summary: TypeAlias = "tuple[Outcome, Result | None, int, int]"


def reply_now(call: Call, route: str, outcome: Any, error_errno: int, bugs: BugLog) -> tuple[Summary, bool]:
    """Encode the reply ``outcome`` calls for and send it if the socket takes it.

    Returns what the reply says (for observers) and whether it went out; if
    not, it waits on the call (``call.flush()`` sends it). Descriptors of a
    ``WithFds`` are the reply's, closed on every path. Raises only
    :class:`~libc_service.endpoints.master.SessionClosed`.
    """
    request = call.request
    if outcome is FORWARD:
        return ("forward", None, 0, 0), call.try_forward()
    if isinstance(outcome, OSError):
        code = outcome.errno
        if request.function == "getaddrinfo" and isinstance(outcome, socket.gaierror) and code in GAI_ERROR_NAMES:
            name = GAI_ERROR_NAMES[code]
            return ("error", name, 0, 0), call.try_send(name)
        if isinstance(code, int) and 0 < code < 2**31:
            if not isinstance(outcome, Errno):
                logger.debug("handler %s raised %r for %r", route, outcome, request)
            result: Result = "system" if request.function == "getaddrinfo" else -1
            return ("error", result, code, 0), call.try_send(result, (), code)
    if isinstance(outcome, BaseException):
        bugs.report(route, request, outcome, errno_module.errorcode.get(error_errno, "?"))
        return fail_now(call, error_errno)
    fds: Sequence[int] = ()
    result = outcome
    if isinstance(outcome, WithFds):
        result, fds = outcome.result, outcome.fds
        problem = _unsendable(fds)
        if problem:
            close_fds(fd for fd in fds if _is_fd(fd))
            logger.error(
                "policy bug: handler %s answered %r with %r (%s); failing the call with %s",
                route,
                request,
                outcome,
                problem,
                errno_module.errorcode.get(error_errno),
            )
            return fail_now(call, error_errno)
    try:
        sent = call.try_send(result, fds)
    except SessionClosed:
        raise
    except Exception as exc:  # noqa: BLE001 - nothing went out: the call is still owed
        logger.error(
            "policy bug: handler %s answered %r with %r (%s); failing the call with %s",
            route,
            request,
            outcome,
            exc,
            errno_module.errorcode.get(error_errno),
        )
        return fail_now(call, error_errno)
    return ("reply", result, 0, len(fds)), sent


def fail_now(call: Call, error_errno: int) -> tuple[Summary, bool]:
    """Fail ``call`` closed with ``error_errno`` (a policy bug); see :func:`reply_now`."""
    result: Result = "system" if call.function == "getaddrinfo" else -1
    return ("failure", result, error_errno, 0), call.try_send(result, (), error_errno)


class BugLog:
    """Log a handler's failure once with its traceback, then only how often it repeats.

    A handler bug usually fails every call that reaches it; a traceback per
    call buries the program's own output. The same failure — same handler and function,
    exception type and raising line — is counted and reported again at
    10, 100, 1000... occurrences.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str, str, int], int] = {}

    def report(self, route: str, request: Request, error: BaseException, errno_name: str) -> None:
        """Log ``error``, raised by the handler of ``route`` on ``request``, as this log's rule says."""
        frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = (frame[0].filename, frame[0].lineno or 0) if frame else ("?", 0)
        key = (route, request.function, type(error).__qualname__, *where)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count == 1:
            logger.error(
                "handler %s failed on %r; failing the call with %s (repeats are counted, not shown)",
                route,
                request,
                errno_name,
                exc_info=error,
            )
        elif _power_of_ten(count):
            logger.error(
                "handler %s has failed %d times with %s at %s:%d (each call failed with %s)",
                route,
                count,
                type(error).__qualname__,
                where[0],
                where[1],
                errno_name,
            )


def _power_of_ten(count: int) -> bool:
    while count % 10 == 0:
        count //= 10
    return count == 1


def _is_fd(fd: object) -> bool:
    return isinstance(fd, int) and not isinstance(fd, bool) and 0 <= fd < 2**31


def _unsendable(fds: Sequence[int]) -> str | None:
    """Why ``fds`` cannot go out with a reply (``None``: they can).

    ``sendmsg`` fails for a descriptor that is not open, and the master
    would end the session: a policy bug must fail only its call.
    """
    for fd in fds:
        if not _is_fd(fd):
            return f"{fd!r} is not a descriptor"
        try:
            os.fstat(fd)
        except OSError as exc:
            return f"descriptor {fd} is not open: {exc.strerror}"
    return None
