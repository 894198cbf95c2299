"""The master's own resolver: ``/etc/hosts``, then DNS, asynchronously, with each answer's lifetime.

When the master resolves a name for a slave it must not block the event
loop (a slow nameserver would stall every other caller), and it must know
how long each answer holds: ``conditions.resolved()`` grants a connect to
an address only while the answer that gave it is valid. ``getaddrinfo``
does neither (it blocks, and it hides TTLs), so the master asks dnspython's
asyncio resolver, which reads the system's nameservers from
``/etc/resolv.conf`` unless the policy names its own.

Names are looked up as given, absolute: no search list is applied, so the
name a pattern allowed is the only name a nameserver ever sees. A name in
``/etc/hosts`` is answered from there (as ``files dns`` in
``nsswitch.conf``), valid for ``hosts_ttl`` seconds, and never sent to a
nameserver. Errors come back as the ``socket.gaierror`` that
``getaddrinfo`` would raise: ``EAI_NONAME`` for a name that does not exist
or has no address, ``EAI_AGAIN`` when no nameserver answered.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio

    import dns.asyncresolver
else:
    # A policy importing perform (which imports this module) must not pay for asyncio
    # in a run whose every call the shim decides (the master never starts there).
    asyncio = on_first_use("asyncio", globals())

__all__ = ["Resolver"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: One answer: an address and how many seconds from now it stays valid.
Found = tuple[Address, float]

_NONAME: Final = socket.EAI_NONAME
_AGAIN: Final = socket.EAI_AGAIN
_FAIL: Final = socket.EAI_FAIL


def _nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` as (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: write '[address]:port'")
        port = int(rest[1:]) if rest else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # a nameserver is an address: naming one would need a resolver
    if not 0 < port <= 65535:
        raise ValueError(f"nameserver {text!r}: port out of range")
    return host, port


class Resolver:
    """Resolve host names without blocking, returning each address with its lifetime.

    ``nameservers``: the servers to ask (``"192.0.2.53"``, ``"127.0.0.1:5353"``,
    ``"[::1]:53"``); ``None`` reads ``/etc/resolv.conf`` on first use.
    ``hosts``: the hosts file consulted first (``None``: none).
    ``hosts_ttl``: how long an answer from the hosts file holds.
    ``min_ttl``/``max_ttl`` bound a record's TTL: a TTL of 0 would expire
    before the program's ``connect`` arrives. ``timeout``: seconds for a
    whole lookup.
    """

    _system: ClassVar[Resolver | None] = None

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        hosts: str | os.PathLike[str] | None = "/etc/hosts",
        hosts_ttl: float = 60.0,
        min_ttl: float = 5.0,
        max_ttl: float = 86400.0,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(nameservers, str):
            raise TypeError("nameservers is a list of addresses, not one string")
        self.nameservers = None if nameservers is None else tuple(_nameserver(text) for text in nameservers)
        self.hosts = None if hosts is None else os.fspath(hosts)
        if min(hosts_ttl, min_ttl, max_ttl) < 0 or min_ttl > max_ttl or timeout <= 0:
            raise ValueError("TTL bounds are seconds, min_ttl <= max_ttl, and the timeout is positive")
        self.hosts_ttl = hosts_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        #: The hosts file as last read: (mtime_ns, size, inode) and name -> addresses.
        self._hosts_seen: tuple[int, int, int] | None = None
        self._hosts_table: dict[str, list[Address]] = {}

    @classmethod
    def system(cls) -> Resolver:
        """The resolver of the system's configuration (one per process, made on first use)."""
        if cls._system is None:
            cls._system = cls()
        return cls._system

    def describe(self) -> str:
        """Where answers come from, in words (for the policy's documentation)."""
        where = (
            "/etc/resolv.conf's nameservers"
            if self.nameservers is None
            else ", ".join(f"{host}:{port}" if port != 53 else host for host, port in self.nameservers)
        )
        hosts = f"{self.hosts}, then " if self.hosts else ""
        return f"{hosts}{where}"

    async def lookup(self, labels: tuple[str, ...]) -> list[Found]:
        """The addresses of the host name ``labels``, each with its seconds of validity.

        Raises ``socket.gaierror`` as ``getaddrinfo`` would.
        """
        name = ".".join(labels)
        listed = self._from_hosts(name)
        if listed:
            return [(address, self.hosts_ttl) for address in listed]
        return await self._from_dns(name)

    # ------------------------------------------------------------ hosts file

    def _from_hosts(self, name: str) -> list[Address]:
        if self.hosts is None:
            return []
        try:
            info = os.stat(self.hosts)
        except OSError:
            return []
        seen = (info.st_mtime_ns, info.st_size, info.st_ino)
        if seen != self._hosts_seen:
            try:
                with open(self.hosts, encoding="utf-8", errors="replace") as file:
                    self._hosts_table = _parse_hosts(file.read())
            except OSError:
                return []
            self._hosts_seen = seen
        return self._hosts_table.get(name, [])

    # ------------------------------------------------------------ DNS

    def _client(self) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver
        import dns.nameserver
        import dns.resolver

        if self._dns is None:
            if self.nameservers is None:
                try:
                    client = dns.asyncresolver.Resolver(configure=True)
                except dns.resolver.NoResolverConfiguration:
                    client = dns.asyncresolver.Resolver(configure=False)
            else:
                client = dns.asyncresolver.Resolver(configure=False)
                client.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
            client.cache = None
            client.search = []
            client.use_search_by_default = False
            self._dns = client
        return self._dns

    async def _from_dns(self, name: str) -> list[Found]:
        import dns.exception
        import dns.name
        import dns.resolver

        client = self._client()
        if not client.nameservers:
            raise socket.gaierror(_AGAIN, "no nameserver is configured")
        qname = dns.name.from_text(name)  # absolute: the name checked is the name asked
        try:
            async with asyncio.timeout(self.timeout):
                answers = await asyncio.gather(
                    *(self._query(client, qname, kind) for kind in ("A", "AAAA")), return_exceptions=True
                )
        except TimeoutError:
            raise socket.gaierror(_AGAIN, "the nameserver did not answer in time") from None
        found: list[Found] = []
        failure: BaseException | None = None
        for answer in answers:
            if isinstance(answer, dns.resolver.NXDOMAIN):
                raise socket.gaierror(_NONAME, "Name or service not known")
            if isinstance(answer, BaseException):
                failure = answer
                continue
            found.extend(answer)
        if found:
            return found
        if failure is None:
            raise socket.gaierror(_NONAME, "No address associated with hostname")
        if isinstance(failure, dns.resolver.LifetimeTimeout | dns.resolver.NoNameservers):
            raise socket.gaierror(_AGAIN, "Temporary failure in name resolution")
        if isinstance(failure, dns.exception.DNSException):
            raise socket.gaierror(_FAIL, "Non-recoverable failure in name resolution")
        raise failure

    async def _query(self, client: Any, qname: Any, kind: str) -> list[Found]:
        answer = await client.resolve(qname, kind, search=False, raise_on_no_answer=False, lifetime=self.timeout)
        if answer.rrset is None:
            return []
        # The chain's shortest TTL (a CNAME's included), as dnspython computes the expiration.
        ttl = answer.expiration - time.time()
        ttl = min(max(ttl, self.min_ttl), self.max_ttl)
        return [(ipaddress.ip_address(record.address), ttl) for record in answer.rrset]


def _parse_hosts(text: str) -> dict[str, list[Address]]:
    """``/etc/hosts`` as name -> addresses in file order (names in lower case, comments dropped)."""
    table: dict[str, list[Address]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        for name in fields[1:]:
            addresses = table.setdefault(name.lower().rstrip("."), [])
            if address not in addresses:
                addresses.append(address)
    return table
