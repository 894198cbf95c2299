"""Under the sandbox (no /proc) a request still carries the umask the program inherited."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, Router, Sandbox, spawn
from libc_service.protocol.requests import MkdirRequest
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

pytestmark = [
    needs_shim,
    pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock"),
    pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here"),
]


async def test_an_inherited_umask_arrives_although_proc_is_not_readable(tmp_path: Path) -> None:
    seen: list[Any] = []
    router = Router(default=FORWARD)

    @router.on("mkdir")
    def record(req: MkdirRequest) -> object:
        """Note the umask, then let the slave try (the sandbox refuses)."""
        seen.append(req.umask)
        return FORWARD

    # umask is a shell builtin; the exec'd mkdir inherits 077 and reads it in its constructor.
    async with spawn(
        ["sh", "-c", f"umask 077; exec mkdir {tmp_path}/d"],
        router,
        sandbox=Sandbox(allow_exec=["/usr/bin", "/bin"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        await asyncio.wait_for(process.wait(), 30)
    assert seen == [0o077]
