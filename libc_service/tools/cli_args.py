"""The ``libc-service`` command line as data: its parser, and the program's argv taken from it.

Kept apart from what the commands do, so that the reference page
(:mod:`libc_service.tools.mkdocs_hook`) and ``--help`` build the parser without
importing any command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "parse_args", "program_argv"]


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
    run.set_defaults(subparser=run)
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
    trace.set_defaults(subparser=trace)
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
    learn.set_defaults(subparser=learn)
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
    docs.set_defaults(subparser=docs)
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
        from libc_service.tools.version import package_version

        print(f"{parser.prog} {package_version()}")
        parser.exit()


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
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


def program_argv(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        subparser: argparse.ArgumentParser = getattr(args, "subparser", parser)
        subparser.error("no program given (put it after --)")
    return command
