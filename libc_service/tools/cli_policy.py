"""The policy a command runs under: the POLICY file's, with what the policy flags add.

:mod:`libc_service.tools.flagpolicy` is imported only by a command that gives
flags: ``run POLICY`` starts without it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from libc_service.tools.policy_file import LoadedPolicy, load_policy

if TYPE_CHECKING:
    from libc_service.tools.flagpolicy import PolicyFlags

__all__ = ["command_policy", "flags_given", "policy_flags"]


def policy_flags(args: argparse.Namespace) -> PolicyFlags:
    from libc_service.tools.flagpolicy import PolicyFlags  # imported by a run that gives flags only (see _policy)

    return PolicyFlags(
        read=tuple(args.read),
        write=tuple(args.write),
        exec=tuple(args.exec),
        connect=tuple(args.connect),
        bind=tuple(args.bind),
    )


def flags_given(args: argparse.Namespace) -> bool:
    """Whether any policy flag (``--read``, ``--write``, ...) was given."""
    return any(getattr(args, name) for name in ("read", "write", "exec", "connect", "bind"))


def command_policy(args: argparse.Namespace) -> LoadedPolicy:
    """The POLICY file's policy, with what the flags add (or the flags' alone, without a file)."""
    if args.policy is not None and not flags_given(args):
        return _load(args.policy)  # the common case: flagpolicy is not imported
    flags = policy_flags(args)
    if not flags.given:
        if args.policy is None:
            from libc_service.tools.flagpolicy import policy_from_flags

            return policy_from_flags(flags)  # forward everything: the sandbox, if any, decides
        return _load(args.policy)
    from libc_service.tools.flagpolicy import policy_from_flags

    return policy_from_flags(flags, None if args.policy is None else _load(args.policy))


def _load(spec: str) -> LoadedPolicy:
    return load_policy(spec)
