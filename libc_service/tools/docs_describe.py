"""Gathering a loaded policy's documentation from what its router dispatches on.

Only what the router itself uses is read — [Router.routes][libc_service.policy.router.Router.routes],
each route's handler name, docstring, conditions and source line, the
router's default and failure settings, its observers — plus the module's
``sandbox``, so the document cannot drift from the policy. Source files are
named relative to the policy file's directory (or by module), so the
result does not depend on where the policy lies.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from libc_service.policy.conditions import AllOf, Condition, NamedCondition, ResolvedCondition
from libc_service.tools.docs_model import DefaultDoc, FunctionDoc, HandlerDoc, ObserverDoc, PolicyDoc, SandboxDoc
from libc_service.tools.policy_file import LoadedPolicy
from libc_service.protocol.requests import FUNCTIONS
from libc_service.policy.router import FORWARD, Errno, Route, Router

__all__ = ["condition_data", "describe_policy"]


def _policy_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(os.path.abspath(file)) if file else None


def _policy_name(policy: LoadedPolicy) -> str:
    """A name that does not depend on where the file lies: the file's name, or the module spec."""
    if policy.name.endswith(".py") or "/" in policy.name:
        return Path(policy.name).name
    return policy.name


def _source_file(route: Route, base: Path | None) -> str | None:
    return _file_name(route.source, route.handler, base)


def _file_name(source: tuple[str, int] | None, handler: object, base: Path | None) -> str | None:
    if source is None:
        return None
    filename = os.path.abspath(source[0])
    if base is not None:
        relative = os.path.relpath(filename, base)
        if not relative.startswith(".." + os.sep) and relative != "..":
            return Path(relative).as_posix()
    # Outside the policy's directory: name it by its module, not its location.
    module = sys.modules.get(getattr(handler, "__module__", "") or "")
    module_file = getattr(module, "__file__", None)
    if module is not None and module_file and os.path.abspath(module_file) == filename:
        dotted = module.__name__.replace(".", "/")
        return f"{dotted}/__init__.py" if filename.endswith("__init__.py") else f"{dotted}.py"
    return Path(filename).name


def _handler_doc(index: int, route: Route, base: Path | None) -> HandlerDoc:
    order: dict[str, int] = {name: position for position, name in enumerate(FUNCTIONS)}
    return HandlerDoc(
        index=index,
        name=route.name,
        summary=route.summary,
        doc=route.doc,
        functions=tuple(sorted(route.functions, key=lambda name: order.get(name, len(order)))),
        conditions=tuple(condition.describe() for condition in route.conditions),
        when=AllOf(route.conditions).describe() if route.conditions else None,
        condition_data=tuple(condition_data(condition) for condition in route.conditions),
        source_file=_source_file(route, base),
        source_line=route.source[1] if route.source is not None else None,
    )


def _default_doc(router: Router, base: Path | None) -> DefaultDoc:
    default = router.default
    if default is FORWARD:
        return DefaultDoc("forward", None, None, None)
    if isinstance(default, Errno):
        return DefaultDoc("deny", default.errno, default.errno_name, None)
    if isinstance(default, Route):
        return DefaultDoc("handler", None, None, _handler_doc(-1, default, base))
    raise TypeError(f"unexpected router default {default!r}")


_ACCESS_ORDER: Final = ("read", "write", "execute")


def _observer_doc(observer: Callable[..., Any], base: Path | None) -> ObserverDoc:
    target: Any = observer if inspect.isfunction(observer) or inspect.ismethod(observer) else type(observer)
    doc = inspect.getdoc(target)
    try:
        source: tuple[str, int] | None = (inspect.getsourcefile(target) or "?", inspect.getsourcelines(target)[1])
    except (OSError, TypeError):
        source = None
    return ObserverDoc(
        name=getattr(target, "__qualname__", None) or type(observer).__qualname__,
        summary=" ".join(doc.strip().split("\n\n")[0].split()) if doc else None,
        doc=doc,
        source_file=_file_name(source, target, base),
        source_line=source[1] if source is not None else None,
    )


def _sandbox_doc(sandbox: Any) -> SandboxDoc | None:
    if sandbox is None:
        return None
    # One row per path, with every access the rules give it (``/usr`` read and executed is one row).
    merged: dict[str, set[str]] = {}
    for path, access in sandbox.static_rules():
        merged.setdefault(os.path.normpath(str(path)), set()).update(part.strip() for part in access.split(","))
    rules = tuple((path, tuple(a for a in _ACCESS_ORDER if a in access)) for path, access in merged.items())
    metadata = bool(getattr(sandbox, "metadata", False))
    return SandboxDoc(
        rules=rules,
        network=bool(sandbox.network),
        metadata=metadata,
        system_libraries=bool(getattr(sandbox, "system_libraries", True)),
    )


def _kind(condition: Condition) -> str:
    """``UnderCondition`` → ``under``, ``AllOf`` → ``all_of``, ``Negation`` → ``not``."""
    name = type(condition).__name__
    if name == "Negation":
        return "not"
    name = name.removesuffix("Condition") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _plain(value: Any) -> Any:
    """A condition's field as JSON data: conditions nested, sets sorted, addresses as text."""
    if isinstance(value, Condition):
        return condition_data(value)
    if isinstance(value, frozenset | set):
        items = [_plain(item) for item in value]
        if all(isinstance(item, int) for item in items):
            return sorted(items)  # ports: 80 before 443
        return sorted(items, key=str)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value.network_address) if value.num_addresses == 1 else str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def condition_data(condition: Condition) -> dict[str, Any]:
    """A condition as structured data: ``{"kind": "under", "roots": ["/srv"], "text": "..."}``.

    ``kind`` names the condition (``under``, ``writing``, ``flags``, ``to``,
    ``named``, ``resolved``, ``all_of``, ``any_of``, ``not``, ...), ``text`` is its
    description in words, and the other keys are its fields as data
    (``parts``/``part`` for combinations, nested the same way).
    A condition of the policy's own that is not a dataclass has only
    ``kind`` (its class name) and ``text``.
    """
    data: dict[str, Any] = {"kind": _kind(condition)}
    if isinstance(condition, NamedCondition | ResolvedCondition):
        # The schema's one key for the names a condition allows, exact or ``*.`` patterns alike: the
        # patterns as the policy writes them (``"*.python.org"``), sorted, as ``named`` gave its names.
        data["names"] = sorted(map(str, condition.patterns))
        if isinstance(condition, ResolvedCondition):
            data["ports"] = _plain(condition.ports)
    elif dataclasses.is_dataclass(condition):
        for item in dataclasses.fields(condition):
            if item.name != "functions" and not item.name.startswith("_"):
                data[item.name] = _plain(getattr(condition, item.name))
    data["text"] = condition.describe()
    return data


def describe_policy(policy: LoadedPolicy) -> PolicyDoc:
    """Gather a loaded policy's documentation (what both renderers show)."""
    router = policy.router
    table = router.routes()
    policy_file = _policy_file(policy.module)
    base = policy_file.parent if policy_file is not None else None
    handlers = tuple(_handler_doc(index, route, base) for index, route in enumerate(table.routes))
    by_route = {id(route): doc for route, doc in zip(table.routes, handlers)}
    functions = tuple(
        FunctionDoc(name, tuple(by_route[id(route)] for route in table.for_function(name))) for name in FUNCTIONS
    )
    return PolicyDoc(
        name=_policy_name(policy),
        description=inspect.cleandoc(policy.module.__doc__) if policy.module.__doc__ else None,
        handlers=handlers,
        functions=functions,
        default=_default_doc(router, base),
        error_errno=table.error_errno,
        timeout=router.timeout,
        timeout_errno=router.timeout_errno,
        concurrent=router.concurrent,
        sandbox=_sandbox_doc(policy.sandbox),
        observers=tuple(_observer_doc(observer, base) for observer in router.observers()),
    )


# ------------------------------------------------------------------- Markdown
