"""``libc-service run``: a program under a policy, with its refusals reported."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from libc_service.tools.cli_args import program_argv
from libc_service.tools.cli_policy import command_policy, flags_given
from libc_service.tools.cli_program import run_program
from libc_service.tools.policy_file import PolicyError

if TYPE_CHECKING:
    from libc_service.tools.refusals import RefusalReport
    from libc_service.confinement.sandbox import Sandbox

# The sandbox (Landlock, ELF reading), seccomp and the refusal report are
# imported where a run uses them: `run` of a policy without --sandbox starts
# without them.

__all__ = ["cmd_run"]


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
    from libc_service.confinement.linkage import static_note

    note = static_note(command)
    if note is None:
        return False
    from libc_service.seccomp.availability import seccomp_unavailable

    reason = seccomp_unavailable()
    if reason is not None:
        raise PolicyError(f"{note}, and the seccomp transport (--seccomp) that would is not available here: {reason}")
    print(f"libc-service: {note}; using the seccomp transport (as --seccomp does)", file=sys.stderr)
    return True


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = program_argv(args, parser)
    if flags_given(args) and not args.sandbox:
        parser_for_run: argparse.ArgumentParser = getattr(args, "subparser", parser)
        parser_for_run.error("--read, --write, --exec, --connect and --bind build a sandbox: add --sandbox")
    policy = command_policy(args)
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
        from libc_service.tools.refusals import RefusalReport

        report = RefusalReport(record=record)
        policy.router.observe(report)
    if args.sandbox:
        from libc_service.confinement.sandbox import Sandbox

        sandbox = policy.sandbox if policy.sandbox is not None else Sandbox()
        assert report is not None
        report.metadata_refused = not sandbox.metadata
        report.watch_landlock()  # Landlock's own refusals, from the kernel's audit log
    status = 1  # the program did not run to its end
    try:
        # With the report observing, the shim reports what the calls it forwarded returned.
        status = run_program(command, policy.router, sandbox, seccomp, reports=report is not None)
        return status
    finally:
        try:
            for line in report.lines(failed=status != 0, status=status, program=command[0]) if report else ():
                print(f"libc-service: {line}", file=sys.stderr)
        finally:
            if record is not None:
                record.close()
