"""libc-service: arbitrate a sandboxed process's ambient-authority libc calls.

A *slave* process runs with its ``open``/``stat``/``connect``/... calls
forwarded to a *master* before the real libc is attempted; the master's
policy decides each call. See the documentation site for the concepts.

What a policy author imports is here: the router and its outcomes, the
conditions, the request union, the safe-path helpers, :func:`perform`,
the sandbox and :func:`spawn`. Transport internals (``Call``,
``RouteTable``, ``ProtocolError``) live in their modules
(:mod:`libc_service.master`, :mod:`libc_service.router`,
:mod:`libc_service.wire`); the names below them are still importable from
here for code written against earlier versions, but are not part of
``__all__``.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .conditions import Condition, flags, named, to, under, writing
from .master import Call as Call  # transport internal: importable, not in __all__
from .master import Master, SessionClosed
from .outcomes import Deny
from .perform import perform
from .replies import AddrInfo, Reply, Stat
from .requests import Request
from .router import FORWARD, PASS, Decision, Errno, Route, Router, WithFds, deny
from .router import RouteTable as RouteTable  # introspection result type: importable, not in __all__
from .safepath import EscapeError, open_beneath, parent_beneath, relative_to_root, stat_beneath
from .sandbox import Sandbox, SandboxUnavailable
from .slave import Slave
from .slavepath import slave_path
from .spawn import SlaveProcess, spawn
from .wire import ProtocolError as ProtocolError  # transport internal: importable, not in __all__

try:
    __version__: str = _version("libc-service")
except _PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "FORWARD",
    "PASS",
    "AddrInfo",
    "Condition",
    "Decision",
    "Deny",
    "Errno",
    "EscapeError",
    "Master",
    "Reply",
    "Request",
    "Route",
    "Router",
    "Sandbox",
    "SandboxUnavailable",
    "SessionClosed",
    "Slave",
    "SlaveProcess",
    "Stat",
    "WithFds",
    "deny",
    "flags",
    "named",
    "open_beneath",
    "parent_beneath",
    "perform",
    "relative_to_root",
    "slave_path",
    "spawn",
    "stat_beneath",
    "to",
    "under",
    "writing",
]
