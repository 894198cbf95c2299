"""Declarative route conditions: ``@router.on("open", when=under("/srv"))``.

A condition selects which requests a route sees, and says so in words for
the generated policy documentation. Conditions are *routing*, not the
security check: they look at the request's strings (made absolute against
the slave's directory descriptor, ``..`` folded lexically). A handler that
grants access still opens the object safely (``libc_service.acting.safepath``), so
a symlink inside an allowed tree cannot lead outside it.

Combine with ``&``, ``|`` and ``~``.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from libc_service.policy.names import Pattern, any_matches, current_scope, host_labels
from libc_service.policy.slavepath import descriptor_name, slave_path
from libc_service.protocol.catalogue import (
    INET6_FUNCTIONS,
    INET_FUNCTIONS,
    METADATA_FD_FUNCTIONS,
    MUTATING_FUNCTIONS,
    NAMED_FUNCTIONS,
    OPEN_FUNCTIONS,
)
from libc_service.protocol.catalogue import FUNCTIONS, OPENAT_FLAGS
from libc_service.protocol import requests  # loaded on first use (libc_service/__init__.py)


__all__ = [
    "Condition",
    "flags",
    "named",
    "resolved",
    "to",
    "under",
    "writing",
]

_WRITE_FLAGS: Final = frozenset({"write_only", "read_write", "append", "create", "truncate", "temporary"})
_INET_FUNCTIONS: Final = INET_FUNCTIONS | INET6_FUNCTIONS


class Condition(ABC):
    """A predicate over requests that can describe itself in words."""

    #: Functions whose requests the condition understands (``None``: all).
    functions: frozenset[str] | None = None

    @abstractmethod
    def __call__(self, request: object) -> bool:
        """Whether ``request`` matches."""

    @abstractmethod
    def describe(self) -> str:
        """The condition in words, for policy documentation."""

    def __and__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            return NotImplemented
        return AllOf((self, other))

    def __or__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            return NotImplemented
        return AnyOf((self, other))

    def __invert__(self) -> Condition:
        return Negation(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


def _common(parts: Iterable[Condition]) -> frozenset[str] | None:
    known = [part.functions for part in parts if part.functions is not None]
    return frozenset.intersection(*known) if known else None


@dataclass(frozen=True, repr=False)
class AllOf(Condition):
    parts: tuple[Condition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", _common(self.parts))

    def __call__(self, request: object) -> bool:
        return all(part(request) for part in self.parts)

    def describe(self) -> str:
        return " and ".join(_group(part) for part in self.parts)


@dataclass(frozen=True, repr=False)
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    def __post_init__(self) -> None:
        # Each alternative must be understood on its own for every function.
        object.__setattr__(self, "functions", _common(self.parts))

    def __call__(self, request: object) -> bool:
        return any(part(request) for part in self.parts)

    def describe(self) -> str:
        return " or ".join(_group(part) for part in self.parts)


@dataclass(frozen=True, repr=False)
class Negation(Condition):
    part: Condition

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", self.part.functions)

    def __call__(self, request: object) -> bool:
        return not self.part(request)

    def describe(self) -> str:
        return f"not ({self.part.describe()})"


def _group(condition: Condition) -> str:
    text = condition.describe()
    return f"({text})" if isinstance(condition, AllOf | AnyOf) else text


@dataclass(frozen=True, repr=False)
class UnderCondition(Condition):
    roots: tuple[str, ...]

    functions = NAMED_FUNCTIONS | METADATA_FD_FUNCTIONS

    def __post_init__(self) -> None:
        # Many roots (a learnt policy's single files) are looked up by the path's ancestors, not scanned.
        object.__setattr__(self, "_root_set", frozenset(self.roots) if len(self.roots) > _SCAN_ROOTS else None)

    def __call__(self, request: object) -> bool:
        if isinstance(request, requests.RenameRequest):
            return self._inside(request.path1, request.dirfd1) and self._inside(request.path2, request.dirfd2)
        if getattr(request, "function", None) in METADATA_FD_FUNCTIONS:
            # fchmod and friends name no path: the file their descriptor is open on.
            return self._contains(descriptor_name(getattr(request, "fd")))
        return self._inside(getattr(request, "path"), getattr(request, "dirfd", None))

    @staticmethod
    def first_path(request: object) -> str | None:
        """The absolute path this condition tests first (rename's ``path1``); None: no path names it."""
        if isinstance(request, requests.RenameRequest):
            return slave_path(request.path1, request.dirfd1)
        return slave_path(getattr(request, "path"), getattr(request, "dirfd", None))

    def _inside(self, path: PurePosixPath, dirfd: int | None) -> bool:
        return self._contains(slave_path(path, dirfd))

    def _contains(self, absolute: str | None) -> bool:
        if absolute is None:
            return False
        root_set: frozenset[str] | None = getattr(self, "_root_set")
        if root_set is not None:
            return not root_set.isdisjoint(ancestors(absolute))
        return any(absolute == root or absolute.startswith(root.rstrip("/") + "/") for root in self.roots)

    def describe(self) -> str:
        names = ", ".join(f"`{root}`" for root in self.roots)
        return f"the path is {names} or beneath it" if len(self.roots) == 1 else f"the path is beneath one of {names}"


#: Up to this many roots, ``under`` compares the path with each; past it, looks its ancestors up.
_SCAN_ROOTS: Final = 8


def ancestors(absolute: str) -> list[str]:
    """Every root ``absolute`` is, or lies beneath, as :func:`under` compares them.

    The path itself, each prefix that ends just before a ``/``, and ``/``
    for an absolute path: ``"/a/b"`` gives ``["/a/b", "/a", "/"]``. A root
    holds a path exactly when it is one of these, so a set of roots is
    matched with one lookup per component instead of one comparison per root.
    """
    found = [absolute]
    cut = absolute.find("/", 1)
    while cut != -1:
        found.append(absolute[:cut])
        cut = absolute.find("/", cut + 1)
    if absolute.startswith("/"):
        found.append("/")
    return found


def under(*roots: str | os.PathLike[str]) -> Condition:
    """The request's path (both paths, for rename) lies in one of ``roots``.

    Relative paths are resolved against the slave's directory descriptor.
    For ``fchmod``, ``fchown`` and ``futimens``, which name no path, it is
    the file their descriptor is open on (as the master's copy of it names
    it; a removed file matches no root).
    """
    if not roots:
        raise ValueError("under() needs at least one root")
    normal = []
    for root in roots:
        text = os.fspath(root)
        if not text.startswith("/"):
            raise ValueError(f"under() takes absolute roots, not {text!r}")
        normal.append("/" + posixpath.normpath(text).lstrip("/"))
    return UnderCondition(tuple(normal))


@dataclass(frozen=True, repr=False)
class WritingCondition(Condition):
    functions = OPEN_FUNCTIONS | MUTATING_FUNCTIONS

    def __call__(self, request: object) -> bool:
        if isinstance(request, requests.OpenRequest | requests.OpenatRequest):
            return not _WRITE_FLAGS.isdisjoint(request.flags)
        return True

    def describe(self) -> str:
        return "the call writes (opens for writing, creates, truncates, or changes a directory)"


def writing() -> Condition:
    """The call would modify the filesystem.

    True for ``open``/``openat`` with any of ``write_only``, ``read_write``,
    ``append``, ``create``, ``truncate``, ``temporary``, and always for
    ``unlink``, ``rmdir``, ``mkdir``, ``rename`` and the metadata changes
    (``chmod``, ``chown``, ``utimens`` and their descriptor forms).
    """
    return WritingCondition()


@dataclass(frozen=True, repr=False)
class FlagsCondition(Condition):
    names: frozenset[str]

    functions = OPEN_FUNCTIONS

    def __call__(self, request: object) -> bool:
        return not self.names.isdisjoint(getattr(request, "flags"))

    def describe(self) -> str:
        return "the open flags include " + " or ".join(f"`{name}`" for name in sorted(self.names))


def flags(*names: str) -> Condition:
    """``open``/``openat`` with any of the named flags."""
    unknown = set(names) - set(OPENAT_FLAGS)
    if unknown or not names:
        raise ValueError(f"unknown open flags {sorted(unknown)}; valid: {', '.join(OPENAT_FLAGS)}")
    return FlagsCondition(frozenset(names))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, repr=False)
class ToCondition(Condition):
    endpoints: tuple[tuple[Network, int | None], ...]

    functions = _INET_FUNCTIONS

    def __call__(self, request: object) -> bool:
        address = getattr(request, "address")
        port = getattr(request, "port")
        bare = ipaddress.ip_address(str(address).split("%")[0])
        return any(bare in network and (want is None or want == port) for network, want in self.endpoints)

    def describe(self) -> str:
        shown = []
        for network, port in self.endpoints:
            host = str(network.network_address) if network.num_addresses == 1 else str(network)
            host = f"[{host}]" if network.version == 6 else host
            shown.append(f"`{host}:{port if port is not None else '*'}`")
        return "the address is one of " + ", ".join(shown)


def to(*endpoints: str | tuple[str, int | None]) -> Condition:
    """``connect``/``bind`` to one of ``endpoints``.

    An endpoint is ``(address_or_network, port)`` with ``port=None`` for any
    port, or a string ``"127.0.0.1:8080"``, ``"[::1]:53"``, ``"10.0.0.0/8:*"``.
    """
    parsed: list[tuple[Network, int | None]] = []
    for endpoint in endpoints:
        if isinstance(endpoint, str):
            host, _, port_text = endpoint.rpartition(":")
            if not host:
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
            if ":" in host and not (host.startswith("[") and host.endswith("]")):
                raise ValueError(f"endpoint {endpoint!r}: write an IPv6 address in brackets, as in '[::1]:53'")
            host = host.strip("[]")
            port: int | None = None if port_text == "*" else int(port_text)
        else:
            host, port = endpoint
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        parsed.append((ipaddress.ip_network(host, strict=False), port))
    if not parsed:
        raise ValueError("to() needs at least one endpoint")
    return ToCondition(tuple(parsed))


@dataclass(frozen=True, repr=False)
class NamedCondition(Condition):
    patterns: tuple[Pattern, ...]

    functions = frozenset({"getaddrinfo"})

    def __call__(self, request: object) -> bool:
        assert isinstance(request, requests.GetaddrinfoRequest)
        if request.node is None:
            return False
        labels = host_labels(request.node)
        return labels is not None and any_matches(self.patterns, labels)

    def describe(self) -> str:
        return "the name looked up is one of " + ", ".join(f"`{text}`" for text in sorted(map(str, self.patterns)))


def _patterns(kind: str, texts: tuple[str, ...]) -> tuple[Pattern, ...]:
    if not texts:
        raise ValueError(f"{kind}() needs at least one name pattern")
    return tuple(dict.fromkeys(Pattern.parse(text) for text in texts))


def named(*patterns: str) -> Condition:
    """``getaddrinfo`` of a name matching one of ``patterns``.

    A pattern is a host name (``"pypi.org"``: that name) or ``*.`` and one
    (``"*.python.org"``: any name below ``python.org``, not ``python.org``
    itself). Names compare label by label, case-insensitively, one trailing
    dot ignored; a node that is no plain host name (escapes, spaces, empty
    labels) matches no pattern.
    """
    return NamedCondition(_patterns("named", patterns))


@dataclass(frozen=True, repr=False)
class ResolvedCondition(Condition):
    patterns: tuple[Pattern, ...]
    ports: frozenset[int] | None

    functions = _INET_FUNCTIONS

    def __call__(self, request: object) -> bool:
        if self.ports is not None and getattr(request, "port") not in self.ports:
            return False
        scope = current_scope()
        if scope is None:
            return False
        for name in scope.answers.names_for(getattr(request, "address")):
            labels = host_labels(name)
            if labels is not None and any_matches(self.patterns, labels):
                return True
        return False

    def describe(self) -> str:
        names = ", ".join(f"`{text}`" for text in sorted(map(str, self.patterns)))
        ports = "any port" if self.ports is None else "port " + ", ".join(map(str, sorted(self.ports)))
        return f"the address is {names} as resolved by the master (while the answer is valid), on {ports}"


def resolved(*patterns: str, ports: Iterable[int] | None = None) -> Condition:
    """``connect``/``bind`` to an address the master itself returned for a name matching ``patterns``.

    Holds while that answer is valid (the record's TTL; for ``/etc/hosts``,
    the resolver's ``hosts_ttl``), only in the process tree it was given
    to, and with ``ports`` only on those ports. The answers are those
    :func:`~libc_service.acting.perform` gave for ``getaddrinfo``; an address that
    happens to lie in the same network, or that another tree was given,
    does not match. Patterns are those of :func:`named`.
    """
    chosen = None if ports is None else frozenset(ports)
    if chosen is not None:
        if not chosen:
            raise ValueError("resolved(ports=...) needs at least one port (None: any port)")
        for port in chosen:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"port {port!r} out of range")
    return ResolvedCondition(_patterns("resolved", patterns), chosen)


def name_patterns(condition: Condition) -> Iterator[Pattern]:
    """The patterns of the ``named()`` and ``resolved()`` conditions in ``condition`` that allow names.

    Those under a negation (``~named("x")``) allow nothing and are left out.
    """
    if isinstance(condition, NamedCondition | ResolvedCondition):
        yield from condition.patterns
    elif isinstance(condition, AllOf | AnyOf):
        for part in condition.parts:
            yield from name_patterns(part)


assert NAMED_FUNCTIONS <= set(FUNCTIONS)
