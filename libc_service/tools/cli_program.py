"""Running one program as a router's slave, for the commands that run one (run, trace, learn).

The program starts before asyncio is imported, and the master's loop
starts only when the program first asks something (see
:func:`run_program`): a command's start is what the user waits for.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

from libc_service.tools.cli_signals import SignalRelay
from libc_service.kernel.lazyimport import on_first_use
from libc_service.policy.router import Router
from libc_service.processes.spawn import ShimNotFound, SlaveProcess, spawn
from libc_service.processes.terminal import keeps_terminal_modes

if TYPE_CHECKING:
    import asyncio

    from libc_service.confinement.sandbox import Sandbox
    from libc_service.protocol.wire_reports import PlainReport
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["ADAPTIVE_BUSY_POLL_NS", "run_program"]


#: The command's masters busy-poll this long after answering, while a CPU is
#: free and one program process is talking (``Master.adaptive_busy_poll_ns``).
ADAPTIVE_BUSY_POLL_NS = 20_000


def _run_loop(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on the default loop."""
    from libc_service.endpoints.master import Master
    from libc_service.kernel.idle_cpu import IDLE_CPU

    Master.adaptive_busy_poll_ns = ADAPTIVE_BUSY_POLL_NS
    IDLE_CPU.free()  # the first sample: the program's first calls can be polled for
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


@keeps_terminal_modes
def run_program(
    argv: Sequence[str],
    router: Router,
    sandbox: Sandbox | None,
    seccomp: bool = False,
    reports: bool | Literal["wait"] = False,
    plain_reports: Callable[[PlainReport], None] | None = None,
    reports_idle: Callable[[], None] | None = None,
) -> int:
    """Run ``argv`` as ``router``'s slave; its exit status.

    The program starts first (:meth:`SlaveProcess.launch`), before this
    process imports asyncio: a run whose every call the shim decides ends
    without a master ever starting, and otherwise the program runs while
    the master starts, which happens when it first asks or reports
    something. Under seccomp the master serves from the start. The
    user's terminal modes are put back when it ends (:mod:`.terminal`).
    ``plain_reports`` gets the calls the shim decided
    (:meth:`SlaveProcess.observe_reports`); with ``reports_idle`` they are
    served without a loop until a process asks something
    (:meth:`SlaveProcess.wait_unserved`).
    """
    process = spawn(argv, router, sandbox=sandbox, seccomp=seccomp, reports=reports)
    if plain_reports is not None:
        process.observe_reports(plain_reports)
    if not seccomp:
        process.launch()
        relay = SignalRelay(process)
        previous = relay.install_plain()
        try:
            status = process.wait_unserved(reports_idle)
        except BaseException:
            process.kill()
            raise
        if status is not None:
            relay.restore_plain(previous)
            return status
    try:
        return _run_loop(_serve_program(process))
    except BaseException:
        process.kill()  # the loop failed before it could serve the program: it must not run on without one
        raise


async def _serve_program(process: SlaveProcess) -> int:
    loop = asyncio.get_running_loop()
    try:
        async with process:
            installed = SignalRelay(process).install(loop)
            try:
                return await process.wait()
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)
    except (FileNotFoundError, PermissionError) as exc:
        # uvloop reports a program it cannot start without its name.
        if isinstance(exc, ShimNotFound) or exc.filename is not None:
            raise
        raise type(exc)(exc.errno, exc.strerror, process.argv[0]) from exc
