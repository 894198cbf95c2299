"""Turn router decisions into log lines: the ``trace`` command and audit logs.

:class:`Tracer` is a router observer that writes one line per call, either
for people (``[pid 12 tid 12] open("/etc/hostname", read_only) = 3 [forwarded]``)
or as JSON lines with a stable set of keys. As strace does, an open shows
its mode only when its flags create a file (``create``, ``temporary``), and
a call's duration (``<8.2µs>``, strace's ``-T``) when it is known: a
forwarded call's as its shim measured it around the real call
(:attr:`Decision.duration_ns <libc_service.policy.router.Decision.duration_ns>`),
or the time a handler took to answer it. It
selects functions (``functions``), failed calls only (``failed_only``),
or counts calls instead of writing them (``count``, a table at the end,
as ``strace -c``). Results read as strace's:
``= 3``, ``= 0``, ``= -1 ENOENT (No such file or directory)``; a call the
program did itself on a ``FORWARD`` shows what it returned (the shim
reports it) followed by ``[forwarded]``, or ``= ? [forwarded]`` when that is
unknown (a seccomp notification the kernel continued, a lost report). A
call that reached the master as a seccomp notification (``trace
--seccomp``) says so: ``[pid 12 tid 12 seccomp]``, and ``"transport":
"seccomp"`` (``"shim"`` otherwise).
"""

from __future__ import annotations

import errno as errno_module
import functools
import json
import os
import sys
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePosixPath
from collections.abc import Callable, Collection, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, Final, TextIO

from libc_service.protocol import replies  # loaded on first use: the program starts before pydantic loads
from libc_service.protocol.catalogue import FUNCTIONS, NAMED_FUNCTIONS, OPEN_FUNCTIONS
from libc_service.policy.router import FORWARD, Decision, Router
from libc_service.policy.rules import RULED_FUNCTIONS

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.protocol.requests import Request
    from libc_service.protocol.wire_reports import PlainReport
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["ARGUMENTS", "TRACED_FUNCTIONS", "Tracer", "decision_record", "request_arguments", "trace_router"]

#: Each function's arguments in the order libc takes them (the request models' ``ARGUMENTS``),
#: here so that a report becomes a line without the models.
ARGUMENTS: Final[dict[str, tuple[str, ...]]] = {
    **dict.fromkeys(("open", "openat"), ("path", "flags", "mode")),
    **dict.fromkeys(("unlink", "stat", "lstat", "rmdir", "connect_unix", "bind_unix"), ("path",)),
    "rename": ("path1", "path2"),
    **dict.fromkeys(("access", "eaccess"), ("path", "amode")),
    **dict.fromkeys(("mkdir", "chmod"), ("path", "mode")),
    **dict.fromkeys(("connect_inet", "connect_inet6", "bind_inet", "bind_inet6"), ("address", "port")),
    "getaddrinfo": ("node", "service", "protocol"),
    "fchmod": ("fd", "mode"),
    "chown": ("path", "owner", "group"),
    "fchown": ("fd", "owner", "group"),
    "utimens": ("path", "atime", "mtime"),
    "futimens": ("fd", "atime", "mtime"),
}
#: A string as a JSON string (ASCII, escaped): what ``json.dumps`` makes of it, without its dispatch.
_quoted: Final[Callable[[str], str]] = encode_basestring_ascii
#: What ``trace -e`` selects from: the arbitrated functions, and ``execve`` (the line naming a process's program).
TRACED_FUNCTIONS: Final = (*FUNCTIONS, "execve")
#: The path arguments of a function, whose absolute names a JSON record carries (``"absolute"``).
_PATH_ARGUMENTS: Final = ("path", "path1", "path2")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | str):  # most values: the reply models stay unloaded
        return value
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


def _arguments(function: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    arguments = {name: _plain(fields[name]) for name in ARGUMENTS[function]}
    if function == "rename":
        arguments["no_replace"] = fields["no_replace"]
    return arguments


def request_arguments(request: Request) -> dict[str, Any]:
    """The request's arguments as JSON-ready data, in the function's positional order.

    A rename also carries ``no_replace`` (``renameat2``'s ``RENAME_NOREPLACE``).
    """
    return _arguments(request.function, request.__dict__)


def _record(
    function: str,
    fields: Mapping[str, Any],
    route: str,
    outcome: str,
    result: Any,
    errno: int,
    nfds: int,
    latency_ns: int,
    transport: str | None,
) -> dict[str, Any]:
    return {
        "pid": fields["pid"],
        "tid": fields["tid"],
        "function": function,
        "arguments": _arguments(function, fields),
        "route": route,
        "decision": outcome,
        "result": _plain(result),
        "errno": errno,
        "errno_name": errno_module.errorcode.get(errno) if errno else None,
        "fds": nfds,
        "latency_us": round(latency_ns / 1000, 1),
        "transport": transport,
    }


def decision_record(decision: Decision) -> dict[str, Any]:
    """One decision as JSON-ready data (the ``trace --json`` schema)."""
    request = decision.request
    return _record(
        request.function,
        request.__dict__,
        decision.route,
        decision.outcome,
        decision.result,
        decision.errno,
        decision.nfds,
        decision.latency_ns,
        decision.transport,
    )


def _show(value: Any, name: str = "") -> str:
    if isinstance(value, str):  # a path (a report's), a name
        return _quoted(value)
    if name == "mode" and isinstance(value, int):
        return f"0{value:o}"  # as strace and chmod show it
    if name in ("owner", "group") and value is None:
        return "-1"  # unchanged, as chown(2) spells it
    if isinstance(value, PurePosixPath):
        return _quoted(str(value))
    if isinstance(value, frozenset):
        return _flags(value)
    if value is None:
        return "NULL"
    if isinstance(value, IPv6Address):
        return f"[{value}]"
    return str(value)


@functools.lru_cache(maxsize=256)
def _flags(value: frozenset[str]) -> str:
    # A program opens with a few sets of flags, over and over.
    return "|".join(sorted(value)) or "0"


def _directories(function: str, directory: str | None, directory2: str | None) -> dict[str, str]:
    if directory is None and directory2 is None:
        return {}
    named = {"path1": directory, "path2": directory2} if function == "rename" else {"path": directory}
    return {name: where for name, where in named.items() if where is not None}


def decision_directories(decision: Decision) -> dict[str, str]:
    """Where the decision's relative path arguments are, by argument name (``Decision.directory``)."""
    return _directories(decision.request.function, decision.directory, decision.directory2)


def _absolute(function: str, fields: Mapping[str, Any], directories: Mapping[str, str]) -> dict[str, str | None]:
    """Each path argument as an absolute name: as given, or joined to the directory it is relative to
    (``None`` when that is unknown). Joined, not normalized: ``..`` after a symbolic link is the
    kernel's to resolve."""
    absolute: dict[str, str | None] = {}
    for name in ARGUMENTS[function]:
        if name in _PATH_ARGUMENTS:
            path = str(fields[name])
            where = directories.get(name)
            absolute[name] = path if path.startswith("/") else None if where is None else os.path.join(where, path)
    return absolute


def _line(
    function: str,
    fields: Mapping[str, Any],
    where: Mapping[str, str],
    route: str,
    outcome: str,
    result: Any,
    errno: int,
    nfds: int,
    latency_ns: int,
    transport: str | None,
    duration_ns: int | None = None,
) -> str:
    shown = []
    for name in ARGUMENTS[function]:
        value = fields[name]
        if name == "mode" and value is None and function in OPEN_FUNCTIONS:
            continue  # as strace: an open's mode only when its flags create a file
        text = _show(value, name)
        shown.append(text + f" (in {_quoted(where[name])})" if name in where else text)
    if function == "rename" and fields["no_replace"]:
        shown.append("no_replace")
    if fields.get("no_follow") is True:  # the metadata changes' AT_SYMLINK_NOFOLLOW
        shown.append("no_follow")
    if outcome == "forward" and result is None:
        # What the slave's own call returned is unknown, as strace writes it: the kernel continued a
        # seccomp notification (it tells no one the result), or the shim's report was lost.
        answer = "?"
    elif isinstance(result, int) and not errno:
        answer = str(result)
    elif errno:
        name = errno_module.errorcode.get(errno, str(errno))
        answer = f"-1 {name}" if result != "system" else f"system {name}"
        answer += f" ({os.strerror(errno)})"
    elif isinstance(result, replies.Stat):
        answer = f"{{type={result.type}, mode={result.mode:o}, size={result.size}}}"
    elif isinstance(result, list):
        answer = "[" + ", ".join(f"{_show(a.address)}:{a.port}" for a in result) + "]"
    else:
        answer = str(result)
    if nfds:
        answer += f" +{nfds} fd"
    if outcome == "forward":
        answer += " [forwarded]"  # the slave's own call returned it
    by = "" if route == "default" else f" by {route}"
    # How long the call took: the slave's own call as its shim measured it, or the handler's answer;
    # none for a forwarded call whose report did not say (the kernel continued it, a lost report).
    if duration_ns is not None:
        took = f" <{duration_ns / 1000:.1f}µs>"
    else:
        took = f" <{latency_ns / 1000:.1f}µs>" if outcome != "forward" and latency_ns else ""
    seccomp = " seccomp" if transport == "seccomp" else ""
    return f"[pid {fields['pid']} tid {fields['tid']}{seccomp}] {function}({', '.join(shown)}) = {answer}{by}{took}"


def decision_line(decision: Decision, directories: Mapping[str, str] | None = None) -> str:
    """One decision as a human-readable line; ``directories``: where relative path arguments are
    (by default the decision's own, :func:`decision_directories`)."""
    request = decision.request
    return _line(
        request.function,
        request.__dict__,
        decision_directories(decision) if directories is None else directories,
        decision.route,
        decision.outcome,
        decision.result,
        decision.errno,
        decision.nfds,
        decision.latency_ns,
        decision.transport,
        decision.duration_ns,
    )


def _failed(result: Any, errno: int) -> bool:
    """Whether a call failed: an errno, or getaddrinfo's error name."""
    return bool(errno) or isinstance(result, str)


class Tracer:
    """A router observer writing one line per decision to ``stream``.

    Besides each call it writes, once per process image, the program the
    process runs (the shim does not see ``execve`` itself): as the decision
    names it (:attr:`Decision.program <libc_service.policy.router.Decision.program>`:
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
    <libc_service.policy.router.Decision.directory>`); JSON records carry each
    path argument's absolute name too (``"absolute"``).

    ``functions`` selects the functions written (``"execve"``: the program
    lines); ``failed_only`` writes only the calls that failed; ``count``
    writes no line, but counts the calls and their failures per function,
    and :meth:`close` writes the table. Calls the shim decided reach it as
    :class:`~libc_service.protocol.wire_reports.PlainReport` (:meth:`report`) when the
    ``trace`` command serves them: no request model is built for them.
    """

    #: The route name of :meth:`note_program`, shown as the default.
    ROUTE = "Tracer.note_program"

    def __init__(
        self,
        stream: TextIO,
        *,
        json_lines: bool = False,
        functions: Collection[str] | None = None,
        failed_only: bool = False,
        count: bool = False,
    ) -> None:
        if functions is not None:
            unknown = sorted(set(functions) - set(TRACED_FUNCTIONS))
            if unknown:
                raise ValueError(f"unknown function(s) {', '.join(unknown)}; choose from {', '.join(TRACED_FUNCTIONS)}")
        self.stream = stream
        self.json_lines = json_lines
        self.functions = frozenset(functions) if functions is not None else None
        self.failed_only = failed_only
        self.count = count
        #: Whether program lines are written (the ``execve`` the shim does not see).
        self._programs_written = self._selected("execve") and not failed_only and not count
        #: Calls, failures and nanoseconds by function (``count``).
        self.counts: dict[str, list[int]] = {}
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
        if self._programs_written:
            self._note_program(request.pid)
        return FORWARD

    def _selected(self, function: str) -> bool:
        return self.functions is None or function in self.functions

    def __call__(self, decision: Decision) -> None:
        request = decision.request
        self._call(
            request.function,
            request.__dict__,
            "default" if decision.route == self.ROUTE else decision.route,
            decision.outcome,
            decision.result,
            decision.errno,
            decision.nfds,
            decision.latency_ns,
            decision.transport,
            decision.directory,
            decision.directory2,
            decision.program,
            decision.session,
            decision.duration_ns,
        )

    def report(self, report: PlainReport) -> None:
        """A call the shim decided, from its validated report (:func:`libc_service.protocol.wire_reports.plain_report`)."""
        if report.outcome == "forward":
            result: int = report.result
            errno = report.errno if result < 0 else 0
            outcome = "forward"
        else:
            result, errno, outcome = -1, report.errno, "error"
        pid = report.fields["pid"]
        self._call(
            report.function,
            report.fields,
            "default",
            outcome,
            result,
            errno,
            0,
            0,
            "shim",
            report.directory,
            report.directory2,
            report.program,
            f"rules {pid}",
            report.duration_ns if outcome == "forward" else None,
        )

    def _call(
        self,
        function: str,
        fields: Mapping[str, Any],
        route: str,
        outcome: str,
        result: Any,
        errno: int,
        nfds: int,
        latency_ns: int,
        transport: str | None,
        directory: str | None,
        directory2: str | None,
        program: tuple[str, tuple[str, ...]] | None,
        session: str,
        duration_ns: int | None = None,
    ) -> None:
        failed = _failed(result, errno)
        execve = self._image(fields["pid"], program, session, write=self._programs_written)
        if (self.functions is not None and function not in self.functions) or (self.failed_only and not failed):
            if execve:
                self.stream.write(execve)  # the program started, whether or not this call is shown
            return
        if self.count:
            counted = self.counts.setdefault(function, [0, 0, 0])
            counted[0] += 1
            counted[1] += failed
            counted[2] += duration_ns or 0
            return
        where = _directories(function, directory, directory2)
        if self.json_lines:
            record = _record(function, fields, route, outcome, result, errno, nfds, latency_ns, transport)
            record["duration_us"] = None if duration_ns is None else round(duration_ns / 1000, 1)
            record["time"] = round(time.time(), 6)
            if where:
                record["directories"] = where
            record["absolute"] = _absolute(function, fields, where)
            line = json.dumps(record)  # ASCII: a slave's non-UTF-8 bytes stay escapes
        else:
            line = _line(
                function, fields, where, route, outcome, result, errno, nfds, latency_ns, transport, duration_ns
            )
        # One write: the program runs on meanwhile and may write to the same stream.
        self.stream.write(execve + line + "\n")
        if not self._flush_due:
            try:
                loop = asyncio.get_running_loop() if "asyncio" in sys.modules else None
            except RuntimeError:
                loop = None
            if loop is None:
                return  # served without a loop: the server flushes when it has drained what came
            # Once the loop has handled what is ready (a burst of reports): one flush for them all.
            self._flush_due = True
            loop.call_soon(self.flush)

    def _image(self, pid: int, program: tuple[str, tuple[str, ...]] | None, session: str, *, write: bool) -> str:
        """The program line due before this call's (with its newline), or ""."""
        # One program line per process image: the shim's reports of calls it
        # decided itself come outside the process's session, so the image is
        # told by its executable (the session when the process is gone).
        if program is not None:
            image = self._images[pid] = program[0]
            key = (pid, image)
            if key in self._sessions:
                return ""
            self._sessions.add(key)
            self._programs.pop(pid, None)
            return self._program_line(pid, *program) if write else ""
        if pid in self._images and session.startswith("rules "):
            return ""  # a later report of the image the shim named: its line is written
        if not write:
            return ""  # no /proc read for a line that is not written
        try:
            image = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            early = self._programs.get(pid)
            image = early[0] if early is not None else session
        key = (pid, image)
        if key in self._sessions:
            return ""
        self._sessions.add(key)
        early = self._programs.pop(pid, None)
        return early[1] if early is not None and early[0] == image else self._program(pid)

    def flush(self) -> None:
        """Flush the stream (the tracer does when the event loop goes idle; call it at the end too)."""
        self._flush_due = False
        self.stream.flush()

    def close(self) -> None:
        """The end of the trace: with ``count``, write the table of calls; flush."""
        if self.count:
            self.stream.write(self.table())
        self.flush()

    def table(self) -> str:
        """The counted calls as ``strace -c`` writes them (``count``): the share of the time, the seconds,
        the microseconds per call, the calls and the failed ones per function, the longest first.

        The time is what the calls took as their shims measured them; a call whose
        duration is not known (continued by the kernel, answered by a handler) counts 0.
        """
        rows = sorted(self.counts.items(), key=lambda item: (-item[1][2], -item[1][0], item[0]))
        calls = sum(counted[0] for _, counted in rows)
        errors = sum(counted[1] for _, counted in rows)
        total_ns = sum(counted[2] for _, counted in rows)
        if self.json_lines:
            return "".join(
                json.dumps({"function": function, "calls": c, "errors": e, "seconds": round(ns / 1e9, 6)}) + "\n"
                for function, (c, e, ns) in rows
            )

        def row(name: str, c: int, e: int, ns: int) -> str:
            share = 100 * ns / total_ns if total_ns else 0.0
            return f"{share:6.2f} {ns / 1e9:11.6f} {ns // 1000 // max(c, 1):11d} {c:9d} {e or '':>9} {name}\n"

        rule = f"{'-' * 6} {'-' * 11} {'-' * 11} {'-' * 9} {'-' * 9} {'-' * 16}\n"
        lines = [f"{'% time':>6} {'seconds':>11} {'usecs/call':>11} {'calls':>9} {'errors':>9} function\n", rule]
        lines += [row(function, *counted) for function, counted in rows]
        lines += [rule, row("total", calls, errors, total_ns)]
        return "".join(lines)

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
                    "duration_us": None,
                    "time": round(time.time(), 6),
                    "absolute": {"path": exe},
                },
            )
        else:
            line = f"[pid {pid}] execve({_quoted(exe)}, {json.dumps(argv)})"
        return line + "\n"


def trace_router(tracer: Tracer) -> Router:
    """The ``trace`` command's router: everything forwarded, ``tracer`` observing.

    Run it with ``spawn(..., reports="wait")``: the shim decides the
    functions of its rule table itself (:data:`~libc_service.policy.rules.RULED_FUNCTIONS`,
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
