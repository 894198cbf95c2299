"""libc-service: arbitrate a sandboxed process's ambient-authority libc calls.

A *slave* process runs with its ``open``/``stat``/``connect``/... calls
forwarded to a *master* before the real libc is attempted; the master's
policy decides each call. See the documentation site for the concepts.

What a policy author imports is here: the router and its outcomes, the
conditions, the request union, the safe-path helpers, :func:`perform`,
the sandbox and :func:`spawn`. Transport internals (``Call``,
``RouteTable``, ``ProtocolError``) live in their modules
(:mod:`libc_service.master`, :mod:`libc_service.router`,
:mod:`libc_service.wire_header`); the names below them are still importable from
here for code written against earlier versions, but are not part of
``__all__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What type checkers see; tests/test_package_names.py keeps it equal to
    # _PUBLIC and _KEPT below (``as`` marks each name re-exported).
    from .conditions import Condition as Condition
    from .conditions import flags as flags
    from .conditions import named as named
    from .conditions import resolved as resolved
    from .conditions import to as to
    from .conditions import under as under
    from .conditions import writing as writing
    from .master import Call as Call
    from .master import Master as Master
    from .master import SessionClosed as SessionClosed
    from .outcomes import Deny as Deny
    from .perform import perform as perform
    from .replies import AddrInfo as AddrInfo
    from .replies import Reply as Reply
    from .replies import Stat as Stat
    from .requests import Request as Request
    from .resolver import Resolver as Resolver
    from .router import FORWARD as FORWARD
    from .router import PASS as PASS
    from .router import Decision as Decision
    from .router import Errno as Errno
    from .router import Route as Route
    from .router import Router as Router
    from .router import RouteTable as RouteTable
    from .router import WithFds as WithFds
    from .router import deny as deny
    from .safepath import EscapeError as EscapeError
    from .safepath import open_beneath as open_beneath
    from .safepath import parent_beneath as parent_beneath
    from .safepath import relative_to_root as relative_to_root
    from .safepath import stat_beneath as stat_beneath
    from .sandbox import Sandbox as Sandbox
    from .sandbox import SandboxUnavailable as SandboxUnavailable
    from .slave import Slave as Slave
    from .slavepath import slave_path as slave_path
    from .spawn import SlaveProcess as SlaveProcess
    from .spawn import spawn as spawn
    from .wire_header import ProtocolError as ProtocolError

    __version__: str

#: The public names (``__all__``) and the submodule each lives in: imported
#: on first use (PEP 562), so that a policy importing ``Router`` does not pay
#: for the sandbox, ``perform`` or the package metadata (``libc-service run``
#: starts in milliseconds).
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("Condition", "flags", "named", "resolved", "to", "under", "writing"), "conditions"),
    "Resolver": "resolver",
    **dict.fromkeys(("Master", "SessionClosed"), "master"),
    "Deny": "outcomes",
    **dict.fromkeys(("AddrInfo", "Reply", "Stat"), "replies"),
    "Request": "requests",
    **dict.fromkeys(("FORWARD", "PASS", "Decision", "Errno", "Route", "Router", "WithFds", "deny"), "router"),
    **dict.fromkeys(("EscapeError", "open_beneath", "parent_beneath", "relative_to_root", "stat_beneath"), "safepath"),
    **dict.fromkeys(("Sandbox", "SandboxUnavailable"), "sandbox"),
    "Slave": "slave",
    "slave_path": "slavepath",
    "perform": "perform",
    **dict.fromkeys(("SlaveProcess", "spawn"), "spawn"),
}
#: Transport internals and introspection types: importable from here for
#: code written against earlier versions, not part of ``__all__``.
_KEPT: dict[str, str] = {"Call": "master", "RouteTable": "router", "ProtocolError": "wire_header"}
_LAZY: dict[str, str] = {**_PUBLIC, **_KEPT}
#: Public functions named like the submodule that defines them.
_SHADOWED: frozenset[str] = frozenset({"perform", "spawn"})


class _Package(types.ModuleType):
    """The package module, keeping ``perform`` and ``spawn`` the functions.

    Importing a submodule sets the package attribute of the same name to the
    module object; for the two public functions named like their module,
    the function is stored instead, so ``from libc_service import perform``
    means the same whatever was imported before.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def _load_on_first_use(name: str) -> None:
    """Register submodule ``name`` so that it runs on its first attribute access.

    ``requests`` and ``replies`` hold the pydantic models: importing them
    (and pydantic) costs more than everything else ``libc-service run``
    does before the program starts. The codec, the router and the master
    reach them as ``requests.OpenRequest`` at run time, so a run whose
    every call the shim decides never loads them.
    """
    fullname = f"{__name__}.{name}"
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
    setattr(sys.modules[__name__], name, module)


_load_on_first_use("requests")
_load_on_first_use("replies")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libc-service")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _package_version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = ["__version__", *_PUBLIC]
