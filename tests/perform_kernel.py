"""Run one program natively, under the shim and under seccomp, every call performed.

The cases of ``test_perform_*`` compare what a program observes natively
with what it observes when a policy whose every handler is
``return perform(request)`` serves it — on the preload shim and on the
seccomp transport. The expected answer is always the native run's, on the
machine the test runs on.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from libc_service import Router, Sandbox, perform, spawn
from libc_service.seccomp.availability import seccomp_unavailable
from libc_service.protocol.requests import FUNCTIONS, Request

from shimtools import Ran, _env, run_native

__all__ = ["TRANSPORTS", "perform_everything", "run_as", "run_native"]

#: How a program is run: natively, or served by a perform-everything policy.
TRANSPORTS = ("shim", "seccomp")


def perform_everything(*, concurrent: bool = False) -> Router:
    """A router whose every handler performs the call as the slave would have."""
    router = Router(concurrent=concurrent)

    @router.on(*FUNCTIONS)
    def perform_all(request: Request) -> Any:
        """Every call, performed by the master with the slave's exact arguments."""
        return perform(request)

    return router


async def run_as(
    transport: str,
    argv: Sequence[str],
    *,
    router: Router | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    sandbox: Sandbox | None = None,
    timeout: float = 60,
) -> Ran:
    """Run ``argv`` served by ``router`` (perform everything) on ``transport``, in ``sandbox`` if given."""
    if transport == "seccomp":
        reason = seccomp_unavailable()
        if reason is not None:
            pytest.skip(reason)
    async with spawn(
        list(argv),
        router or perform_everything(),
        cwd=cwd,
        env=_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        seccomp=transport == "seccomp",
        sandbox=sandbox,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        status = await process.wait()
    status = 128 - status if status < 0 else status
    return Ran(status, out or b"", err or b"")
