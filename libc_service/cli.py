"""The ``libc-service`` command: run, trace, learn and document policies."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

from .policy import LoadedPolicy, PolicyError, load_policy
from .router import Router
from .spawn import ShimNotFound, SlaveProcess, spawn
from .terminal import keeps_terminal_modes

from .lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from .flagpolicy import PolicyFlags
    from .refusals import RefusalReport
    from .sandbox import Sandbox
    from .wire import PlainReport
else:
    asyncio = on_first_use("asyncio", globals())

# The sandbox (Landlock, ELF reading), seccomp, the tracer and the package
# metadata are imported where a command uses them: `run` of a policy
# without --sandbox starts without them.

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


#: The command's masters busy-poll this long after answering, while a CPU is
#: free and one program process is talking (``Master.adaptive_busy_poll_ns``).
ADAPTIVE_BUSY_POLL_NS = 20_000


def _run_loop(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on the default loop."""
    from .idle_cpu import IDLE_CPU
    from .master import Master

    Master.adaptive_busy_poll_ns = ADAPTIVE_BUSY_POLL_NS
    IDLE_CPU.free()  # the first sample: the program's first calls can be polled for
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


#: Signals passed on to the program: a supervisor's ``kill``/``timeout`` ends
#: the program (and so the command, with the program's status) instead of
#: leaving it running without its master.
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Signals that end the command: the first is passed on; a second one kills
#: the program (its process group when it has one), so the command always
#: exits, even when the program ignores or traps SIGTERM. (SIGINT is not one:
#: interactive programs — shells, REPLs — take Ctrl-C as ordinary input.)
ENDING_SIGNALS: frozenset[int] = frozenset({signal.SIGTERM})
#: Ctrl-C this many times within this many seconds kills the program: one
#: that ignores or traps SIGINT cannot keep the command from ending, while a
#: REPL's ordinary Ctrl-C (once, or twice) stays the program's to handle.
INSISTENT_INTERRUPTS = 3
INSISTENT_WINDOW = 2.0
#: Signals a terminal sends to its foreground process group, which reach
#: only the master when the program has a session of its own (sandboxed).
TERMINAL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGQUIT, signal.SIGWINCH)


class _SignalRelay:
    """Passes the command's signals on to the program, and keeps job control working.

    Without a sandbox the program is in our process group: the terminal's
    Ctrl-C reaches it directly, and only what a supervisor sends to us
    alone is passed on. Under a sandbox the program runs in a session of
    its own (so it cannot type into the user's terminal); the terminal's
    signals then reach only us, and are passed on to the program's whole
    process group — Ctrl-Z stops the program and then us, ``fg``
    (SIGCONT) continues both.
    """

    def __init__(self, process: SlaveProcess) -> None:
        self.process = process
        self.ending = False
        self._interrupts: list[float] = []

    def _insisted(self) -> bool:
        """Whether this SIGINT is the last of INSISTENT_INTERRUPTS within INSISTENT_WINDOW seconds."""
        now = time.monotonic()
        self._interrupts = [when for when in self._interrupts if now - when < INSISTENT_WINDOW] + [now]
        return len(self._interrupts) >= INSISTENT_INTERRUPTS

    def install(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, self.relay, signum)
            installed.append(signum)
        if self.process.own_session:
            for signum in TERMINAL_SIGNALS:
                loop.add_signal_handler(signum, self.process.signal_group, signum)
                installed.append(signum)
            loop.add_signal_handler(signal.SIGTSTP, self.stop)
            loop.add_signal_handler(signal.SIGCONT, self.process.signal_group, signal.SIGCONT)
            installed += [signal.SIGTSTP, signal.SIGCONT]
        return installed

    def install_plain(self) -> dict[int, Any]:
        """The same relays as :meth:`install`, as plain signal handlers: before a loop runs.

        Returns the handlers they replaced (for :meth:`restore_plain`). A
        loop's own handlers, installed later, replace these in one step:
        there is no moment when a signal would find the default action
        (which would end the command and leave the program without its master).
        """
        previous: dict[int, Any] = {}

        def on(signum: int, callback: Callable[..., None], *args: int) -> None:
            previous[signum] = signal.signal(signum, lambda _signum, _frame: callback(*args))

        for signum in FORWARDED_SIGNALS:
            on(signum, self.relay, signum)
        if self.process.own_session:
            for signum in TERMINAL_SIGNALS:
                on(signum, self.process.signal_group, signum)
            on(signal.SIGTSTP, self.stop)
            on(signal.SIGCONT, self.process.signal_group, signal.SIGCONT)
        return previous

    @staticmethod
    def restore_plain(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def relay(self, signum: int) -> None:
        if signum in ENDING_SIGNALS:
            if self.ending:
                self.process.kill()
                return
            self.ending = True
        if signum == signal.SIGINT and self._insisted():
            logger.warning(
                "interrupted %d times in %.0f s: killing the program", INSISTENT_INTERRUPTS, INSISTENT_WINDOW
            )
            self.process.kill()
            return
        if self.process.own_session:
            if signum in (signal.SIGINT, signal.SIGHUP):
                self.process.signal_group(signum)  # as the terminal would have
            else:
                self.process.send_signal(signum)
            return
        if signum == signal.SIGINT and _terminal_delivered_to(self.process.pid):
            return  # the terminal gave it to the program too; a second would interrupt its clean-up
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Ctrl-Z: stop the program's group (a TSTP would be discarded there), then ourselves."""
        self.process.signal_group(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)


def _terminal_delivered_to(pid: int) -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgid(pid)
    except OSError:
        return False
    finally:
        os.close(fd)


@keeps_terminal_modes
def _run_program(
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
        relay = _SignalRelay(process)
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
            installed = _SignalRelay(process).install(loop)
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


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        subparser: argparse.ArgumentParser = getattr(args, "subparser", parser)
        subparser.error("no program given (put it after --)")
    return command


def _policy_flags(args: argparse.Namespace) -> PolicyFlags:
    from .flagpolicy import PolicyFlags  # imported by a run that gives flags only (see _policy)

    return PolicyFlags(
        read=tuple(args.read),
        write=tuple(args.write),
        exec=tuple(args.exec),
        connect=tuple(args.connect),
        bind=tuple(args.bind),
    )


def _flags_given(args: argparse.Namespace) -> bool:
    """Whether any policy flag (``--read``, ``--write``, ...) was given."""
    return any(getattr(args, name) for name in ("read", "write", "exec", "connect", "bind"))


def _policy(args: argparse.Namespace) -> LoadedPolicy:
    """The POLICY file's policy, with what the flags add (or the flags' alone, without a file)."""
    if args.policy is not None and not _flags_given(args):
        return _load(args.policy)  # the common case: flagpolicy is not imported
    flags = _policy_flags(args)
    if not flags.given:
        if args.policy is None:
            from .flagpolicy import policy_from_flags

            return policy_from_flags(flags)  # forward everything: the sandbox, if any, decides
        return _load(args.policy)
    from .flagpolicy import policy_from_flags

    return policy_from_flags(flags, None if args.policy is None else _load(args.policy))


def _static_transport(command: list[str], sandboxed: bool, seccomp: bool) -> bool:
    """Whether to use the seccomp transport: asked for, or needed by a statically linked program.

    The shim cannot see the calls of a static program. Under ``--sandbox``
    the run switches to the seccomp transport (which sees them) where the
    kernel offers it, and is refused otherwise. Without a sandbox the
    program is not read (the ELF reader would slow every run's start, and
    the shim only advises there anyway).
    """
    if seccomp:
        return True
    if not sandboxed:
        return False
    from .linkage import static_note

    note = static_note(command)
    if note is None:
        return False
    from .notify import seccomp_unavailable

    reason = seccomp_unavailable()
    if reason is not None:
        raise PolicyError(f"{note}, and the seccomp transport (--seccomp) that would is not available here: {reason}")
    print(f"libc-service: {note}; using the seccomp transport (as --seccomp does)", file=sys.stderr)
    return True


def _cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = _command(args, parser)
    if _flags_given(args) and not args.sandbox:
        parser_for_run: argparse.ArgumentParser = getattr(args, "subparser", parser)
        parser_for_run.error("--read, --write, --exec, --connect and --bind build a sandbox: add --sandbox")
    policy = _policy(args)
    sandbox: Sandbox | None = None
    report: RefusalReport | None = None
    record: TextIO | None = None
    seccomp = _static_transport(command, args.sandbox, args.seccomp)
    if args.refusals is not None:
        try:
            record = open(args.refusals, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise PolicyError(f"cannot write the refusals to {args.refusals}: {exc.strerror}") from exc
    if args.sandbox or record is not None:
        from .refusals import RefusalReport

        report = RefusalReport(record=record)
        policy.router.observe(report)
    if args.sandbox:
        from .sandbox import Sandbox

        sandbox = policy.sandbox if policy.sandbox is not None else Sandbox()
        assert report is not None
        report.metadata_refused = not sandbox.metadata
        report.watch_landlock()  # Landlock's own refusals, from the kernel's audit log
    status = 1  # the program did not run to its end
    try:
        # With the report observing, the shim reports what the calls it forwarded returned.
        status = _run_program(command, policy.router, sandbox, seccomp, reports=report is not None)
        return status
    finally:
        try:
            for line in report.lines(failed=status != 0, status=status, program=command[0]) if report else ():
                print(f"libc-service: {line}", file=sys.stderr)
        finally:
            if record is not None:
                record.close()


def _not_about_confinement(record: logging.LogRecord) -> bool:
    return not getattr(record, "confinement", False)


def _trace_functions(args: argparse.Namespace) -> list[str] | None:
    """The functions ``-e`` selected (strace's ``-e trace=open,stat`` spelling too), or ``None`` for all.

    An unknown name is a usage error that lists the names there are.
    """
    from .tracing import TRACED_FUNCTIONS

    if not args.functions:
        return None
    functions = [
        name.strip() for given in args.functions for name in given.removeprefix("trace=").split(",") if name.strip()
    ]
    unknown = [name for name in functions if name not in TRACED_FUNCTIONS]
    if unknown:
        args.subparser.error(
            f"unknown function(s) for -e: {', '.join(unknown)} (choose from {', '.join(TRACED_FUNCTIONS)})"
        )
    return functions


def _cmd_trace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = _command(args, parser)
    functions = _trace_functions(args)
    output: TextIO = sys.stderr
    if args.output is not None:
        try:
            output = open(args.output, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise PolicyError(f"cannot write the trace to {args.output}: {exc.strerror}") from exc
    # trace confines nothing: a warning that calls are not confined does not concern it.
    logging.getLogger("libc_service.spawn").addFilter(_not_about_confinement)
    try:
        from .tracing import Tracer, trace_router

        tracer = Tracer(
            output,
            json_lines=args.json,
            functions=functions,
            failed_only=args.failed,
            count=args.count,
        )
        router = trace_router(tracer)
        try:
            # Every call in the trace: the program waits for room for its reports rather than drop them.
            # The calls the shim decided become lines straight from their reports, served without a
            # loop until a process asks something (no model, no asyncio for a program that never does).
            return _run_program(
                command,
                router,
                None,
                args.seccomp,
                reports="wait",
                plain_reports=tracer.report,
                reports_idle=tracer.flush,
            )
        finally:
            tracer.close()
    finally:
        if output is not sys.stderr:
            output.close()


def _cmd_learn(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .learn import Learned, learning_router
    from .learnt_source import LearntPolicyError, merge, read, render
    from .resolver import Resolver
    from .slavepath import printable

    command = _command(args, parser)
    previous: Learned | None = None
    if args.append:
        if args.output is None:
            parser.error("learn --append needs -o FILE: the policy to add this run to")
        try:
            with open(args.output, encoding="utf-8") as existing:
                previous = read(existing.read())
        except FileNotFoundError:
            previous = None  # the first run: --append writes the file, as >> does
        except (OSError, UnicodeDecodeError, LearntPolicyError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise PolicyError(f"cannot add to {args.output}: {reason}") from exc
    nameservers = list(args.nameserver or (previous.nameservers if previous is not None else []))
    try:
        Resolver(nameservers)  # refuse what is no nameserver before the program runs
    except ValueError as exc:
        parser.error(f"--nameserver: {exc}")
    learned = Learned(commands=[list(command)], nameservers=nameservers)
    status = _run_program(command, learning_router(learned), None, args.seccomp)
    if previous is not None:
        learned = merge(previous, [learned])
    source = render(learned)
    _write_output(args.output, source, source=True)
    lists = learned.sandbox_arguments()
    if args.output is not None:
        import shlex  # for this message only: not imported at every start

        network = (
            f", {len(learned.connects)} connect, {len(learned.binds)} bind, {len(learned.names)} name rule(s), "
            f"{len(learned.resolved)} connect(s) by name"
            if learned.connects or learned.binds or learned.names or learned.resolved
            else ""
        )
        runs = f" ({len(learned.commands)} runs)" if len(learned.commands) > 1 else ""
        print(
            f"libc-service: wrote {args.output}: {len(lists['allow_read'])} read, {len(lists['allow_write'])} "
            f"write, {len(lists['allow_exec'])} program rule(s){network} from {learned.calls} calls{runs}; try: "
            f"libc-service run --sandbox {args.output} -- {shlex.join(command)}",
            file=sys.stderr,
        )
    for tree, reason in learned.broad():
        print(f"libc-service: warning: the policy grants {printable(tree)} whole: {reason}", file=sys.stderr)
    if status != 0:
        print(
            f"libc-service: the program exited with status {status}: the policy covers that run only", file=sys.stderr
        )
    return status


def _cmd_docs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .docs import render_policy

    if args.policy is None and not _policy_flags(args).given:
        parser_for_docs: argparse.ArgumentParser = getattr(args, "subparser", parser)
        parser_for_docs.error("give a POLICY, policy flags (--read PATH ...), or both")
    policy = _policy(args)
    text = render_policy(policy, fmt=args.format)
    _write_output(args.output, text)
    return 0


def _write_output(path: str | None, text: str, *, source: bool = False) -> None:
    """``text`` to ``path``, or to stdout without one; a path that cannot be written is a usage error.

    ``source``: ``text`` is Python source, UTF-8 whatever the terminal's
    encoding, written to a new file beside ``path`` and renamed over it, so
    ``path`` holds the old policy or the new, never a part (a policy ``run``
    may load at any moment, or a ``learn --append`` that failed half-way).
    """
    if path is None:
        if source:
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8"))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(text)
        return
    if not source:
        try:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise PolicyError(f"cannot write {path}: {exc.strerror}") from exc
        return
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        # O_EXCL: never write through a name someone else put there.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with open(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise PolicyError(f"cannot write {path}: {exc.strerror}") from exc


def _load(spec: str) -> LoadedPolicy:
    return load_policy(spec)


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, with the terminal's width found without importing :mod:`shutil`.

    argparse makes a formatter for every argument added (to check its
    metavar), and the stock one imports ``shutil`` (with ``zlib``, ``bz2``
    and ``lzma``) for ``get_terminal_size``: a cost at every start of the
    command, for help it rarely prints. The width is the one
    ``shutil.get_terminal_size`` would give: ``COLUMNS``, else the terminal
    of stdout, else 80; less 2, as argparse does.
    """

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        if width is None:
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                columns = 0
            if columns <= 0:
                stdout = sys.__stdout__
                try:
                    columns = (os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0) or 80
                except (AttributeError, ValueError, OSError):
                    columns = 80
            width = columns - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses :class:`_Formatter` (its subcommands' parsers too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line, as data (also used for the CLI reference page)."""
    parser = _Parser(
        prog="libc-service",
        description=(
            "Run a program with its file, socket and name-lookup calls decided by a Python policy. "
            "The program's exit status is passed through (128+N when killed by signal N)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeat for debug)")
    parser.add_argument("--version", action=_Version, help="show the program's version number and exit")
    # Also accepted after the command (`libc-service run -v ...`); SUPPRESS keeps
    # a subcommand from resetting a count given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (repeat for debug)"
    )
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[verbose],
        help="run a program under a policy",
        description="Run CMD with every arbitrated call decided by POLICY's router.",
    )
    run.add_argument(
        "--sandbox",
        action="store_true",
        help="confine the program with Landlock (and no network), using the policy's `sandbox` or a minimal one",
    )
    run.add_argument(
        "--seccomp",
        action="store_true",
        help="also decide the system calls the shim cannot see (static programs, raw system calls, "
        "libc's own opens) through seccomp user notifications; use with --sandbox",
    )
    _add_policy_flags(run)
    run.add_argument(
        "--refusals",
        metavar="FILE",
        help="write every refusal to FILE, one JSON object per line (with --sandbox, a summary "
        "is printed at exit either way)",
    )
    run.add_argument(
        "policy",
        nargs="?",
        metavar="POLICY",
        help="path/to/policy.py or package.module:attr defining a Router (optional with the policy flags)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    run.set_defaults(handler=_cmd_run, subparser=run)
    run.usage = (
        "libc-service run [-h] [-v] [--sandbox] [--seccomp] [--read PATH]... [--write PATH]... "
        "[--exec PATH]... [--connect HOST:PORT]... [--bind [ADDRESS:]PORT]... [--refusals FILE] "
        "[POLICY] -- CMD [ARG...]"
    )

    trace = commands.add_parser(
        "trace",
        parents=[verbose],
        help="log every call of a program, then let it proceed",
        description="Run CMD, log every arbitrated call (pid, tid, function, arguments, decision, latency) "
        "and forward each call to the program itself. The log goes to stderr unless -o FILE is "
        "given: use -o FILE to keep it apart from the program's own output.",
    )
    trace.add_argument(
        "-e",
        dest="functions",
        action="append",
        metavar="FUNCTION[,FUNCTION...]",
        help="show only these functions (repeatable; strace's `-e trace=open,stat` works too; "
        "`execve` names the lines that say which program a process runs)",
    )
    trace.add_argument("--failed", action="store_true", help="show only the calls that failed")
    trace.add_argument(
        "-c",
        dest="count",
        action="store_true",
        help="count the calls and failures per function and write the table at the end, instead of each call",
    )
    trace.add_argument("--json", action="store_true", help="write JSON lines instead of text")
    trace.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the log to FILE (default: stderr, where it mixes with the program's own messages)",
    )
    trace.add_argument(
        "--seccomp",
        action="store_true",
        help="also log the system calls the shim cannot see (seccomp user notifications)",
    )
    trace.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    trace.set_defaults(handler=_cmd_trace, subparser=trace)
    trace.usage = (
        "libc-service trace [-h] [-v] [-e FUNCTION[,FUNCTION...]] [--failed] [-c] [--seccomp] [--json] "
        "[-o FILE] -- CMD [ARG...]"
    )

    learn = commands.add_parser(
        "learn",
        parents=[verbose],
        help="run a program once and write a starting policy for it",
        description="Run CMD with every arbitrated call performed by the master and observed, then write a "
        "policy (a Sandbox with the narrowest trees the run used, and a router) that "
        "`libc-service run --sandbox` accepts. Review it before trusting it.",
    )
    learn.add_argument(
        "--seccomp",
        action="store_true",
        help="also see the system calls the shim cannot (static programs, raw system calls, libc's own opens) "
        "through seccomp user notifications",
    )
    learn.add_argument(
        "--append",
        action="store_true",
        help="add this run to the policy in FILE (-o) that learn wrote before, instead of replacing it",
    )
    learn.add_argument("-o", "--output", metavar="FILE", help="write the policy to FILE (default: stdout)")
    learn.add_argument(
        "--nameserver",
        action="append",
        metavar="ADDRESS[:PORT]",
        help="the master resolves the program's names with this nameserver (repeatable; default: "
        "/etc/hosts, then /etc/resolv.conf's), and the policy names it",
    )
    learn.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    learn.set_defaults(handler=_cmd_learn, subparser=learn)
    learn.usage = (
        "libc-service learn [-h] [-v] [--seccomp] [--append] [--nameserver ADDRESS[:PORT]] [-o FILE] -- CMD [ARG...]"
    )

    docs = commands.add_parser(
        "docs",
        parents=[verbose],
        help="write a policy's documentation",
        description="Write the documentation of POLICY, generated from its handlers, conditions and sandbox.",
    )
    docs.add_argument("--format", choices=("md", "json"), default="md", help="Markdown (default) or JSON")
    docs.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _add_policy_flags(docs)
    docs.add_argument(
        "policy", nargs="?", metavar="POLICY", help="path/to/policy.py or package.module:attr (optional with flags)"
    )
    docs.set_defaults(handler=_cmd_docs, subparser=docs)
    return parser


def _add_policy_flags(command: argparse.ArgumentParser) -> None:
    """The flags that build a policy for the common cases (``run``, and ``docs`` to show it)."""
    flags = command.add_argument_group(
        "policy flags",
        "Build a policy (a sandbox and its routes) without a Python file, or add to POLICY's. "
        "Each is repeatable; paths are made absolute.",
    )
    flags.add_argument(
        "--read", action="append", default=[], metavar="PATH", help="the program may read PATH (a tree or a file)"
    )
    flags.add_argument(
        "--write",
        action="append",
        default=[],
        metavar="PATH",
        help="the program may read, create, change and remove files beneath PATH",
    )
    flags.add_argument(
        "--exec", action="append", default=[], metavar="PATH", help="the program may read and execute beneath PATH"
    )
    flags.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="the program may connect to HOST:PORT (the master connects and passes the socket)",
    )
    flags.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="[ADDRESS:]PORT",
        help="the program may listen on PORT, at ADDRESS or any (the master binds and passes the socket)",
    )


class _Version(argparse.Action):
    """``--version``, reading the package metadata only when asked."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: str = argparse.SUPPRESS,
        help: str | None = None,
    ) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from . import __version__

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake to report in one line: a bad policy, no shim, no sandbox or seccomp here."""
    if isinstance(exc, PolicyError | ShimNotFound):
        return True
    # Raised only by modules a command imported: look them up where they were loaded.
    for module, name in (
        ("libc_service.landlock", "SandboxUnavailable"),
        ("libc_service.notify", "SeccompUnavailable"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; what follows the first ``--`` is the program's, never an option or POLICY.

    (argparse alone would take the program's name for an optional POLICY.)
    When the options before ``--`` already named the program (``run
    POLICY CMD -- ARG``), the ``--`` is one of the program's arguments.
    """
    if "--" not in argv:
        return parser.parse_args(argv)
    split = list(argv).index("--")
    args = parser.parse_args(argv[:split])
    if hasattr(args, "command"):
        command = list(args.command)
        args.command = [*command, *argv[split:]] if command else list(argv[split + 1 :])
    else:
        parser.parse_args(argv)  # no program for this command: argparse says what is wrong
    return args


def _is_directory(filename: object) -> bool:
    """Whether the program named ``filename`` is a directory (as a shell says, "Is a directory")."""
    if not isinstance(filename, str) or "/" not in filename:
        return False
    return os.path.isdir(filename)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``libc-service`` console script."""
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="libc-service: %(levelname)s: %(name)s: %(message)s")
    try:
        status: int = args.handler(args, parser)
    except (PolicyError, ShimNotFound, RuntimeError) as exc:
        if not _usage_error(exc):
            raise
        print(f"libc-service: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"libc-service: error: {exc.strerror}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        # The program cannot be executed (not executable, a directory): as a shell says it.
        reason = "Is a directory" if _is_directory(exc.filename) else exc.strerror
        print(f"libc-service: error: {reason}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_CANNOT_EXECUTE
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
