"""``libc-service learn``: run a program once, and write the policy that run needed."""

from __future__ import annotations

import argparse
import sys

from libc_service.tools.cli_args import program_argv
from libc_service.tools.cli_output import write_output
from libc_service.tools.cli_program import run_program
from libc_service.tools.policy_file import PolicyError

__all__ = ["cmd_learn"]


def cmd_learn(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from libc_service.tools.learn import Learned, learning_router
    from libc_service.tools.learnt_source import LearntPolicyError, merge, read, render
    from libc_service.policy.resolver import Resolver
    from libc_service.policy.slavepath import printable

    command = program_argv(args, parser)
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
    status = run_program(command, learning_router(learned), None, args.seccomp)
    if previous is not None:
        learned = merge(previous, [learned])
    source = render(learned)
    write_output(args.output, source, source=True)
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
