"""The Router: per-call policies as small typed handlers.

``@router.on("open", "openat")`` stores a :class:`Route` in one list that
dispatch, :meth:`Router.routes` and ``libc-service docs`` all read. What a
handler returns or raises becomes the reply:

| handler outcome | reply |
|---|---|
| ``int``; ``Stat``; ``list[AddrInfo]`` or an error name (getaddrinfo) | ``send(result)`` |
| ``WithFds(result, fds)`` | ``send_with_fds(result, fds)`` |
| ``raise Errno(code)`` / any ``OSError`` | ``-1`` with that errno (getaddrinfo: ``system``) |
| ``socket.gaierror`` (getaddrinfo) | its error name, e.g. ``noname`` |
| ``FORWARD`` | ``use_slave_credentials()`` |
| ``PASS`` | the next matching route decides |
| anything else, or an exception | logged; the slave gets ``error_errno`` (fail closed) |
"""

from __future__ import annotations

import asyncio
import errno as errno_module
import inspect
import logging
import os
import socket
import time
import traceback
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, Union

from .conditions import Condition
from .master import Call, Later, Master, SessionClosed, close_fds
from .replies import GaiError, Result, Stat
from .requests import FUNCTIONS, REQUEST_TYPES, Request

__all__ = [
    "FORWARD",
    "PASS",
    "Decision",
    "Errno",
    "Route",
    "RouteTable",
    "Router",
    "Transport",
    "WithFds",
    "deny",
]

logger = logging.getLogger(__name__)

#: ``socket.gaierror`` codes (what ``loop.getaddrinfo`` raises) by error name.
_GAI_ERROR_NAMES: Final[dict[int, GaiError]] = {
    socket.EAI_AGAIN: "again",
    socket.EAI_BADFLAGS: "badflags",
    socket.EAI_FAIL: "fail",
    socket.EAI_FAMILY: "family",
    socket.EAI_MEMORY: "memory",
    socket.EAI_NONAME: "noname",
    socket.EAI_SERVICE: "service",
    socket.EAI_SOCKTYPE: "socktype",
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME): "noname",
    getattr(socket, "EAI_ADDRFAMILY", socket.EAI_FAMILY): "family",
}


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


#: Return (or use as a default) to let the slave do the call itself.
FORWARD: Final = _Sentinel("FORWARD")
#: Return to let the next matching route (or the default) decide.
PASS: Final = _Sentinel("PASS")


class Errno(OSError):
    """``raise Errno(errno.EACCES)``: the call fails with that errno."""

    def __init__(self, code: int, message: str | None = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int) or code <= 0:
            raise ValueError(f"Errno takes a positive errno value, not {code!r}")
        super().__init__(code, message or os.strerror(code))


@dataclass(frozen=True, slots=True)
class WithFds:
    """A result sent together with descriptors, which the reply then owns."""

    result: Result
    fds: Sequence[int]


@dataclass(frozen=True, slots=True)
class Deny:
    """A default that fails every unhandled call with ``errno``."""

    errno: int

    @property
    def errno_name(self) -> str:
        """The errno's symbolic name, e.g. ``EPERM``."""
        return errno_module.errorcode.get(self.errno, str(self.errno))


#: Result types that are never awaitable: the hot path skips ``inspect.isawaitable``.
_PLAIN_RESULTS: Final[frozenset[type]] = frozenset({int, str, list, type(None), Stat, WithFds, _Sentinel})


def deny(errno: int = errno_module.EPERM) -> Deny:
    """A router default that refuses unhandled calls with ``errno``."""
    if isinstance(errno, bool) or not isinstance(errno, int) or errno <= 0:
        raise ValueError(f"deny() takes a positive errno value, not {errno!r}")
    return Deny(errno)


Handler: TypeAlias = Callable[[Any], Any]
Outcome: TypeAlias = Literal["reply", "forward", "error", "failure"]


@dataclass(frozen=True)
class Route:
    """One registered handler: the data dispatch and the docs generator share."""

    functions: tuple[str, ...]
    handler: Handler
    name: str
    doc: str | None
    conditions: tuple[Condition, ...]
    order: int
    source: tuple[str, int] | None = None

    def matches(self, request: Request) -> bool:
        """Whether every condition holds for ``request``."""
        return all(condition(request) for condition in self.conditions)

    @property
    def summary(self) -> str | None:
        """The docstring's first paragraph, on one line."""
        if not self.doc:
            return None
        return " ".join(self.doc.strip().split("\n\n")[0].split())


@dataclass(frozen=True)
class RouteTable:
    """What :meth:`Router.routes` returns: the routes in order and the default."""

    routes: tuple[Route, ...]
    default: Route | Deny | _Sentinel
    error_errno: int

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def for_function(self, function: str) -> tuple[Route, ...]:
        """The routes that may decide ``function``, in the order they are tried."""
        return tuple(route for route in self.routes if function in route.functions)


#: How a call reached the master (see :attr:`Decision.transport`).
Transport: TypeAlias = Literal["shim", "seccomp"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What an observer sees for every call, after the reply went out."""

    request: Request
    #: The deciding route's handler name, or ``"default"``.
    route: str
    outcome: Outcome
    result: Result | None
    errno: int
    nfds: int
    #: Time spent deciding (handlers and conditions), in nanoseconds.
    latency_ns: int
    session: str = field(default="")
    #: How the call reached the master: the preloaded shim's channel, or a
    #: seccomp user notification (:mod:`libc_service.notify`).
    transport: Transport = field(default="shim")


Observer: TypeAlias = Callable[[Decision], None]
#: What went out for one call: outcome, result, errno, descriptor count.
_Summary: TypeAlias = tuple[Outcome, Result | None, int, int]


class _Await:
    """A handler returned an awaitable: the decision continues in a task."""

    __slots__ = ("index", "name", "handler", "awaitable")

    def __init__(self, index: int, name: str, handler: Handler, awaitable: Awaitable[Any]) -> None:
        #: The route's index in the function's dispatch tuple; -1 for the default.
        self.index = index
        self.name = name
        self.handler = handler
        self.awaitable = awaitable


def _is_async(handler: Handler) -> bool:
    """Whether calling ``handler`` makes a coroutine (decided at registration)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)
    )


class Router:
    """Routes each request of a session to the first handler that decides it.

    ``default`` decides what no handler does: :data:`FORWARD`,
    ``deny(errno)`` or a handler. ``concurrent=True`` dispatches calls from
    different slave threads at once and replies out of order, so a slow
    async handler holds up only the thread that asked (one thread has at
    most one call in flight, so its calls stay ordered). ``error_errno`` is
    what the slave gets when a handler is buggy. ``timeout`` (seconds)
    bounds an async handler; past it the call fails with ``timeout_errno``.

    Sync handlers run on the event loop: keep them quick (a syscall or two)
    and make anything slower ``async``.

    In concurrent mode at most :attr:`max_in_flight` calls of one session
    are decided at once; past that the router stops reading the session
    until one is answered, so a slave that never reads its replies (or
    invents thread ids) cannot pile up tasks and descriptors in the master.
    """

    #: Calls of one session in flight at once in concurrent mode (a slave
    #: thread has one at a time, so this bounds the threads served at once).
    max_in_flight: int = 64

    def __init__(
        self,
        default: _Sentinel | Deny | Handler = FORWARD,
        *,
        concurrent: bool = False,
        error_errno: int = errno_module.EPERM,
        timeout: float | None = None,
        timeout_errno: int = errno_module.ETIMEDOUT,
    ) -> None:
        self._routes: list[Route] = []
        self._dispatch: dict[str, tuple[Route, ...]] = {name: () for name in FUNCTIONS}
        self._observers: list[Observer] = []
        self._bugs = _BugLog()
        self.concurrent = concurrent
        self.error_errno = deny(error_errno).errno
        self.timeout = timeout
        self.timeout_errno = deny(timeout_errno).errno
        self._default: Route | Deny | _Sentinel
        #: function -> (its routes, the default, whether all their handlers are sync),
        #: rebuilt when either changes: which calls the reader callback may answer.
        self._sync: dict[str, tuple[tuple[Route, ...], object, bool]] = {}
        if default is FORWARD or isinstance(default, Deny):
            self._default = default
        elif default is PASS or isinstance(default, _Sentinel):
            raise ValueError("a router's default is FORWARD, deny(errno) or a handler")
        elif callable(default):
            self._default = self._make_route(FUNCTIONS, default, (), order=-1)
        else:
            raise TypeError(f"a router's default is FORWARD, deny(errno) or a handler, not {default!r}")

    # -------------------------------------------------------- registration

    def on(
        self, *functions: str, when: Condition | Sequence[Condition] | None = None
    ) -> Callable[[Handler], Handler]:
        """Register a handler for ``functions`` (decorator).

        ``when`` holds declarative conditions that must all match. Raises
        ``ValueError`` for an unknown function and ``TypeError`` for a
        handler whose signature or type hint does not fit the functions.
        """
        if not functions:
            raise ValueError("on() needs at least one function name")
        unknown = [name for name in functions if name not in REQUEST_TYPES]
        if unknown:
            raise ValueError(f"unknown function(s) {', '.join(map(repr, unknown))}; valid: {', '.join(FUNCTIONS)}")
        conditions: tuple[Condition, ...]
        if when is None:
            conditions = ()
        elif isinstance(when, Condition):
            conditions = (when,)
        else:
            conditions = tuple(when)
        for condition in conditions:
            if not isinstance(condition, Condition):
                raise TypeError(f"when= takes conditions, not {condition!r}")
            if condition.functions is not None and not set(functions) <= condition.functions:
                extra = sorted(set(functions) - condition.functions)
                raise ValueError(f"condition {condition.describe()!r} does not apply to {', '.join(extra)}")

        def register(handler: Handler) -> Handler:
            route = self._make_route(tuple(dict.fromkeys(functions)), handler, conditions, len(self._routes))
            self._routes.append(route)
            for name in route.functions:
                self._dispatch[name] = self._dispatch[name] + (route,)
            return handler

        return register

    def _make_route(
        self, functions: tuple[str, ...], handler: Handler, conditions: tuple[Condition, ...], order: int
    ) -> Route:
        _check_handler(handler, functions)
        try:
            source: tuple[str, int] | None = (inspect.getsourcefile(handler) or "?", inspect.getsourcelines(handler)[1])
        except (OSError, TypeError):
            source = None
        return Route(
            functions=functions,
            handler=handler,
            name=_name(handler),
            doc=inspect.getdoc(handler),
            conditions=conditions,
            order=order,
            source=source,
        )

    def observe(self, observer: Observer) -> Observer:
        """Call ``observer(decision)`` after every reply (usable as a decorator)."""
        self._observers.append(observer)
        return observer

    def routes(self) -> RouteTable:
        """The registered routes, in order, and the default."""
        return RouteTable(tuple(self._routes), self._default, self.error_errno)

    @property
    def default(self) -> Route | Deny | _Sentinel:
        """The default: ``FORWARD``, a ``Deny`` or the default handler's route."""
        return self._default

    # ------------------------------------------------------------ serving

    async def serve(self, master: Master) -> None:
        """Serve one session until the slave hangs up; the master is closed after."""
        try:
            if self.concurrent:
                await self._serve_concurrently(master)
            else:
                await self._serve_sequentially(master)
        finally:
            master.close()

    async def _serve_sequentially(self, master: Master) -> None:
        # Calls whose handlers are all sync are answered without a coroutine:
        # here, and in the master's reader callback while this task waits
        # (no future, no task switch per call). The rest go through handle().
        session = master.name

        def answer_now(call: Call) -> bool:
            return self._answer_now(call, session)

        master._answer_now = answer_now
        try:
            while True:
                try:
                    call = await master.receive_call()
                except SessionClosed:
                    return
                later = call._later
                if later is not None:
                    call._later = None
                    await later.coroutine
                elif not self._answer_now(call, session):
                    later = call._later
                    if later is not None:
                        call._later = None
                        await later.coroutine
                    else:
                        await self.handle(call, session)
        finally:
            if master._answer_now is answer_now:
                master._answer_now = None

    async def _serve_concurrently(self, master: Master) -> None:
        tasks: set[asyncio.Task[None]] = set()
        # Backpressure: a call's descriptors stay open until it is answered.
        slots = asyncio.Semaphore(self.max_in_flight)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        try:
            while True:
                await slots.acquire()
                try:
                    call = await master.receive_call()
                except SessionClosed:
                    return
                task = asyncio.ensure_future(self.handle(call, master.name))
                tasks.add(task)
                task.add_done_callback(finished)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, call: Call, session: str = "") -> None:
        """Decide one call and reply; never raises except for cancellation."""
        request = call.request
        started = time.perf_counter_ns()
        try:
            route_name, outcome = await self._decide(request)
        except asyncio.CancelledError:
            call.abandon()
            raise
        await self._reply_and_notify(call, route_name, outcome, time.perf_counter_ns() - started, session)

    async def decide(self, request: Request) -> tuple[str, Any]:
        """Decide ``request`` outside a session: the deciding route's name and its outcome.

        For a transport that receives calls and replies some other way (the
        seccomp user notifications of :mod:`libc_service.notify`): the same
        routes, conditions, ``PASS``, default and ``timeout`` as
        :meth:`serve`, so one policy serves both. The outcome is what the
        handler returned or the exception it raised (a timeout gives
        ``Errno(timeout_errno)``); turning it into a reply is the caller's,
        who then gives observers the :class:`Decision` with :meth:`report`.
        """
        return await self._decide(request)

    def report(self, decision: Decision) -> None:
        """Give a decision made with :meth:`decide` to the observers, once its reply went out."""
        if self._observers:
            self._notify(decision)

    async def _reply_and_notify(self, call: Call, route_name: str, outcome: Any, latency: int, session: str) -> None:
        try:
            kind, result, errno, nfds = await self._reply(call, route_name, outcome)
        except SessionClosed:
            call.abandon()
            return
        if self._observers:
            # Built only for observers: a frozen dataclass costs more than the dispatch.
            self._notify(Decision(call.request, route_name, kind, result, errno, nfds, latency, session))

    def _decide_now(self, request: Request, start: int = 0) -> tuple[str, Any] | _Await:
        """The deciding route's name and its outcome, or the awaitable a handler returned.

        Tries the routes from ``start`` on, then the default.
        """
        routes = self._dispatch[request.function]
        for index in range(start, len(routes)):
            route = routes[index]
            try:
                if route.conditions and not route.matches(request):
                    continue
                result = route.handler(request)
            except asyncio.CancelledError as exc:
                if asyncio.current_task() is not None and _cancelling():
                    raise
                return route.name, exc  # a handler's stray CancelledError: fail the call
            except Exception as exc:  # noqa: BLE001 - becomes the reply
                return route.name, exc
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                return _Await(index, route.name, route.handler, result)
            if result is not PASS:
                return route.name, result
        default = self._default
        if isinstance(default, Route):
            try:
                result = default.handler(request)
            except asyncio.CancelledError as exc:
                if asyncio.current_task() is not None and _cancelling():
                    raise
                return "default", exc  # a handler's stray CancelledError: fail the call
            except Exception as exc:  # noqa: BLE001 - becomes the reply
                return "default", exc
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                return _Await(-1, "default", default.handler, result)
            return "default", result
        if isinstance(default, Deny):
            return "default", Errno(default.errno)
        return "default", FORWARD

    async def _decide(self, request: Request) -> tuple[str, Any]:
        """The deciding route's name and its outcome (a raised exception included)."""
        step = self._decide_now(request)
        while isinstance(step, _Await):
            step = await self._decide_after(request, step)
        return step

    async def _decide_after(self, request: Request, step: _Await) -> tuple[str, Any] | _Await:
        """Await the handler's awaitable; on ``PASS`` the next routes decide."""
        try:
            result = await self._wait(step.handler, request, step.awaitable)
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise
            return step.name, exc  # a handler's stray CancelledError: fail the call
        except Exception as exc:  # noqa: BLE001 - becomes the reply
            return step.name, exc
        if result is not PASS or step.index < 0:
            return step.name, result
        return self._decide_now(request, step.index + 1)

    def _sync_only(self, function: str) -> bool:
        """Whether every handler that may decide ``function`` is a plain function."""
        routes = self._dispatch[function]
        cached = self._sync.get(function)
        if cached is None or cached[0] is not routes or cached[1] is not self._default:
            default = self._default
            sync = not any(_is_async(route.handler) for route in routes) and not (
                isinstance(default, Route) and _is_async(default.handler)
            )
            cached = (routes, default, sync)
            self._sync[function] = cached
        return cached[2]

    def _answer_now(self, call: Call, session: str) -> bool:
        """Decide and answer ``call`` without awaiting, if that is possible.

        ``False`` when the session's task must take over: with nothing done
        (an async handler may decide: the task runs :meth:`handle`), or with
        ``call._later`` set to the coroutine that finishes the work begun
        (a sync handler returned an awaitable; the socket would not take
        the reply). Raises only :class:`SessionClosed`.
        """
        request = call.request
        if not self._sync_only(request.function):
            return False
        observed = bool(self._observers)  # the latency is for observers only
        started = time.perf_counter_ns() if observed else 0
        step = self._decide_now(request)
        if isinstance(step, _Await):
            call._later = Later(self._handle_after(call, session, started, step), step.awaitable)
            if call.done:
                # The handler ended the session (close() abandoned the call
                # before this work was attached): drop it, nobody is owed.
                call.abandon()
                return True
            return False
        route_name, outcome = step
        latency = time.perf_counter_ns() - started if observed else 0
        try:
            summary, sent = self._reply_now(call, route_name, outcome)
        except SessionClosed:
            call.abandon()
            return True
        if not sent:
            call._later = Later(self._flush_after(call, route_name, summary, latency, session))
            return False
        if self._observers:
            self._notify(Decision(request, route_name, *summary, latency, session))
        return True

    async def _handle_after(self, call: Call, session: str, started: int, step: _Await) -> None:
        """:meth:`handle` for a call whose sync handler returned an awaitable."""
        request = call.request
        try:
            decided: tuple[str, Any] | _Await = step
            while isinstance(decided, _Await):
                decided = await self._decide_after(request, decided)
        except asyncio.CancelledError:
            call.abandon()
            raise
        route_name, outcome = decided
        latency = time.perf_counter_ns() - started if started else 0
        await self._reply_and_notify(call, route_name, outcome, latency, session)

    async def _flush_after(self, call: Call, route: str, summary: _Summary, latency: int, session: str) -> None:
        try:
            await call._flush()
        except SessionClosed:
            call.abandon()
            return
        if self._observers:
            self._notify(Decision(call.request, route, *summary, latency, session))

    async def _wait(self, handler: Handler, request: Request, result: Awaitable[Any]) -> Any:
        """Await an async handler's result, within ``timeout``."""
        if self.timeout is None:
            return await result
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await result
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError: a handler failure
            logger.error("handler %s timed out after %ss on %r", _name(handler), self.timeout, request)
            return Errno(self.timeout_errno)

    async def _reply(self, call: Call, route: str, outcome: Any) -> _Summary:
        """Send the reply ``outcome`` calls for; what went out, for observers."""
        summary, sent = self._reply_now(call, route, outcome)
        if not sent:
            await call._flush()
        return summary

    def _reply_now(self, call: Call, route: str, outcome: Any) -> tuple[_Summary, bool]:
        """Encode the reply ``outcome`` calls for and send it if the socket takes it.

        Returns what the reply says (for observers) and whether it went out;
        if not, it waits on the call (``call._flush()`` sends it).
        """
        request = call.request
        if outcome is FORWARD:
            return ("forward", None, 0, 0), call._try_forward()
        if isinstance(outcome, OSError):
            code = outcome.errno
            if request.function == "getaddrinfo" and isinstance(outcome, socket.gaierror) and code in _GAI_ERROR_NAMES:
                name = _GAI_ERROR_NAMES[code]
                return ("error", name, 0, 0), call._try_send(name, ())
            if isinstance(code, int) and 0 < code < 2**31:
                if not isinstance(outcome, Errno):
                    logger.debug("handler %s raised %r for %r", route, outcome, request)
                result: Result = "system" if request.function == "getaddrinfo" else -1
                return ("error", result, code, 0), call._try_send(result, (), code)
        if isinstance(outcome, BaseException):
            self._bugs.report(route, request, outcome, errno_module.errorcode.get(self.error_errno, "?"))
            return self._fail_now(call)
        fds: Sequence[int] = ()
        result = outcome
        if isinstance(outcome, WithFds):
            result, fds = outcome.result, outcome.fds
            problem = _unsendable(fds)
            if problem:
                close_fds(fd for fd in fds if _is_fd(fd))
                logger.error("policy bug: handler %s answered %r with %r (%s); failing the call with %s",
                             route, request, outcome, problem, errno_module.errorcode.get(self.error_errno))
                return self._fail_now(call)
        try:
            sent = call._try_send(result, fds)
        except SessionClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing went out: the call is still owed
            logger.error("policy bug: handler %s answered %r with %r (%s); failing the call with %s",
                         route, request, outcome, exc, errno_module.errorcode.get(self.error_errno))
            return self._fail_now(call)
        return ("reply", result, 0, len(fds)), sent

    def _fail_now(self, call: Call) -> tuple[_Summary, bool]:
        result: Result = "system" if call.function == "getaddrinfo" else -1
        return ("failure", result, self.error_errno, 0), call._try_send(result, (), self.error_errno)

    def _notify(self, decision: Decision) -> None:
        for observer in self._observers:
            try:
                observer(decision)
            except Exception:  # noqa: BLE001 - an observer bug must not end the session
                logger.exception("observer %s failed", _name(observer))


class _BugLog:
    """Log a handler's failure once with its traceback, then only how often it repeats.

    A handler bug usually fails every call that reaches it; a traceback per
    call buries the program's own output. The same failure — same handler and function,
    exception type and raising line — is counted and reported again at
    10, 100, 1000... occurrences.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str, str, int], int] = {}

    def report(self, route: str, request: Request, error: BaseException, errno_name: str) -> None:
        frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = (frame[0].filename, frame[0].lineno or 0) if frame else ("?", 0)
        key = (route, request.function, type(error).__qualname__, *where)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count == 1:
            logger.error("handler %s failed on %r; failing the call with %s (repeats are counted, not shown)",
                         route, request, errno_name, exc_info=error)
        elif _power_of_ten(count):
            logger.error("handler %s has failed %d times with %s at %s:%d (each call failed with %s)",
                         route, count, type(error).__qualname__, where[0], where[1], errno_name)


def _power_of_ten(count: int) -> bool:
    while count % 10 == 0:
        count //= 10
    return count == 1


def _cancelling() -> bool:
    """Whether the running task is being cancelled.

    A handler may raise ``CancelledError`` of its own (it awaited something
    another task cancelled); that is a failed call, to be answered with an
    error. Letting it escape would end the session, and a slave whose
    channel is gone falls back to doing the call itself.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _name(handler: object) -> str:
    return getattr(handler, "__qualname__", None) or type(handler).__qualname__


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


def _check_handler(handler: Handler, functions: Sequence[str]) -> None:
    """Fail at registration, not per request, when a handler cannot serve ``functions``."""
    if not callable(handler):
        raise TypeError(f"a handler must be callable, not {handler!r}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    positional = [
        p for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    required_kw = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(positional) > 1 or required_kw or (not positional and not variadic and not _has_optional(signature)):
        raise TypeError(f"handler {_name(handler)} must take exactly one argument, the request")
    if not positional:
        return
    try:
        # Resolves string hints in the handler's own module; follows
        # partials, bound methods, callable objects and functools.wraps.
        resolved = inspect.signature(handler, eval_str=True)
    except Exception as exc:  # noqa: BLE001 - unresolvable hints are the author's to fix
        raise TypeError(f"cannot resolve the type hints of handler {_name(handler)}: {exc}") from exc
    hint = resolved.parameters[positional[0].name].annotation
    if hint is inspect.Parameter.empty:
        return
    accepted = _accepted_types(hint)
    if accepted is None:
        return
    wrong = [name for name in functions if not any(issubclass(REQUEST_TYPES[name], t) for t in accepted)]
    if wrong:
        raise TypeError(
            f"handler {_name(handler)} is annotated for {hint!r} but serves {', '.join(wrong)} "
            f"(requests {', '.join(REQUEST_TYPES[n].__name__ for n in wrong)})"
        )


def _has_optional(signature: inspect.Signature) -> bool:
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in signature.parameters.values()
    )


def _accepted_types(hint: Any) -> list[type] | None:
    """The classes a hint admits, or ``None`` when it admits anything."""
    if hint is Any or hint is object:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _accepted_types(typing.get_args(hint)[0])
    if origin is Union or origin is types.UnionType:
        accepted: list[type] = []
        for arg in typing.get_args(hint):
            sub = _accepted_types(arg)
            if sub is None:
                return None
            accepted.extend(sub)
        return accepted
    if isinstance(hint, type):
        return [hint]
    return None
