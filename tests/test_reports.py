"""Reports: calls the shim decided with the rule table, told to the master afterwards.

The codec is strict like the request codec (a malformed report is a
``RemoteProtocolError``, never another exception), and ``trace`` shows
the calls the shim decided as it shows the ones the master decided.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service import wire
from libc_service.requests import OpenRequest
from shimtools import needs_shim


def _report(outcome: int, errno: int, request: bytes, lost: int = 0) -> bytes:
    return wire.REPORT.pack(wire.REPORT_MAGIC, wire.VERSION, outcome, 0, errno, lost) + request


_OPEN = wire.encode_request(OpenRequest(function="open", pid=7, tid=8, request_id=0, path="/etc/hostname",
                                        flags=frozenset({"read_only"})))[0]


def test_a_forwarded_and_a_denied_report_decode_to_their_request() -> None:
    forwarded = wire.decode_report(_report(1, 0, _OPEN, lost=3))
    assert forwarded.outcome == "forward" and forwarded.errno == 0 and forwarded.lost == 3
    assert str(forwarded.request.path) == "/etc/hostname" and forwarded.request.pid == 7  # type: ignore[union-attr]
    denied = wire.decode_report(_report(2, 13, _OPEN))
    assert denied.outcome == "deny" and denied.errno == 13


@pytest.mark.parametrize("data", [
    b"", b"LCSo", _report(3, 0, _OPEN), _report(1, 13, _OPEN), _report(2, 0, _OPEN), _report(1, 0, b""),
    _report(1, 0, _OPEN[:-1]), b"LCSr" + _report(1, 0, _OPEN)[4:],
])
def test_a_malformed_report_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode_report(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 3), st.integers(0, 5000))
def test_any_bytes_decode_or_raise_a_protocol_error(tail: bytes, outcome: int, errno: int) -> None:
    for data in (tail, _report(outcome, errno, tail), _report(outcome, errno, _OPEN[:len(tail)] + tail)):
        try:
            wire.decode_report(data)
        except wire.RemoteProtocolError:
            pass


@needs_shim
def test_trace_shows_the_calls_the_shim_decided(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("content\n")
    done = subprocess.run([sys.executable, "-m", "libc_service", "trace", "--", "cat", str(tmp_path / "f"),
                           "/nonexistent/file"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f'open("{tmp_path / "f"}", read_only, NULL) = forwarded' in done.stderr
    assert 'open("/nonexistent/file", read_only, NULL) = forwarded' in done.stderr
