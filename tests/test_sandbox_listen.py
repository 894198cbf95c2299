"""Without a network, what Landlock's TCP rules leave open stays shut: a listener, a UDP datagram.

Landlock (up to ABI 7) refuses TCP ``bind`` and ``connect``, but not
``listen`` on an unbound socket, which binds it to an ephemeral port on
every address, nor UDP. The slave's own network namespace covers both;
each test runs the same Python program natively first (the host reaches it,
or receives its datagram), then sandboxed (it does not).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap

import pytest
from shimtools import needs_shim

from libc_service import FORWARD, Router, Sandbox, spawn
from libc_service.confinement.sandbox import network_namespaces_available

_MISSING = Sandbox.available() or network_namespaces_available()
pytestmark = [
    pytest.mark.slow,
    needs_shim,
    pytest.mark.skipif(_MISSING is not None, reason=f"no sandbox here: {_MISSING}"),
]
SANDBOX = Sandbox(allow_read=[sys.prefix, sys.base_prefix])

LISTENER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.listen()  # no bind: the kernel picks a port, on every address
    print(s.getsockname()[1], flush=True)
    s.settimeout(10)
    try:
        s.accept()
        print("accepted", flush=True)
    except OSError:
        print("none", flush=True)
    """
)


def _host_connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


async def _listen_and_try(sandbox: Sandbox | None) -> tuple[bool, str]:
    """Whether the host reached the slave's listener, and what the slave saw."""
    async with spawn(
        [sys.executable, "-S", "-c", LISTENER],
        Router(default=FORWARD),
        sandbox=sandbox,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.strip().isdigit(), (line, await process.communicate())
        reached = await asyncio.to_thread(_host_connects, int(line))
        if not reached:
            process.kill()
        rest, _ = await process.communicate()
    return reached, rest.decode()


async def test_a_listener_the_slave_binds_implicitly_is_not_reachable_from_the_host() -> None:
    native_reached, native_seen = await _listen_and_try(None)
    assert native_reached and native_seen == "accepted\n"  # what the host can do without the sandbox
    reached, _ = await _listen_and_try(SANDBOX)
    assert not reached


async def test_a_udp_datagram_to_a_host_port_does_not_arrive() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    port = receiver.getsockname()[1]
    sender = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n"
        f"    s.sendto(b'out', ('127.0.0.1', {port}))\n"
        "    print('sent')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )

    async def send(sandbox: Sandbox | None) -> bytes | None:
        async with spawn(
            [sys.executable, "-S", "-c", sender],
            Router(default=FORWARD),
            sandbox=sandbox,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            await process.communicate()
        try:
            return (await asyncio.to_thread(receiver.recvfrom, 16))[0]
        except TimeoutError:
            return None

    try:
        assert await send(None) == b"out"  # natively the datagram arrives
        assert await send(SANDBOX) is None
    finally:
        receiver.close()
