"""``libc-service docs``: a policy's documentation, from its router and sandbox."""

from __future__ import annotations

import argparse

from libc_service.tools.cli_output import write_output
from libc_service.tools.cli_policy import command_policy, policy_flags

__all__ = ["cmd_docs"]


def cmd_docs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from libc_service.tools.docs import render_policy

    if args.policy is None and not policy_flags(args).given:
        parser_for_docs: argparse.ArgumentParser = getattr(args, "subparser", parser)
        parser_for_docs.error("give a POLICY, policy flags (--read PATH ...), or both")
    policy = command_policy(args)
    text = render_policy(policy, fmt=args.format)
    write_output(args.output, text)
    return 0
