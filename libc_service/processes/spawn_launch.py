"""Launching the child: its environment, the shim, the sandbox, and the hand-off to the C launcher.

Everything before the fork is prepared here, in the master: the
registration socket pair, the environment (``LD_PRELOAD``, the rule table,
``LIBC_SERVICE_LOCAL``), the sandbox's steps. The child then runs no
Python: when there is something to do between ``fork`` and ``exec`` (a
sandbox, a seccomp listener), the static launcher (:mod:`libc_service.processes.launching`)
does it, so :class:`subprocess.Popen` can ``vfork``. Only a build without
the launcher runs a ``preexec_fn``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from libc_service.kernel import readiness
from libc_service.processes.launching import LaunchPlan, launcher_argv, launcher_path, program_path
from libc_service.kernel.lazyimport import on_first_use
from libc_service.policy.rules import ENV_REPORTS, ENV_RULES, rules_value
from libc_service.processes.spawn_options import File, SpawnOptions

if TYPE_CHECKING:
    import asyncio
    from libc_service.seccomp.handoff import ListenerHandoff
    from libc_service.policy.router import Router
    from libc_service.confinement.sandbox import PreparedSandbox
    from libc_service.processes.spawn_seccomp import SeccompWiring
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = [
    "ENV_FD",
    "ENV_LOCAL",
    "LOCAL_MAX_BYTES",
    "LOCAL_MAX_TREES",
    "Launch",
    "LaunchedProcess",
    "ShimNotFound",
    "exit_status",
    "launch_unserved",
    "local_value",
    "shim_path",
    "start",
    "stdio",
]

#: The spawn family logs under one name: what a user configures, and what ``trace`` filters.
logger = logging.getLogger("libc_service.processes.spawn")

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

#: The registration socket's send buffer when the shim reports (the kernel caps it at wmem_max): the
#: default (wmem_default, ~200 KiB) holds ~150 reports, fewer than a program makes while the master starts.
_REPORTS_SNDBUF: Final = 4 << 20


class ShimNotFound(FileNotFoundError):
    """The preload shim was not built (install the package with a C compiler)."""


def shim_path() -> Path:
    """Where the installed shim (``_shim.so``) is."""
    path = Path(__file__).parent.parent / "_shim.so"
    if not path.is_file():
        raise ShimNotFound(
            f"the preload shim {path} is missing: reinstall libc-service with a C compiler "
            "available (pip install needs gcc or cc and the Python headers)"
        )
    return path


def exit_status(returncode: int) -> int:
    """A shell-style exit status: the code, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def stdio(options: SpawnOptions) -> tuple[File, File, File]:
    """The program's stdin, stdout and stderr as the options give them (``None``: the master's)."""
    return options.get("stdin"), options.get("stdout"), options.get("stderr")


@dataclass
class Launch:
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
    """A program started with :class:`subprocess.Popen` (no pipes for stdio, or no loop yet).

    What :class:`~libc_service.processes.spawn.SlaveProcess` uses of
    :class:`asyncio.subprocess.Process`; its end is awaited through a pidfd
    once a loop runs. Its stdio is never a pipe. Only this object reaps the
    child (asyncio's and uvloop's child watchers wait for the pids they
    started, not for every child).
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


async def start(
    argv: Sequence[str], router: Router, options: SpawnOptions, seccomp: SeccompWiring | None
) -> tuple[Launch, asyncio.subprocess.Process | LaunchedProcess]:
    """Start the program on the running loop: what was prepared for it, and the process.

    Without pipes for stdio, :class:`subprocess.Popen` starts it, with
    ``vfork`` as the loop's own subprocess support does at best (uvloop
    always forks): the loop waits only until the child has executed, as it
    would there. On failure nothing of the launch is left open.
    """
    launch = _prepare(argv, router, options, _closes_inherited_fds(asyncio.get_running_loop()), seccomp)
    try:
        arguments = _exec_arguments(launch, options)
        process: asyncio.subprocess.Process | LaunchedProcess
        if launch.command is not None and subprocess.PIPE not in stdio(options):
            process = LaunchedProcess(subprocess.Popen(launch.command, **arguments))
        else:
            process = await asyncio.create_subprocess_exec(*(launch.command or argv), **arguments)
    except BaseException:
        launch.mine.close()
        if launch.handoff is not None:
            launch.handoff.close()
        raise
    finally:
        launch.close_child_side()
    return launch, process


def launch_unserved(argv: Sequence[str], router: Router, options: SpawnOptions) -> tuple[Launch, LaunchedProcess]:
    """Start the program now, without an event loop (no seccomp, no pipes): what was prepared, and the process."""
    launch = _prepare(argv, router, options, True, None)
    try:
        popen = subprocess.Popen(launch.command or list(argv), **_exec_arguments(launch, options))
    except BaseException:
        launch.mine.close()
        raise
    finally:
        launch.close_child_side()
    return launch, LaunchedProcess(popen)


def _prepare(
    argv: Sequence[str], router: Router, options: SpawnOptions, fds_closed: bool, seccomp: SeccompWiring | None
) -> Launch:
    """Everything before the fork: the channel pair, the environment, the rule table, the sandbox."""
    given = options.get("shim")
    shim = Path(given) if given is not None else shim_path()
    sandbox = options.get("sandbox")
    cwd = options.get("cwd")
    reports = options.get("reports", False)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Before the child exists: every datagram it sends carries its sender's credentials.
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    prepared = None
    handoff: ListenerHandoff | None = None
    try:
        if seccomp is not None:
            handoff = seccomp.handoff()
        given_env = options.get("env")
        env = dict(os.environ if given_env is None else given_env)
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = f"{shim} {preload}".strip()
        env[ENV_FD] = str(theirs.fileno())
        env.pop(ENV_LOCAL, None)  # never inherited: only a sandbox applied here makes it true
        env.pop(ENV_RULES, None)  # never inherited: the rules are this router's
        env.pop(ENV_REPORTS, None)
        rules = (
            None
            if seccomp is not None or not options.get("rules", True)
            else rules_value(router, reports=bool(reports))
        )
        if rules is not None:
            env[ENV_RULES] = rules
        reporting = bool(seccomp is None and reports and router.observed)
        if reporting:
            # Observers see the calls the shim decided, and what forwarded calls returned, through reports.
            env[ENV_REPORTS] = "2" if reports == "wait" else "1"
            # Room for bursts (up to net.core.wmem_max): while the master starts (launch()
            # starts it only at the first report) or decodes, reports queue instead of
            # being dropped (or, waited for, pacing the program).
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _REPORTS_SNDBUF)
        if sandbox is not None:
            prepared = sandbox.prepare(argv, shim, env, cwd, seccomp=seccomp is not None)
            local = local_value(prepared.local_trees)
            if local:
                env[ENV_LOCAL] = local
        if seccomp is not None:
            seccomp.note_loading(argv, shim, env, cwd, prepared)
        preexec = _child_setup(
            theirs.fileno(),
            prepared,
            fds_closed,
            handoff.install_in_child if handoff is not None else None,
        )
        command, fds, env = _command(argv, options, env, prepared, handoff, theirs.fileno(), fds_closed)
    except BaseException:
        mine.close()
        theirs.close()
        if prepared is not None:
            prepared.close()
        if handoff is not None:
            handoff.close()
        raise
    return Launch(mine, theirs, env, preexec, prepared, handoff, reporting, command, fds)


def _command(
    argv: Sequence[str],
    options: SpawnOptions,
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
    popen = subprocess.PIPE not in stdio(options)
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
        return list(argv), (), env
    launcher = launcher_path()
    if launcher is None:
        return None, (), env
    program = program_path(argv[0], env)
    env = dict(env)
    del env["LD_PRELOAD"]
    return launcher_argv(launcher, plan, program, argv), tuple(plan.fds), env


def _exec_arguments(launch: Launch, options: SpawnOptions) -> dict[str, Any]:
    """What both ways of starting the program (a loop's subprocess, Popen) are given."""
    stdin, stdout, stderr = stdio(options)
    arguments: dict[str, Any] = {
        "env": launch.env,
        "cwd": options.get("cwd"),
        "stdin": stdin,
        "stdout": stdout,
        "stderr": stderr,
        "pass_fds": (launch.theirs.fileno(), *launch.fds),
        "preexec_fn": None if launch.command is not None else launch.preexec,
    }
    if launch.command is not None and subprocess.PIPE not in (stdin, stdout, stderr):
        arguments["close_fds"] = True  # Popen's: and, with no preexec_fn, vfork
    return arguments


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

    from libc_service.kernel import libc as kernel

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
