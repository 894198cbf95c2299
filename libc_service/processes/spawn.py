"""Start a program as a slave of a router: ``async with spawn(argv, router)``.

The program runs with the C shim preloaded and a *registration socket*
(``LIBC_SERVICE_FD``). Every process of its tree — the program, its forked
children, whatever they exec — registers a channel of its own there, and
each channel is served as its own session by ``router.serve`` on the
running loop. When the program exits, the registration socket and every
remaining session are closed: descendants that outlive it lose the master
(the shim then falls back to the real libc, which a sandbox refuses).

With ``seccomp=True`` the tree also runs under a seccomp filter whose
notifications the same router decides (:mod:`libc_service.seccomp`): the
calls the shim cannot see (static programs, raw system calls, libc's own
opens). The shim then only relays ``getaddrinfo`` to the router. Where the
kernel cannot do that, starting raises :class:`~libc_service.SeccompUnavailable`
naming what is missing.

:class:`SlaveProcess` owns a program's lifetime and puts together the
parts, each a module of its own: its keywords (:mod:`~libc_service.processes.spawn_options`),
launching the child (:mod:`~libc_service.processes.spawn_launch`), the registration
socket and the tree's sessions (:mod:`~libc_service.processes.spawn_register`), the
shim's reports (:mod:`~libc_service.processes.spawn_reports`) and the seccomp wiring
(:mod:`~libc_service.processes.spawn_seccomp`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from libc_service.policy import names

from libc_service.kernel import readiness

from libc_service.processes import spawn_launch

from libc_service.protocol import wire_reports
from libc_service.kernel.lazyimport import on_first_use
from libc_service.kernel.senders import ProcessTree
from libc_service.processes.spawn_launch import (
    Launch,
    LaunchedProcess,
    ShimNotFound,
    exit_status,
)
from libc_service.processes.spawn_options import SpawnOptions, check_options
from libc_service.processes.spawn_register import RegistrationListener, TreeSessions, pending
from libc_service.processes.spawn_reports import TreeReports
from libc_service.processes.spawn_seccomp import SeccompWiring

if TYPE_CHECKING:
    import asyncio

    from typing_extensions import Unpack

    from libc_service.seccomp.handoff import ListenerHandoff

    from libc_service.seccomp.session import SeccompSession
    from libc_service.policy.router import Router
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["ShimNotFound", "SlaveProcess", "SpawnOptions", "spawn"]

#: The spawn family logs under one name: what a user configures, and what ``trace`` filters.
logger = logging.getLogger("libc_service.processes.spawn")


class SlaveProcess:
    """A running slave program and the sessions of its process tree.

    Returned by :func:`spawn`, which passes its keywords (:class:`SpawnOptions`)
    on; use it as an async context manager. Leaving the block waits for the
    program (or, on an error or cancellation, kills it), then closes every
    session and descriptor.
    """

    def __init__(self, argv: Sequence[str], router: Router, **options: Unpack[SpawnOptions]) -> None:
        check_options(options, type(self).__name__)
        if not argv:
            raise ValueError("spawn() needs a program to run")
        self.argv = list(argv)
        self.router = router
        self._options = options
        self._process: asyncio.subprocess.Process | LaunchedProcess | None = None
        self._listener: RegistrationListener | None = None
        #: The task that owns the sessions' task group (trio's serve_listeners, on asyncio).
        self._serving: asyncio.Task[None] | None = None
        self._sessions = TreeSessions(options.get("max_sessions", 1024))
        self._reports = TreeReports(router)
        #: The program's tree, once it runs (who may register and report).
        self._tree: ProcessTree | None = None
        self._seccomp = SeccompWiring(router, options.get("sandbox")) if options.get("seccomp", False) else None
        #: After launch(), until start(): the registration socket not served yet.
        self._launched: Launch | None = None
        #: The context every task serving this tree runs in: the tree's own answers for ``resolved()``.
        self._tree_context = names.serving(router)

    @property
    def sessions_started(self) -> int:
        """How many sessions (processes of the tree) registered so far."""
        return self._sessions.started

    @property
    def reports_dropped(self) -> int:
        """Reports dropped because their sender (as the kernel names it) is not the process they are
        about, or is not of the program's tree: what a process of the tree tried to make up."""
        return self._reports.dropped

    @property
    def seccomp_session(self) -> SeccompSession | None:
        """The seccomp listener's session (``seccomp=True``), once the program runs."""
        return None if self._seccomp is None else self._seccomp.session

    def observe_reports(self, observer: Callable[[wire_reports.PlainReport], None]) -> None:
        """Give the calls the shim decided itself to ``observer`` as validated plain data.

        Each report is validated as :func:`~libc_service.protocol.wire_reports.decode_report`
        validates it, but becomes a :class:`~libc_service.protocol.wire_reports.PlainReport`
        (its request's fields, paths as ``str``) instead of a request model
        and a :class:`~libc_service.policy.router.Decision` for the router's
        observers, which then do not see these calls: for an observer that
        only shows them (``trace``), the models are never loaded for them
        and each costs a fraction. Calls the master decides still reach the
        router's observers as decisions.
        """
        self._reports.observe(observer)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> SlaveProcess:
        """Start the program; normally done by ``async with``.

        After :meth:`launch` the program already runs: its sessions are
        served from now on (what it sent meanwhile waits in the
        registration socket and is read first).
        """
        launched, self._launched = self._launched, None
        if launched is not None:
            self._begin_serving(launched)
            return self
        if self._process is not None:
            raise RuntimeError("the program has already been started")
        launch, self._process = await spawn_launch.start(self.argv, self.router, self._options, self._seccomp)
        self._found_tree(self._process.pid)  # not reaped yet: its session and start time are readable
        if self._seccomp is not None and launch.handoff is not None:
            try:
                await self._serve_listener(self._seccomp, launch.handoff)
            except BaseException:
                launch.mine.close()
                raise
        self._begin_serving(launch)
        return self

    def launch(self) -> None:
        """Start the program now, without an event loop; serve it later with ``async with`` (or :meth:`start`).

        For a caller that should not pay for a master the program may never
        need: ``libc-service run`` imports asyncio and starts its loop only
        once the program asks something or reports something (see
        :meth:`wait_unserved`). Until then the program runs, its calls the
        rule table decides cost nothing, and a call it must ask waits in
        the registration socket until the master serves it.

        Not with ``seccomp=True`` (its listener is served from the start) nor
        with ``PIPE`` for stdio (there is no loop to read it).
        """
        if self._seccomp is not None:
            raise ValueError("launch() cannot start a program under seccomp: use start() on a running loop")
        if subprocess.PIPE in spawn_launch.stdio(self._options):
            raise ValueError("launch() cannot make pipes for stdio: use start() on a running loop")
        if self._process is not None:
            raise RuntimeError("the program has already been started")
        launch, process = spawn_launch.launch_unserved(self.argv, self.router, self._options)
        self._found_tree(process.pid)  # not reaped yet: its session and start time are readable
        self._process = process
        self._launched = launch

    def wait_unserved(self, reports_idle: Callable[[], None] | None = None) -> int | None:
        """After :meth:`launch`: wait, with no loop, until the program ends or needs its master.

        Returns the program's exit status (128+N after signal N) when it
        ended having asked nothing and reported nothing; the registration
        socket is then closed, as when a served program ends. Returns
        ``None`` as soon as the socket holds something (a registration or
        a report), or the program ended leaving something there: serve it
        then, with ``async with process`` on a loop. Signals interrupt the
        wait only to run their handlers (PEP 475).

        With ``reports_idle``, reports are served here, as the loop would
        serve them (to :meth:`observe_reports`' observers, or the router's),
        and ``reports_idle`` is called each time the socket has been
        drained: only a registration (a process that asks something) needs
        the loop. A program whose every call the shim decides is then
        traced without one.
        """
        launched = self._launched
        if launched is None or not isinstance(self._process, LaunchedProcess):
            raise RuntimeError("wait_unserved() follows launch()")
        process = self._process
        reports = self._reports
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:  # a kernel without pidfds (before 5.3): serve at once
            return None
        try:
            wanted = {launched.mine.fileno(): readiness.READABLE, pidfd: readiness.READABLE}
            while process.returncode is None:
                for fd in readiness.poll_events(wanted):
                    if fd == pidfd:
                        process.poll()
                    elif pending(launched.mine):
                        if reports_idle is None or not reports.serve_queued(launched.mine, reports_idle):
                            return None
                    else:  # every process of the tree closed its end: only the end is left to wait for
                        del wanted[fd]
        finally:
            os.close(pidfd)
        if reports_idle is not None and not reports.serve_queued(launched.mine, reports_idle):
            return None  # a descendant's registration
        if pending(launched.mine):
            return None  # its last calls' reports, or a descendant's registration
        self._launched = None
        launched.mine.close()
        reports.tell_dropped()  # the end of a tree served without a loop, as aclose() tells a served one's
        return self.returncode

    def _found_tree(self, pid: int) -> ProcessTree:
        """The program's tree from its pid (while it is not reaped): who may register and report."""
        self._tree = self._reports.tree = ProcessTree(pid)
        return self._tree

    def _begin_serving(self, launch: Launch) -> None:
        """Serve the registration socket's sessions and reports from now on, on the running loop."""
        if launch.reporting:
            self._reports.hold_forwarded()
        tree = self._tree if self._tree is not None else self._found_tree(self._require().pid)
        self._listener = RegistrationListener(launch.mine, self._reports.receive, tree.__contains__)
        relay = None if self._seccomp is None else self._seccomp.shim_router
        self._serving = asyncio.get_running_loop().create_task(
            self._sessions.serve(self._listener, relay or self.router, self._reports.registered),
            context=self._tree_context,
        )

    async def _serve_listener(self, seccomp: SeccompWiring, handoff: ListenerHandoff) -> None:
        """Receive the child's seccomp listener and serve it (the program waits on it meanwhile)."""
        try:
            listener, killable = await handoff.receive()
        except BaseException:
            self.kill()
            await self._reap()
            raise
        finally:
            handoff.close()
        seccomp.serve(listener, killable, self.pid, self._tree_context)

    async def __aenter__(self) -> SlaveProcess:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None:
                self.kill()
            await self.wait()
        except BaseException:
            self.kill()
            await self._reap()
            raise
        finally:
            await self.aclose()

    @property
    def pid(self) -> int:
        """The program's process id."""
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """The exit status once known (128+N after signal N), else ``None``."""
        process = self._require()
        return None if process.returncode is None else exit_status(process.returncode)

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The program's stdin when started with ``stdin=PIPE``."""
        return self._require().stdin

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        """The program's stdout when started with ``stdout=PIPE``."""
        return self._require().stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        """The program's stderr when started with ``stderr=PIPE``."""
        return self._require().stderr

    async def wait(self) -> int:
        """Wait for the program to exit; its status (128+N after signal N)."""
        return exit_status(await self._require().wait())

    async def communicate(self, data: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """As :meth:`asyncio.subprocess.Process.communicate`."""
        return await self._require().communicate(data)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the program (ignored once it has exited)."""
        process = self._require()
        if process.returncode is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

    @property
    def own_session(self) -> bool:
        """Whether the program runs in a session and process group of its own.

        A sandboxed program does (the terminal cannot be made to type for
        it, see :mod:`libc_service.confinement.sandbox`): the terminal's Ctrl-C, Ctrl-\\,
        Ctrl-Z and window-size changes then reach only the master, which
        passes them on with :meth:`signal_group`.
        """
        return self._options.get("sandbox") is not None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the program's process group when it has its own, else to the program."""
        process = self._require()
        if not self.own_session:
            self.send_signal(signum)
            return
        if process.returncode is None:
            try:
                os.killpg(process.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        """SIGKILL the program (its whole process group when it has its own)."""
        if self._process is not None:
            self.signal_group(signal.SIGKILL)

    async def _reap(self) -> None:
        if self._process is not None:
            await self._process.wait()

    async def aclose(self) -> None:
        """Stop accepting registrations and end every session; returns when their tasks have ended.

        Every session is closed and the sessions' task group cancelled: a
        process of the tree that is still running (a descendant outliving
        the program) loses the master, and a handler still deciding a call
        of a process that is gone is cancelled. A reply that went out was
        observed when it went out, so nothing an observer should see is lost.
        """
        self._sessions.closing = True
        launched, self._launched = self._launched, None
        if launched is not None:  # launched, never served
            launched.mine.close()
        if self._listener is not None:
            self._listener.drain_reports()
            self._listener.close()
        self._reports.tell_dropped()
        self._reports.release()
        if self._seccomp is not None:
            await self._seccomp.close()
        self._sessions.close()
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.cancel()  # the sessions' task group cancels every session still deciding
            results = await asyncio.gather(serving, return_exceptions=True)
            if isinstance(results[0], Exception):
                logger.error("serving the program's sessions failed", exc_info=results[0])
        scope = names.scope_in(self._tree_context)
        if scope is not None:
            scope.close()

    def _require(self) -> asyncio.subprocess.Process | LaunchedProcess:
        if self._process is None:
            raise RuntimeError("the program has not been started (use `async with spawn(...)`)")
        return self._process


def spawn(argv: Sequence[str], router: Router, **options: Unpack[SpawnOptions]) -> SlaveProcess:
    """Run ``argv`` as a slave of ``router`` on the running loop.

    The keywords are :class:`SpawnOptions`' (each is described there):
    ``env`` and ``cwd``; ``stdin``/``stdout``/``stderr``, passed through
    unless given (``PIPE``, a file or a descriptor, as for
    :func:`asyncio.create_subprocess_exec`); ``sandbox``, which confines the
    program with the kernel before it runs; ``seccomp=True``, which also
    decides the tree's calls the shim does not see; ``max_sessions``,
    ``rules`` and ``reports``, how the tree is served. Any other keyword
    raises ``TypeError``.
    """
    check_options(options, "spawn")
    return SlaveProcess(argv, router, **options)
