"""getaddrinfo through the master answers as the native one does, hint set by hint set.

A real shimmed Python calls ``socket.getaddrinfo`` for a table of numeric
nodes, services and hints; the master answers with ``perform``; every
answer (family, socket type, protocol, canonical name, address, order) or
error code must equal what ``socket.getaddrinfo`` gives in the test itself.
Numeric nodes and services only: they need no nameserver, so the native
answer is the same on every machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from typing import Any

import pytest

from libc_service import FORWARD, Router, perform, spawn
from libc_service.seccomp.availability import seccomp_unavailable
from libc_service.protocol.requests import GetaddrinfoRequest

from shimtools import PYTHON, needs_shim

S = socket
#: (node, service, family, type, proto, flags)
HINTS: list[tuple[str | None, str | None, int, int, int, int]] = [
    ("127.0.0.1", "80", 0, 0, 0, 0),
    ("127.0.0.1", None, 0, 0, 0, 0),
    ("127.0.0.1", "0", 0, 0, 0, 0),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, 0, 0),
    ("127.0.0.1", "80", 0, S.SOCK_DGRAM, 0, 0),
    ("127.0.0.1", "80", 0, S.SOCK_RAW, 0, 0),
    ("127.0.0.1", None, 0, S.SOCK_RAW, 0, 0),
    ("127.0.0.1", "80", 0, S.SOCK_RAW, S.IPPROTO_TCP, 0),
    ("127.0.0.1", "80", 0, 0, S.IPPROTO_TCP, 0),
    ("127.0.0.1", "80", 0, 0, S.IPPROTO_UDP, 0),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, S.IPPROTO_UDP, 0),
    ("127.0.0.1", "80", S.AF_INET, 0, 0, 0),
    ("127.0.0.1", "80", S.AF_INET6, 0, 0, 0),
    ("127.0.0.1", "80", S.AF_INET6, S.SOCK_STREAM, 0, S.AI_V4MAPPED),
    ("127.0.0.1", "80", S.AF_INET6, 0, 0, S.AI_V4MAPPED | S.AI_ALL),
    ("127.0.0.1", "80", 0, 0, 0, S.AI_CANONNAME),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, 0, S.AI_NUMERICHOST),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, 0, S.AI_NUMERICSERV),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, 0, S.AI_ADDRCONFIG),
    ("127.0.0.1", "80", 0, S.SOCK_STREAM, 0, S.AI_PASSIVE),
    ("127.0.0.1", "x80", 0, S.SOCK_STREAM, 0, S.AI_NUMERICSERV),
    ("127.1", "80", 0, S.SOCK_STREAM, 0, 0),
    ("::1", "80", 0, 0, 0, 0),
    ("::1", "80", S.AF_INET, S.SOCK_STREAM, 0, 0),
    ("::1", None, 0, S.SOCK_RAW, 0, S.AI_CANONNAME),
    ("::ffff:127.0.0.1", "443", 0, S.SOCK_STREAM, 0, 0),
    (None, "80", 0, S.SOCK_STREAM, 0, 0),
    (None, "80", 0, 0, 0, 0),
    (None, "80", S.AF_INET, S.SOCK_DGRAM, 0, 0),
    (None, "80", 0, S.SOCK_STREAM, 0, S.AI_PASSIVE),
    (None, "80", S.AF_INET6, S.SOCK_STREAM, 0, S.AI_V4MAPPED),
]

_PROGRAM = """
import json, socket, sys
out = []
for node, service, family, kind, proto, flags in json.loads(sys.argv[1]):
    try:
        out.append([list(entry) for entry in socket.getaddrinfo(node, service, family, kind, proto, flags)])
    except socket.gaierror as exc:
        out.append(exc.errno)
print(json.dumps(out))
"""


def _native(node: str | None, service: str | None, family: int, kind: int, proto: int, flags: int) -> Any:
    try:
        found = socket.getaddrinfo(node, service, family, kind, proto, flags)
    except socket.gaierror as exc:
        return exc.errno
    return json.loads(json.dumps([list(entry) for entry in found]))


_SECCOMP = seccomp_unavailable()
pytestmark = [needs_shim]


@pytest.mark.parametrize(
    "seccomp",
    [
        pytest.param(False, id="shim"),
        pytest.param(True, id="seccomp", marks=pytest.mark.skipif(_SECCOMP is not None, reason=_SECCOMP or "")),
    ],
)
async def test_numeric_getaddrinfo_through_the_master_is_the_native_answer(seccomp: bool) -> None:
    router = Router(default=FORWARD)
    asked: list[GetaddrinfoRequest] = []

    @router.on("getaddrinfo")
    def resolve(request: GetaddrinfoRequest) -> Any:
        asked.append(request)
        return perform(request)

    async with spawn(
        [PYTHON, "-c", _PROGRAM, json.dumps(HINTS)],
        router,
        seccomp=seccomp,
        env={"LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert await process.wait() == 0, err.decode()
    answers = json.loads(out)
    differ = [
        (hints, answer, _native(*hints))
        for hints, answer in zip(HINTS, answers, strict=True)
        if answer != _native(*hints)
    ]
    for item in differ:
        print(*item, sep="\n  ")
    assert differ == []
    assert asked, "the master answered none of them"
