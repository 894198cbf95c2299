"""A report becomes a trace line without a request model, and says exactly what the model path says.

``trace`` decodes the reports of the calls the shim decided with
``wire_reports.plain_report`` (no pydantic model) and writes them with
``Tracer.report``; the same report through ``wire_reports.decode_report`` and a
``Decision`` must give the same line, the same JSON record, and the same
refusal of malformed bytes.
"""

from __future__ import annotations

import io
import json
import subprocess
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from libc_service import FORWARD, Router, spawn
from libc_service.protocol import wire_header
from libc_service.protocol import wire_reports
from libc_service.protocol import wire_requests
from libc_service.protocol.catalogue import FUNCTIONS
from libc_service.protocol.requests import REQUEST_TYPES, Request
from libc_service.policy.router import Decision
from libc_service.tools.tracing import ARGUMENTS, Tracer
from shimtools import needs_shim

#: Absolute directory names, or none.
_directories = st.none() | st.sampled_from(["/", "/srv/one", "/tmp/ä", "/a b"])
_programs = st.none() | st.tuples(st.sampled_from(["/bin/cat", "/usr/bin/dash"]), st.lists(st.text(max_size=5)))


def _report(
    outcome: int,
    errno: int,
    result: int,
    request: bytes,
    directory: str | None,
    directory2: str | None,
    program: tuple[str, list[str]] | None,
    duration: int = 0,
) -> bytes:
    first, second = (name.encode() if name else b"" for name in (directory, directory2))
    exe, argv = (program[0].encode(), b"".join(arg.encode() + b"\0" for arg in program[1])) if program else (b"", b"")
    header = wire_reports.REPORT.pack(
        wire_header.REPORT_MAGIC, wire_header.VERSION, outcome, 0, errno, 0, result, duration
    )
    names = wire_reports.REPORT_NAMES.pack(len(first), len(second), len(exe), len(argv))
    return header + names + first + second + exe + argv + request


def _decision(report: wire_reports.Report) -> Decision:
    """The decision the master's path builds from a report (``SlaveProcess._report``)."""
    pid = report.request.pid
    if report.outcome == "forward":
        result, errno = report.result, report.errno if report.result < 0 else 0
        summary: tuple[Any, ...] = ("forward", result, errno)
    else:
        summary = ("error", -1, report.errno)
    return Decision(
        report.request,
        "default",
        *summary,
        0,
        0,
        f"rules {pid}",
        directory=report.directory,
        directory2=report.directory2,
        program=report.program,
        duration_ns=report.duration_ns if report.outcome == "forward" else None,
    )


def _both(data: bytes, json_lines: bool) -> tuple[str, str]:
    """The trace of ``data`` through the model path and through the plain path."""
    by_model, by_plain = io.StringIO(), io.StringIO()
    decoded = wire_reports.decode_report(data)
    assert isinstance(decoded, wire_reports.Report)
    Tracer(by_model, json_lines=json_lines)(_decision(decoded))
    plain = wire_reports.plain_report(data)
    assert isinstance(plain, wire_reports.PlainReport)
    Tracer(by_plain, json_lines=json_lines).report(plain)
    return by_model.getvalue(), by_plain.getvalue()


def test_the_argument_order_is_the_models() -> None:
    assert ARGUMENTS == {function: REQUEST_TYPES[function].ARGUMENTS for function in FUNCTIONS}


@settings(max_examples=300, deadline=None)
@given(
    strategies.requests,
    st.sampled_from([1, 2]),
    st.integers(1, 4095),
    st.integers(-1, 2**31),
    _directories,
    _directories,
    _programs,
    st.booleans(),
)
def test_a_report_gives_the_same_line_with_or_without_its_model(
    request: Request,
    outcome: int,
    errno: int,
    result: int,
    directory: str | None,
    directory2: str | None,
    program: tuple[str, list[str]] | None,
    json_lines: bool,
) -> None:
    encoded, fds = wire_requests.encode_request(request)
    errno = errno if outcome == 2 or result < 0 else 0
    data = _report(outcome, errno, result, encoded, directory, directory2, program)
    if fds:  # a report carries no descriptor: both refuse it
        for decode in (wire_reports.decode_report, wire_reports.plain_report):
            try:
                decode(data)
            except wire_header.RemoteProtocolError:
                continue
            raise AssertionError(f"{decode.__name__} accepted a report that announces descriptors")
        return
    by_model, by_plain = _both(data, json_lines)
    if json_lines:
        model_records = [json.loads(line) for line in by_model.splitlines()]
        plain_records = [json.loads(line) for line in by_plain.splitlines()]
        for record in model_records + plain_records:
            record.pop("time")
        assert model_records == plain_records
    else:
        assert by_model == by_plain


@settings(max_examples=500, deadline=None)
@given(strategies.requests, st.binary(max_size=40), st.integers(0, 200), st.integers(0, 4), st.integers(0, 5000))
def test_a_malformed_report_is_refused_by_both_decoders(
    request: Request, noise: bytes, at: int, outcome: int, errno: int
) -> None:
    """Bytes overwritten anywhere in a report: the plain decoder refuses exactly what the model decoder refuses."""
    encoded, _ = wire_requests.encode_request(request)
    data = bytearray(_report(outcome, errno, 0, encoded, None, None, None))
    data[at : at + len(noise)] = noise
    outcomes = []
    for decode in (wire_reports.decode_report, wire_reports.plain_report):
        try:
            decoded = decode(bytes(data))
        except wire_header.RemoteProtocolError:
            outcomes.append("refused")
        else:
            outcomes.append("forward result" if isinstance(decoded, wire_reports.ForwardResult) else "call")
    assert outcomes[0] == outcomes[1]


@needs_shim
def test_reports_are_served_without_a_loop_until_a_process_asks() -> None:
    """``wait_unserved(reports_idle)``: the reports reach the plain observers as they come, no loop runs,
    and the program's status is returned when it never asked anything."""
    router = Router(default=FORWARD)
    router.observe(lambda decision: None)
    seen: list[wire_reports.PlainReport] = []
    idle: list[int] = []
    process = spawn(["cat", "/etc/hostname"], router, stdout=subprocess.DEVNULL, reports="wait")
    process.observe_reports(seen.append)
    process.launch()
    assert process.wait_unserved(lambda: idle.append(len(seen))) == 0
    opens = [report for report in seen if report.function == "open" and report.fields["path"] == "/etc/hostname"]
    assert len(opens) == 1 and opens[0].outcome == "forward" and opens[0].result >= 0
    assert opens[0].program is not None and opens[0].program[1] == ("cat", "/etc/hostname")
    assert idle and idle[-1] == len(seen)  # told once the socket was drained
