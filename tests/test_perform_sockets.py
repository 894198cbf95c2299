"""Sockets through a perform-everything policy behave as natively.

The master binds and connects the slave's *own* socket wherever it can
(a unix socket named by a path; any socket of the master's network
namespace), so what the program did to the socket before — options, an
``epoll`` registration — stays, and ``getsockname()`` reports the slave's
exact name: ``socketserver`` and asyncio's unix servers connect to it.
An ``AF_INET6`` socket given an ``AF_INET`` address gets the kernel's
answer. Every expectation is the native run's on this machine.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from libc_service import Sandbox
from libc_service.confinement.sandbox import network_namespaces_available
from perform_kernel import TRANSPORTS, run_as, run_native
from shimtools import PYTHON, needs_shim

pytestmark = [needs_shim]

#: ``python -c PROGRAM CASE DIR``: one case, printing what it observed as JSON.
PROGRAM = textwrap.dedent(
    r"""
    import asyncio, errno, json, os, select, socket, socketserver, struct, sys, threading
    case, where = sys.argv[1], sys.argv[2]
    os.chdir(where)
    out = {}

    def errno_of(call):
        try:
            call()
            return 0
        except OSError as exc:
            return errno.errorcode.get(exc.errno, exc.errno)

    if case == "unix_names":
        for name in ("rel.sock", os.path.join(where, "abs.sock"), "./dot.sock"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(name)
            server.listen()
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(server.getsockname())
            peer, _ = server.accept()
            out[name] = [server.getsockname(), client.getpeername(), peer.getsockname(), client.getsockname()]
            client.sendall(b"ping")
            out[name].append(peer.recv(4).decode())
            uid, gid = struct.unpack("3i", peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1:]
            out[name].append([uid, gid])
            for s in (server, client, peer):
                s.close()
    elif case in ("options", "inet_options"):
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        settings = [
            (socket.SOL_SOCKET, socket.SO_SNDBUF, 23456),
            (socket.SOL_SOCKET, socket.SO_RCVBUF, 34567),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_IP, socket.IP_TOS, 0x10),
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        ]
        for level, option, value in settings:
            client.setsockopt(level, option, value)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 7))
        client.connect(server.getsockname())
        out["options"] = [client.getsockopt(level, option) for level, option, _ in settings]
        out["linger"] = list(struct.unpack("ii", client.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)))
        out["peer"] = client.getpeername() == server.getsockname()
        out["again"] = errno_of(lambda: client.connect(server.getsockname()))
        if case == "options":
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            unix.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            unix.bind("passcred.sock")
            out["passcred"] = unix.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    elif case == "epoll":
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        poller = select.epoll()
        poller.register(client.fileno(), select.EPOLLOUT)
        out["connect"] = errno_of(lambda: client.connect(server.getsockname()))
        events = poller.poll(10)
        out["events"] = [(fd == client.fileno(), bool(mask & select.EPOLLOUT)) for fd, mask in events]
        out["error"] = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        out["peer"] = client.getpeername() == server.getsockname()
    elif case == "v4_on_v6":
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            six = socket.socket(socket.AF_INET6, kind)
            v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            for call in ("connect", "bind"):
                fresh = socket.socket(socket.AF_INET6, kind)
                result = getattr(libc, call)(fresh.fileno(), v4, len(v4))
                out[f"{kind}-{call}"] = [result, errno.errorcode.get(ctypes.get_errno(), 0) if result else 0]
                fresh.close()
            six.close()
    elif case == "proc_self":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind("/proc/self/cwd/p.sock")
        out["here"] = os.path.exists("p.sock")
        server.listen()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect("p.sock")
        out["connected"] = True
    elif case == "socketserver":
        class Echo(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.readline().upper())
        with socketserver.ThreadingUnixStreamServer(os.path.join(where, "srv.sock"), Echo) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(server.server_address)
            client.sendall(b"hello\n")
            out["echo"] = client.makefile().readline()
            out["address"] = server.server_address
            server.shutdown()
    elif case == "asyncio_unix":
        async def main():
            async def handle(reader, writer):
                writer.write((await reader.readline()).upper())
                await writer.drain()
                writer.close()
            server = await asyncio.start_unix_server(handle, path=os.path.join(where, "aio.sock"))
            names = [s.getsockname() for s in server.sockets]
            reader, writer = await asyncio.open_unix_connection(names[0])
            writer.write(b"hi\n")
            line = await reader.readline()
            writer.close()
            server.close()
            await server.wait_closed()
            return names, line.decode()
        out["names"], out["line"] = asyncio.run(main())
    print(json.dumps(out, sort_keys=True))
    """
)

CASES = ("unix_names", "options", "epoll", "v4_on_v6", "socketserver", "asyncio_unix")


def _case_dir(tmp_path: Path, name: str) -> Path:
    where = tmp_path / name
    where.mkdir()
    return where


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", CASES)
async def test_a_socket_program_sees_what_it_sees_natively(case: str, transport: str, tmp_path: Path) -> None:
    if case == "v4_on_v6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    native = run_native([PYTHON, "-c", PROGRAM, case, str(_case_dir(tmp_path, "native"))])
    assert native.status == 0, native.err
    where = _case_dir(tmp_path, "served")
    served = await run_as(transport, [PYTHON, "-c", PROGRAM, case, str(where)])
    assert served.status == 0, served.err
    expected = json.loads(native.out.replace(str(tmp_path / "native"), str(where)))
    assert json.loads(served.out) == expected


@pytest.mark.slow
async def test_a_socket_replaced_from_a_sandboxs_own_network_keeps_its_options(tmp_path: Path) -> None:
    """In its own network namespace the slave's socket cannot reach the master's: a socket
    made in the master's namespace replaces it, with the options the program set.

    Only the TCP part of the ``options`` case runs here: a sandbox without a
    network refuses unix datagram sockets (``EACCES``, docs/security.md, "The
    host's named unix sockets"), so the ``SO_PASSCRED`` datagram socket is
    compared on the plain transports only."""
    missing = Sandbox.available() or network_namespaces_available()
    if missing is not None:
        pytest.skip(f"no sandbox with its own network here: {missing}")
    native = run_native([PYTHON, "-c", PROGRAM, "inet_options", str(_case_dir(tmp_path, "native"))])
    assert native.status == 0, native.err
    where = _case_dir(tmp_path, "served")
    served = await run_as(
        "shim",
        [PYTHON, "-c", PROGRAM, "inet_options", str(where)],
        sandbox=Sandbox(allow_read=[sys.base_prefix], network=False),
    )
    assert served.status == 0, served.err
    assert json.loads(served.out) == json.loads(native.out)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_bind_through_proc_self_makes_the_socket_where_the_slave_is(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/proc/self/cwd`` is the slave's directory, never the master's, for the exact-name bind too."""
    masters = _case_dir(tmp_path, "master")
    monkeypatch.chdir(masters)
    where = _case_dir(tmp_path, "served")
    served = await run_as(transport, [PYTHON, "-c", PROGRAM, "proc_self", str(where)])
    assert served.status == 0, served.err
    native = run_native([PYTHON, "-c", PROGRAM, "proc_self", str(_case_dir(tmp_path, "native"))])
    assert json.loads(served.out) == json.loads(native.out) == {"here": True, "connected": True}
    assert list(masters.iterdir()) == []
