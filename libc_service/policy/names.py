"""Domain names as grants: name patterns, the answers the master gave, and whose they are.

A policy that lets a program reach ``pypi.org`` must not let it reach
every address, nor let it ask the master to resolve any name it likes (a
lookup of ``SECRET.exfil.example.com`` carries the secret to whoever
serves ``exfil.example.com``). Three pieces make names a grant:

- :class:`Pattern`: ``"pypi.org"`` (that name) or ``"*.python.org"`` (any
  name below ``python.org``, not ``python.org`` itself), compared label by
  label on names checked to be plain host names — never as text, so
  ``"a.b\\.python.org"`` (one label ``b.python`` to a DNS library) is no
  name at all, and a look-alike suffix (``evilpython.org``) does not match.
- :class:`Answers`: the addresses the master returned for each name, each
  until its answer expires (the record's TTL, or the policy's bound for
  ``/etc/hosts``), bounded in memory: the oldest answers make room.
  ``conditions.resolved()`` grants a ``connect``/``bind`` to an address
  found here under a matching name.
- :class:`NameScope`: one process tree's answers, with the resolver and the
  patterns of the policy serving it. :func:`~libc_service.processes.spawn` gives each
  tree its own; :meth:`Router.serve <libc_service.Router.serve>` gives a
  session served on its own one of its own. Answers given to one tree
  never grant anything in another.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from libc_service.policy.resolver import Resolver


class Router(Protocol):
    """What a tree's scope needs of the router serving it (the router itself, seen from below)."""

    @property
    def resolver(self) -> Resolver | None: ...

    @property
    def max_answers(self) -> int: ...

    def name_patterns(self) -> Any: ...


__all__ = [
    "Answers",
    "NameScope",
    "Pattern",
    "current_scope",
    "host_labels",
    "scope_for",
    "serving",
]

#: A label of a host name: letters, digits, hyphens and underscores (SRV-style
#: names), 1 to 63 of them.
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: The longest host name in text, without the trailing dot (RFC 1035).
NAME_MAX: Final = 253

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_labels(name: str) -> tuple[str, ...] | None:
    """The labels of ``name`` in lower case, or ``None`` when it is no plain host name.

    One trailing dot is allowed (an absolute name). Anything a DNS library
    would read otherwise than as dot-separated labels (escapes, spaces,
    empty labels, bytes outside ASCII letters, digits, ``-`` and ``_``) is
    refused, so the name compared with a pattern is the name queried.
    """
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > NAME_MAX or not text.isascii():
        return None
    labels = tuple(text.lower().split("."))
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return labels


@dataclass(frozen=True)
class Pattern:
    """A name pattern: an exact name, or ``*.`` and a suffix of at least one label."""

    labels: tuple[str, ...]
    wildcard: bool

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Read ``"pypi.org"`` or ``"*.python.org"``; ``ValueError`` for anything else (the policy's mistake)."""
        if not isinstance(text, str):
            raise TypeError(f"a name pattern is a string, not {type(text).__name__}")
        wildcard = text.startswith("*.")
        labels = host_labels(text[2:] if wildcard else text)
        if labels is None:
            raise ValueError(
                f"{text!r} is not a name pattern: write a host name ('pypi.org') or '*.' and one ('*.python.org')"
            )
        return cls(labels, wildcard)

    def matches(self, labels: tuple[str, ...]) -> bool:
        """Whether a name's labels (from :func:`host_labels`) match."""
        if not self.wildcard:
            return labels == self.labels
        return len(labels) > len(self.labels) and labels[-len(self.labels) :] == self.labels

    def __str__(self) -> str:
        return ("*." if self.wildcard else "") + ".".join(self.labels)


def any_matches(patterns: Iterable[Pattern], labels: tuple[str, ...]) -> bool:
    """Whether one of ``patterns`` matches the name ``labels``."""
    return any(pattern.matches(labels) for pattern in patterns)


def plain_address(address: object) -> Address:
    """The address a grant is kept under: no IPv6 scope, an IPv4-mapped IPv6 address as IPv4.

    A program that asked for ``AI_V4MAPPED`` connects an IPv6 socket to
    ``::ffff:a.b.c.d``: the same host the master returned as ``a.b.c.d``.
    """
    parsed = ipaddress.ip_address(str(address).split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class Answers:
    """The addresses the master returned, by name, each until it expires; at most ``limit`` kept.

    Memory is bounded whatever the program asks: past ``limit`` (address,
    name) pairs the least recently given answer is forgotten (a connect to
    its address is then refused, as after expiry), and expired answers are
    dropped as they are met.
    """

    def __init__(self, limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("Answers keeps at least one answer")
        self.limit = limit
        self._clock = clock
        #: (address, name) -> when the answer expires (monotonic seconds), oldest first.
        self._expiry: OrderedDict[tuple[Address, str], float] = OrderedDict()
        #: address -> the names it was given for (the keys of ``_expiry`` by address).
        self._names: dict[Address, set[str]] = {}

    def now(self) -> float:
        """The clock answers expire by (``time.monotonic`` unless given another)."""
        return self._clock()

    def record(self, name: str, addresses: Iterable[tuple[object, float]]) -> None:
        """Keep that ``name`` resolved to each address until its time (seconds from now)."""
        now = self.now()
        for address, ttl in addresses:
            key = (plain_address(address), name)
            self._expiry.pop(key, None)
            self._expiry[key] = now + max(ttl, 0.0)
            self._names.setdefault(key[0], set()).add(name)
        while len(self._expiry) > self.limit:
            (old_address, old_name), _ = self._expiry.popitem(last=False)
            self._forget(old_address, old_name)

    def names_for(self, address: object) -> Iterator[str]:
        """The names ``address`` was returned for whose answer is still valid."""
        plain = plain_address(address)
        now = self.now()
        for name in tuple(self._names.get(plain, ())):
            if self._expiry[(plain, name)] > now:
                yield name
            else:
                del self._expiry[(plain, name)]
                self._forget(plain, name)

    def _forget(self, address: Address, name: str) -> None:
        names = self._names.get(address)
        if names is not None:
            names.discard(name)
            if not names:
                del self._names[address]

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass
class NameScope:
    """One process tree's view of names: the policy's resolver and patterns, and the answers given.

    ``patterns`` are the names the policy may have the master resolve (every
    pattern of its ``named()`` and ``resolved()`` conditions); ``None`` means
    no policy is serving (a direct :func:`~libc_service.acting.perform` call), and
    any name may be looked up.
    """

    resolver: Resolver
    patterns: tuple[Pattern, ...] | None
    answers: Answers = field(default_factory=Answers)
    #: What serves the tree besides (the DNS answerer of :mod:`libc_service.policy.dnsanswer`), by name;
    #: each value's first item has ``close()``, called when the tree ends.
    extras: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def close(self) -> None:
        """Close what was started for the tree (when its program has ended)."""
        for closeable, *_ in self.extras.values():
            closeable.close()
        self.extras.clear()

    def may_resolve(self, labels: tuple[str, ...]) -> bool:
        """Whether the policy allows the master to ask a nameserver for this name."""
        return self.patterns is None or any_matches(self.patterns, labels)


_SCOPE: Final[contextvars.ContextVar[NameScope | None]] = contextvars.ContextVar("libc_service_names", default=None)


def current_scope() -> NameScope | None:
    """The scope of the process tree being served here, if any."""
    return _SCOPE.get()


def scope_for(router: Router) -> NameScope:
    """A new scope for a process tree served by ``router``: its resolver, its name patterns, no answers."""
    from libc_service.policy.resolver import Resolver

    resolver = router.resolver if router.resolver is not None else Resolver.system()
    return NameScope(resolver, router.name_patterns(), Answers(router.max_answers))


def serving(router: Router) -> contextvars.Context:
    """A copy of the current context in which ``router``'s new tree scope is current.

    Run the tasks that serve one process tree in it (``loop.create_task(...,
    context=serving(router))``): every session, the seccomp listener and
    the reader callbacks they install then share the tree's answers.
    """
    context = contextvars.copy_context()
    context.run(_SCOPE.set, scope_for(router))
    return context


def scope_in(context: contextvars.Context) -> NameScope | None:
    """The scope current in ``context`` (as :func:`serving` made it)."""
    return context.get(_SCOPE)


def enter(scope: NameScope | None) -> contextvars.Token[NameScope | None]:
    """Make ``scope`` current in this context (for :meth:`Router.serve` of a session on its own)."""
    return _SCOPE.set(scope)


def leave(token: contextvars.Token[NameScope | None]) -> None:
    """Undo :func:`enter`."""
    _SCOPE.reset(token)
