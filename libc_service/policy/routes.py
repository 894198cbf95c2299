"""A router's routes as data: what dispatch, :meth:`Router.routes <libc_service.policy.router.Router.routes>` and ``libc-service docs`` read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from libc_service.policy.conditions import Condition
from libc_service.protocol.outcomes import Errno, Sentinel

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request

__all__ = ["Handler", "Route", "RouteTable"]

Handler: TypeAlias = Callable[[Any], Any]


@dataclass(frozen=True)
class Route:
    """One registered handler: the data dispatch and the docs generator share."""

    functions: tuple[str, ...]
    handler: Handler
    name: str
    doc: str | None
    conditions: tuple[Condition, ...]
    order: int
    source: tuple[str, int] | None = None

    def matches(self, request: Request) -> bool:
        """Whether every condition holds for ``request``."""
        return all(condition(request) for condition in self.conditions)

    @property
    def summary(self) -> str | None:
        """The docstring's first paragraph, on one line."""
        if not self.doc:
            return None
        return " ".join(self.doc.strip().split("\n\n")[0].split())


@dataclass(frozen=True)
class RouteTable:
    """What :meth:`Router.routes` returns: the routes in order and the default."""

    routes: tuple[Route, ...]
    default: Route | Errno | Sentinel
    error_errno: int

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def for_function(self, function: str) -> tuple[Route, ...]:
        """The routes that may decide ``function``, in the order they are tried."""
        return tuple(route for route in self.routes if function in route.functions)
