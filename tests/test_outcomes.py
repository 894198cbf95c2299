"""A handler's outcome becomes an answer in one pure step, the same for every transport.

``answer_for(request, outcome, error_errno)`` is a function of its arguments
only: it logs nothing, closes nothing, sends nothing and leaves its
arguments as they were, so the master's sessions and the seccomp transport
can share it and a test can enumerate it. Each kind of outcome a handler
may return or raise is checked here against the answer the documentation's
table promises; the transports' own tests show the answer reaching the slave.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libc_service import FORWARD, PASS, AddrInfo, Errno, Stat, WithFds, deny
from libc_service.protocol.outcomes import FORWARDED, MAX_ERRNO, Answer, Failure, answer_for
from libc_service.protocol.replies import GAI_ERRORS
from libc_service.protocol.requests import GetaddrinfoRequest, OpenRequest, Request, StatRequest, UnlinkRequest
from libc_service.protocol.wire_header import MAX_ADDRINFO, reply_fd_limit

import strategies as s

OPEN = OpenRequest(path="/x", flags=["read_only"], pid=1, tid=1)
STAT = StatRequest(path="/x", pid=1, tid=1)
UNLINK = UnlinkRequest(path="/x", pid=1, tid=1)
GAI = GetaddrinfoRequest(node="example.test", pid=1, tid=1)
ADDRESSES = [AddrInfo("192.0.2.1", 80)]


@pytest.fixture(scope="module")
def open_fds() -> Iterator[tuple[int, int]]:
    """Two real descriptors a handler could hand over (a pipe's ends)."""
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _pure_answer(request: Request, outcome: object, error_errno: int = errno.EPERM) -> Answer:
    """``answer_for``, checked to log nothing, close or stat no descriptor, and give the same answer twice."""
    records = _Records()
    package = logging.getLogger("libc_service")
    package.addHandler(records)
    level = package.level
    package.setLevel(logging.DEBUG)
    forbidden = mock.Mock(side_effect=AssertionError("answer_for touched a descriptor"))
    try:
        with mock.patch("os.close", forbidden), mock.patch("os.fstat", forbidden), mock.patch("os.write", forbidden):
            first = answer_for(request, outcome, error_errno)
            second = answer_for(request, outcome, error_errno)
    finally:
        package.removeHandler(records)
        package.setLevel(level)
    assert records.records == [], "answer_for logged"
    assert first == second and type(first) is type(second)
    if isinstance(first, Failure) and isinstance(second, Failure):
        assert first.problem == second.problem and first.refused == second.refused
    return first


# ------------------------------------------------------------- every outcome kind


@pytest.mark.parametrize(
    ("request_", "outcome", "expected"),
    [
        pytest.param(UNLINK, 0, Answer("reply", 0), id="int"),
        pytest.param(OPEN, -(2**63), Answer("reply", -(2**63)), id="int, the 64-bit edge"),
        pytest.param(STAT, Stat(size=7), Answer("reply", Stat(size=7)), id="Stat"),
        pytest.param(GAI, ADDRESSES, Answer("reply", ADDRESSES), id="AddrInfo list"),
        pytest.param(GAI, [], Answer("reply", []), id="no addresses"),
        pytest.param(GAI, "noname", Answer("reply", "noname"), id="error name"),
        pytest.param(UNLINK, FORWARD, FORWARDED, id="FORWARD"),
        pytest.param(UNLINK, Errno(errno.EACCES), Answer("error", -1, errno.EACCES), id="Errno"),
        pytest.param(UNLINK, PermissionError(errno.EPERM, "no"), Answer("error", -1, errno.EPERM), id="OSError"),
        pytest.param(GAI, Errno(errno.EACCES), Answer("error", "system", errno.EACCES), id="Errno, getaddrinfo"),
        pytest.param(GAI, socket.gaierror(socket.EAI_NONAME, "no"), Answer("error", "noname"), id="gaierror"),
        pytest.param(UNLINK, deny(errno.EROFS), Answer("error", -1, errno.EROFS), id="deny()"),
        pytest.param(GAI, deny(errno.EACCES), Answer("error", "system", errno.EACCES), id="deny(), getaddrinfo"),
        pytest.param(UNLINK, OSError(MAX_ERRNO, "edge"), Answer("error", -1, MAX_ERRNO), id="the largest errno"),
    ],
)
def test_each_outcome_kind_has_its_answer(request_: Request, outcome: object, expected: Answer) -> None:
    answer = _pure_answer(request_, outcome)
    assert answer == expected and type(answer) is Answer
    assert answer.forwarded == (outcome is FORWARD)
    assert answer.summary == (expected.outcome, expected.result, expected.errno, 0)


def test_with_fds_carries_its_descriptors(open_fds: tuple[int, int]) -> None:
    r, w = open_fds
    assert _pure_answer(OPEN, WithFds(0, [r])) == Answer("reply", 0, 0, (r,))
    assert _pure_answer(STAT, WithFds(Stat(), (r, w))) == Answer("reply", Stat(), 0, (r, w))
    assert _pure_answer(OPEN, WithFds(0, [r])).summary == ("reply", 0, 0, 1)
    os.fstat(r), os.fstat(w)  # still open: the answer owns them, the transport closes them


@pytest.mark.parametrize(
    ("request_", "outcome", "problem"),
    [
        pytest.param(STAT, 0, "stat succeeds with a Stat, not int", id="int for stat"),
        pytest.param(OPEN, Stat(), "open results in an int, not Stat", id="Stat for open"),
        pytest.param(UNLINK, True, "unlink results in an int, not bool", id="bool"),
        pytest.param(UNLINK, 2**63, "result 9223372036854775808 does not fit in 64 bits", id="beyond 64 bits"),
        pytest.param(UNLINK, None, "unlink results in an int, not NoneType", id="None"),
        pytest.param(UNLINK, PASS, "unlink results in an int, not Sentinel", id="PASS"),
        pytest.param(GAI, "system", "the 'system' getaddrinfo error carries an errno: raise an OSError", id="system"),
        pytest.param(GAI, "nonsense", "unknown getaddrinfo error 'nonsense'", id="unknown name"),
        pytest.param(GAI, ["192.0.2.1"], "getaddrinfo results in a list of AddrInfo or an error name, not list"),
        pytest.param(GAI, ADDRESSES * (MAX_ADDRINFO + 1), f"at most {MAX_ADDRINFO} addresses per answer, not 129"),
        pytest.param(OPEN, WithFds(0, [-1]), "-1 is not a descriptor", id="negative descriptor"),
        pytest.param(OPEN, WithFds(0, ["3"]), "'3' is not a descriptor", id="a string for a descriptor"),  # type: ignore[list-item]
        pytest.param(OPEN, WithFds(0, 3), "3 is not a sequence of descriptors", id="one number"),  # type: ignore[arg-type]
    ],
)
def test_a_mistaken_outcome_is_a_failure_saying_why(request_: Request, outcome: object, problem: str) -> None:
    answer = _pure_answer(request_, outcome, errno.EIO)
    assert isinstance(answer, Failure)
    failed = "system" if request_.function == "getaddrinfo" else -1
    assert (answer.outcome, answer.result, answer.errno, answer.fds) == ("failure", failed, errno.EIO, ())
    assert answer.problem == problem


@pytest.mark.parametrize(
    "raised",
    [RuntimeError("bug"), OSError("no errno"), OSError(MAX_ERRNO + 1, "beyond MAX_ERRNO"), KeyboardInterrupt()],
    ids=["RuntimeError", "OSError without errno", "OSError beyond MAX_ERRNO", "BaseException"],
)
def test_an_exception_is_a_failure_carrying_it(raised: BaseException) -> None:
    answer = _pure_answer(UNLINK, raised)
    assert isinstance(answer, Failure) and answer.problem is raised
    assert answer.summary == ("failure", -1, errno.EPERM, 0)


def test_descriptors_of_a_refused_answer_are_left_for_whoever_acts_on_it(open_fds: tuple[int, int]) -> None:
    r, w = open_fds
    too_many = WithFds(0, [r, w])  # open's result is one descriptor
    answer = _pure_answer(OPEN, too_many)
    assert isinstance(answer, Failure) and answer.refused == (r, w) and answer.fds == ()
    assert answer.problem == f"a open reply carries at most {reply_fd_limit('open')} descriptors, not 2"
    wrong_result = _pure_answer(OPEN, WithFds(Stat(), [r]))
    assert isinstance(wrong_result, Failure) and wrong_result.refused == (r,)
    half = _pure_answer(OPEN, WithFds(0, [r, -5]))
    assert isinstance(half, Failure) and half.refused == (r,)  # only what is a descriptor is closed
    os.fstat(r), os.fstat(w)


# ---------------------------------------------------------------- as a property

_OUTCOMES: st.SearchStrategy[Any] = st.one_of(
    st.just(FORWARD),
    st.just(PASS),
    st.integers(-(2**64), 2**64),
    st.booleans(),
    s.stats,
    s.addrinfo_lists,
    st.sampled_from(["system", "nonsense", *GAI_ERRORS]),
    st.integers(1, MAX_ERRNO).map(Errno),
    st.integers(-5, MAX_ERRNO + 5).map(lambda code: OSError(code, "x")),
    st.integers(-12, 0).map(lambda code: socket.gaierror(code, "x")),
    st.sampled_from([None, 1.5, "x", object(), RuntimeError("bug"), ValueError()]),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(
    request=s.requests,
    outcome=_OUTCOMES | st.builds(WithFds, _OUTCOMES, st.lists(st.integers(-2, 2**31), max_size=5)),
    error_errno=st.integers(1, MAX_ERRNO),
)
def test_any_outcome_gives_one_well_formed_answer(request: Request, outcome: Any, error_errno: int) -> None:
    answer = _pure_answer(request, outcome, error_errno)
    getaddrinfo = request.function == "getaddrinfo"
    assert answer.outcome in ("reply", "forward", "error", "failure")
    assert (answer.outcome == "forward") == (outcome is FORWARD) == answer.forwarded
    if answer.outcome == "forward":
        assert (answer.result, answer.errno, answer.fds) == (None, 0, ())
    elif answer.outcome == "failure":
        assert isinstance(answer, Failure)
        assert (answer.result, answer.errno, answer.fds) == ("system" if getaddrinfo else -1, error_errno, ())
        given = tuple(outcome.fds) if isinstance(outcome, WithFds) else ()
        assert set(answer.refused) <= set(given)
    elif answer.outcome == "error":
        assert 0 <= answer.errno <= MAX_ERRNO
        assert answer.fds == ()
        if not getaddrinfo:
            assert answer.result == -1 and answer.errno > 0
    else:
        assert answer.errno == 0
        assert len(answer.fds) <= reply_fd_limit(request.function)
        assert all(0 <= fd < 2**31 for fd in answer.fds)
        if request.function in ("stat", "lstat"):
            assert isinstance(answer.result, Stat)
        elif getaddrinfo:
            assert isinstance(answer.result, list) or answer.result in GAI_ERRORS
        else:
            assert type(answer.result) is int and -(2**63) <= answer.result < 2**63
