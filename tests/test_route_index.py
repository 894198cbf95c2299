"""A router of many routes decides through an index, and decides what trying each route in order decides."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service import FORWARD, Router
from libc_service.policy.conditions import Condition, ancestors, flags, under, writing
from libc_service.protocol.requests import REQUEST_TYPES, Request
from libc_service.policy.route_index import INDEX_FROM

_ROOTS = ["/", "/srv", "/srv/a", "/srv/a/b", "/srvx", "/usr", "/usr/lib", "/usr/lib/x", "/é"]
_COMPONENTS = ["srv", "srvx", "a", "b", "x", "usr", "lib", ".", "..", "é"]
_DIRECTORIES = {path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in ("/", "/usr", "/usr/lib")}
_FUNCTIONS = ["open", "stat", "rename", "mkdir", "connect_inet", "fchmod"]

leaves: st.SearchStrategy[Condition] = st.one_of(
    st.lists(st.sampled_from(_ROOTS), min_size=1, max_size=12).map(lambda roots: under(*roots)),
    st.just(writing()),
    st.just(flags("create")),
)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(inner.map(lambda c: ~c), st.tuples(inner, inner).map(lambda p: p[0] | p[1])),
    max_leaves=3,
)


@st.composite
def routers(draw: st.DrawFn) -> Router:
    router = Router(default=FORWARD)
    for number in range(draw(st.integers(INDEX_FROM, 3 * INDEX_FROM))):
        functions = tuple(draw(st.sets(st.sampled_from(_FUNCTIONS), min_size=1)))
        when = [
            c for c in draw(st.lists(conditions, max_size=2)) if c.functions is None or set(functions) <= c.functions
        ]

        def handler(request: Request) -> Any:
            return FORWARD

        handler.__name__ = f"route{number}"
        router.on(*functions, when=when)(handler)
    return router


def _path(parts: list[str], absolute: bool) -> str:
    return (("/" if absolute else "") + "/".join(parts)) or "."


paths = st.builds(_path, st.lists(st.sampled_from(_COMPONENTS), max_size=4), st.booleans())


@st.composite
def requests(draw: st.DrawFn) -> Request:
    function = draw(st.sampled_from(_FUNCTIONS))
    arguments: dict[str, Any] = {"pid": 1, "tid": 1, "request_id": 1}
    names = ("path1", "path2") if function == "rename" else () if function in ("connect_inet", "fchmod") else ("path",)
    for name in names:
        arguments[name] = draw(paths)
        if not arguments[name].startswith("/"):
            key = {"path": "dirfd", "path1": "dirfd1", "path2": "dirfd2"}[name]
            arguments[key] = _DIRECTORIES[draw(st.sampled_from(sorted(_DIRECTORIES)))]
    if function == "connect_inet":
        return REQUEST_TYPES[function](
            function=function, address="127.0.0.1", port=80, socket=_DIRECTORIES["/"], **arguments
        )  # type: ignore[no-any-return]
    if function == "fchmod":
        fd = _DIRECTORIES[draw(st.sampled_from(sorted(_DIRECTORIES)))]
        return REQUEST_TYPES[function](function=function, fd=fd, mode=0o755, **arguments)  # type: ignore[no-any-return]
    if function == "rename":
        arguments["no_replace"] = False
    elif function == "open":
        arguments["flags"] = frozenset(draw(st.sampled_from([{"read_only"}, {"write_only", "create"}])))
        arguments["mode"] = 0o644 if "create" in arguments["flags"] else None
    elif function == "mkdir":
        arguments["mode"] = 0o755
    model: Any = REQUEST_TYPES[function]
    return model(function=function, **arguments)  # type: ignore[no-any-return]


def _in_order(router: Router, request: Request) -> str:
    for route in router.routes().for_function(request.function):
        if route.matches(request):
            return route.name
    return "default"


@settings(max_examples=100, deadline=None)
@given(routers(), st.lists(requests(), min_size=1, max_size=10))
def test_the_index_decides_what_trying_each_route_in_order_decides(router: Router, calls: list[Request]) -> None:
    async def decide_all() -> list[str]:
        return [(await router.decide(request))[0] for request in calls]

    with asyncio.Runner() as runner:
        decided = runner.run(decide_all())
    assert decided == [_in_order(router, request) for request in calls]


@given(st.lists(st.sampled_from(_COMPONENTS[:7]), max_size=5), st.lists(st.sampled_from(_ROOTS), min_size=1))
def test_a_path_lies_under_a_root_exactly_when_the_root_is_one_of_its_ancestors(
    parts: list[str], roots: list[str]
) -> None:
    absolute = os.path.normpath("/" + "/".join(parts))
    scanned = any(absolute == root or absolute.startswith(root.rstrip("/") + "/") for root in roots)
    assert scanned == (not set(roots).isdisjoint(ancestors(absolute)))
    assert under(*roots)._contains(absolute) == scanned  # type: ignore[attr-defined]
