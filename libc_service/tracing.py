"""Turn router decisions into log lines: the ``trace`` command and audit logs.

:class:`Tracer` is a router observer that writes one line per call, either
for people (``[pid 12 tid 12] open("/etc/hostname", read_only, NULL) = 3 [forwarded] <8.2µs>``)
or as JSON lines with a stable set of keys. Results read as strace's:
``= 3``, ``= 0``, ``= -1 ENOENT (No such file or directory)``; a call the
program did itself on a ``FORWARD`` shows what it returned (the shim
reports it) followed by ``[forwarded]``, or ``= forwarded`` when that is
unknown (a seccomp notification the kernel continued, a lost report). A
call that reached the master as a seccomp notification (``trace
--seccomp``) says so: ``[pid 12 tid 12 seccomp]``, and ``"transport":
"seccomp"`` (``"shim"`` otherwise).
"""

from __future__ import annotations

import dataclasses
import errno as errno_module
import json
import os
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from . import replies, requests  # loaded on first use: the program starts before pydantic loads
from .catalogue import NAMED_FUNCTIONS
from .router import FORWARD, Decision, Router
from .rules import RULED_FUNCTIONS

from .lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from .requests import Request
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["Tracer", "decision_record", "request_arguments", "trace_router"]


def _plain(value: Any) -> Any:
    if isinstance(value, PurePosixPath | IPv4Address | IPv6Address):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, replies.Stat):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, replies.AddrInfo):
        return {"address": str(value.address), "port": value.port}
    return value


def request_arguments(request: Request) -> dict[str, Any]:
    """The request's arguments as JSON-ready data, in the function's positional order.

    A rename also carries ``no_replace`` (``renameat2``'s ``RENAME_NOREPLACE``).
    """
    arguments = {name: _plain(getattr(request, name)) for name in request.ARGUMENTS}
    if isinstance(request, requests.RenameRequest):
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
        "transport": decision.transport,
    }


def _show(value: Any, name: str = "") -> str:
    if name == "mode" and isinstance(value, int):
        return f"0{value:o}"  # as strace and chmod show it
    if name in ("owner", "group") and value is None:
        return "-1"  # unchanged, as chown(2) spells it
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


def decision_directories(decision: Decision) -> dict[str, str]:
    """Where the decision's relative path arguments are, by argument name (``Decision.directory``)."""
    if decision.directory is None and decision.directory2 is None:
        return {}
    if isinstance(decision.request, requests.RenameRequest):
        named = {"path1": decision.directory, "path2": decision.directory2}
    else:
        named = {"path": decision.directory}
    return {name: directory for name, directory in named.items() if directory is not None}


def decision_line(decision: Decision, directories: Mapping[str, str] | None = None) -> str:
    """One decision as a human-readable line; ``directories``: where relative path arguments are
    (by default the decision's own, :func:`decision_directories`)."""
    request = decision.request
    where = decision_directories(decision) if directories is None else directories
    arguments = ", ".join(
        _show(getattr(request, name), name) + (f" (in {json.dumps(where[name])})" if name in where else "")
        for name in request.ARGUMENTS
    )
    if isinstance(request, requests.RenameRequest) and request.no_replace:
        arguments += ", no_replace"
    if getattr(request, "no_follow", False) is True:  # the metadata changes' AT_SYMLINK_NOFOLLOW
        arguments += ", no_follow"
    if decision.outcome == "forward" and decision.result is None:
        answer = "forwarded"  # what the slave's own call returned is unknown (seccomp, a lost report)
    elif decision.errno:
        name = errno_module.errorcode.get(decision.errno, str(decision.errno))
        answer = f"-1 {name}" if decision.result != "system" else f"system {name}"
        answer += f" ({os.strerror(decision.errno)})"
    elif isinstance(decision.result, replies.Stat):
        answer = f"{{type={decision.result.type}, mode={decision.result.mode:o}, size={decision.result.size}}}"
    elif isinstance(decision.result, list):
        answer = "[" + ", ".join(f"{_show(a.address)}:{a.port}" for a in decision.result) + "]"
    else:
        answer = str(decision.result)
    if decision.nfds:
        answer += f" +{decision.nfds} fd"
    if decision.outcome == "forward" and decision.result is not None:
        answer += " [forwarded]"  # the slave's own call returned it
    route = "" if decision.route == "default" else f" by {decision.route}"
    transport = " seccomp" if decision.transport == "seccomp" else ""
    return (
        f"[pid {request.pid} tid {request.tid}{transport}] {request.function}({arguments}) = {answer}"
        f"{route} <{decision.latency_ns / 1000:.1f}µs>"
    )


class Tracer:
    """A router observer writing one line per decision to ``stream``.

    Besides each call it writes, once per process image, the program the
    process runs (the shim does not see ``execve`` itself): as the decision
    names it (:attr:`Decision.program <libc_service.router.Decision.program>`:
    the shim's first report of a process), else read from ``/proc/PID/exe``
    and ``cmdline`` at the first decision of the image, or earlier, while
    the process waits for an answer, when :meth:`note_program` is
    registered as a route (the ``trace`` command does, for the functions
    the shim's rule table does not decide: their decisions wait for their
    results). A process whose program no decision names and that exited
    before its first decision reached the tracer gets no program line
    (its first report was lost, or the shim could not read its ``/proc``).
    Relative paths are shown with the directory they are relative to, as
    the decision names it (:attr:`Decision.directory
    <libc_service.router.Decision.directory>`).
    """

    #: The route name of :meth:`note_program`, shown as the default.
    ROUTE = "Tracer.note_program"

    def __init__(self, stream: TextIO, *, json_lines: bool = False) -> None:
        self.stream = stream
        self.json_lines = json_lines
        self._sessions: set[tuple[int, str]] = set()
        #: Program lines read while a process waited for an answer, by pid: (its executable, the line).
        self._programs: dict[int, tuple[str, str]] = {}
        #: The executable each pid's shim last named in a report (Decision.program).
        self._images: dict[int, str] = {}
        #: Whether a flush is due when the event loop goes idle.
        self._flush_due = False

    def note_program(self, request: Any) -> object:  # a Request: Any leaves pydantic unloaded at registration
        """A handler: read the program the process runs while it waits, then forward.

        Its line is written with the call's decision, which waits for the
        call's result (the process may be gone by then).
        """
        self._note_program(request.pid)
        return FORWARD

    def __call__(self, decision: Decision) -> None:
        request = decision.request
        # One program line per process image: the shim's reports of calls it
        # decided itself come outside the process's session, so the image is
        # told by its executable (the session when the process is gone).
        program = ""
        if decision.program is not None:
            image = self._images[request.pid] = decision.program[0]
            key = (request.pid, image)
            if key not in self._sessions:
                self._sessions.add(key)
                self._programs.pop(request.pid, None)
                program = self._program_line(request.pid, *decision.program)
        elif request.pid in self._images and decision.session.startswith("rules "):
            pass  # a later report of the image the shim named: its line is written
        else:
            try:
                image = os.readlink(f"/proc/{request.pid}/exe")
            except OSError:
                early = self._programs.get(request.pid)
                image = early[0] if early is not None else decision.session
            key = (request.pid, image)
            if key not in self._sessions:
                self._sessions.add(key)
                early = self._programs.pop(request.pid, None)
                program = early[1] if early is not None and early[0] == image else self._program(request.pid)
        if decision.route == self.ROUTE:
            decision = dataclasses.replace(decision, route="default")
        if self.json_lines:
            record = decision_record(decision)
            record["time"] = round(time.time(), 6)
            directories = decision_directories(decision)
            if directories:
                record["directories"] = directories
            line = json.dumps(record, sort_keys=False)  # ASCII: a slave's non-UTF-8 bytes stay escapes
        else:
            line = decision_line(decision)
        # One write: the program runs on meanwhile and may write to the same stream.
        self.stream.write(program + line + "\n")
        if not self._flush_due:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.stream.flush()
                return
            # Once the loop has handled what is ready (a burst of reports): one flush for them all.
            self._flush_due = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Flush the stream (the tracer does when the event loop goes idle; call it at the end too)."""
        self._flush_due = False
        self.stream.flush()

    def _note_program(self, pid: int) -> None:
        try:
            image = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return
        if (pid, image) in self._sessions or self._programs.get(pid, ("", ""))[0] == image:
            return
        self._programs[pid] = (image, self._program(pid))

    def _program(self, pid: int) -> str:
        """The line naming the program ``pid`` runs (with its newline), or "" when it is gone."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = [os.fsdecode(arg) for arg in file.read().split(b"\0")[:-1]]
        except OSError:
            return ""
        return self._program_line(pid, exe, argv)

    def _program_line(self, pid: int, exe: str, argv: Sequence[str]) -> str:
        """The line naming the program ``pid`` runs, with its newline."""
        argv = list(argv)
        if self.json_lines:
            # The decision schema, so that every line has the same keys.
            line = json.dumps(
                {
                    "pid": pid,
                    "tid": pid,
                    "function": "execve",
                    "arguments": {"path": exe, "argv": argv},
                    "route": "default",
                    "decision": "observed",
                    "result": None,
                    "errno": 0,
                    "errno_name": None,
                    "fds": 0,
                    "latency_us": 0.0,
                    "transport": None,
                    "time": round(time.time(), 6),
                },
            )
        else:
            line = f"[pid {pid}] execve({json.dumps(exe)}, {json.dumps(argv)})"
        return line + "\n"


def trace_router(tracer: Tracer) -> Router:
    """The ``trace`` command's router: everything forwarded, ``tracer`` observing.

    Run it with ``spawn(..., reports="wait")``: the shim decides the
    functions of its rule table itself (:data:`~libc_service.rules.RULED_FUNCTIONS`,
    relative paths included) and reports them, naming the directory of a
    relative path and the process's program; no call of them is a round
    trip. The other path functions are always asked: :meth:`Tracer.note_program`
    reads the program while the process waits (their decisions wait for
    their results), and the master names their directories.
    """
    router = Router(default=FORWARD)
    unruled = sorted(NAMED_FUNCTIONS - RULED_FUNCTIONS)
    if unruled:
        router.on(*unruled)(tracer.note_program)
    router.observe(tracer)
    return router
