"""The ``libc-service`` command: run, trace, learn and document policies.

This module reads the command line (:mod:`.cli_args`), hands it to the
command it names (:mod:`.cli_run`, :mod:`.cli_trace`, :mod:`.cli_learn`,
:mod:`.cli_docs`) and turns the mistakes a user can make into one line and
an exit status, as a shell would.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from libc_service.tools.cli_args import build_parser, parse_args
from libc_service.tools.cli_run import cmd_run
from libc_service.tools.policy_file import PolicyError
from libc_service.processes.spawn import ShimNotFound

# `run`'s modules are imported here, while the console entry point has the
# collector off (libc_service.tools.console); what a command needs beyond that
# (the other commands, the sandbox, seccomp, the tracer, the package
# metadata) is imported where it is used: `run` of a policy without
# --sandbox starts without them.

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: What a command is given: the parsed arguments, and the parser (for its usage errors).
Command = Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def _command(name: str) -> Command:
    """The function of the command ``name``; trace, learn and docs are imported only when used."""
    if name == "trace":
        from libc_service.tools.cli_trace import cmd_trace

        return cmd_trace
    if name == "learn":
        from libc_service.tools.cli_learn import cmd_learn

        return cmd_learn
    if name == "docs":
        from libc_service.tools.cli_docs import cmd_docs

        return cmd_docs
    return cmd_run


def _usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake to report in one line: a bad policy, no shim, no sandbox or seccomp here."""
    if isinstance(exc, PolicyError | ShimNotFound):
        return True
    # Raised only by modules a command imported: look them up where they were loaded.
    for module, name in (
        ("libc_service.confinement.landlock", "SandboxUnavailable"),
        ("libc_service.seccomp.availability", "SeccompUnavailable"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def _is_directory(filename: object) -> bool:
    """Whether the program named ``filename`` is a directory (as a shell says, "Is a directory")."""
    if not isinstance(filename, str) or "/" not in filename:
        return False
    return os.path.isdir(filename)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``libc-service`` console script."""
    parser = build_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="libc-service: %(levelname)s: %(name)s: %(message)s")
    try:
        status: int = _command(args.subcommand)(args, parser)
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
