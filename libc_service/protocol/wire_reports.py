"""The report: a call the shim decided (or did after a "forward") told to the observers (``docs/protocol.md``)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from libc_service.protocol.catalogue import FUNCTIONS
from libc_service.protocol.wire_header import REPORT_MAGIC, VERSION, RemoteProtocolError
from libc_service.protocol.wire_requests import build_request, decode_request_fields

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request

__all__ = [
    "REPORT",
    "REPORT_ARGV_MAX",
    "REPORT_CALL",
    "REPORT_NAMES",
    "ForwardResult",
    "PlainReport",
    "Report",
    "decode_report",
    "plain_report",
]

#: magic, version, outcome (1 forwarded by the rules, 2 denied by the rules,
#: 3 forwarded by the master), reserved, errno, reports the process lost
#: before this one, the call's result, the nanoseconds the real call took
#: (measured by the shim around it; 0 for a denial); then, for outcomes 1 and 2, the
#: :data:`REPORT_NAMES`, the names and the request as the shim encodes it,
#: for outcome 3 :data:`REPORT_CALL`.
REPORT: Final = struct.Struct("<4sHBBIIqQ")
#: The lengths of the names that follow it, then the request: the
#: directories a decided call's relative paths are relative to (its first
#: path's, its second's: rename's new path; 0 for none), and in a process's
#: first report its executable and its arguments (``/proc/self/cmdline``:
#: each ends with a NUL).
REPORT_NAMES: Final = struct.Struct("<HHHH")
#: The most bytes of arguments a report carries (whole arguments only).
REPORT_ARGV_MAX: Final = 4096
#: The call the master answered "forward": its request's pid, tid, id and function; reserved.
REPORT_CALL: Final = struct.Struct("<IIQHH")
_REPORT_OUTCOMES: Final = {1: "forward", 2: "deny", 3: "result"}


@dataclass(frozen=True, slots=True)
class Report:
    """A call the shim decided with the policy's rule table, told afterwards (``docs/protocol.md``)."""

    request: Request
    #: ``"forward"`` (the slave did the call itself) or ``"deny"`` (failed with ``errno``).
    outcome: Literal["forward", "deny"]
    errno: int
    #: Reports the process could not send before this one (the socket was full).
    lost: int
    #: What the call returned (-1 with ``errno`` on failure; a denial's is -1).
    result: int = -1
    #: The absolute name of the directory the first relative path is relative
    #: to (``path``, ``path1``), as the shim read it; ``None`` for an absolute
    #: path or a directory the shim could not name (no ``/proc``, removed).
    directory: str | None = None
    #: The same for the second path (``rename``'s ``path2``).
    directory2: str | None = None
    #: In a process's first report (after ``exec`` or ``fork``): the program
    #: it runs, its executable and arguments, as the shim read them.
    program: tuple[str, tuple[str, ...]] | None = None
    #: How long the real call took, in nanoseconds, as the shim measured it around the call (0: a denial).
    duration_ns: int = 0


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What the slave's own call returned after the master answered ``FORWARD`` (report outcome 3).

    ``result`` is the call's return value (-1 with ``errno`` on failure); for
    getaddrinfo 0, the protocol's code of an error it names (1-9, see
    :data:`GAI_ERRORS`, ``errno`` set with ``system``) or glibc's own code.
    """

    pid: int
    tid: int
    request_id: int
    function: str
    result: int
    errno: int
    lost: int
    #: How long the slave's own call took, in nanoseconds, as the shim measured it around the call.
    duration_ns: int = 0


class PlainReport(NamedTuple):
    """A :class:`Report` as plain data: its request as the function's name and its fields (:func:`request_fields`).

    A named tuple: built once per report on ``trace``'s path, where a frozen
    dataclass's ``__init__`` cost as much as decoding the request's header.
    """

    function: str
    fields: dict[str, Any]
    outcome: Literal["forward", "deny"]
    errno: int
    lost: int
    result: int
    directory: str | None
    directory2: str | None
    program: tuple[str, tuple[str, ...]] | None
    duration_ns: int


def decode_report(data: bytes) -> Report | ForwardResult:
    """Decode and validate one report datagram (it carries no descriptors)."""
    parts = _report_parts(data, text=False)
    if isinstance(parts, ForwardResult):
        return parts
    return Report(
        build_request(parts.function, parts.fields),
        parts.outcome,
        parts.errno,
        parts.lost,
        parts.result,
        parts.directory,
        parts.directory2,
        parts.program,
        parts.duration_ns,
    )


def plain_report(data: bytes) -> PlainReport | ForwardResult:
    """One report datagram validated as :func:`decode_report` validates it, with no request model built.

    For observers that only show the call (``trace``): the request models
    are not loaded, and a malformed report is refused where
    :func:`decode_report` refuses it.
    """
    return _report_parts(data, text=True)


def _report_parts(data: bytes, *, text: bool) -> PlainReport | ForwardResult:
    if len(data) < REPORT.size:
        raise RemoteProtocolError(f"report of {len(data)} bytes is shorter than its {REPORT.size}-byte header")
    magic, version, outcome, reserved, errno, lost, result, duration = REPORT.unpack_from(data)
    if magic != REPORT_MAGIC or version != VERSION:
        raise RemoteProtocolError("bad report magic or version")
    if reserved or outcome not in _REPORT_OUTCOMES:
        raise RemoteProtocolError(f"bad report outcome {outcome}")
    if errno >= 4096 or (outcome == 2 and not errno):
        raise RemoteProtocolError(f"report errno {errno} does not fit its outcome")
    if outcome == 2 and duration:
        raise RemoteProtocolError("a denial's report with a duration: there was no call")
    if outcome == 3:
        if len(data) != REPORT.size + REPORT_CALL.size:
            raise RemoteProtocolError(
                f"a forwarded call's report of {len(data)} bytes, expected {REPORT.size + REPORT_CALL.size}"
            )
        pid, tid, request_id, code, reserved = REPORT_CALL.unpack_from(data, REPORT.size)
        if reserved or not 1 <= code <= len(FUNCTIONS):
            raise RemoteProtocolError(f"bad function {code} in a forwarded call's report")
        return ForwardResult(pid, tid, request_id, FUNCTIONS[code - 1], result, errno, lost, duration)
    if len(data) < REPORT.size + REPORT_NAMES.size:
        raise RemoteProtocolError(f"report of {len(data)} bytes has no name lengths")
    dir1, dir2, exe, argv = REPORT_NAMES.unpack_from(data, REPORT.size)
    start = REPORT.size + REPORT_NAMES.size
    end = start + dir1 + dir2 + exe + argv
    if end > len(data):
        raise RemoteProtocolError(f"report name lengths {dir1}+{dir2}+{exe}+{argv} exceed its {len(data)} bytes")
    function, fields = decode_request_fields(data[end:], (), text=text)
    program = None
    if exe:
        at = start + dir1 + dir2
        program = _program_of(data[at : at + exe], data[at + exe : end])
    elif argv:
        raise RemoteProtocolError("a report's arguments without its executable")
    return PlainReport(
        function,
        fields,
        "forward" if outcome == 1 else "deny",
        errno,
        lost,
        result if outcome == 1 else -1,
        _directory_of(data[start : start + dir1]),
        _directory_of(data[start + dir1 : start + dir1 + dir2]),
        program,
        duration,
    )


def _program_of(exe: bytes, argv: bytes) -> tuple[str, tuple[str, ...]]:
    if len(argv) > REPORT_ARGV_MAX or (argv and not argv.endswith(b"\0")):
        raise RemoteProtocolError("a report's arguments are not NUL-terminated within their limit")
    return _directory_of(exe) or "", tuple(os.fsdecode(arg) for arg in argv.split(b"\0")[:-1])


def _directory_of(raw: bytes) -> str | None:
    """A report's directory (or executable) name, ``None`` when empty: absolute, no NUL."""
    if not raw:
        return None
    if raw[:1] != b"/" or b"\0" in raw:
        raise RemoteProtocolError("a report's directory or executable name is not an absolute path")
    return os.fsdecode(raw)
