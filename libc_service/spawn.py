"""Start a program as a slave of a router: ``async with spawn(argv, router)``.

The program runs with the C shim preloaded and a *registration socket*
(``LIBC_SERVICE_FD``). Every process of its tree — the program, its forked
children, whatever they exec — registers a channel of its own there, and
each channel is served as its own session by ``router.serve`` on the
running loop. When the program exits, the registration socket and every
remaining session are closed: descendants that outlive it lose the master
(the shim then falls back to the real libc, which a sandbox refuses).

With ``seccomp=True`` the tree also runs under a seccomp filter whose
notifications the same router decides (:mod:`libc_service.notify`): the
calls the shim cannot see (static programs, raw system calls, libc's own
opens). The shim then only relays ``getaddrinfo`` to the router.
"""

from __future__ import annotations

import array
import logging
import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Literal

from . import names, readiness, wire_header, wire_registration, wire_reports
from .catalogue import GAI_ERRORS, PATH_MAX_BYTES
from .master import Master, close_fds, received_fds
from .rules import ENV_REPORTS, ENV_RULES, rules_value
from .senders import CREDENTIALS_SPACE, ProcessTree, sender_pid

from .lazyimport import on_first_use
from .launching import LaunchPlan, launcher_argv, launcher_path, program_path

if TYPE_CHECKING:
    import asyncio
    from .notify import ListenerHandoff, SeccompSession
    from .replies import Result
    from .router import Router
    from .sandbox import PreparedSandbox, Sandbox
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = [
    "ENV_FD",
    "ENV_LOCAL",
    "RegistrationListener",
    "ShimNotFound",
    "SlaveProcess",
    "exit_status",
    "shim_path",
    "spawn",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the registration descriptor in the slave.
ENV_FD: Final = "LIBC_SERVICE_FD"
#: Environment variable listing, under a sandbox only, the trees the slave
#: may read by itself: the shim does read-only calls beneath them without
#: asking the master (the kernel checks them). Colon-separated, bounded.
ENV_LOCAL: Final = "LIBC_SERVICE_LOCAL"
#: The shim's bounds for ENV_LOCAL (shim/local.c): what does not fit goes
#: through the master as before.
LOCAL_MAX_TREES: Final = 64
LOCAL_MAX_BYTES: Final = 8191
#: A registration's descriptor (and room to see a second one, refused) and the sender's credentials.
_CMSG_SPACE: Final = socket.CMSG_SPACE(2 * array.array("i").itemsize) + CREDENTIALS_SPACE

_File = int | IO[Any] | None


class ShimNotFound(FileNotFoundError):
    """The preload shim was not built (install the package with a C compiler)."""


def shim_path() -> Path:
    """Where the installed shim (``_shim.so``) is."""
    path = Path(__file__).with_name("_shim.so")
    if not path.is_file():
        raise ShimNotFound(
            f"the preload shim {path} is missing: reinstall libc-service with a C compiler "
            "available (pip install needs gcc or cc and the Python headers)"
        )
    return path


def exit_status(returncode: int) -> int:
    """A shell-style exit status: the code, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _forwarded_result(function: str, report: wire_reports.Report | wire_reports.ForwardResult) -> tuple[Result, int]:
    """A forwarded call's result and errno as a :class:`~libc_service.router.Decision` carries them.

    getaddrinfo's code becomes the error's name (``"noname"``, ``"system"``
    with its errno), as the master's own answers name it.
    """
    if function == "getaddrinfo" and report.result:
        if 1 <= report.result <= len(GAI_ERRORS):
            name = GAI_ERRORS[report.result - 1]
            return name, report.errno if name == "system" else 0
        return report.result, 0
    return report.result, report.errno if report.result < 0 else 0


class RegistrationListener:
    """The registration socket as an async iterator of channels, one per process of the tree.

    ``async for pid, channel in listener`` yields each registered process's
    id and its channel socket (the caller's from then on). A malformed
    registration is logged and skipped: it only costs its sender the
    master. So is a registration that names another process than the one
    that sent it (the kernel names the sender: ``SO_PASSCRED`` is set on
    the socket; only datagrams sent after that carry a sender), or whose
    sender ``accepts`` refuses (not of the program's tree). Iteration ends
    when every process of the tree has exited (the socket hangs up) or
    :meth:`close` is called, from anywhere on the loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_report: Callable[[bytes, int | None], None] | None = None,
        accepts: Callable[[int], bool] | None = None,
    ) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock: socket.socket | None = sock
        #: Gets each report datagram (calls the shim decided itself, wire_header.REPORT_MAGIC) and its sender's pid.
        self._on_report = on_report
        self._accepts = accepts
        self._watch: readiness.Watch | None = None

    def __aiter__(self) -> RegistrationListener:
        return self

    async def __anext__(self) -> tuple[int, socket.socket]:
        while True:
            sock = self._sock
            if sock is None:
                raise StopAsyncIteration
            try:
                data, ancdata, flags, _ = sock.recvmsg(_LISTENER_BUFFER, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable(sock)
                continue
            fds = received_fds(ancdata)
            if not data and not fds:
                if _hung_up(sock):
                    self.close()  # every process of the tree has exited
                    raise StopAsyncIteration
                logger.warning("ignoring an empty registration datagram")
                continue
            if data[:4] == wire_header.REPORT_MAGIC and not fds and self._on_report is not None:
                self._on_report(data, sender_pid(ancdata))
                continue
            registered = _registration(data, fds, flags, sender_pid(ancdata), self._accepts)
            if registered is not None:
                return registered

    def drain_reports(self, limit: int = 65536) -> None:
        """Give the reports still queued to ``on_report``, without waiting (before :meth:`close`).

        A program that exits right after its last calls leaves their reports
        in the socket: observers (``trace``) must still see those calls.
        Registrations that arrive this late are refused (their descriptors
        closed): the tree is being closed.
        """
        sock = self._sock
        if sock is None or self._on_report is None:
            return
        for _ in range(limit):
            try:
                data, ancdata, _, _ = sock.recvmsg(_LISTENER_BUFFER, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError, OSError):
                return
            fds = received_fds(ancdata)
            if fds:
                close_fds(fds)
            elif data[:4] == wire_header.REPORT_MAGIC:
                self._on_report(data, sender_pid(ancdata))
            elif not data:
                return

    async def _wait_readable(self, sock: socket.socket) -> None:
        with readiness.Watch(sock.fileno()) as watch:
            self._watch = watch
            try:
                await watch.ready
            finally:
                self._watch = None

    def close(self) -> None:
        """Stop listening: close the socket (later registrations fail) and end the iteration."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._watch is not None:
            self._watch.end()  # before the close: the number may be reused at once
        sock.close()


#: The registration socket's send buffer when the shim reports (the kernel caps it at wmem_max): the
#: default (wmem_default, ~200 KiB) holds ~150 reports, fewer than a program makes while the master starts.
_REPORTS_SNDBUF: Final = 4 << 20

#: A registration (16 bytes) or a report (its header, its names and a request).
_LISTENER_BUFFER: Final = (
    wire_reports.REPORT.size
    + wire_reports.REPORT_NAMES.size
    + 3 * PATH_MAX_BYTES
    + wire_reports.REPORT_ARGV_MAX
    + wire_header.MAX_MESSAGE
)


#: Flags of the reports served without a loop, as plain ints (an enum's ``|`` costs more than the call).
_PEEK_NOW: Final = int(socket.MSG_PEEK) | int(socket.MSG_DONTWAIT)
_RECEIVE_NOW: Final = int(socket.MSG_CMSG_CLOEXEC) | int(socket.MSG_DONTWAIT)


def _registration(
    data: bytes, fds: list[int], flags: int, sender: int | None, accepts: Callable[[int], bool] | None
) -> tuple[int, socket.socket] | None:
    """The registering process's id and channel, or ``None`` (logged) for a malformed registration
    or one that names another process than its sender."""
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise wire_header.RemoteProtocolError("registration truncated")
        pid = wire_registration.decode_registration(data, len(fds))
        if pid != sender:
            raise wire_header.RemoteProtocolError(f"it names pid {pid} but was sent by pid {sender}")
        if accepts is not None and not accepts(pid):
            raise wire_header.RemoteProtocolError(f"pid {pid} is not of the program's process tree")
        return pid, socket.socket(fileno=fds[0])
    except (wire_header.RemoteProtocolError, OSError) as exc:
        close_fds(fds)
        logger.warning("ignoring a malformed registration: %s", exc)
        return None


@dataclass
class _Launch:
    """What starting a program prepared: both ends of its registration socket, its environment and set-up."""

    mine: socket.socket
    theirs: socket.socket
    env: dict[str, str]
    preexec: Callable[[], None] | None
    prepared: PreparedSandbox | None
    handoff: ListenerHandoff | None
    #: Whether the shim reports to observers (the router holds forwarded decisions for their results).
    reporting: bool
    #: What :class:`subprocess.Popen` runs with no ``preexec_fn`` (so with ``vfork``), and the
    #: descriptors it passes; ``None``: the loop's subprocess support runs ``preexec``.
    command: list[str] | None = None
    fds: tuple[int, ...] = ()

    def close_child_side(self) -> None:
        """Once the child exists: our copies of what only it needs."""
        self.theirs.close()
        if self.prepared is not None:
            self.prepared.close()


class LaunchedProcess:
    """A program :meth:`SlaveProcess.launch` started with :class:`subprocess.Popen`.

    What :class:`SlaveProcess` uses of :class:`asyncio.subprocess.Process`;
    its end is awaited through a pidfd once a loop runs. Its stdio is never
    a pipe. Only this object reaps the child (asyncio's and uvloop's child
    watchers wait for the pids they started, not for every child).
    """

    stdin: None = None
    stdout: None = None
    stderr: None = None

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """As Popen's (-N after signal N), reaping the child if it has ended."""
        return self._popen.poll()

    def poll(self) -> int | None:
        return self._popen.poll()

    def send_signal(self, signum: int) -> None:
        """Ignored once the child has been reaped (its pid may be another process's by then)."""
        self._popen.send_signal(signum)

    async def wait(self) -> int:
        while (status := self._popen.poll()) is None:
            try:
                pidfd = os.pidfd_open(self._popen.pid)
            except OSError:  # a kernel without pidfds: a thread waits
                return await asyncio.to_thread(self._popen.wait)
            try:
                await readiness.readable(pidfd)
            finally:
                os.close(pidfd)
        return status

    async def communicate(self, data: bytes | None = None) -> tuple[None, None]:
        if data is not None:
            raise ValueError("the program's stdin is not a pipe")
        await self.wait()
        return None, None


def _pending(sock: socket.socket) -> bool:
    """Whether the registration socket holds a datagram, not only the tree's hang-up.

    Peeked without room for descriptors: a registration's channel stays
    queued with it, none is received here.
    """
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # let the listener meet the error and report it
    return bool(data) or not _hung_up(sock)


class SlaveProcess:
    """A running slave program and the sessions of its process tree.

    Returned by :func:`spawn`; use it as an async context manager. Leaving
    the block waits for the program (or, on an error or cancellation, kills
    it), then closes every session and descriptor.
    """

    def __init__(
        self,
        argv: Sequence[str],
        router: Router,
        *,
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        sandbox: Sandbox | None,
        stdin: _File,
        stdout: _File,
        stderr: _File,
        shim: str | os.PathLike[str] | None,
        max_sessions: int = 1024,
        seccomp: bool = False,
        rules: bool = True,
        reports: bool | Literal["wait"] = False,
    ) -> None:
        if not argv:
            raise ValueError("spawn() needs a program to run")
        self.argv = list(argv)
        self.router = router
        self._env = env
        self._cwd = cwd
        self._sandbox = sandbox
        self._stdio = (stdin, stdout, stderr)
        self._shim = Path(shim) if shim is not None else None
        self._process: asyncio.subprocess.Process | LaunchedProcess | None = None
        self._listener: RegistrationListener | None = None
        #: The task that owns the sessions' task group (trio's serve_listeners, on asyncio).
        self._serving: asyncio.Task[None] | None = None
        #: The live sessions, by channel identity.
        self._masters: dict[Master, tuple[int, int]] = {}
        self._closing = False
        self._max_sessions = max_sessions
        #: (st_dev, st_ino) of every channel being served: one socket, one session.
        self._served: set[tuple[int, int]] = set()
        #: How many sessions (processes of the tree) registered so far.
        self.sessions_started = 0
        self._seccomp = seccomp
        #: Under seccomp: files and trees loading the program needs (see ``_loading``).
        self._loading: tuple[list[str], list[str]] = ([], [])
        #: Whether the shim decides what the router answers with a constant (:mod:`libc_service.rules`).
        self._rules = rules
        #: Whether a router with observers gets a rule table too, its shim reporting what it decided.
        self._reports = reports
        #: Reports lost so far, by pid, as the shim counted them.
        self._reports_lost: dict[int, int] = {}
        #: Reports dropped because their sender (as the kernel names it) is not the process they are
        #: about, or is not of the program's tree: what a process of the tree tried to make up.
        self.reports_dropped = 0
        self._dropped_told = 0  # how many of them the user was told of
        #: The program's tree, once it runs (who may register and report).
        self._tree: ProcessTree | None = None
        #: Whether the router holds forwarded decisions for their results (the shim reports them).
        self._holding = False
        #: Every pid that registered: their held decisions are released at the end.
        self._pids: set[int] = set()
        #: The seccomp listener's session (``seccomp=True``), once the program runs.
        self.seccomp_session: SeccompSession | None = None
        self._seccomp_task: asyncio.Task[None] | None = None
        #: What serves the shim's sessions under seccomp (getaddrinfo only; see notify.shim_relay).
        self._shim_router: Router | None = None
        #: After launch(), until start(): the registration socket not served yet.
        self._launched: _Launch | None = None
        #: The context every task serving this tree runs in: the tree's own answers for ``resolved()``.
        self._tree_context = names.serving(router)
        #: Observers of the calls the shim decided, as plain data (observe_reports()).
        self._plain_observers: list[Callable[[wire_reports.PlainReport], None]] = []

    def observe_reports(self, observer: Callable[[wire_reports.PlainReport], None]) -> None:
        """Give the calls the shim decided itself to ``observer`` as validated plain data.

        Each report is validated as :func:`~libc_service.wire_reports.decode_report`
        validates it, but becomes a :class:`~libc_service.wire_reports.PlainReport`
        (its request's fields, paths as ``str``) instead of a request model
        and a :class:`~libc_service.router.Decision` for the router's
        observers, which then do not see these calls: for an observer that
        only shows them (``trace``), the models are never loaded for them
        and each costs a fraction. Calls the master decides still reach the
        router's observers as decisions.
        """
        self._plain_observers.append(observer)

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
        launch = self._prepare(_closes_inherited_fds(asyncio.get_running_loop()))
        try:
            if launch.command is not None and subprocess.PIPE not in self._stdio:
                # vfork, as the loop's own subprocess support does at best (uvloop always forks):
                # the loop waits only until the child has executed, as it would there.
                self._process = LaunchedProcess(subprocess.Popen(launch.command, **self._exec_arguments(launch)))
            else:
                command = launch.command or self.argv
                self._process = await asyncio.create_subprocess_exec(*command, **self._exec_arguments(launch))
        except BaseException:
            launch.mine.close()
            if launch.handoff is not None:
                launch.handoff.close()
            raise
        finally:
            launch.close_child_side()
        self._tree = ProcessTree(self._process.pid)  # not reaped yet: its session and start time are readable
        if launch.handoff is not None:
            try:
                await self._serve_listener(launch.handoff)
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
        if self._seccomp:
            raise ValueError("launch() cannot start a program under seccomp: use start() on a running loop")
        if subprocess.PIPE in self._stdio:
            raise ValueError("launch() cannot make pipes for stdio: use start() on a running loop")
        if self._process is not None:
            raise RuntimeError("the program has already been started")
        launch = self._prepare(fds_closed=True)
        try:
            popen = subprocess.Popen(launch.command or self.argv, **self._exec_arguments(launch))
        except BaseException:
            launch.mine.close()
            raise
        finally:
            launch.close_child_side()
        self._tree = ProcessTree(popen.pid)  # not reaped yet: its session and start time are readable
        self._process = LaunchedProcess(popen)
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
                    elif _pending(launched.mine):
                        if reports_idle is None or not self._serve_reports(launched.mine, reports_idle):
                            return None
                    else:  # every process of the tree closed its end: only the end is left to wait for
                        del wanted[fd]
        finally:
            os.close(pidfd)
        if reports_idle is not None and not self._serve_reports(launched.mine, reports_idle):
            return None  # a descendant's registration
        if _pending(launched.mine):
            return None  # its last calls' reports, or a descendant's registration
        self._launched = None
        launched.mine.close()
        self._tell_dropped()  # the end of a tree served without a loop, as aclose() tells a served one's
        return self.returncode

    def _serve_reports(self, sock: socket.socket, idle: Callable[[], None]) -> bool:
        """Serve the reports queued in the registration socket, without a loop; ``idle`` once it is empty.

        Returns ``False`` at the first datagram that is not a report (a
        registration, left queued for the loop's listener), ``True`` when
        the socket was drained.
        """
        while True:
            try:
                magic = sock.recv(len(wire_header.REPORT_MAGIC), _PEEK_NOW)
            except (BlockingIOError, InterruptedError):
                idle()
                return True
            except OSError:
                return False  # the listener meets the error and reports it
            if not magic and _hung_up(sock):  # every process of the tree has closed its end
                idle()
                return True
            if magic != wire_header.REPORT_MAGIC:
                return False
            try:
                data, ancdata, _, _ = sock.recvmsg(_LISTENER_BUFFER, _CMSG_SPACE, _RECEIVE_NOW)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            fds = received_fds(ancdata)
            if fds:  # a report carries none: not one of the shim's
                close_fds(fds)
                logger.warning("ignoring a report that carries descriptors")
                continue
            self._report(data, sender_pid(ancdata))

    def _prepare(self, fds_closed: bool) -> _Launch:
        """Everything before the fork: the channel pair, the environment, the rule table, the sandbox."""
        shim = self._shim or shim_path()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Before the child exists: every datagram it sends carries its sender's credentials.
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        prepared = None
        handoff: ListenerHandoff | None = None
        try:
            if self._seccomp:
                from .notify import ListenerHandoff, shim_relay

                handoff = ListenerHandoff()
                self._shim_router = shim_relay(self.router)
                if self._sandbox is None:
                    logger.warning(
                        "seccomp without a sandbox: a call the policy forwards is continued by the "
                        "kernel unconfined, with arguments the program may change meanwhile",
                        extra={"confinement": True},  # of no concern to a caller that confines nothing (trace)
                    )
            env = dict(os.environ if self._env is None else self._env)
            preload = env.get("LD_PRELOAD", "")
            env["LD_PRELOAD"] = f"{shim} {preload}".strip()
            env[ENV_FD] = str(theirs.fileno())
            env.pop(ENV_LOCAL, None)  # never inherited: only a sandbox applied here makes it true
            env.pop(ENV_RULES, None)  # never inherited: the rules are this router's
            env.pop(ENV_REPORTS, None)
            rules = None if self._seccomp or not self._rules else rules_value(self.router, reports=bool(self._reports))
            if rules is not None:
                env[ENV_RULES] = rules
            reporting = bool(not self._seccomp and self._reports and self.router.observed)
            if reporting:
                # Observers see the calls the shim decided, and what forwarded calls returned, through reports.
                env[ENV_REPORTS] = "2" if self._reports == "wait" else "1"
                # Room for bursts (up to net.core.wmem_max): while the master starts (launch()
                # starts it only at the first report) or decodes, reports queue instead of
                # being dropped (or, waited for, pacing the program).
                theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _REPORTS_SNDBUF)
            if self._sandbox is not None:
                prepared = self._sandbox.prepare(self.argv, shim, env, self._cwd, seccomp=self._seccomp)
                local = local_value(prepared.local_trees)
                if local:
                    env[ENV_LOCAL] = local
            if self._seccomp:
                self._loading = _loading(self.argv, shim, env, self._cwd, self._sandbox, prepared)
            preexec = _child_setup(
                theirs.fileno(),
                prepared,
                fds_closed,
                handoff.install_in_child if handoff is not None else None,
            )
            command, fds, env = self._command(env, prepared, handoff, theirs.fileno(), fds_closed)
        except BaseException:
            mine.close()
            theirs.close()
            if prepared is not None:
                prepared.close()
            if handoff is not None:
                handoff.close()
            raise
        return _Launch(mine, theirs, env, preexec, prepared, handoff, reporting, command, fds)

    def _command(
        self,
        env: dict[str, str],
        prepared: PreparedSandbox | None,
        handoff: ListenerHandoff | None,
        keep: int,
        fds_closed: bool,
    ) -> tuple[list[str] | None, tuple[int, ...], dict[str, str]]:
        """What to run without a ``preexec_fn``, the descriptors the launcher needs, and the environment.

        Popen (no pipes for stdio) closes the parent's descriptors itself; a
        loop that does not (uvloop) has the launcher mark them close-on-exec,
        all but the registration socket ``keep``. The command is ``None``
        only when the launcher is missing: then ``preexec`` does the child's
        part in Python, after a ``fork``.
        """
        popen = subprocess.PIPE not in self._stdio
        plan = LaunchPlan()
        # The launcher runs without the shim (it would register as a process of the tree); it sets
        # LD_PRELOAD for the program first, before any filter (setenv may allocate).
        plan.extend([f"p={env['LD_PRELOAD']}"], [])
        if not popen and not fds_closed:
            plan.extend([f"k={keep}"], [])
        if prepared is not None:
            plan.extend(*prepared.launch_steps())
        if handoff is not None:
            plan.extend(*handoff.launch_steps())
        if len(plan.steps) == 1:
            return list(self.argv), (), env
        launcher = launcher_path()
        if launcher is None:
            return None, (), env
        program = program_path(self.argv[0], env)
        env = dict(env)
        del env["LD_PRELOAD"]
        return launcher_argv(launcher, plan, program, self.argv), tuple(plan.fds), env

    def _exec_arguments(self, launch: _Launch) -> dict[str, Any]:
        """What both ways of starting the program (a loop's subprocess, Popen) are given."""
        stdin, stdout, stderr = self._stdio
        arguments: dict[str, Any] = {
            "env": launch.env,
            "cwd": self._cwd,
            "stdin": stdin,
            "stdout": stdout,
            "stderr": stderr,
            "pass_fds": (launch.theirs.fileno(), *launch.fds),
            "preexec_fn": None if launch.command is not None else launch.preexec,
        }
        if launch.command is not None and subprocess.PIPE not in self._stdio:
            arguments["close_fds"] = True  # Popen's: and, with no preexec_fn, vfork
        return arguments

    def _begin_serving(self, launch: _Launch) -> None:
        """Serve the registration socket's sessions and reports from now on, on the running loop."""
        if launch.reporting:
            self.router.hold_forwarded(True)
            self._holding = True
        if self._tree is None:
            self._tree = ProcessTree(self._require().pid)
        self._listener = RegistrationListener(launch.mine, self._report, self._tree.__contains__)
        self._serving = asyncio.get_running_loop().create_task(
            self._serve_tree(self._listener), context=self._tree_context
        )

    def _report(self, data: bytes, sender: int | None) -> None:
        """A report: a call the shim decided with the rule table (the observers see it as the router's
        default, with its result), or the result of a call the master forwarded (given to its decision).

        Believed only when the kernel says its sender is the process it is about, and of the tree.
        """
        if self._plain_observers:
            self._plain_report(data, sender)
            return
        from .router import Decision

        try:
            report = wire_reports.decode_report(data)
        except wire_header.RemoteProtocolError as exc:
            logger.warning("ignoring a malformed report: %s", exc)
            return
        pid = report.pid if isinstance(report, wire_reports.ForwardResult) else report.request.pid
        if not self._believed(pid, sender):
            return
        self._count_lost(pid, report.lost)
        if isinstance(report, wire_reports.ForwardResult):
            self.router.forward_result(
                report.pid,
                report.tid,
                report.request_id,
                *_forwarded_result(report.function, report),
                report.duration_ns,
            )
            return
        if report.outcome == "forward":
            result, errno = _forwarded_result(report.request.function, report)
            decision = Decision(
                report.request,
                "default",
                "forward",
                result,
                errno,
                0,
                0,
                f"rules {report.request.pid}",
                directory=report.directory,
                directory2=report.directory2,
                program=report.program,
                duration_ns=report.duration_ns,
            )
        else:
            decision = Decision(
                report.request,
                "default",
                "error",
                -1,
                report.errno,
                0,
                0,
                f"rules {report.request.pid}",
                directory=report.directory,
                directory2=report.directory2,
                program=report.program,
            )
        self.router.report(decision)

    def _believed(self, pid: int, sender: int | None) -> bool:
        """Whether a report about ``pid`` is believed: its sender is ``pid`` (the kernel says so), of the tree."""
        tree = self._tree
        if pid != sender or tree is None or (sender not in tree.members and sender not in tree):
            self._drop_report(pid, sender)
            return False
        return True

    def _tell_dropped(self) -> None:
        """Say, once the tree's reports are all in, how many were dropped (the user reads the trace or the
        refusals believing they are the program's own account: what was left out is counted there)."""
        if self.reports_dropped > self._dropped_told:
            self._dropped_told = self.reports_dropped
            logger.warning(
                "%d report(s) dropped: their sender was not the process they named, or not of the program's tree",
                self.reports_dropped,
            )

    def _drop_report(self, pid: int, sender: int | None) -> None:
        """Count (and log, the first time) a report whose sender is not the process it names, or not of the tree."""
        self.reports_dropped += 1
        if self.reports_dropped == 1:
            why = "not of the program's tree" if pid == sender else f"sent by pid {sender}"
            logger.warning("dropped a report about pid %d: %s (a process of the tree made it up)", pid, why)

    def _plain_report(self, data: bytes, sender: int | None) -> None:
        """A report for :meth:`observe_reports`' observers: validated, no model built, its sender checked."""
        try:
            report = wire_reports.plain_report(data)
        except wire_header.RemoteProtocolError as exc:
            logger.warning("ignoring a malformed report: %s", exc)
            return
        pid = report.pid if isinstance(report, wire_reports.ForwardResult) else report.fields["pid"]
        if not self._believed(pid, sender):
            return
        if isinstance(report, wire_reports.ForwardResult):
            self._count_lost(report.pid, report.lost)
            self.router.forward_result(
                report.pid,
                report.tid,
                report.request_id,
                *_forwarded_result(report.function, report),
                report.duration_ns,
            )
            return
        self._count_lost(report.fields["pid"], report.lost)
        for observer in self._plain_observers:
            observer(report)

    def _count_lost(self, pid: int, lost: int) -> None:
        """Warn of the reports ``pid``'s shim counted as lost since the last it told."""
        if lost and lost > self._reports_lost.get(pid, 0):
            logger.warning(
                "pid %d: %d report(s) of calls its shim decided or forwarded were lost (the socket was full)",
                pid,
                lost - self._reports_lost.get(pid, 0),
            )
            self._reports_lost[pid] = lost

    async def _serve_listener(self, handoff: ListenerHandoff) -> None:
        """Receive the child's seccomp listener and serve it (the program waits on it meanwhile)."""
        from .notify import SeccompSession

        try:
            listener, killable = await handoff.receive()
        except BaseException:
            self.kill()
            await self._reap()
            raise
        finally:
            handoff.close()
        files, trees = self._loading
        self.seccomp_session = SeccompSession(
            listener,
            self.router,
            killable=killable,
            name=f"seccomp pid {self.pid}",
            own_files=files,
            own_trees=trees,
            continue_connect=self._sandbox is None or self._sandbox.network,
        )
        self._seccomp_task = asyncio.get_running_loop().create_task(
            self.seccomp_session.serve(), context=self._tree_context
        )

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
        it, see :mod:`libc_service.sandbox`): the terminal's Ctrl-C, Ctrl-\\,
        Ctrl-Z and window-size changes then reach only the master, which
        passes them on with :meth:`signal_group`.
        """
        return self._sandbox is not None

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
        self._closing = True
        launched, self._launched = self._launched, None
        if launched is not None:  # launched, never served
            launched.mine.close()
        if self._listener is not None:
            self._listener.drain_reports()
            self._listener.close()
        self._tell_dropped()
        if self._holding:
            self._holding = False
            self.router.release_forwarded(self._pids)
            self.router.hold_forwarded(False)
        if self.seccomp_session is not None:
            self.seccomp_session.close()
        if self._seccomp_task is not None:
            await asyncio.gather(self._seccomp_task, return_exceptions=True)
            self._seccomp_task = None
        for master in list(self._masters):
            master.close()
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

    # -------------------------------------------------------------- sessions

    async def _serve_tree(self, listener: RegistrationListener) -> None:
        """Serve each registered process's channel in a task of one task group, until the listener ends."""
        async with asyncio.TaskGroup() as sessions:
            async for pid, sock in listener:
                if self._holding:
                    # A registration follows, on the same socket, every report the pid's previous
                    # program sent: a forwarded call of it still waiting for its result lost its report.
                    self.router.release_forwarded((pid,))
                    self._pids.add(pid)
                master = self._admit(pid, sock)
                if master is not None:
                    sessions.create_task(self._serve(master), name=f"libc-service session {master.name}")

    def _admit(self, pid: int, sock: socket.socket) -> Master | None:
        """A session for a registered channel, or ``None`` (logged) when it is refused."""
        identity = _identity(sock)
        refusal = None
        if identity in self._masters.values():
            refusal = "that channel is already being served"
        elif len(self._masters) >= self._max_sessions:
            refusal = f"the program already has {self._max_sessions} live sessions"
        if refusal is not None:
            sock.close()
            logger.warning("refusing a registration from pid %s: %s", pid, refusal)
            return None
        try:
            master = Master(sock, name=f"pid {pid}", pid=pid)
        except ValueError as exc:
            sock.close()
            logger.warning("ignoring a registration from pid %s: %s", pid, exc)
            return None
        self.sessions_started += 1
        self._masters[master] = identity
        return master

    async def _serve(self, master: Master) -> None:
        """One session; how it ended is read from its channel state once it is closed.

        A process that dies during a call (killed, crashed) ends its session
        with that call unanswered, or with its reply unsent: that is logged,
        without a traceback, the same whether the session's task or the
        master's reader callback was answering when it died.
        """
        try:
            await (self._shim_router or self.router).serve(master)
        except Exception:  # noqa: BLE001 - one session's failure must not end the others
            logger.exception("session %s failed", master.name)
        else:
            channel = master.channel
            if self._closing:
                pass
            elif channel.unanswered_at_close:
                logger.warning(
                    "session %s dropped: the process went away with %d call(s) unanswered",
                    master.name,
                    channel.unanswered_at_close,
                )
            elif channel.unsent_at_close or channel.late_replies:
                logger.warning("session %s dropped: the process went away before its reply was sent", master.name)
            else:
                logger.debug("session %s ended", master.name)
        finally:
            master.close()
            self._masters.pop(master, None)


def _loading(
    argv: Sequence[str],
    shim: Path,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    sandbox: Sandbox | None,
    prepared: PreparedSandbox | None,
) -> tuple[list[str], list[str]]:
    """What loading the program needs, which the seccomp transport continues unasked.

    Files: the shim, the loader's cache, the program's interpreter and
    libraries. Trees: the system's library directories (unless the sandbox
    leaves them out) and, under a sandbox, its static trees — what the shim
    transport never asks about either.
    """
    from .loader import program_files, resolve_program, system_library_dirs

    files = [os.fspath(shim), "/etc/ld.so.cache"]
    try:
        files += [os.fspath(file.path) for file in program_files(resolve_program(argv[0], env, cwd), env, cwd=cwd)]
    except OSError:
        pass  # the program cannot be found: starting it fails with the usual error
    trees: list[str] = []
    if sandbox is None or sandbox.system_libraries:
        trees += [os.fspath(path) for path in system_library_dirs()]
    if prepared is not None:
        trees += list(prepared.local_trees)
    return files, trees


def _closes_inherited_fds(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop``'s subprocess support closes the master's descriptors itself.

    ``subprocess`` (the default loop) does (``close_fds=True``). uvloop does
    not: the child would inherit every descriptor of the master that is not
    close-on-exec, and copies of the master's stdio that libuv makes while
    arranging the child's (seen as descriptors 15–17).
    """
    return not type(loop).__module__.startswith("uvloop")


def _child_setup(
    keep: int, sandbox: PreparedSandbox | None, fds_closed: bool, last: Callable[[], None] | None = None
) -> Callable[[], None] | None:
    """What runs in the child between fork and exec, or ``None`` when nothing must.

    Marking every descriptor but stdio and ``keep`` close-on-exec (rather
    than closing them) leaves the loop's own child code free to use the
    descriptors it arranged, while the program starts with exactly stdio,
    the registration socket and what the shim documents. ``last`` (the
    seccomp listener's installation) runs after everything else: calls made
    after it would wait for a master that is still in ``fork``.
    """
    if fds_closed and sandbox is None and last is None:
        return None
    # Resolved here, in the parent: importing or dlopen()ing after fork()
    # could wait forever on a lock another thread held at the fork.
    close_range = None if fds_closed else _close_range_function()

    def setup() -> None:
        if close_range is not None:
            _close_on_exec_except(keep, close_range)
        if sandbox is not None:
            sandbox.apply_in_child()
        if last is not None:
            last()

    return setup


_CLOSE_RANGE_CLOEXEC: Final = 4


def _close_on_exec_except(keep: int, close_range: Callable[[int, int, int], None]) -> None:
    """Set close-on-exec on every descriptor from 3 up except ``keep``."""
    try:
        for first, last in ((3, keep - 1), (keep + 1, 0xFFFFFFFF)):
            if first <= last:
                close_range(first, last, _CLOSE_RANGE_CLOEXEC)
    except OSError:  # before Linux 5.11: one descriptor at a time
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != keep:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass  # the directory listing's own descriptor, already gone


def _close_range_function() -> Callable[[int, int, int], None]:
    """close_range(2) through ctypes (Python has no binding for its flags).

    Only a loop that leaves the master's descriptors open needs it (uvloop):
    ctypes is not imported at start-up for the others.
    """
    import ctypes

    from . import kernel

    def close_range(first: int, last: int, flags: int) -> None:
        kernel.call("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags))

    return close_range


def local_value(trees: Sequence[str]) -> str:
    """``LIBC_SERVICE_LOCAL`` for these trees, within the shim's bounds."""
    kept: list[str] = []
    size = 0
    for tree in trees:
        if len(kept) == LOCAL_MAX_TREES or size + len(tree) + 1 > LOCAL_MAX_BYTES + 1:
            logger.debug(
                "%s: %d tree(s) left out (bounds); they go through the master", ENV_LOCAL, len(trees) - len(kept)
            )
            break
        kept.append(tree)
        size += len(tree) + 1
    return ":".join(kept)


def _identity(sock: socket.socket) -> tuple[int, int]:
    status = os.fstat(sock.fileno())
    return status.st_dev, status.st_ino


def _hung_up(sock: socket.socket) -> bool:
    """Whether an empty read meant the end (every sender gone), not an empty datagram."""
    events = readiness.poll_events({sock.fileno(): readiness.READABLE}, 0)
    return any(happened & (select.POLLHUP | select.POLLRDHUP) for happened in events.values())


def spawn(
    argv: Sequence[str],
    router: Router,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    sandbox: Sandbox | None = None,
    stdin: _File = None,
    stdout: _File = None,
    stderr: _File = None,
    shim: str | os.PathLike[str] | None = None,
    max_sessions: int = 1024,
    seccomp: bool = False,
    rules: bool = True,
    reports: bool | Literal["wait"] = False,
) -> SlaveProcess:
    """Run ``argv`` as a slave of ``router`` on the running loop.

    ``env`` replaces the environment (the shim's variables are added);
    ``stdin``/``stdout``/``stderr`` pass through unless given (``PIPE``,
    a file or a descriptor, as for :func:`asyncio.create_subprocess_exec`).
    ``sandbox`` confines the program with the kernel before it runs.
    ``max_sessions`` bounds the processes of the tree served at once (each
    costs the master a descriptor); a registration past it is refused and
    that process falls back as without a master.
    ``seccomp=True`` also decides the tree's arbitrated system calls that
    the shim does not see, through seccomp user notifications
    (:mod:`libc_service.notify`; raises
    :class:`~libc_service.notify.SeccompUnavailable` where the kernel
    cannot). Without ``sandbox`` a call the policy forwards is then
    unconfined: a warning is logged.
    ``rules`` (default on) lets the shim answer by itself the calls the
    router provably answers with a constant (``FORWARD`` or ``deny``), with
    no round trip (:mod:`libc_service.rules`); off, every call is asked.
    A router with observers gets no rule table (the observers see every
    call in its session, as it is decided) unless ``reports=True``: then
    the shim decides too and tells the master afterwards, without waiting,
    and the observers get those calls as the default's decisions.
    ``reports="wait"``: the same, but a report the registration socket has
    no room for is waited for instead of dropped (the program runs at the
    observers' pace, and they see every call: ``trace`` does this).
    """
    return SlaveProcess(
        argv,
        router,
        env=env,
        cwd=cwd,
        sandbox=sandbox,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        shim=shim,
        max_sessions=max_sessions,
        seccomp=seccomp,
        rules=rules,
        reports=reports,
    )
