"""``libc-service run --connect HOST:PORT``: names and addresses on the command line become grants."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libc_service import FORWARD, Router
from libc_service.tools.flagpolicy import add_connect_rules
from libc_service.tools.docs import render_policy
from libc_service.tools.policy_file import LoadedPolicy

from nameserver import Nameserver, nameserver  # noqa: F401 - nameserver is a fixture
from shimtools import PYTHON, needs_shim

pytestmark = [needs_shim]

POLICY = """
import errno
from libc_service import FORWARD, Errno, Resolver, Router


def everything_else(request):
    \"\"\"Connects nothing granted are refused; the rest the program does itself.\"\"\"
    if request.function in ("connect_inet", "connect_inet6"):
        raise Errno(errno.ECONNREFUSED)
    return FORWARD


router = Router(default=everything_else, resolver=Resolver([{nameserver!r}], hosts=None))
"""

#: Looks up argv[2], then connects to each further argument (an address) on port argv[1].
PROGRAM = """
import json, socket, sys
port, out = int(sys.argv[1]), []
try:
    out.append(sorted({i[4][0] for i in socket.getaddrinfo(sys.argv[2], port, type=socket.SOCK_STREAM)}))
except socket.gaierror as exc:
    out.append(exc.errno)
for address in sys.argv[3:]:
    s = socket.socket()
    try:
        s.connect((address, port))
        out.append(s.recv(10).decode())
    except OSError as exc:
        out.append(exc.errno)
print(json.dumps(out))
"""


@pytest.fixture
async def greeter() -> AsyncIterator[int]:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "0.0.0.0", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def run(policy: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libc_service",
        "run",
        *args,
        env=dict(os.environ, LC_ALL="C"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return await process.wait(), out.decode(), err.decode()


async def test_connect_by_name_grants_the_names_addresses_and_nothing_else(
    tmp_path: Path, nameserver: Nameserver, greeter: int
) -> None:
    nameserver.zone["index.pkg.test"] = (["127.0.0.1"], 300)
    nameserver.zone["secret.exfil.test"] = (["127.0.0.1"], 300)
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY.format(nameserver=nameserver.address))
    port = str(greeter)
    flags = [
        "--sandbox",
        *("--read", sys.base_prefix, "--read", sys.prefix),  # the interpreter's own files
        "--connect",
        f"*.pkg.test:{port}",
        "--connect",
        "127.0.0.3:*",
        str(policy),
        "--",
        PYTHON,
        "-c",
        PROGRAM,
    ]
    status, out, err = await run(policy, *flags, port, "index.pkg.test", "127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert status == 0, err
    assert json.loads(out) == [["127.0.0.1"], "hello", errno.ECONNREFUSED, "hello"]
    status, out, err = await run(policy, *flags, port, "secret.exfil.test", "127.0.0.1")
    assert status == 0, err
    # Not a name the flags allow: the policy forwards the look-up, and the sandboxed program has no network.
    looked_up, connected = json.loads(out)
    assert looked_up in (socket.EAI_NONAME, socket.EAI_AGAIN) and connected == errno.ECONNREFUSED
    assert not nameserver.asked("exfil")


@pytest.mark.parametrize(
    "value", ["pypi.org", "pypi.org:http", ":443", "a..b:443", "*.:443", "[::1:53", "10.0.0.0/33:1", "x:70000"]
)
async def test_a_connect_flag_that_is_not_host_port_is_a_usage_error(tmp_path: Path, value: str) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text("from libc_service import Router\nrouter = Router()\n")
    status, _, err = await run(policy, "--sandbox", "--connect", value, str(policy), "--", "true")
    assert status == 2
    assert "--connect" in err or "name pattern" in err


def test_the_documentation_says_what_the_flags_grant() -> None:
    router = Router(default=FORWARD)
    add_connect_rules(router, ["*.python.org:443", "pypi.org:443", "[::1]:53", "10.0.0.0/8:*"])
    page = render_policy(LoadedPolicy("flags", types.ModuleType("flags"), router, None), fmt="md")
    assert "`*.python.org`, `pypi.org` as resolved by the master (while the answer is valid), on port 443" in page
    assert "`[::1]:53`" in page and "`10.0.0.0/8:*`" in page
    assert "the name looked up is one of `*.python.org`, `pypi.org`" in page
