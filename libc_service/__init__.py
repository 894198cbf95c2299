"""libc-service: arbitrate a sandboxed process's ambient-authority libc calls.

A *slave* process runs with its ``open``/``stat``/``connect``/... calls
forwarded to a *master* before the real libc is attempted; the master's
policy decides each call. See the documentation site for the concepts.

What a user meets is importable from here: the router and its outcomes,
the conditions, the requests and replies, the safe-path helpers,
:func:`perform`, the channel ends, the sandbox, :func:`spawn` and the
errors they raise. The package exports exactly the ``__all__`` of its
public modules (the table below names them), each name imported from its
module on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    # What type checkers see: each public module's ``__all__`` (a star import
    # re-exports exactly that). tests/test_package_names.py keeps these lines
    # naming the modules of _EXPORTS.
    from libc_service.policy.conditions import *  # noqa: F403
    from libc_service.endpoints.master import *  # noqa: F403
    from libc_service.seccomp.availability import *  # noqa: F403
    from libc_service.seccomp.session import *  # noqa: F403
    from libc_service.acting.perform import *  # noqa: F403
    from libc_service.protocol.replies import *  # noqa: F403
    from libc_service.protocol.requests import *  # noqa: F403
    from libc_service.policy.resolver import *  # noqa: F403
    from libc_service.policy.router import *  # noqa: F403
    from libc_service.acting.safepath import *  # noqa: F403
    from libc_service.confinement.sandbox import *  # noqa: F403
    from libc_service.endpoints.slave import *  # noqa: F403
    from libc_service.policy.slavepath import *  # noqa: F403
    from libc_service.processes.spawn import *  # noqa: F403

    __version__: str

#: The public modules and their ``__all__``, written out so that ``import
#: libc_service`` imports none of them: each name is imported from its
#: module on first use (PEP 562), so a policy importing ``Router`` does not
#: pay for the sandbox, ``perform`` or the package metadata (``libc-service
#: run`` starts in milliseconds). tests/test_package_names.py fails when a
#: tuple differs from its module's ``__all__`` and prints the one to write.
_EXPORTS: Final[dict[str, tuple[str, ...]]] = {
    "policy.conditions": ("Condition", "flags", "named", "resolved", "to", "under", "writing"),
    "endpoints.master": ("Call", "Dispatcher", "Master", "ProtocolError", "SessionClosed"),
    "seccomp.availability": ("SeccompUnavailable", "seccomp_unavailable"),
    "seccomp.session": ("current_transport",),
    "acting.perform": ("perform",),
    "protocol.replies": ("AddrInfo", "FileType", "GAI_ERRORS", "GaiError", "Reply", "Result", "Stat"),
    "protocol.requests": (
        "SERVICE_MAX",
        "NODE_MAX",
        "UNIX_PATH_MAX",
        "PATH_MAX_BYTES",
        "ACCESS_MODES",
        "FUNCTIONS",
        "OPENAT_FLAGS",
        "OPEN_FLAGS",
        "AccessMode",
        "AccessRequest",
        "BindInet6Request",
        "BindInetRequest",
        "BindUnixRequest",
        "ChmodRequest",
        "ChownRequest",
        "ConnectInet6Request",
        "ConnectInetRequest",
        "ConnectUnixRequest",
        "EaccessRequest",
        "FchmodRequest",
        "FchownRequest",
        "Function",
        "FutimensRequest",
        "GetaddrinfoRequest",
        "LstatRequest",
        "MkdirRequest",
        "OpenFlag",
        "OpenRequest",
        "OpenatFlag",
        "OpenatRequest",
        "RenameRequest",
        "Request",
        "RmdirRequest",
        "StatRequest",
        "UnlinkRequest",
        "UtimensRequest",
        "TIME_NS_MAX",
        "TIME_NS_MIN",
        "TimeSpec",
        "MAX_GROUPS",
    ),
    "policy.resolver": ("Resolver",),
    "policy.router": (
        "FORWARD",
        "PASS",
        "Decision",
        "Errno",
        "Outcome",
        "Route",
        "RouteTable",
        "Router",
        "Transport",
        "WithFds",
        "deny",
    ),
    "acting.safepath": ("EscapeError", "open_beneath", "parent_beneath", "relative_to_root", "resolve", "stat_beneath"),
    "confinement.sandbox": ("Sandbox", "SandboxUnavailable", "landlock_abi", "network_namespaces_available"),
    "endpoints.slave": ("Slave",),
    "policy.slavepath": ("slave_path",),
    "processes.spawn": ("ShimNotFound", "SlaveProcess", "SpawnOptions", "spawn"),
}
#: Each exported name and the module it comes from.
_MODULE_OF: Final[dict[str, str]] = {name: module for module, names in _EXPORTS.items() for name in names}
#: Old names still importable from here, from the module that defines them (which warns).
_DEPRECATED: Final[dict[str, str]] = {"Deny": "policy.router"}


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
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif name in _DEPRECATED:  # not kept: its module warns on every use
        return getattr(importlib.import_module(f".{_DEPRECATED[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, "__version__"})


__all__ = ["__version__", *_MODULE_OF]
