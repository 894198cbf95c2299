"""Answering a program's own DNS queries under the policy's name rules.

A program that resolves by itself (a static binary, Go's resolver) never
calls ``getaddrinfo``: it connects a UDP socket to the nameserver of its
``/etc/resolv.conf`` and sends the question itself. Under ``--seccomp`` that
``connect`` reaches the policy like any other. :func:`answer_queries`, as
the handler of such a connect, gives the program in place of its socket a
UDP socket connected to an answerer in the master — one per process tree —
that treats each question as ``perform`` treats a ``getaddrinfo``: a name
no pattern of the policy matches is ``NXDOMAIN`` and reaches no nameserver;
an allowed name is resolved by the policy's :class:`~libc_service.Resolver`
and its answers are recorded for ``resolved()``, so the program's next
``connect`` is granted as if it had asked through ``getaddrinfo``::

    @router.on("connect_inet", when=to("0.0.0.0/0:53"))
    def own_dns(request):
        return answer_queries(request)

It answers resolvers that send their question on a connected UDP socket
and read the answer from it: Go's, and glibc's own (a static binary's
``getaddrinfo``) — both tested. It refuses or leaves unanswered, as
``docs/limits.md`` says: DNS over TCP (``ECONNREFUSED``: a resolver falls
back to it only for answers too long for UDP), ``sendto`` on an unconnected
socket (musl's resolver: not arbitrated, and under ``--sandbox`` there is
no network to send it on), IPv6 sockets (``EAFNOSUPPORT``), and a resolver
that checks the answer's source address against its nameserver's (the
answerer is on 127.0.0.1). Only ``A`` and ``AAAA`` questions of class
``IN`` are looked up; another type gets an empty answer without a query.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any, Final

from libc_service.policy import names
from libc_service.protocol.outcomes import Errno, WithFds

__all__ = ["answer_queries"]

#: Questions of one tree answered at once; more are dropped (the program retries, as over a lossy network).
MAX_IN_FLIGHT: Final = 64


class _Answerer(asyncio.DatagramProtocol):
    """The master's end: one UDP socket on 127.0.0.1 answering one process tree's questions."""

    def __init__(self, scope: names.NameScope) -> None:
        self.scope = scope
        self.transport: Any = None
        self.in_flight: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            return
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _answer(self, data: bytes, addr: Any) -> None:
        import dns.exception
        import dns.message

        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return  # not a question: no answer, as a nameserver would
        response = await answer(self.scope, query)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(response.to_wire(), addr)


async def answer(scope: names.NameScope, query: Any) -> Any:
    """The response to ``query`` under ``scope``'s patterns, resolver and answers."""
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if len(query.question) != 1 or query.opcode() != 0:
        response.set_rcode(dns.rcode.FORMERR if len(query.question) != 1 else dns.rcode.NOTIMP)
        return response
    question = query.question[0]
    labels = names.host_labels(question.name.to_text(omit_final_dot=True))
    if question.rdclass != dns.rdataclass.IN or labels is None or not scope.may_resolve(labels):
        response.set_rcode(dns.rcode.NXDOMAIN)  # what perform's "noname" is; no nameserver is asked
        return response
    if question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return response  # no data of that type, and no query for it
    try:
        found = await scope.resolver.lookup(labels)
    except socket.gaierror as exc:
        response.set_rcode(dns.rcode.NXDOMAIN if exc.errno == socket.EAI_NONAME else dns.rcode.SERVFAIL)
        return response
    version = 4 if question.rdtype == dns.rdatatype.A else 6
    wanted = [(address, ttl) for address, ttl in found if address.version == version]
    scope.answers.record(".".join(labels), wanted)
    for address, ttl in wanted:
        response.answer.append(
            dns.rrset.from_text(question.name, max(int(ttl), 0), "IN", question.rdtype, str(address))
        )
    return response


async def _answerer_address(scope: names.NameScope) -> tuple[str, int]:
    """The address of ``scope``'s answerer, started on first use."""
    existing = scope.extras.get("dns answerer")
    if existing is None:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Answerer(scope), local_addr=("127.0.0.1", 0)
        )
        existing = scope.extras["dns answerer"] = (transport, protocol)
    host, port = existing[0].get_extra_info("sockname")[:2]
    return str(host), int(port)


async def answer_queries(request: Any) -> WithFds:
    """A handler for a program's ``connect`` to a nameserver: answer its questions in the master.

    The program's socket is replaced by a UDP socket of the master's,
    connected to this process tree's answerer (same descriptor number,
    blocking as the program's was). A TCP socket, an IPv6 one, or a call
    outside a served tree is refused (``ECONNREFUSED``/``EAFNOSUPPORT``/``EACCES``).
    """
    scope = names.current_scope()
    if scope is None:
        raise Errno(errno.EACCES)
    if request.function != "connect_inet":
        raise Errno(errno.EAFNOSUPPORT)
    with socket.socket(fileno=os.dup(request.socket)) as probe:
        kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if kind != socket.SOCK_DGRAM:
        raise Errno(errno.ECONNREFUSED)  # DNS over TCP is not answered
    address = await _answerer_address(scope)
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        mine.connect(address)
        mine.setblocking(os.get_blocking(request.socket))
    except BaseException:
        mine.close()
        raise
    return WithFds(0, [mine.detach()])
