"""What a handler's outcome becomes: one answer, the same for every transport.

A handler returns or raises; the slave gets one reply. :func:`answer_for`
turns the outcome into an :class:`Answer` in one pure step, the way h11's
``send(event)`` turns an event into bytes: no I/O, no logging, nothing
closed. Deciding is :mod:`libc_service.policy.router`'s; carrying the answer is the
transport's (:meth:`Call.answer <libc_service.endpoints.master_call.Call.answer>` for
the shim's channel, seccomp's ioctls for :mod:`libc_service.notify`), which
is why the outcome types live here, below both:

| handler outcome | answer |
|---|---|
| ``int``; ``Stat``; ``list[AddrInfo]`` or an error name (getaddrinfo) | the result |
| ``WithFds(result, fds)`` | the result with the descriptors |
| ``raise Errno(code)`` / any ``OSError`` / ``return deny(code)`` | ``-1`` with that errno (getaddrinfo: ``system``) |
| ``socket.gaierror`` (getaddrinfo) | its error name, e.g. ``noname`` |
| ``FORWARD`` | the slave does the call itself |
| anything else, or an exception | a :class:`Failure`: ``error_errno`` (fail closed) |

A policy's mistake fails only its call, never the session: a failure is
logged (by :class:`BugLog`, the one place that writes the "policy bug"
line) and its descriptors closed.
"""

from __future__ import annotations

import errno as errno_module
import logging
import os
import socket
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, cast

from libc_service.protocol import wire_header
from libc_service.protocol import replies  # replies: loaded on first use (libc_service/__init__.py)

from libc_service.protocol.catalogue import GAI_ERROR_NAMES, GAI_ERRORS
from libc_service.kernel.descriptors import close_fds

if TYPE_CHECKING:
    from libc_service.protocol.replies import Result
    from libc_service.protocol.requests import Request

__all__ = [
    "FORWARD",
    "FORWARDED",
    "MAX_ERRNO",
    "PASS",
    "Answer",
    "BugLog",
    "Errno",
    "Failure",
    "Outcome",
    "Summary",
    "WithFds",
    "answer_for",
    "deny",
    "failure",
]

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

#: The largest errno a reply carries: the kernel's ``MAX_ERRNO``. A larger
#: "errno" is none (seccomp cannot even return it): the handler's bug.
MAX_ERRNO: Final = 4095


class Answer:
    """One call's reply as the policy gives it, before any transport carries it.

    ``outcome`` says what kind of reply it is; ``result`` and ``errno`` are
    what the slave's call returns (``result`` is ``None`` when forwarded);
    ``fds`` are the descriptors the reply carries, which it owns from the
    moment the answer is made: the transport closes them once sent, or once
    it knows they never will be. Answers are values: equal fields, equal
    answers; the constant ones (forward, a refusal with an errno) are made
    once and shared.
    """

    __slots__ = ("outcome", "result", "errno", "fds")

    def __init__(self, outcome: Outcome, result: Result | None, errno: int = 0, fds: tuple[int, ...] = ()) -> None:
        self.outcome: Final = outcome
        self.result: Final = result
        self.errno: Final = errno
        self.fds: Final = fds

    @property
    def forwarded(self) -> bool:
        """Whether the slave does the call itself (:data:`FORWARD`)."""
        return self.outcome == "forward"

    @property
    def summary(self) -> Summary:
        """What observers are told went out: outcome, result, errno, descriptor count."""
        return self.outcome, self.result, self.errno, len(self.fds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answer):
            return NotImplemented
        return (self.outcome, self.result, self.errno, self.fds) == (
            other.outcome,
            other.result,
            other.errno,
            other.fds,
        )

    def __hash__(self) -> int:
        return hash((self.outcome, self.errno, self.fds))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.outcome!r}, {self.result!r}, errno={self.errno}, fds={self.fds})"


class Failure(Answer):
    """An answer that fails the call closed because the policy made a mistake.

    ``problem`` is the mistake: the exception the handler raised, or why
    what it returned cannot be a reply. ``refused`` are descriptors the
    handler returned that the reply does not carry: the answer owns them
    and whoever acts on the failure closes them.
    """

    __slots__ = ("problem", "refused")

    def __init__(self, result: Result, errno: int, problem: str | BaseException, refused: tuple[int, ...] = ()) -> None:
        super().__init__("failure", result, errno)
        self.problem: Final = problem
        self.refused: Final = refused


#: The answer of every forwarded call.
FORWARDED: Final = Answer("forward", None)
#: Refusals by errno, made on first use (at most ``MAX_ERRNO`` of each).
_REFUSALS: Final[dict[int, Answer]] = {}
_SYSTEM_ERRORS: Final[dict[int, Answer]] = {}
#: Functions whose success is a ``Stat`` (every other succeeds with an int, or getaddrinfo's answers).
_STAT_FUNCTIONS: Final = frozenset({"stat", "lstat"})
_NOT_INT_FUNCTIONS: Final = _STAT_FUNCTIONS | {"getaddrinfo"}


def answer_for(request: Request, outcome: object, error_errno: int) -> Answer:
    """The answer ``outcome`` gives ``request``: a pure function, the same for every transport.

    ``outcome`` is what the deciding handler returned or raised:

    - :data:`FORWARD` → forwarded;
    - an ``OSError`` with an errno (an ``Errno`` among them, which is what
      ``deny(code)`` builds) → ``-1`` with it (getaddrinfo: the
      ``system`` error); a ``socket.gaierror`` for getaddrinfo → its error
      name;
    - an ``int`` (any function but stat/lstat and getaddrinfo), a ``Stat``
      (stat/lstat), a list of ``AddrInfo`` or an error name (getaddrinfo),
      or a :class:`WithFds` of one → a reply with that result;
    - anything else, an exception, descriptors that are not descriptors (or
      more than the function's reply carries) → a :class:`Failure` with
      ``error_errno`` (fail closed), saying what was wrong.

    Nothing is logged, closed or sent here (:meth:`Router.answer
    <libc_service.policy.router.Router.answer>` logs a failure and closes what it
    refused); whether a descriptor is still open is for the transport that
    hands it over to find out.
    """
    if outcome is FORWARD:
        return FORWARDED
    function = request.function
    if isinstance(outcome, BaseException):
        code = outcome.errno if isinstance(outcome, OSError) else None
        if function == "getaddrinfo" and isinstance(outcome, socket.gaierror) and code in GAI_ERROR_NAMES:
            return Answer("error", GAI_ERROR_NAMES[code])
        if type(code) is int and 0 < code <= MAX_ERRNO:
            return _refusal(function, code)
        return _failure(function, error_errno, outcome)
    fds: tuple[int, ...] = ()
    result = outcome
    if isinstance(outcome, WithFds):
        result = outcome.result
        try:
            fds = tuple(outcome.fds)
        except TypeError:
            return _failure(function, error_errno, f"{outcome.fds!r} is not a sequence of descriptors")
        # One descriptor, the usual case, checked inline; anything else by _unsendable.
        if len(fds) != 1 or type(fds[0]) is not int or not 0 <= fds[0] < 2**31:
            problem = _unsendable(function, fds)
            if problem is not None:
                return _failure(function, error_errno, problem, tuple(fd for fd in fds if _is_fd(fd)))
    if type(result) is int:
        if function not in _NOT_INT_FUNCTIONS and -(2**63) <= result < 2**63:
            return Answer("reply", result, 0, fds)
    elif function in _STAT_FUNCTIONS and isinstance(result, replies.Stat):
        return Answer("reply", result, 0, fds)
    problem = _misfit(function, result)
    if problem is not None:
        return _failure(function, error_errno, problem, fds)
    return Answer("reply", cast("Result", result), 0, fds)


def _refusal(function: str, code: int) -> Answer:
    """``-1`` with ``code`` (getaddrinfo: the ``system`` error), one shared answer per errno."""
    refusals = _SYSTEM_ERRORS if function == "getaddrinfo" else _REFUSALS
    refusal = refusals.get(code)
    if refusal is None:
        refusal = refusals[code] = Answer("error", "system" if function == "getaddrinfo" else -1, code)
    return refusal


def failure(function: str, error_errno: int, problem: str | BaseException) -> Failure:
    """The answer failing a call of ``function`` closed with ``error_errno``, for ``problem``.

    For a transport that finds it cannot carry an answer :func:`answer_for`
    gave (a ``Stat`` built without validation whose fields do not fit).
    """
    return _failure(function, error_errno, problem)


def _failure(function: str, error_errno: int, problem: str | BaseException, refused: tuple[int, ...] = ()) -> Failure:
    return Failure("system" if function == "getaddrinfo" else -1, error_errno, problem, refused)


def _misfit(function: str, result: object) -> str | None:
    """Why ``result`` is no successful result of ``function`` (``None``: it is one)."""
    kind = type(result).__name__
    if function in _STAT_FUNCTIONS:
        return None if isinstance(result, replies.Stat) else f"{function} succeeds with a Stat, not {kind}"
    if function == "getaddrinfo":
        if isinstance(result, str):
            if result == "system":
                return "the 'system' getaddrinfo error carries an errno: raise an OSError"
            return None if result in GAI_ERRORS else f"unknown getaddrinfo error {result!r}"
        if not isinstance(result, list) or not all(isinstance(entry, replies.AddrInfo) for entry in result):
            return f"getaddrinfo results in a list of AddrInfo or an error name, not {kind}"
        if len(result) > wire_header.MAX_ADDRINFO:
            return f"at most {wire_header.MAX_ADDRINFO} addresses per answer, not {len(result)}"
        return None
    if isinstance(result, bool) or not isinstance(result, int):
        return f"{function} results in an int, not {kind}"
    return None if -(2**63) <= result < 2**63 else f"result {result} does not fit in 64 bits"


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

    def failed(self, route: str, request: Request, outcome: object, answer: Failure) -> None:
        """Act on a :class:`Failure` :func:`answer_for` gave: close what it refused, log the mistake once.

        A raised exception is logged as :meth:`report` says; any other
        mistake with this module's one "policy bug" line.
        """
        if answer.refused:
            close_fds(answer.refused)
        errno_name = errno_module.errorcode.get(answer.errno, str(answer.errno))
        if isinstance(answer.problem, BaseException):
            self.report(route, request, answer.problem, errno_name)
            return
        logger.error(
            "policy bug: handler %s answered %r with %r (%s); failing the call with %s",
            route,
            request,
            outcome,
            answer.problem,
            errno_name,
        )


def _power_of_ten(count: int) -> bool:
    while count % 10 == 0:
        count //= 10
    return count == 1


def _is_fd(fd: object) -> bool:
    return isinstance(fd, int) and not isinstance(fd, bool) and 0 <= fd < 2**31


def _unsendable(function: str, fds: tuple[int, ...]) -> str | None:
    """Why ``fds`` cannot go out with a reply to ``function`` (``None``: they can)."""
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int) or not 0 <= fd < 2**31:
            return f"{fd!r} is not a descriptor"
    if len(fds) > 1 and len(fds) > wire_header.reply_fd_limit(function):  # every reply carries one
        return f"a {function} reply carries at most {wire_header.reply_fd_limit(function)} descriptors, not {len(fds)}"
    return None
