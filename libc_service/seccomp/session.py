"""The seccomp user-notification transport: the same Router, below libc.

The shim sees only calls made through libc's exported symbols. A static
binary, a raw ``syscall()``, or the opens libc and the loader make
themselves (``dlopen``, NSS reading ``/etc/passwd``, locale files) never
reach it. With ``spawn(..., seccomp=True)`` (``libc-service run
--seccomp``) the program also runs under a seccomp filter
(:mod:`.notify_filter`) that suspends each arbitrated system call and
queues it on a *listener* descriptor (:mod:`.notify_handoff`), which a
:class:`SeccompSession` serves:

1. **Requests.** A receiver thread takes each notification and reads its
   arguments from the calling thread (:mod:`.notify_memory`: its memory
   with ``process_vm_readv``, bounded, never on the loop; a ``dirfd`` with
   ``pidfd_getfd`` from the thread's own descriptor table; ``pid``, umask
   and filesystem credentials from ``/proc/TID/status``) into the same
   typed request the shim's calls become (:mod:`.notify_decode`). Only then
   is ``SECCOMP_IOCTL_NOTIF_ID_VALID`` asked: the notification still
   pending means the thread is still blocked in that call, so what was
   read came from it and not from a process that reused its id. The
   request goes through the router's public :meth:`~libc_service.Router.decide`.
2. **Replies.** The outcome becomes the seccomp response
   (:mod:`.notify_answer`): ``FORWARD`` continues the call in the kernel,
   an errno fails it, a descriptor is installed with ``ADDFD``, a ``Stat``
   is written into the slave's buffer (by a worker, after a last
   ``ID_VALID``), then answered.

``FORWARD`` is only as safe as the sandbox: a continued call is performed
by the kernel with the slave's own authority, reading its arguments again
from the slave's memory, which another of its threads may have changed
since the master read them. Landlock still confines that call; without a
sandbox it is unconfined (``docs/security.md``).

The shim stays preloaded for ``getaddrinfo``, which is no system call; its
other calls are answered ``FORWARD`` without asking the router
(:mod:`.notify_relay`), so that each call is decided exactly once, when
it reaches the kernel, whoever made it (the program, libc, the shim).

Handlers can tell the transports apart with :func:`current_transport`;
observers with :attr:`Decision.transport <libc_service.policy.router.Decision.transport>`.
"""

from __future__ import annotations

import contextvars
import errno as errno_module
import functools
import logging
import os
import threading
import time
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from libc_service.kernel import readiness
from libc_service.seccomp.abi import (
    FLAG_CONTINUE,
    NOTIF,
    Continue,
    Gone,
    Refuse,
    check_valid,
    receive,
    respond,
    sync_wake_up,
)
from libc_service.seccomp.answer import StatWrite, answer
from libc_service.seccomp.decode import BY_NUMBER, FUNCTIONS_OF, Notification, ReplyContext, build_request, decode
from libc_service.seccomp.filter import NOTIFIED
from libc_service.seccomp.loading import LoadingCalls
from libc_service.seccomp.memory import Fetched, thread_status
from libc_service.seccomp.statwrite import AnswerOnce, StatWriter
from libc_service.kernel.offloop import BoundedWorkers
from libc_service.protocol.outcomes import FORWARD, Summary
from libc_service.policy.rendezvous import WAITING
from libc_service.policy.observers import Decision, Transport, named_directories

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.protocol.requests import Request
    from libc_service.policy.router import Router
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["current_transport"]

logger = logging.getLogger(__name__)

#: Seconds a read or write of a slave's memory may take (a page nobody serves,
#: a mapping of a slow filesystem) before its call fails with ``EFAULT``.
MEMORY_BOUND: Final = 10.0

_TRANSPORT: Final[contextvars.ContextVar[Transport]] = contextvars.ContextVar("libc_service_transport", default="shim")


def current_transport() -> Transport:
    """How the request being decided reached the master: ``"shim"`` or ``"seccomp"``.

    For handlers (requests carry no transport field: the models are the
    same, so one policy serves both). A handler may want to know because
    ``FORWARD`` means different things: the shim does the call itself with
    the arguments the handler saw, while a continued seccomp call is done
    by the kernel, which reads its arguments again from the slave's memory.
    """
    return _TRANSPORT.get()


class SeccompSession:
    """Serves one listener (every process under the filter) with a router.

    Notifications are received on receiver threads, which also read each
    call's arguments from the slave (its memory may make a read wait: the
    loop never touches it), and decided on the loop, in the callback that
    receives them from the thread; a call whose handler waits continues in
    a task. With ``router.concurrent`` up to ``router.max_in_flight`` calls
    are in the master at once, else one: past that the receivers wait and
    the callers wait in the kernel.
    """

    def __init__(
        self,
        listener: int,
        router: Router,
        *,
        killable: bool = True,
        name: str = "seccomp",
        own_files: Sequence[str] = (),
        own_trees: Sequence[str] = (),
        continue_connect: bool = True,
    ) -> None:
        self._fd = listener
        #: False under a sandbox without network: a ``connect`` is never continued (``EACCES`` instead), as
        #: the socket it names may be a unix one that the kernel would connect unchecked (:mod:`.socket_filter`).
        self._refused_nr = -1 if continue_connect else NOTIFIED["connect"]
        #: What loading the program needs, done by the master without asking the router (:mod:`.notify_loading`).
        self._loading = LoadingCalls(own_files, own_trees)
        self.own_files = self._loading.files
        self.own_trees = self._loading.trees
        self.router = router
        self.name = name
        #: Whether a received call ignores non-fatal signals (Linux 5.19+).
        self.killable = killable
        self._limit = router.max_in_flight if router.concurrent else 1
        self._tasks: set[asyncio.Task[None]] = set()
        #: Tasks whose call waits for another party (a Rendezvous): they do not count against the limit.
        self._waiting: set[asyncio.Task[None]] = set()
        self._first_step_waits = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The context :meth:`serve` runs in (the process tree's, with its name scope): the receivers
        #: hand calls to the loop in it, as a thread's own context has none of the tree's values.
        self._context: contextvars.Context | None = None
        self._done: asyncio.Future[None] | None = None
        #: Seconds a read or write of a slave's memory may take before its call fails with ``EFAULT``.
        self.memory_bound = MEMORY_BOUND
        self._workers: BoundedWorkers | None = None
        #: Calls received and not yet answered (or handed to a task): the receivers
        #: take one before each receipt, so at most ``_limit`` are in the master.
        self._slots = threading.Semaphore(self._limit)
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()
        #: Receipts being prepared on receiver threads, with their deadlines.
        self._in_flight: dict[int, _Receipt] = {}
        self._stat_writes: StatWriter | None = None
        self._receivers = 0
        self._watchdog: asyncio.TimerHandle | None = None
        #: Calls decided, and calls dropped because their thread went away.
        self.calls = 0
        self.dropped = 0
        sync_wake_up(listener)

    @property
    def closed(self) -> bool:
        """Whether the listener is closed."""
        return self._fd < 0

    async def serve(self) -> None:
        """Serve until every process under the filter has exited, or :meth:`close`."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._context = contextvars.copy_context()
        self._workers = BoundedWorkers(loop, self.name, self.memory_bound)
        self._stat_writes = StatWriter(
            self.name, self._workers, self.memory_bound, self._lock, self._slots, self._listener, self._count
        )
        self._done = loop.create_future()
        self._start_receiver()
        self._watchdog = loop.call_later(self.memory_bound / 4, self._watch)
        try:
            await self._done
        finally:
            self.close()
            await self._receivers_left(_RECEIVERS_LEAVE)

    async def _receivers_left(self, bound: float) -> None:
        """Wait, at most ``bound`` seconds, until every receiver has closed its copy of the listener.

        Woken by :meth:`close`, receivers leave on their own threads; a
        caller that counts its descriptors after the session (or closes the
        tree) must not find their copies still open. A receiver stuck in a
        read of the slave's memory stays until that read returns.
        """
        assert self._loop is not None
        deadline = self._loop.time() + bound
        while self._receivers and self._loop.time() < deadline:
            await asyncio.sleep(0.002)

    def close(self) -> None:
        """Close the listener: calls still waiting in the kernel fail with ``ENOSYS``."""
        with self._lock:  # a memory worker answers through self._fd under the lock
            fd, self._fd = self._fd, -1
            if fd < 0:
                return
            os.close(fd)
        # Receivers hold a copy of the listener each: they leave (and close
        # it) once woken, so the listener is released and waiting calls fail.
        # The wake-up is written under the lock: a receiver that leaves
        # claims the eventfd (and closes it) under the same lock, so it is
        # never written after its close nor closed twice.
        with self._lock:
            stop, close_stop = self._stop, False
            if stop >= 0:
                os.eventfd_write(stop, 1)
                if self._receivers == 0:
                    self._stop, close_stop = -1, True
        if close_stop:
            os.close(stop)
        for _ in range(_MAX_RECEIVERS):
            self._slots.release()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._workers is not None:
            self._workers.close()
        for task in list(self._tasks):
            task.cancel()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # ---------------------------------------------------------- receiving

    def _start_receiver(self) -> None:
        """A thread that receives notifications and reads their arguments (see :meth:`_receive`)."""
        with self._lock:
            if self._receivers >= _MAX_RECEIVERS:
                return
            self._receivers += 1
        try:
            listener = os.dup(self._fd)
        except OSError:
            with self._lock:
                self._receivers -= 1
            return
        threading.Thread(target=self._receive, args=(listener,), name=f"{self.name} receiver", daemon=True).start()

    def _receive(self, listener: int) -> None:
        """On a receiver thread: receive a notification, prepare it, hand it to the loop; again.

        The slave's memory is read here, never on the loop: a read that
        waits (a page nobody serves) holds this thread only. The loop's
        watchdog (:meth:`_watch`) fails such a call with ``EFAULT`` past
        the bound and starts another receiver; this one ends when its read
        comes back.
        """
        loop = self._loop
        assert loop is not None
        stop = self._stop
        wanted = {listener: readiness.READABLE, stop: readiness.READABLE}
        buffer = bytearray(NOTIF.size)
        try:
            while True:
                self._slots.acquire()
                events = readiness.poll_events(wanted)
                if stop in events or self._fd < 0:
                    return
                revents = events.get(listener, 0)
                if not revents & readiness.READABLE:
                    self._slots.release()
                    if revents & readiness.HANG_UP:
                        logger.debug("%s: every process under the filter has exited", self.name)
                        loop.call_soon_threadsafe(self.close)
                        return
                    continue
                try:
                    receive(listener, buffer)
                except OSError as exc:
                    self._slots.release()
                    if exc.errno in (errno_module.ENOENT, errno_module.EINTR):
                        continue  # the caller was killed, or another receiver took it
                    logger.error("%s: receiving a notification failed (%s); closing the listener", self.name, exc)
                    loop.call_soon_threadsafe(self.close)
                    return
                notif_id, tid, _, nr, _, _, *args = NOTIF.unpack(buffer)
                functions = FUNCTIONS_OF.get(nr)
                if functions is not None and nr != self._refused_nr and self.router.forwards_unasked(functions):
                    self._continue_unasked(listener, notif_id)
                    continue
                notification = Notification(notif_id, tid, nr, tuple(args))
                receipt = _Receipt(notification, time.monotonic() + self.memory_bound)
                with self._lock:
                    self._in_flight[notif_id] = receipt
                prepared: _Prepared | BaseException
                try:
                    prepared = self._prepare(notification, listener)
                except BaseException as exc:  # noqa: BLE001 - handed to the loop
                    prepared = exc
                with self._lock:
                    self._in_flight.pop(notif_id, None)
                    abandoned = receipt.abandoned
                if abandoned:  # answered EFAULT meanwhile; another receiver took over
                    if not isinstance(prepared, BaseException):
                        _discard_prepared(prepared)
                    return
                try:
                    loop.call_soon_threadsafe(self._prepared, notification, prepared, context=self._context)
                except RuntimeError:  # the loop is closed
                    if not isinstance(prepared, BaseException):
                        _discard_prepared(prepared)
                    return
        finally:
            os.close(listener)
            with self._lock:
                self._receivers -= 1
                last = self._receivers == 0 and self._fd < 0 and self._stop >= 0
                stop, self._stop = (self._stop, -1) if last else (-1, self._stop)
            if stop >= 0:
                os.close(stop)

    def _continue_unasked(self, listener: int, notif_id: int) -> None:
        """On a receiver thread: continue a call the router forwards whatever its arguments.

        Nothing is read from the slave and the loop is not woken: deciding
        would give ``FORWARD`` and nobody observes it (``Router.forwards_unasked``).
        The reply goes through this receiver's own copy of the listener.
        """
        try:
            respond(listener, notif_id, 0, 0, FLAG_CONTINUE)
            counted = "calls"
        except Gone:
            counted = "dropped"
        except OSError as exc:
            logger.error("%s: continuing a call failed (%s)", self.name, exc)
            counted = "dropped"
        with self._lock:
            setattr(self, counted, getattr(self, counted) + 1)
        self._slots.release()

    def _watch(self) -> None:
        """On the loop, every quarter bound: fail calls whose arguments could not be read in time."""
        now = time.monotonic()
        with self._lock:
            late = [receipt for receipt in self._in_flight.values() if receipt.deadline <= now]
            for receipt in late:
                receipt.abandoned = True
                del self._in_flight[receipt.notification.id]
        for receipt in late:
            logger.warning(
                "%s: reading the arguments of tid %d took more than %g s; failing its call with EFAULT",
                self.name,
                receipt.notification.tid,
                self.memory_bound,
            )
            if self._fd >= 0:
                self._finish_early(receipt.notification, None, errno_module.EFAULT)
            self._slots.release()
            self._start_receiver()  # the stuck one comes back only when its read does
        if self._stat_writes is not None:
            self._stat_writes.fail_late(now)
        if self._fd >= 0 and self._loop is not None:
            self._watchdog = self._loop.call_later(self.memory_bound / 4, self._watch)

    def _prepare(self, notification: Notification, listener: int) -> _Prepared:
        """On a receiver thread: everything that reads the slave (its memory may make a read wait).

        Then ``ID_VALID`` (through the receiver's own copy of the listener):
        the call still pending means what was read came from its thread.
        """
        if notification.nr not in BY_NUMBER:
            raise Refuse(errno_module.ENOSYS)  # the filter notifies nothing else; be safe anyway
        fetched: Fetched | None = None
        try:
            fetched = Fetched(notification.tid, thread_status(notification.tid))
            fields, context = decode(notification, fetched)
            fetched.close_pidfd()
            check_valid(listener, notification.id)
            loading = bool(self._loading) and self._loading.includes(fields)
            return fields, context, fetched, loading
        except BaseException:
            if fetched is not None:
                fetched.close()
            raise

    def _prepared(self, notification: Notification, prepared: _Prepared | BaseException) -> None:
        """On the loop: turn the prepared notification into a request (or an immediate answer), and decide it."""
        deciding = False
        try:
            deciding = self._start_deciding(notification, prepared)
        finally:
            if not deciding:
                self._slots.release()

    def _start_deciding(self, notification: Notification, prepared: _Prepared | BaseException) -> bool:
        """Whether a task now decides the call (it gives its slot back when done)."""
        if self._fd < 0:
            if not isinstance(prepared, BaseException):
                _discard_prepared(prepared)
            return False
        fetched: Fetched | None = None
        try:
            if isinstance(prepared, BaseException):
                raise prepared
            fields, context, fetched, loading = prepared  # checked valid after reading (_prepare)
            request = build_request(fields, notification, fetched.thread)
        except Gone:
            self._drop(notification, fetched)
            return False
        except Continue:
            self._finish_early(notification, fetched, None)
            return False
        except Refuse as refusal:
            self._finish_early(notification, fetched, refusal.code)
            return False
        except Exception:  # noqa: BLE001 - a slave's bytes must never crash the master
            logger.exception("%s: cannot decode %r; failing the call with EINVAL", self.name, notification)
            self._finish_early(notification, fetched, errno_module.EINVAL)
            return False
        # The decision starts here, in the callback: with sync handlers (the
        # common case) it finishes here too, with no task and no wake-up.
        # Only a handler that waits makes a task, which continues it. It
        # runs in a context of its own, where current_transport() is "seccomp".
        answer = AnswerOnce(notification.id)
        coroutine = self._decide(request, context, notification, fetched, loading, answer)
        context_vars = contextvars.copy_context()
        context_vars.run(_TRANSPORT.set, "seccomp")
        context_vars.run(WAITING.set, self._waits_for_a_peer)
        assert self._loop is not None
        if not loading and not self.router.decides_synchronously(request.function):
            # An async handler may decide: it runs in a task from its first step.
            task = self._loop.create_task(coroutine, context=context_vars)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, answer))
            return True
        self._first_step_waits = False
        try:
            first = context_vars.run(coroutine.send, None)
        except StopIteration:
            return answer.detached  # a worker answers it and gives its slot back
        except Exception:  # noqa: BLE001 - a failed reply must not end the session
            logger.exception("%s: answering %r failed", self.name, request)
            return False
        assert self._loop is not None
        task = self._loop.create_task(_continue(coroutine, first), context=context_vars)
        self._tasks.add(task)
        if self._first_step_waits:
            self._first_step_waits = False
            self._waiting.add(task)
            self._slots.release()  # waiting for its peer, it no longer holds a place among the calls decided
        task.add_done_callback(functools.partial(self._finished, answer))
        return True

    def _waits_for_a_peer(self) -> None:
        """A decision now waits for another party (a FIFO's other end): it no longer holds the session."""
        task = asyncio.current_task()
        if task is None or task not in self._tasks:
            self._first_step_waits = True  # in the reader callback: its task is made next
            return
        if task not in self._waiting:
            self._waiting.add(task)
            self._slots.release()  # a receiver may take the next call (the FIFO's other end) meanwhile

    def _finished(self, answer: AnswerOnce, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._waiting:
            self._waiting.discard(task)  # its slot was given back when it began to wait
        elif not (answer.released or answer.detached):  # else the worker that answers gives it back
            self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: answering a call failed", self.name, exc_info=task.exception())

    def _finish_early(self, notification: Notification, fetched: Fetched | None, code: int | None) -> None:
        if fetched is not None:
            fetched.close()
        if code is None and notification.nr == self._refused_nr:
            code = errno_module.EACCES
        try:
            if code is None:
                respond(self._fd, notification.id, 0, 0, FLAG_CONTINUE)
            else:
                respond(self._fd, notification.id, 0, -code, 0)
        except Gone:
            self.dropped += 1

    def _drop(self, notification: Notification, fetched: Fetched | None) -> None:
        if fetched is not None:
            fetched.close()
        self.dropped += 1
        logger.debug("%s: tid %d went away during its notification", self.name, notification.tid)

    # ----------------------------------------------------------- deciding

    async def _decide(
        self,
        request: Request,
        context: ReplyContext,
        notification: Notification,
        fetched: Fetched,
        loading: bool,
        answer: AnswerOnce,
    ) -> None:
        assert self._stat_writes is not None
        tid = notification.tid
        try:
            if loading:
                outcome = await self._loading.done(request, self.name)
                if outcome is not None:
                    try:
                        reply = self._reply(request, context, notification, "loading", outcome)
                        await self._stat_writes.written(tid, reply, answer, self.router.observed, count=False)
                    except Gone:
                        self.dropped += 1
                    return
            started = time.perf_counter_ns()  # deciding only, as for the shim's calls
            route, outcome = await self.router.decide(request)
            latency = time.perf_counter_ns() - started
            try:
                reply = self._reply(request, context, notification, route, outcome)
                summary = await self._stat_writes.written(tid, reply, answer, self.router.observed)
            except Gone:
                self.dropped += 1
                logger.debug("%s: tid %d went away before its %s reply was sent", self.name, tid, request.function)
                return
            if summary is None:
                return  # a worker writes the Stat, answers and counts the call
            with self._lock:
                self.calls += 1
            if self.router.observed:
                named = named_directories(request)  # its descriptors are open until the end
                self.router.report(Decision(request, route, *summary, latency, self.name, "seccomp", *named))
        finally:
            fetched.close()

    def _reply(
        self, request: Request, context: ReplyContext, notification: Notification, route: str, outcome: Any
    ) -> Summary | StatWrite:
        """Answer the notification as ``outcome`` says (:func:`.notify_answer.answer`); what went out."""
        if outcome is FORWARD and notification.nr == self._refused_nr:
            outcome = PermissionError(errno_module.EACCES, "a forwarded connect is not continued without a network")
        return answer(self._fd, notification, context, request, route, outcome, self.router)

    def _listener(self) -> int:
        """The listener now (``-1`` once closed), for the Stat writes' answers."""
        return self._fd

    def _count(self, counted: str) -> None:
        """Count a call a memory worker finished (called under the lock)."""
        setattr(self, counted, getattr(self, counted) + 1)


@dataclass(slots=True)
class _Receipt:
    """A notification a receiver is preparing, and until when it may take."""

    notification: Notification
    deadline: float
    abandoned: bool = False


#: Receiver threads per session at most, stuck ones included.
_MAX_RECEIVERS: Final = 16
#: Seconds a closed session waits for its receivers to leave (see SeccompSession._receivers_left).
_RECEIVERS_LEAVE: Final = 2.0


#: What a worker reads for one notification: the request's fields, the reply's
#: context, the descriptors copied from the slave, whether it is a loading call.
_Prepared: TypeAlias = "tuple[dict[str, Any], ReplyContext, Fetched, bool]"


def _discard_prepared(prepared: _Prepared) -> None:
    """A notification prepared after its bound (its call already failed): close what was copied."""
    prepared[2].close()


class _Resumed:
    """Awaiting it continues a coroutine that already ran up to its first suspension.

    The first step of a decision runs in the reader callback; when it has
    to wait, a task takes the coroutine over from there: what it yielded
    goes to the task, what the task sends or throws goes to the coroutine.
    """

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, None], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, value = self._coroutine, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation goes to the coroutine
                try:
                    value = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration:
                    return


async def _continue(coroutine: Coroutine[Any, Any, None], first: Any) -> None:
    await _Resumed(coroutine, first)
