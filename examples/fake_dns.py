"""A private hosts table: getaddrinfo answers only the names listed here.

Every name lookup the program makes through `getaddrinfo` is answered by the
master from `HOSTS`, with every address of the name (the shim filters them by
the caller's hints: family, socket type). Any other name gets `noname`
("Name or service not known"), and nothing reaches a real resolver. All
other calls are forwarded: the program does them itself.

`$LIBC_SERVICE_HOSTS` adds or replaces entries: `name=address[,address...]`
items separated by spaces, e.g. `db.test=10.1.2.3 cache.test=10.1.2.4,fd00::4`.

Run it:

    libc-service run examples/fake_dns.py -- getent ahosts db.internal
    libc-service run examples/fake_dns.py -- python3 -c 'import socket; print(socket.getaddrinfo("api.internal", 443))'
    libc-service docs examples/fake_dns.py
"""

from __future__ import annotations

import ipaddress
import os
import socket

from libc_service import AddrInfo, FORWARD, GaiError, Router
from libc_service.conditions import named
from libc_service.requests import GetaddrinfoRequest


def _hosts() -> dict[str, tuple[str, ...]]:
    hosts = {
        "db.internal": ("10.0.0.5",),
        "api.internal": ("10.0.0.6", "fd00::6"),
        "localhost": ("127.0.0.1", "::1"),
    }
    for item in os.environ.get("LIBC_SERVICE_HOSTS", "").split():
        name, _, addresses = item.partition("=")
        hosts[name.lower().rstrip(".")] = tuple(
            str(ipaddress.ip_address(address)) for address in addresses.split(",") if address
        )
    return hosts


#: Name → addresses; the only names the program can resolve.
HOSTS = _hosts()

router = Router(default=FORWARD)


def _port(request: GetaddrinfoRequest) -> int | GaiError:
    """The service as a port number: numeric, or looked up in the master's services database."""
    if request.service is None:
        return 0
    if request.service.isdigit():
        port = int(request.service)
        return port if port <= 65535 else "service"
    try:
        return socket.getservbyname(request.service, request.protocol or "tcp")
    except OSError:
        return "service"


@router.on("getaddrinfo", when=named(*HOSTS))
def answer_from_table(request: GetaddrinfoRequest) -> list[AddrInfo] | GaiError:
    """Names in the hosts table resolve to all of their addresses, with the service's port.

    An unknown service name gives `service`.
    """
    port = _port(request)
    if isinstance(port, str):
        return port
    assert request.node is not None  # named() matched it
    return [AddrInfo(address, port) for address in HOSTS[request.node.lower().rstrip(".")]]


@router.on("getaddrinfo")
def no_other_names(request: GetaddrinfoRequest) -> GaiError:
    """Every other lookup fails with `noname`: nothing reaches a real resolver."""
    return "noname"
