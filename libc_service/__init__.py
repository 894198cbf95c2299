"""libc-service: arbitrate a sandboxed process's ambient-authority libc calls.

A *slave* process runs with its ``open``/``stat``/``connect``/... calls
forwarded to a *master* before the real libc is attempted; the master's
policy decides each call. See the documentation site for the concepts.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .master import Call, Master, SessionClosed
from .perform import perform
from .replies import AddrInfo, Reply, Stat
from .router import FORWARD, PASS, Decision, Errno, Route, RouteTable, Router, WithFds, deny
from .sandbox import Sandbox, SandboxUnavailable
from .slave import Slave
from .spawn import SlaveProcess, spawn
from .wire import ProtocolError

try:
    __version__: str = _version("libc-service")
except _PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "FORWARD",
    "PASS",
    "AddrInfo",
    "Call",
    "Decision",
    "Errno",
    "Master",
    "ProtocolError",
    "Reply",
    "Route",
    "RouteTable",
    "Router",
    "Sandbox",
    "SandboxUnavailable",
    "SessionClosed",
    "Slave",
    "SlaveProcess",
    "Stat",
    "WithFds",
    "deny",
    "perform",
    "spawn",
]
