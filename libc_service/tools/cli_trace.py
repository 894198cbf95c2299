"""``libc-service trace``: every call of a program logged, then let through."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from libc_service.tools.cli_args import program_argv
from libc_service.tools.cli_program import run_program
from libc_service.tools.policy_file import PolicyError

__all__ = ["cmd_trace"]


def _not_about_confinement(record: logging.LogRecord) -> bool:
    return not getattr(record, "confinement", False)


def _trace_functions(args: argparse.Namespace) -> list[str] | None:
    """The functions ``-e`` selected (strace's ``-e trace=open,stat`` spelling too), or ``None`` for all.

    An unknown name is a usage error that lists the names there are.
    """
    from libc_service.tools.tracing import TRACED_FUNCTIONS

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


def cmd_trace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = program_argv(args, parser)
    functions = _trace_functions(args)
    output: TextIO = sys.stderr
    if args.output is not None:
        try:
            output = open(args.output, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise PolicyError(f"cannot write the trace to {args.output}: {exc.strerror}") from exc
    # trace confines nothing: a warning that calls are not confined does not concern it.
    logging.getLogger("libc_service.processes.spawn").addFilter(_not_about_confinement)
    try:
        from libc_service.tools.tracing import Tracer, trace_router

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
            return run_program(
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
