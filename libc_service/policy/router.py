"""The Router: per-call policies as small typed handlers.

``@router.on("open", "openat")`` stores a :class:`Route` in one list that
dispatch, :meth:`Router.routes` and ``libc-service docs`` all read. The
router registers, decides and tells observers; the session loop is the
master's (:meth:`Master.serve <libc_service.endpoints.master.Master.serve>`, to which
the router is a :class:`~libc_service.endpoints.master.Dispatcher`), and what a
handler's outcome becomes on the wire is :mod:`libc_service.protocol.outcomes`'s:

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

import dataclasses
import errno as errno_module
import inspect
import logging
import os
import time
import types
import warnings
from collections.abc import Awaitable, Callable, Container, Coroutine, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

from libc_service.policy import names
from libc_service.policy.conditions import Condition, name_patterns
from libc_service.policy.observers import UNNAMED, Decision, Observer, Observers, Transport, named_directories
from libc_service.policy.routes import Handler, Route, RouteTable
from libc_service.endpoints.master import Master
from libc_service.endpoints.master_call import Call, SessionClosed, discard
from libc_service.protocol.outcomes import (
    FORWARD,
    FORWARDED,
    PASS,
    Answer,
    BugLog,
    Errno,
    Failure,
    Outcome,
    Sentinel,
    WithFds,
    answer_for,
    deny,
    failure,
)
from libc_service.protocol.catalogue import FUNCTIONS
from libc_service.policy.rendezvous import Rendezvous
from libc_service.policy.route_index import INDEX_FROM, INDEXED_FUNCTIONS, RouteIndex
from libc_service.policy.signatures import check_handler, handler_name, source_of
from libc_service.policy.slavepath import directory_name

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.policy.names import Pattern
    from libc_service.protocol.replies import Result, Stat
    from libc_service.policy.resolver import Resolver
    from libc_service.protocol.requests import REQUEST_TYPES, Request
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = [
    "FORWARD",
    "PASS",
    "Decision",
    "Errno",
    "Outcome",
    "Route",
    "RouteTable",
    "Router",
    "Transport",
    "WithFds",
    "deny",
]

logger = logging.getLogger(__name__)

#: Result types that are never awaitable: the hot path skips ``inspect.isawaitable``.
#: Seeded with the plain outcomes; a class whose result was not awaitable joins
#: on first sight (``Stat``, ``AddrInfo`` lists' items, a policy's own), since
#: awaitability is the class's (``__await__``), except for generators.
_PLAIN_RESULTS: Final[set[type]] = {int, str, list, type(None), WithFds, Sentinel}
_MAX_PLAIN_RESULTS: Final = 256


class _Await:
    """A handler returned an awaitable: the decision continues in a task."""

    __slots__ = ("index", "name", "handler", "awaitable")

    def __init__(self, index: int, name: str, handler: Handler, awaitable: Awaitable[Any]) -> None:
        #: The route's index in the function's dispatch tuple (the default is the last).
        self.index = index
        self.name = name
        self.handler = handler
        self.awaitable = awaitable


def _is_async(handler: Handler) -> bool:
    """Whether calling ``handler`` makes a coroutine (decided at registration)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


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
        default: Sentinel | Errno | Handler = FORWARD,
        *,
        concurrent: bool = False,
        error_errno: int = errno_module.EPERM,
        timeout: float | None = None,
        timeout_errno: int = errno_module.ETIMEDOUT,
        resolver: Resolver | None = None,
        max_answers: int = 4096,
    ) -> None:
        #: What :func:`~libc_service.acting.perform` resolves names with for this policy (``None``: the system's).
        self.resolver = resolver
        #: How many (address, name) answers one process tree keeps for ``resolved()`` (the oldest go first).
        self.max_answers = max_answers
        self._routes: list[Route] = []
        #: The observers and the forwarded decisions held for their results.
        self._watch = Observers()
        #: The observers' list itself: ``if self._observers`` is the hot path's one check.
        self._observers = self._watch.observers
        self._bugs = BugLog()
        self.concurrent = concurrent
        self.error_errno = deny(error_errno).errno
        self.timeout = timeout
        self.timeout_errno = deny(timeout_errno).errno
        self._default: Route | Errno | Sentinel
        if default is FORWARD or isinstance(default, Errno):
            self._default = default
        elif default is PASS or isinstance(default, Sentinel):
            raise ValueError("a router's default is FORWARD, deny(errno) or a handler")
        elif callable(default):
            self._default = self._make_route(FUNCTIONS, default, (), order=-1)
        else:
            raise TypeError(f"a router's default is FORWARD, deny(errno) or a handler, not {default!r}")
        #: The default as a route like the others, tried last and reported as
        #: ``"default"``: dispatch has one loop, not a second copy for it.
        self._last = _default_route(self._default)
        #: function -> the routes that may decide it, the default last (built at registration).
        self._dispatch: dict[str, tuple[Route, ...]] = {name: (self._last,) for name in FUNCTIONS}
        #: function -> its routes filed by the roots they need (built on first use, for many routes).
        self._indexes: dict[str, RouteIndex] = {}
        #: function -> whether every handler that may decide it is a plain function:
        #: those calls are answered synchronously (in the master's reader callback).
        self._sync_only: dict[str, bool] = dict.fromkeys(FUNCTIONS, not _is_async(self._last.handler))

    # -------------------------------------------------------- registration

    def on(self, *functions: str, when: Condition | Sequence[Condition] | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for ``functions`` (decorator; a thin wrapper over :meth:`add_route`).

        ``when`` holds declarative conditions that must all match. Raises
        ``ValueError`` for an unknown function and ``TypeError`` for a
        handler whose signature or type hint does not fit the functions;
        the functions and conditions are checked here, at the decorator's
        line, the handler when it is decorated.
        """
        conditions = _conditions_for(functions, when)

        def register(handler: Handler) -> Handler:
            self.add_route(functions, handler, when=conditions)
            return handler

        return register

    def add_route(
        self, functions: Sequence[str], handler: Handler, *, when: Condition | Sequence[Condition] | None = None
    ) -> Route:
        """Register ``handler`` for ``functions``, tried after the routes registered before; the new route.

        What :meth:`on` does, for code that builds a router from data
        (checks and errors as :meth:`on`).
        """
        if isinstance(functions, str):
            functions = (functions,)
        conditions = _conditions_for(tuple(functions), when)
        route = self._make_route(tuple(dict.fromkeys(functions)), handler, conditions, len(self._routes))
        self._routes.append(route)
        for name in route.functions:
            self._dispatch[name] = self._dispatch[name][:-1] + (route, self._last)
            self._indexes.pop(name, None)
            self._sync_only[name] = self._sync_only[name] and not _is_async(handler)
        return route

    def _make_route(
        self, functions: tuple[str, ...], handler: Handler, conditions: tuple[Condition, ...], order: int
    ) -> Route:
        check_handler(handler, functions)
        return Route(
            functions=functions,
            handler=handler,
            name=_name(handler),
            doc=inspect.getdoc(handler),
            conditions=conditions,
            order=order,
            source=source_of(handler),
        )

    def observe(self, observer: Observer) -> Observer:
        """Call ``observer(decision)`` after every reply (usable as a decorator)."""
        self._observers.append(observer)
        return observer

    def observers(self) -> tuple[Observer, ...]:
        """The registered observers, in the order they are called (for documentation and copies)."""
        return tuple(self._observers)

    @property
    def observed(self) -> bool:
        """Whether any observer is registered (they must see every call, even those decided elsewhere)."""
        return bool(self._observers)

    def hold_forwarded(self, on: bool = True) -> None:
        """Hold each decision the master answers ``FORWARD`` until the slave reports its result.

        See :meth:`Observers.hold <libc_service.policy.observers.Observers.hold>`.
        """
        self._watch.hold(on)

    def forward_result(
        self, pid: int, tid: int, request_id: int, result: Result, errno: int, duration_ns: int | None = None
    ) -> None:
        """The slave's own call of a forwarded request returned ``result`` (-1 and ``errno`` on failure),
        after ``duration_ns`` (when measured)."""
        self._watch.forward_result(pid, tid, request_id, result, errno, duration_ns)

    def release_forwarded(self, pids: Container[int] | None = None) -> None:
        """Give the observers the forwarded decisions still held (of ``pids``, or all), without a result."""
        self._watch.release(pids)

    def routes(self) -> RouteTable:
        """The registered routes, in order, and the default."""
        return RouteTable(tuple(self._routes), self._default, self.error_errno)

    @property
    def default(self) -> Route | Errno | Sentinel:
        """The default: ``FORWARD``, an :class:`Errno` (``deny(code)``) or the default handler's route."""
        return self._default

    # ------------------------------------------------------------ serving

    def name_patterns(self) -> tuple[Pattern, ...]:
        """The names this policy lets the master resolve: every ``named()`` and ``resolved()`` pattern.

        :func:`~libc_service.acting.perform` of a ``getaddrinfo`` refuses any other
        name (``noname``) without asking a nameserver: an answer for it
        could grant nothing, and the question alone would carry the name
        out of the sandbox.
        """
        found = (pattern for route in self._routes for part in route.conditions for pattern in name_patterns(part))
        return tuple(dict.fromkeys(found))

    async def serve(self, master: Master) -> None:
        """Serve one session until the slave hangs up; the master is closed after.

        A session served on its own (not in a tree that :func:`spawn` serves)
        is a process tree of its own for ``resolved()``.
        """
        scope = names.scope_for(self) if names.current_scope() is None else None
        token = names.enter(scope) if scope is not None else None
        try:
            await master.serve(self, concurrent=self.concurrent, max_in_flight=self.max_in_flight)
        finally:
            if scope is not None and token is not None:
                names.leave(token)
                scope.close()

    def decide_now(self, call: Call) -> Awaitable[None] | None:
        """Decide and answer ``call`` without awaiting, if that is possible (the dispatcher contract).

        Calls whose handlers are all plain functions are decided and
        answered here, in the master's reader callback when it calls: no
        coroutine, no task switch. Otherwise returns what finishes the call:
        :meth:`handle` when an async handler may decide, the rest of the
        decision when a sync handler returned an awaitable, or the flush of
        a reply the socket did not take at once. Raises only
        :class:`~libc_service.endpoints.master.SessionClosed`.
        """
        request = call.request
        if not self._sync_only[request.function]:
            return self.handle(call)
        observed = bool(self._observers)  # the latency is for observers only
        started = time.perf_counter_ns() if observed else 0
        step = self._decide_now(request)
        if isinstance(step, _Await):
            return _Pending(self._handle_after(call, started, step), step.awaitable)
        route_name, outcome = step
        latency = time.perf_counter_ns() - started if observed else 0
        named = named_directories(request) if observed else UNNAMED  # the reply closes the descriptors
        answer = FORWARDED if outcome is FORWARD else answer_for(request, outcome, self.error_errno)
        if answer.errno:  # a refusal or a failure: what the policy did wrong is logged
            self._mind(route_name, request, outcome, answer)
        try:
            sent = call.answer(answer)
        except SessionClosed:
            call.abandon()
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. a Stat built unvalidated that does not pack: still owed
            answer = self.cannot_carry(route_name, request, outcome, str(exc))
            sent = call.answer(answer)  # -1 with an errno: always carried
        if not sent:
            return self._flush_after(call, route_name, answer, latency, named)
        if observed:
            self._watch.notify(Decision(request, route_name, *answer.summary, latency, call.session, "shim", *named))
        return None

    async def handle(self, call: Call, session: str | None = None) -> None:
        """Decide one call and reply; never raises except for cancellation.

        ``session`` names the session for observers (default: the call's).
        """
        request = call.request
        started = time.perf_counter_ns()
        try:
            route_name, outcome = await self._decide(request)
        except asyncio.CancelledError:
            call.abandon()
            raise
        await self._reply_and_notify(call, route_name, outcome, time.perf_counter_ns() - started, session)

    def decides_synchronously(self, function: str) -> bool:
        """Whether every handler that may decide ``function`` is a plain function.

        A transport may then run the decision in its reader callback; otherwise
        it must run it in a task (an async handler may use ``asyncio.timeout``
        or anything else that needs the current task).
        """
        return self._sync_only[function]

    def forwards_unasked(self, functions: Sequence[str]) -> bool:
        """Whether a call that becomes any of ``functions`` is ``FORWARD`` whatever its arguments.

        True when no route may decide them, the default is ``FORWARD`` and
        nobody observes: a transport may then continue such a call without
        reading its arguments or building its request, as deciding it would
        give ``FORWARD`` and nobody would see the decision.
        """
        return (
            self._default is FORWARD
            and not self._observers
            and all(len(self._dispatch[function]) == 1 for function in functions)
        )

    async def decide(self, request: Request) -> tuple[str, Any]:
        """Decide ``request`` outside a session: the deciding route's name and its outcome.

        For a transport that receives calls and replies some other way (the
        seccomp user notifications of :mod:`libc_service.seccomp.session`): the same
        routes, conditions, ``PASS``, default and ``timeout`` as
        :meth:`serve`, so one policy serves both. The outcome is what the
        handler returned or the exception it raised (a timeout gives
        ``Errno(timeout_errno)``); turning it into a reply is the caller's,
        who then gives observers the :class:`Decision` with :meth:`report`.
        """
        return await self._decide(request)

    def answer(self, route: str, request: Request, outcome: Any) -> Answer:
        """The answer ``outcome`` gives ``request``, for a transport that replies itself.

        :func:`~libc_service.protocol.outcomes.answer_for` (the same pure mapping the
        master's sessions use) with this router's ``error_errno``; a
        :class:`~libc_service.protocol.outcomes.Failure` is logged once, under
        ``route``, and the descriptors it refused are closed.
        """
        answer = answer_for(request, outcome, self.error_errno)
        if answer.errno:
            self._mind(route, request, outcome, answer)
        return answer

    def cannot_carry(self, route: str, request: Request, outcome: Any, problem: str | BaseException) -> Answer:
        """The failure for an answer the transport cannot carry (``problem`` says why), logged once.

        For what only the transport finds out: a ``Stat`` built without
        validation whose fields do not fit the slave's structure, a result
        the transport has no place for.
        """
        answer = failure(request.function, self.error_errno, problem)
        self._bugs.failed(route, request, outcome, answer)
        return answer

    def _mind(self, route: str, request: Request, outcome: object, answer: Answer) -> None:
        """What an answer with an errno leaves to do: a failure is logged, a plain ``OSError`` noted."""
        if type(answer) is Failure:
            self._bugs.failed(route, request, outcome, answer)
        elif type(outcome) is not Errno and logger.isEnabledFor(logging.DEBUG):
            logger.debug("handler %s raised %r for %r", route, outcome, request)

    def report(self, decision: Decision) -> None:
        """Give a decision made with :meth:`decide` to the observers, once its reply went out."""
        if self._observers:
            self._watch.notify(decision)

    async def _reply_and_notify(
        self, call: Call, route_name: str, outcome: Any, latency: int, session: str | None = None
    ) -> None:
        request = call.request
        named = named_directories(request) if self._observers else UNNAMED  # the reply closes them
        answer = FORWARDED if outcome is FORWARD else answer_for(request, outcome, self.error_errno)
        if answer.errno:
            self._mind(route_name, request, outcome, answer)
        try:
            try:
                sent = call.answer(answer)
            except SessionClosed:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. a Stat built unvalidated that does not pack: still owed
                answer = self.cannot_carry(route_name, request, outcome, str(exc))
                sent = call.answer(answer)
            if not sent:
                await call.flush()
        except SessionClosed:
            call.abandon()
            return
        if self._observers:
            # Built only for observers: a frozen dataclass costs more than the dispatch.
            self._watch.notify(
                Decision(
                    request,
                    route_name,
                    *answer.summary,
                    latency,
                    call.session if session is None else session,
                    "shim",
                    *named,
                )
            )

    def _decide_now(self, request: Request, start: int = 0) -> tuple[str, Any] | _Await:
        """The deciding route's name and its outcome, or the awaitable a handler returned.

        Tries the routes from ``start`` on; the default is the last of them.
        """
        routes = self._dispatch[request.function]
        positions: Iterable[int] = range(start, len(routes))
        if len(routes) >= INDEX_FROM and request.function in INDEXED_FUNCTIONS:
            route_index = self._indexes.get(request.function)
            if route_index is None:
                route_index = self._indexes[request.function] = RouteIndex(request.function, routes)
            positions = route_index.candidates(request, start)
        for index in positions:
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
            if type(result) not in _PLAIN_RESULTS:
                if inspect.isawaitable(result):
                    return _Await(index, route.name, route.handler, result)
                if not isinstance(result, types.GeneratorType) and len(_PLAIN_RESULTS) < _MAX_PLAIN_RESULTS:
                    _PLAIN_RESULTS.add(type(result))
            if result is not PASS or route is self._last:
                return route.name, result
        raise AssertionError("the default route decides every call")  # pragma: no cover

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
        if result is not PASS or step.index == len(self._dispatch[request.function]) - 1:
            return step.name, result
        return self._decide_now(request, step.index + 1)

    async def _handle_after(self, call: Call, started: int, step: _Await) -> None:
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
        await self._reply_and_notify(call, route_name, outcome, latency)

    async def _flush_after(
        self, call: Call, route: str, answer: Answer, latency: int, named: tuple[str | None, str | None]
    ) -> None:
        try:
            await call.flush()
        except SessionClosed:
            call.abandon()
            return
        if self._observers:
            self._watch.notify(Decision(call.request, route, *answer.summary, latency, call.session, "shim", *named))

    async def _wait(self, handler: Handler, request: Request, result: Awaitable[Any]) -> Any:
        """Await an async handler's result, within ``timeout``."""
        if self.timeout is None:
            return await result
        if asyncio.current_task() is None:
            # Started in a transport's callback (a sync handler returned an awaitable, as
            # perform does for a connect): yield once, so the rest runs in the task the
            # transport makes to continue it, where a deadline can be kept.
            await asyncio.sleep(0)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await result
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError: a handler failure
            logger.error("handler %s timed out after %ss on %r", _name(handler), self.timeout, request)
            return Errno(self.timeout_errno)


class _Pending:
    """The rest of a decision a sync handler began, as the master awaits or discards it.

    Discarding (the session ended before the master's task took it) must
    close the handler's awaitable as well as the coroutine that would have
    awaited it: a coroutine never started does not close what it holds.
    """

    __slots__ = ("_coroutine", "_awaitable")

    def __init__(self, coroutine: Coroutine[Any, Any, None], awaitable: object) -> None:
        self._coroutine = coroutine
        self._awaitable = awaitable

    @property
    def detached(self) -> bool:
        """Whether the rest waits for another party (a :class:`~libc_service.policy.rendezvous.Rendezvous`),
        so a sequential session finishes it aside and goes on serving."""
        return isinstance(self._awaitable, Rendezvous)

    def __await__(self) -> Generator[Any, None, None]:
        return self._coroutine.__await__()

    def close(self) -> None:
        discard(self._coroutine)
        discard(self._awaitable)


def _conditions_for(functions: Sequence[str], when: Condition | Sequence[Condition] | None) -> tuple[Condition, ...]:
    """``when`` as a tuple, once the functions and the conditions are checked to fit each other."""
    if not functions:
        raise ValueError("on() needs at least one function name")
    unknown = [name for name in functions if name not in FUNCTIONS]
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
    return conditions


def _forward(request: Request) -> Any:
    return FORWARD


def _default_route(default: Route | Errno | Sentinel) -> Route:
    """The default as the last route of every function, named ``"default"`` for observers."""
    if isinstance(default, Route):
        return dataclasses.replace(default, name="default")
    if isinstance(default, Errno):
        refusal = default

        def refuse(request: Request) -> Any:
            return refusal

        handler: Handler = refuse
    else:
        handler = _forward
    return Route(functions=FUNCTIONS, handler=handler, name="default", doc=None, conditions=(), order=-1)


def _cancelling() -> bool:
    """Whether the running task is being cancelled.

    A handler may raise ``CancelledError`` of its own (it awaited something
    another task cancelled); that is a failed call, to be answered with an
    error. Letting it escape would end the session, and a slave whose
    channel is gone falls back to doing the call itself.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


_name = handler_name


def __getattr__(name: str) -> Any:
    """``Deny``, the old name of a default's refusal: :class:`Errno` now, with a warning."""
    if name == "Deny":
        warnings.warn(
            "libc_service Deny is deprecated: deny(code) returns an Errno, the one type of a refusal",
            DeprecationWarning,
            stacklevel=2,
        )
        return Errno
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
