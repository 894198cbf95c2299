"""Turn router decisions into log lines: the ``trace`` command and audit logs.

:class:`Tracer` is a router observer that writes one line per call, either
for people (``[pid 12 tid 12] openat("/etc/hostname", read_only) = 3 <8.2µs>``)
or as JSON lines with a stable set of keys.
"""

from __future__ import annotations

import errno as errno_module
import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from typing import Any, TextIO

from .replies import AddrInfo, Stat
from .requests import RenameRequest, Request
from .router import Decision

__all__ = ["Tracer", "decision_record", "request_arguments"]


def _plain(value: Any) -> Any:
    if isinstance(value, PurePosixPath | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, Stat):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, AddrInfo):
        return {"address": str(value.address), "port": value.port}
    return value


def request_arguments(request: Request) -> dict[str, Any]:
    """The request's arguments as JSON-ready data, in the seed's order.

    A rename also carries ``no_replace`` (``renameat2``'s ``RENAME_NOREPLACE``).
    """
    arguments = {name: _plain(getattr(request, name)) for name in request.ARGUMENTS}
    if isinstance(request, RenameRequest):
        arguments["no_replace"] = request.no_replace
    return arguments


def decision_record(decision: Decision) -> dict[str, Any]:
    """One decision as JSON-ready data (the ``trace --json`` schema)."""
    request = decision.request
    return {
        "pid": request.pid,
        "tid": request.tid,
        "function": request.function,
        "arguments": request_arguments(request),
        "route": decision.route,
        "decision": decision.outcome,
        "result": _plain(decision.result),
        "errno": decision.errno,
        "errno_name": errno_module.errorcode.get(decision.errno) if decision.errno else None,
        "fds": decision.nfds,
        "latency_us": round(decision.latency_ns / 1000, 1),
    }


def _show(value: Any) -> str:
    if isinstance(value, PurePosixPath):
        return json.dumps(str(value))
    if isinstance(value, frozenset):
        return "|".join(sorted(value)) or "0"
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, IPv6Address):
        return f"[{value}]"
    return str(value)


def decision_line(decision: Decision) -> str:
    """One decision as a human-readable line."""
    request = decision.request
    arguments = ", ".join(_show(getattr(request, name)) for name in request.ARGUMENTS)
    if isinstance(request, RenameRequest) and request.no_replace:
        arguments += ", no_replace"
    if decision.outcome == "forward":
        answer = "forwarded"
    elif decision.errno:
        name = errno_module.errorcode.get(decision.errno, str(decision.errno))
        answer = f"-1 {name}" if decision.result != "system" else f"system {name}"
    elif isinstance(decision.result, Stat):
        answer = f"{{type={decision.result.type}, mode={decision.result.mode:o}, size={decision.result.size}}}"
    elif isinstance(decision.result, list):
        answer = "[" + ", ".join(f"{_show(a.address)}:{a.port}" for a in decision.result) + "]"
    else:
        answer = str(decision.result)
    if decision.nfds:
        answer += f" +{decision.nfds} fd"
    route = "" if decision.route == "default" else f" by {decision.route}"
    return (
        f"[pid {request.pid} tid {request.tid}] {request.function}({arguments}) = {answer}"
        f"{route} <{decision.latency_ns / 1000:.1f}µs>"
    )


class Tracer:
    """A router observer writing one line per decision to ``stream``."""

    def __init__(self, stream: TextIO, *, json_lines: bool = False) -> None:
        self.stream = stream
        self.json_lines = json_lines

    def __call__(self, decision: Decision) -> None:
        if self.json_lines:
            line = json.dumps(decision_record(decision), sort_keys=False, ensure_ascii=False)
        else:
            line = decision_line(decision)
        self.stream.write(line + "\n")
        self.stream.flush()
