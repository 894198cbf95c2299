"""Which of a function's routes can hold for a request, without trying each.

A router tries its routes in order, and a route's conditions are Python:
with a thousand routes, each ``under()`` of its own tree, every call used
to normalise its path a thousand times (and read its directory's name
from ``/proc`` as often) before the default decided. A policy is data
that grows — learnt policies grant single files — so the cost of a call
must not grow with it.

:class:`RouteIndex` files each route under the roots of the ``under``
condition every match of it needs (a route's conditions must *all*
hold). For a request, the path is made absolute once, its ancestors are
looked up, and only the routes filed under one of them, with the routes
that have no such condition, are candidates. The index is only a filter:
each candidate is still tried with :meth:`Route.matches
<libc_service.policy.router.Route.matches>`, in the routes' order, so the
decision is the one the plain loop takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

from libc_service.policy.conditions import UnderCondition, ancestors
from libc_service.protocol.catalogue import NAMED_FUNCTIONS


class Route(Protocol):
    """What the index reads of a route (the router's ``Route``, seen from below)."""

    @property
    def conditions(self) -> Sequence[Any]: ...


__all__ = ["INDEXED_FUNCTIONS", "INDEX_FROM", "RouteIndex"]

#: A function with at least this many routes is dispatched through an index.
INDEX_FROM: Final = 3
#: The functions whose requests name a path ``under()`` tests (``fchmod`` and the network's do not).
INDEXED_FUNCTIONS: Final = NAMED_FUNCTIONS


class RouteIndex:
    """One function's routes, filed by the roots each needs."""

    __slots__ = ("_always", "_by_root")

    def __init__(self, function: str, routes: Sequence[Route]) -> None:
        #: Routes that may hold whatever the path (no ``under`` they all need): always candidates.
        self._always: list[int] = []
        self._by_root: dict[str, list[int]] = {}
        for position, route in enumerate(routes):
            roots = _needed_roots(route) if function in INDEXED_FUNCTIONS else None
            if roots is None:
                self._always.append(position)
                continue
            for root in roots:
                self._by_root.setdefault(root, []).append(position)

    def candidates(self, request: object, start: int) -> list[int]:
        """The positions, from ``start`` on and in order, of the routes that may hold for ``request``."""
        absolute = UnderCondition.first_path(request)
        found = {position for position in self._always if position >= start}
        if absolute is not None:
            by_root = self._by_root
            for root in ancestors(absolute):
                positions = by_root.get(root)
                if positions is not None:
                    found.update(position for position in positions if position >= start)
        return sorted(found)


def _needed_roots(route: Route) -> tuple[str, ...] | None:
    """The roots of an ``under`` condition every match of ``route`` needs, or None."""
    needed = [condition for condition in route.conditions if isinstance(condition, UnderCondition)]
    return min((condition.roots for condition in needed), key=len) if needed else None
