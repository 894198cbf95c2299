"""A tiny authoritative nameserver on 127.0.0.1 for tests: a zone in a dict, a log of every question.

Tests of names as grants must never depend on the machine's resolv.conf
(there may be no network at all): they point the policy's resolver at this
server and read its log to prove which questions left the master.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest


@dataclass
class Nameserver:
    """Answers A and AAAA questions from ``zone``: name -> (addresses, ttl); anything else NXDOMAIN."""

    zone: dict[str, tuple[list[str], int]]
    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    #: Every question asked, as (lower-case name without the dot, type name), in order.
    log: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, name="test nameserver", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, as a policy names a nameserver."""
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def asked(self, fragment: str) -> bool:
        """Whether any question so far contained ``fragment`` (case-insensitive)."""
        return any(fragment.lower() in name for name, _ in self.log)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - a malformed question gets no answer
                continue
            self.sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text(omit_final_dot=True).lower()
            self.log.append((name, dns.rdatatype.to_text(question.rdtype)))
            if name not in self.zone:
                response.set_rcode(dns.rcode.NXDOMAIN)
                continue
            addresses, ttl = self.zone[name]
            wanted = [a for a in addresses if (":" in a) == (question.rdtype == dns.rdatatype.AAAA)]
            if wanted and question.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                response.answer.append(
                    dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, question.rdtype, wanted)
                )
        return response

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def nameserver() -> Iterator[Nameserver]:
    """An empty zone; a test fills ``nameserver.zone`` before its program asks."""
    server = Nameserver({})
    try:
        yield server
    finally:
        server.close()


def zone(entries: Mapping[str, tuple[list[str], int]]) -> dict[str, tuple[list[str], int]]:
    """Zone entries with names normalised as the server compares them."""
    return {name.lower().rstrip("."): value for name, value in entries.items()}
