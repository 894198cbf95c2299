"""Reports: calls the shim decided with the rule table, told to the master afterwards.

The codec is strict like the request codec (a malformed report is a
``RemoteProtocolError``, never another exception), and ``trace`` shows
the calls the shim decided as it shows the ones the master decided.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service import Router, spawn

from libc_service.protocol import wire_header

from libc_service.protocol import wire_reports

from libc_service.protocol import wire_requests
from libc_service.protocol.requests import OpenRequest, RenameRequest
from libc_service.policy.router import Decision
from libc_service.tools.tracing import Tracer, trace_router
from shimtools import needs_shim


def _report(
    outcome: int,
    errno: int,
    request: bytes,
    lost: int = 0,
    result: int = 0,
    directories: tuple[bytes, bytes] | None = None,
    program: tuple[bytes, bytes] = (b"", b""),
    duration: int = 0,
) -> bytes:
    """A report; a decided call's (outcomes other than 3) has its names (none by default)."""
    header = wire_reports.REPORT.pack(
        wire_header.REPORT_MAGIC, wire_header.VERSION, outcome, 0, errno, lost, result, duration
    )
    if outcome == 3 and directories is None:
        return header + request
    first, second = directories or (b"", b"")
    names = wire_reports.REPORT_NAMES.pack(len(first), len(second), len(program[0]), len(program[1]))
    return header + names + first + second + program[0] + program[1] + request


_OPEN = wire_requests.encode_request(
    OpenRequest(function="open", pid=7, tid=8, request_id=0, path="/etc/hostname", flags=frozenset({"read_only"}))
)[0]


def test_a_forwarded_and_a_denied_report_decode_to_their_request() -> None:
    forwarded = wire_reports.decode_report(_report(1, 0, _OPEN, lost=3))
    assert forwarded.outcome == "forward" and forwarded.errno == 0 and forwarded.lost == 3
    assert str(forwarded.request.path) == "/etc/hostname" and forwarded.request.pid == 7  # type: ignore[union-attr]
    denied = wire_reports.decode_report(_report(2, 13, _OPEN))
    assert denied.outcome == "deny" and denied.errno == 13
    failed = wire_reports.decode_report(_report(1, 2, _OPEN, result=-1, duration=1234))
    assert isinstance(failed, wire_reports.Report) and failed.result == -1 and failed.errno == 2
    assert failed.duration_ns == 1234 and denied.duration_ns == 0  # type: ignore[union-attr]


_RENAME = wire_requests.encode_request(
    RenameRequest(function="rename", pid=7, tid=8, request_id=0, path1="a", path2="b")
)[0]


def test_a_report_names_the_directories_of_its_relative_paths() -> None:
    plain = wire_reports.decode_report(_report(1, 0, _OPEN))
    assert isinstance(plain, wire_reports.Report) and plain.directory is None and plain.directory2 is None
    renamed = wire_reports.decode_report(_report(1, 0, _RENAME, directories=(b"/srv/one", b"/srv/two")))
    assert isinstance(renamed, wire_reports.Report)
    assert (renamed.directory, renamed.directory2) == ("/srv/one", "/srv/two")
    assert str(renamed.request.path1) == "a"  # type: ignore[union-attr]
    second_only = wire_reports.decode_report(_report(2, 13, _RENAME, directories=(b"", b"/tmp")))
    assert isinstance(second_only, wire_reports.Report) and (second_only.directory, second_only.directory2) == (
        None,
        "/tmp",
    )
    first = wire_reports.decode_report(
        _report(1, 0, _OPEN, directories=(b"/d", b""), program=(b"/bin/cat", b"cat\0-n\0"))
    )
    assert isinstance(first, wire_reports.Report) and first.program == ("/bin/cat", ("cat", "-n"))
    assert first.directory == "/d" and str(first.request.path) == "/etc/hostname"  # type: ignore[union-attr]


def test_a_forwarded_calls_result_decodes_to_its_identity() -> None:
    result = wire_reports.decode_report(
        _report(3, 0, wire_reports.REPORT_CALL.pack(7, 8, 42, wire_header.CODE["open"], 0), lost=1, result=3)
    )
    assert result == wire_reports.ForwardResult(pid=7, tid=8, request_id=42, function="open", result=3, errno=0, lost=1)
    failed = wire_reports.decode_report(
        _report(3, 2, wire_reports.REPORT_CALL.pack(7, 8, 43, wire_header.CODE["stat"], 0), result=-1)
    )
    assert isinstance(failed, wire_reports.ForwardResult) and failed.errno == 2


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"LCSo",
        _report(3, 0, _OPEN),
        _report(4, 0, _OPEN),
        _report(1, 4096, _OPEN),
        _report(2, 0, _OPEN),
        _report(1, 0, b""),
        _report(3, 0, wire_reports.REPORT_CALL.pack(7, 8, 42, 1, 0)[:-1]),
        _report(3, 0, wire_reports.REPORT_CALL.pack(7, 8, 42, 0, 0)),
        _report(3, 0, wire_reports.REPORT_CALL.pack(7, 8, 42, 1, 1)),
        _report(1, 0, _OPEN[:-1]),
        b"LCSr" + _report(1, 0, _OPEN)[4:],
        _report(1, 0, _OPEN, directories=(b"relative", b"")),
        _report(1, 0, _OPEN, directories=(b"/a\0b", b"")),
        _report(1, 0, _OPEN, program=(b"", b"cat\0")),
        _report(1, 0, _OPEN, program=(b"/bin/cat", b"cat")),
        _report(1, 0, _OPEN, program=(b"cat", b"cat\0")),
        wire_reports.REPORT.pack(wire_header.REPORT_MAGIC, wire_header.VERSION, 1, 0, 0, 0, 0, 0) + b"\x00",
        _report(2, 13, _OPEN, duration=1),
        wire_reports.REPORT.pack(wire_header.REPORT_MAGIC, wire_header.VERSION, 1, 0, 0, 0, 0, 0)
        + wire_reports.REPORT_NAMES.pack(9999, 0, 0, 0)
        + _OPEN,
    ],
)
def test_a_malformed_report_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(wire_header.RemoteProtocolError):
        wire_reports.decode_report(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 4), st.integers(0, 5000))
def test_any_bytes_decode_or_raise_a_protocol_error(tail: bytes, outcome: int, errno: int) -> None:
    for data in (tail, _report(outcome, errno, tail), _report(outcome, errno, _OPEN[: len(tail)] + tail)):
        try:
            wire_reports.decode_report(data)
        except wire_header.RemoteProtocolError:
            pass


@needs_shim
def test_trace_shows_the_calls_the_shim_decided(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("content\n")
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "trace", "--", "cat", str(tmp_path / "f"), "/nonexistent/file"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f'open("{tmp_path / "f"}", read_only) = 3 [forwarded]' in done.stderr
    assert 'open("/nonexistent/file", read_only) = -1 ENOENT (No such file or directory) [forwarded]' in done.stderr


# ------------------------------------------------------- forwarded calls' results


def _forwarded(pid: int = 7, tid: int = 8, request_id: int = 42) -> Decision:
    request = OpenRequest(
        function="open", pid=pid, tid=tid, request_id=request_id, path="/etc/hostname", flags=frozenset({"read_only"})
    )
    return Decision(request, "default", "forward", None, 0, 0, 0, "pid 7")


def test_a_held_forwarded_decision_reaches_observers_once_with_its_result() -> None:
    router = Router()
    seen: list[Decision] = []
    router.observe(seen.append)
    router.hold_forwarded(True)
    router.report(_forwarded())
    assert seen == []  # waiting for the slave's report
    router.forward_result(7, 8, 42, 3, 0)
    assert [(d.outcome, d.result, d.errno) for d in seen] == [("forward", 3, 0)]
    router.forward_result(7, 8, 42, 3, 0)  # a duplicate finds nothing
    assert len(seen) == 1


def test_a_result_before_its_decision_and_a_lost_result_each_give_one_decision() -> None:
    router = Router()
    seen: list[Decision] = []
    router.observe(seen.append)
    router.hold_forwarded(True)
    router.forward_result(7, 8, 1, -1, 2)  # the report overtook the decision
    router.report(_forwarded(request_id=1))
    router.report(_forwarded(request_id=2))  # its report never comes
    router.report(_forwarded(pid=9, request_id=3))
    assert [(d.request.request_id, d.result, d.errno) for d in seen] == [(1, -1, 2)]
    router.release_forwarded((7,))
    assert [(d.request.request_id, d.result) for d in seen] == [(1, -1), (2, None)]
    router.hold_forwarded(False)  # the last transport: everything still held goes out
    assert [(d.request.request_id, d.result) for d in seen] == [(1, -1), (2, None), (3, None)]
    router.report(_forwarded(request_id=4))  # not holding any more: at once, without a result
    assert seen[-1].request.request_id == 4 and seen[-1].result is None


@needs_shim
async def test_reports_lost_under_pressure_are_counted_not_waited_for(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An observer that blocks the master's loop does not slow the slave: the reports the
    registration socket cannot take are dropped and counted (the next one says how many).

    The observer blocks the loop until the slave has made all its calls: a slave that
    waited for its reports could never get there (the test then fails when the observer
    gives up, after a bound that only a hang reaches). The slave then keeps calling
    until the master has logged the loss, which one of those calls' reports carries.
    """
    router = Router()
    done, lost = tmp_path / "done", tmp_path / "lost"
    count = 0
    released_by_slave: list[bool] = []

    def blocking(decision: Decision) -> None:
        nonlocal count
        count += 1
        if count == 1:  # blocks the loop: nothing reads the registration socket meanwhile
            deadline = time.monotonic() + 120
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            released_by_slave.append(done.exists())

    class LostSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "were lost" in record.getMessage():
                lost.touch()

    router.observe(blocking)
    program = textwrap.dedent(f"""
        import os, sys, time
        for _ in range(20000):
            os.stat("/etc/hostname")
        open({str(done)!r}, "w").close()
        for _ in range(12000):  # until the master says it counted the loss (a hang's bound)
            if os.path.exists({str(lost)!r}):  # a call too: its report carries the count
                break
            time.sleep(0.01)
    """)
    caplog.set_level(logging.WARNING, logger="libc_service")
    handler = LostSeen()
    logging.getLogger("libc_service").addHandler(handler)
    try:
        async with spawn([sys.executable, "-c", program], router, reports=True) as process:
            assert await process.wait() == 0
    finally:
        logging.getLogger("libc_service").removeHandler(handler)
    assert released_by_slave == [True], "the slave waited for its reports"
    assert count < 20000
    assert any("were lost" in record.getMessage() for record in caplog.records), caplog.text


@needs_shim
async def test_trace_decides_relative_paths_in_the_shim_with_no_round_trip(tmp_path: Path) -> None:
    """Under ``trace``'s router, 2000 relative opens reach the master as reports only: the router
    decides none of them (a route on relative paths would make each a round trip), yet the trace
    has every one, with its directory."""
    (tmp_path / "f").write_text("x")
    output = io.StringIO()
    router = trace_router(Tracer(output))
    decided: list[str] = []
    decide_now = router.decide_now

    def counting(call: Any) -> Any:
        decided.append(str(getattr(call.request, "path", "")))
        return decide_now(call)

    router.decide_now = counting  # type: ignore[method-assign]
    program = "import os\nfor _ in range(2000):\n    os.close(os.open('f', os.O_RDONLY))\n"
    async with spawn([sys.executable, "-c", program], router, cwd=tmp_path, reports="wait") as process:
        assert await process.wait() == 0
    assert "f" not in decided
    lines = [
        line
        for line in output.getvalue().splitlines()
        if f'open("f" (in "{tmp_path}"), close_on_exec|read_only' in line
    ]
    assert len(lines) == 2000


# ------------------------------------------------- who sent a report (SCM_CREDENTIALS)

#: A process of the tree that writes reports about other processes on the registration socket:
#: a refusal of a path no process asked for (about ``argv[1]``, or about its sibling with "sibling"),
#: then a result for a forwarded call of that process. Its own opens are reported honestly by its shim.
FORGER = textwrap.dedent("""
    import os, signal, socket, sys, time
    from libc_service.protocol import wire_header
    from libc_service.protocol import wire_reports
    from libc_service.protocol import wire_requests
    from libc_service.protocol.requests import OpenRequest

    def report(pid, path):
        request = wire_requests.encode_request(OpenRequest(
            function="open", pid=pid, tid=pid, request_id=0, path=path, flags=frozenset({"read_only"})))[0]
        header = wire_reports.REPORT.pack(wire_header.REPORT_MAGIC, wire_header.VERSION, 2, 0, 13, 0, -1, 0)
        names = wire_reports.REPORT_NAMES.pack(0, 0, 0, 0)
        return header + names + request

    sock = socket.socket(fileno=int(os.environ["LIBC_SERVICE_FD"]))
    if sys.argv[3:] == ["ask"]:  # a call the shim always asks the master: a served tree from here on
        socket.getaddrinfo("127.0.0.1", 80)
    sibling = os.fork()
    if sibling == 0:  # a sibling of the forger below: it opens its file honestly, then waits
        os.close(os.open(sys.argv[2], os.O_RDONLY))
        time.sleep(30)
        os._exit(0)
    forger = os.fork()
    if forger == 0:
        claimed = sibling if sys.argv[1] == "sibling" else int(sys.argv[1])
        sock.send(report(claimed, "/forged/" + sys.argv[1]))
        os._exit(0)
    os.waitpid(forger, 0)
    os.close(os.open(sys.argv[2], os.O_RDONLY))
    time.sleep(0.5)
    os.kill(sibling, signal.SIGKILL)
    os.waitpid(sibling, 0)
""")


@needs_shim
@pytest.mark.parametrize("claimed", ["1", "sibling"])
async def test_a_report_about_another_process_is_dropped_and_counted(
    tmp_path: Path, claimed: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A process of the tree forges a refusal about pid 1, or about its own sibling: the kernel
    names the sender, the report is dropped and counted; the tree's honest reports still arrive."""
    (tmp_path / "honest").write_text("x")
    router = Router()
    seen: list[Decision] = []
    router.observe(seen.append)
    caplog.set_level(logging.WARNING, logger="libc_service")
    argv = [sys.executable, "-c", FORGER, claimed, str(tmp_path / "honest")]
    async with spawn(argv, router, reports=True) as process:
        assert await process.wait() == 0
    paths = [str(getattr(decision.request, "path", "")) for decision in seen]
    assert not [path for path in paths if path.startswith("/forged")]
    honest = {
        decision.request.pid for decision in seen if str(getattr(decision.request, "path", "")).endswith("honest")
    }
    assert len(honest) == 2 and process.pid in honest  # the program's and its (sibling) child's own reports
    assert process.reports_dropped == 1
    assert "1 report(s) dropped" in caplog.text


@needs_shim
def test_trace_shows_no_line_a_process_made_up_about_pid_1(tmp_path: Path) -> None:
    (tmp_path / "honest").write_text("x")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "libc_service",
            "trace",
            "--",
            sys.executable,
            "-c",
            FORGER,
            "1",
            str(tmp_path / "honest"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'open("/forged/' not in done.stderr and "[pid 1 " not in done.stderr
    assert f'"{tmp_path / "honest"}"' in done.stderr
    assert "1 report(s) dropped" in done.stderr


@needs_shim
@pytest.mark.parametrize("claimed", ["1", "sibling"])
@pytest.mark.parametrize("served", ["without_a_loop", "on_a_loop"])
def test_trace_drops_a_made_up_report_whether_or_not_the_master_serves_on_a_loop(
    tmp_path: Path, claimed: str, served: str
) -> None:
    """Opens are decided by the shim's rules: their reports are served without a loop until a process asks
    the master something (a lookup), and on its loop from then on. Either way the made-up line is dropped
    and counted, the honest ones shown."""
    (tmp_path / "honest").write_text("x")
    path = str(tmp_path / "honest")
    ask = ["ask"] if served == "on_a_loop" else []
    command = [sys.executable, "-c", FORGER, claimed, path, *ask]
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "trace", "-e", "open", "--", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'open("/forged/' not in done.stderr and "[pid 1 " not in done.stderr
    honest_lines = [line for line in done.stderr.splitlines() if f'open("{path}"' in line]
    assert len(honest_lines) == 2, done.stderr  # the program's and its sibling's
    assert "1 report(s) dropped" in done.stderr


#: A process of the tree that registers a channel of its own and asks, on it, a call it says pid 1 made.
CHANNEL_FORGER = textwrap.dedent("""
    import array, os, socket
    from libc_service import Slave
    from libc_service.protocol import wire_registration
    from libc_service.protocol.requests import OpenRequest

    registration = socket.socket(fileno=int(os.environ["LIBC_SERVICE_FD"]))
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rights = array.array("i", [theirs.fileno()])
    registration.sendmsg([wire_registration.encode_registration(os.getpid())], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    theirs.close()
    forged = OpenRequest(function="open", pid=1, tid=1, request_id=0, path="/forged/asked", flags=frozenset({"read_only"}))
    try:
        Slave(mine).send_request(forged)
    except Exception as exc:
        print("refused:", type(exc).__name__, flush=True)
""")


@needs_shim
async def test_a_call_asked_for_another_process_on_ones_own_channel_closes_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    seen: list[Decision] = []
    router.observe(seen.append)
    caplog.set_level(logging.WARNING, logger="libc_service")
    async with spawn([sys.executable, "-c", CHANNEL_FORGER], router, stdout=asyncio.subprocess.PIPE) as process:
        out, _ = await process.communicate()
    assert b"refused:" in out
    assert not [d for d in seen if d.request.pid == 1 or str(getattr(d.request, "path", "")) == "/forged/asked"]
    assert f"a request claims pid 1 on pid {process.pid}'s channel" in caplog.text


@needs_shim
async def test_the_reports_of_a_descendant_whose_parent_exited_are_kept(tmp_path: Path) -> None:
    """A double fork: the grandchild reports after its parent exited (it was reparented out of the
    program's parent chain); it is still of the tree (the program's session, started since)."""
    (tmp_path / "orphan").write_text("x")
    program = textwrap.dedent("""
        import os, sys, time
        done, told = os.pipe()
        if os.fork() == 0:
            parent = os.getpid()
            if os.fork() == 0:
                deadline = time.monotonic() + 30
                while os.getppid() == parent and time.monotonic() < deadline:
                    time.sleep(0.01)  # until its parent has exited
                os.close(os.open(sys.argv[1], os.O_RDONLY))
                os.write(told, b"x")
                os._exit(0)
            os._exit(0)
        os.close(told)
        os.read(done, 1)  # the program ends once the grandchild has reported
    """)
    router = Router()
    seen: list[Decision] = []
    router.observe(seen.append)
    async with spawn([sys.executable, "-c", program, str(tmp_path / "orphan")], router, reports=True) as process:
        assert await process.wait() == 0
    assert [d for d in seen if str(getattr(d.request, "path", "")).endswith("orphan")]
    assert process.reports_dropped == 0
