"""Network allowlist: the program may connect only to listed address/port pairs.

A `connect` to a listed endpoint is made by the master, on a socket of its
own of the same family and type, which then replaces the program's socket
(same descriptor number): so it works even when the program is sandboxed
without a network. Any other `connect` fails with `ECONNREFUSED`, listening
(`bind`) with `EACCES`, and unix sockets (`connect`/`bind`) with `EACCES`.
Names are resolved by the master. Filesystem calls are forwarded: the
program does them itself (under `--sandbox`, only in the system directories
the sandbox lists).

The allowlist is `$LIBC_SERVICE_ALLOW`: endpoints separated by spaces or
commas, each `address:port`, `[ipv6]:port`, or `network/len:*` for any port.
It defaults to `127.0.0.1:8080`.

Run it: `python3 examples/net_allowlist.py serve -- CMD` starts a test web
server on 127.0.0.1:8080, runs CMD, stops the server and exits with CMD's
status (without `-- CMD` it serves until interrupted; `--port` picks
another port). The second command is refused: 8081 is not on the list.

    python3 examples/net_allowlist.py serve -- libc-service run --sandbox examples/net_allowlist.py -- curl -sS http://127.0.0.1:8080/
    python3 examples/net_allowlist.py serve -- libc-service run --sandbox examples/net_allowlist.py -- sh -c 'curl -sS http://127.0.0.1:8081/ || echo "8081 is not on the list"'
    LIBC_SERVICE_ALLOW='127.0.0.1:8080 [::1]:8080' libc-service docs examples/net_allowlist.py

Limits: socket options the program set before `connect` (and a `bind` before
it) are not carried over to the master's socket; a non-blocking `connect`
completes before it returns instead of giving `EINPROGRESS`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
from collections.abc import Sequence

from libc_service import FORWARD, AddrInfo, Errno, Router, Sandbox, WithFds
from libc_service.conditions import to
from libc_service.replies import GaiError
from libc_service.requests import (
    BindInet6Request,
    BindInetRequest,
    BindUnixRequest,
    ConnectInet6Request,
    ConnectInetRequest,
    ConnectUnixRequest,
    GetaddrinfoRequest,
)

#: The endpoints a program may connect to.
ALLOWED = tuple(os.environ.get("LIBC_SERVICE_ALLOW", "127.0.0.1:8080").replace(",", " ").split())

router = Router(default=FORWARD, timeout=10.0)

#: The system directories a sandboxed program may use by itself; no network.
sandbox = Sandbox(
    allow_exec=["/usr", "/bin", "/lib", "/lib64"],
    allow_read=["/etc"],
    allow_write=["/dev/null"],
    network=False,
)


@router.on("connect_inet", "connect_inet6", when=to(*ALLOWED))
async def connect_listed(request: ConnectInetRequest | ConnectInet6Request) -> WithFds:
    """A listed endpoint: the master connects a socket of its own and it replaces the program's.

    A refused or unreachable endpoint gives the program the same errno the
    master got.
    """
    probe = socket.socket(fileno=os.dup(request.socket))
    try:
        family, kind, proto = probe.family, probe.type, probe.proto
    finally:
        probe.close()
    blocking = os.get_blocking(request.socket)
    address: tuple[str, int] | tuple[str, int, int, int]
    if request.function == "connect_inet6":
        host, _, scope = str(request.address).partition("%")
        address = (host, request.port, 0, int(scope or 0))
    else:
        address = (str(request.address), request.port)
    mine = socket.socket(family, kind, proto)
    try:
        mine.setblocking(False)
        await asyncio.get_running_loop().sock_connect(mine, address)
        mine.setblocking(blocking)
    except BaseException:
        mine.close()
        raise
    return WithFds(0, [mine.detach()])


@router.on("connect_inet", "connect_inet6")
def refuse_other_connects(request: ConnectInetRequest | ConnectInet6Request) -> int:
    """Every other address or port is refused with `ECONNREFUSED`."""
    raise Errno(errno.ECONNREFUSED)


@router.on("bind_inet", "bind_inet6", "connect_unix", "bind_unix")
def refuse_listening_and_local(
    request: BindInetRequest | BindInet6Request | ConnectUnixRequest | BindUnixRequest,
) -> int:
    """No listening sockets and no unix sockets (local daemons): `EACCES`."""
    raise Errno(errno.EACCES)


_GAI_ERRORS: dict[int, GaiError] = {
    socket.EAI_AGAIN: "again",
    socket.EAI_BADFLAGS: "badflags",
    socket.EAI_FAIL: "fail",
    socket.EAI_FAMILY: "family",
    socket.EAI_MEMORY: "memory",
    socket.EAI_NONAME: "noname",
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME): "noname",
    socket.EAI_SERVICE: "service",
    socket.EAI_SOCKTYPE: "socktype",
}
_SOCKET_TYPES = {"tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP), "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP)}


@router.on("getaddrinfo")
async def resolve_in_master(request: GetaddrinfoRequest) -> list[AddrInfo] | GaiError:
    """Names are resolved by the master (a sandboxed program has no network of its own).

    Resolving a name grants nothing: only the connect is checked.
    """
    kind, proto = _SOCKET_TYPES.get(request.protocol or "", (0, 0))
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(request.node, request.service, type=kind, proto=proto)
    except socket.gaierror as exc:
        return _GAI_ERRORS.get(exc.errno or 0, "fail")
    found = dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos)
    return [AddrInfo(address, port) for address, port in found]


# ------------------------------------------------------------ the test server

#: Where `serve` listens: the allowlist's default endpoint.
TEST_HOST, TEST_PORT = "127.0.0.1", 8080


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one HTTP request with a line of text, whatever was asked."""
    try:
        async with asyncio.timeout(5):
            while (await reader.readline()).strip():  # the request line and headers, up to the blank line
                pass
        host, port = writer.get_extra_info("sockname")[:2]
        body = f"hello from the test server on {host}:{port}\n".encode()
        head = f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def serve(port: int, command: Sequence[str]) -> int:
    """Serve on 127.0.0.1:`port` while `command` runs (forever without one); `command`'s status.

    Starting the server and the program in one command means the documented
    commands need no second terminal and leave no server behind.
    """
    server = await asyncio.start_server(_answer, TEST_HOST, port)
    async with server:
        if not command:
            await server.serve_forever()
        process = await asyncio.create_subprocess_exec(*command)
        return await process.wait()


def main(args: Sequence[str] | None = None) -> int:
    """`serve [--port PORT] [-- CMD [ARG...]]`: the test server for this example."""
    args = list(sys.argv[1:] if args is None else args)
    command: list[str] = []
    if "--" in args:
        command = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    parser = argparse.ArgumentParser(prog="net_allowlist.py", description=main.__doc__)
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("--port", type=int, default=TEST_PORT, help=f"port on {TEST_HOST} (default {TEST_PORT})")
    options = parser.parse_args(args)
    try:
        return asyncio.run(serve(options.port, command))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the port is taken, or the command cannot be started
        print(f"net_allowlist.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
