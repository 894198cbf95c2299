"""libc-service: arbitrate a sandboxed process's ambient-authority libc calls.

A *slave* process runs with its ``open``/``stat``/``connect``/... calls
forwarded to a *master* before the real libc is attempted; the master's
policy decides each call. See the documentation site for the concepts.

What a policy author imports is here: the router and its outcomes, the
conditions, the request union, the safe-path helpers, :func:`perform`,
the sandbox and :func:`spawn`. Transport internals (``Call``,
``RouteTable``, ``ProtocolError``) live in their modules
(:mod:`libc_service.endpoints.master`, :mod:`libc_service.policy.router`,
:mod:`libc_service.protocol.wire`); the names below them are still importable from
here for code written against earlier versions, but are not part of
``__all__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What type checkers see; tests/test_package_names.py keeps it equal to
    # _PUBLIC and _KEPT below (``as`` marks each name re-exported).
    from libc_service.policy.conditions import Condition as Condition
    from libc_service.policy.conditions import flags as flags
    from libc_service.policy.conditions import named as named
    from libc_service.policy.conditions import resolved as resolved
    from libc_service.policy.conditions import to as to
    from libc_service.policy.conditions import under as under
    from libc_service.policy.conditions import writing as writing
    from libc_service.endpoints.master import Call as Call
    from libc_service.endpoints.master import Master as Master
    from libc_service.endpoints.master import SessionClosed as SessionClosed
    from libc_service.policy.outcomes import Deny as Deny
    from libc_service.acting.perform import perform as perform
    from libc_service.protocol.replies import AddrInfo as AddrInfo
    from libc_service.protocol.replies import Reply as Reply
    from libc_service.protocol.replies import Stat as Stat
    from libc_service.protocol.requests import Request as Request
    from libc_service.policy.resolver import Resolver as Resolver
    from libc_service.policy.router import FORWARD as FORWARD
    from libc_service.policy.router import PASS as PASS
    from libc_service.policy.router import Decision as Decision
    from libc_service.policy.router import Errno as Errno
    from libc_service.policy.router import Route as Route
    from libc_service.policy.router import Router as Router
    from libc_service.policy.router import RouteTable as RouteTable
    from libc_service.policy.router import WithFds as WithFds
    from libc_service.policy.router import deny as deny
    from libc_service.acting.safepath import EscapeError as EscapeError
    from libc_service.acting.safepath import open_beneath as open_beneath
    from libc_service.acting.safepath import parent_beneath as parent_beneath
    from libc_service.acting.safepath import relative_to_root as relative_to_root
    from libc_service.acting.safepath import stat_beneath as stat_beneath
    from libc_service.confinement.sandbox import Sandbox as Sandbox
    from libc_service.confinement.sandbox import SandboxUnavailable as SandboxUnavailable
    from libc_service.endpoints.slave import Slave as Slave
    from libc_service.policy.slavepath import slave_path as slave_path
    from libc_service.processes.spawn import SlaveProcess as SlaveProcess
    from libc_service.processes.spawn import spawn as spawn
    from libc_service.protocol.wire import ProtocolError as ProtocolError

    __version__: str

#: The public names (``__all__``) and the submodule each lives in: imported
#: on first use (PEP 562), so that a policy importing ``Router`` does not pay
#: for the sandbox, ``perform`` or the package metadata (``libc-service run``
#: starts in milliseconds).
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("Condition", "flags", "named", "resolved", "to", "under", "writing"), "policy.conditions"),
    "Resolver": "policy.resolver",
    **dict.fromkeys(("Master", "SessionClosed"), "endpoints.master"),
    "Deny": "policy.outcomes",
    **dict.fromkeys(("AddrInfo", "Reply", "Stat"), "protocol.replies"),
    "Request": "protocol.requests",
    **dict.fromkeys(("FORWARD", "PASS", "Decision", "Errno", "Route", "Router", "WithFds", "deny"), "policy.router"),
    **dict.fromkeys(
        ("EscapeError", "open_beneath", "parent_beneath", "relative_to_root", "stat_beneath"), "acting.safepath"
    ),
    **dict.fromkeys(("Sandbox", "SandboxUnavailable"), "confinement.sandbox"),
    "Slave": "endpoints.slave",
    "slave_path": "policy.slavepath",
    "perform": "acting.perform",
    **dict.fromkeys(("SlaveProcess", "spawn"), "processes.spawn"),
}
#: Transport internals and introspection types: importable from here for
#: code written against earlier versions, not part of ``__all__``.
_KEPT: dict[str, str] = {"Call": "endpoints.master", "RouteTable": "policy.router", "ProtocolError": "protocol.wire"}
_LAZY: dict[str, str] = {**_PUBLIC, **_KEPT}


def _load_on_first_use(name: str) -> None:
    """Register submodule ``name`` so that it runs on its first attribute access.

    ``requests`` and ``replies`` hold the pydantic models: importing them
    (and pydantic) costs more than everything else ``libc-service run``
    does before the program starts. The codec, the router and the master
    reach them as ``requests.OpenRequest`` at run time, so a run whose
    every call the shim decides never loads them.
    """
    fullname = f"{__name__}.{name}"
    parent_name, _, leaf = fullname.rpartition(".")
    if fullname in sys.modules:
        return
    spec = importlib.util.find_spec(fullname)
    if spec is None or spec.loader is None:
        raise ImportError(f"{fullname} not found", name=fullname)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[fullname] = module
    loader.exec_module(module)
    setattr(importlib.import_module(parent_name), leaf, module)


_load_on_first_use("protocol.requests")
_load_on_first_use("protocol.replies")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from libc_service.tools.version import package_version

        value: Any = package_version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = ["__version__", *_PUBLIC]
