"""Landlock's own refusals, read from the kernel's audit log, in the at-exit report of ``run --sandbox``."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libc_service.confinement.landlock_audit import (
    AUDIT_LANDLOCK_ACCESS,
    AUDIT_LANDLOCK_DOMAIN,
    AccessRecord,
    AuditUnavailable,
    DomainRecord,
    LandlockDenials,
    audit_enabled,
    denial_lines,
    parse_fields,
    parse_messages,
    parse_record,
    unavailable_reason,
)
from libc_service.tools.refusals import RefusalReport
from libc_service.protocol.requests import OpenRequest
from libc_service.policy.router import Decision
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

# Records as this kernel (6.18, Landlock ABI 7) sent them for `cat /etc/shadow`
# under a forwarding policy: glibc's own opens, then the forwarded one.
ACCESS = b'audit(1796105154.991:21): domain=157a7876b blockers=fs.read_file path="/etc/shadow" dev="vda" ino=819'
ALLOCATED = (
    b"audit(1796105154.987:19): domain=157a7876b status=allocated mode=enforcing pid=640 uid=0 "
    b'exe="/root/.pyenv/versions/3.11.7/bin/python3.11" comm="python"'
)
DEALLOCATED = b"audit(1796105155.043:22): domain=157a7876b status=deallocated denials=3"
SYSCALL = (
    b"audit(1796105154.991:21): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c ppid=635 "
    b'pid=640 comm="cat" exe="/usr/bin/cat" key=(null)'
)


def message(kind: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + payload + b"\x00" * (-length % 4)


# ------------------------------------------------------------------ parsing


def test_an_access_record_names_its_domain_blockers_and_path() -> None:
    assert parse_record(AUDIT_LANDLOCK_ACCESS, ACCESS) == AccessRecord(
        "157a7876b", ("fs.read_file",), "/etc/shadow", 21
    )


def test_domain_records_name_the_creator_and_the_end() -> None:
    assert parse_record(AUDIT_LANDLOCK_DOMAIN, ALLOCATED) == DomainRecord("157a7876b", "allocated", 640)
    assert parse_record(AUDIT_LANDLOCK_DOMAIN, DEALLOCATED) == DomainRecord("157a7876b", "deallocated", None, 3)


def test_other_records_are_not_landlock_ones() -> None:
    assert parse_record(1300, SYSCALL) is None
    assert parse_record(AUDIT_LANDLOCK_ACCESS, b"audit(1.2:3): blockers=fs.read_file") is None  # no domain


def test_a_path_the_kernel_wrote_in_hex_is_decoded() -> None:
    # A path with a space (or a quote, a control character) is logged as hex, unquoted.
    text = b'audit(1.2:3): domain=1a blockers=fs.make_reg,fs.refer path=2F746D702F6120622F63 dev="vda" ino=365'
    record = parse_record(AUDIT_LANDLOCK_ACCESS, text)
    assert record == AccessRecord("1a", ("fs.make_reg", "fs.refer"), "/tmp/a b/c", 3)
    assert parse_fields('ino=365 dev="vda"') == {"ino": "365", "dev": "vda"}  # only string fields are hex


def test_netlink_framing_yields_each_message_and_stops_at_a_torn_one() -> None:
    data = message(AUDIT_LANDLOCK_ACCESS, ACCESS) + message(AUDIT_LANDLOCK_DOMAIN, ALLOCATED)
    assert [kind for kind, _ in parse_messages(data)] == [AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN]
    assert [kind for kind, _ in parse_messages(data[:-30])] == [AUDIT_LANDLOCK_ACCESS]


@given(st.binary(max_size=512), st.sampled_from([AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, 1300]))
def test_no_bytes_crash_the_parser(data: bytes, kind: int) -> None:
    for _, payload in parse_messages(data):
        parse_record(kind, payload)
    record = parse_record(kind, data)
    assert record is None or record.domain
    denials = LandlockDenials()
    denials.feed(parse_messages(data))
    denials.feed([(kind, data)])
    denial_lines(denials.denials([os.getpid()]))


@given(st.text(max_size=300))
def test_no_text_crashes_the_field_parser(text: str) -> None:
    fields = parse_fields(text)
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in fields.items())


# ------------------------------------------------------------------ selection and lines


def test_only_the_slave_trees_domains_are_reported() -> None:
    denials = LandlockDenials()
    other = ALLOCATED.replace(b"157a7876b", b"99").replace(b"pid=640", b"pid=641")
    denials.feed(
        [
            (AUDIT_LANDLOCK_ACCESS, ACCESS),
            (AUDIT_LANDLOCK_DOMAIN, ALLOCATED),
            (AUDIT_LANDLOCK_ACCESS, ACCESS.replace(b"157a7876b", b"99")),
            (AUDIT_LANDLOCK_DOMAIN, other),
        ]
    )
    assert [r.domain for r in denials.denials({640})] == ["157a7876b"]
    assert denials.denials({1234}) == []


def test_a_domain_created_by_a_descendant_is_the_slaves() -> None:
    denials = LandlockDenials()
    denials.feed([(AUDIT_LANDLOCK_DOMAIN, ALLOCATED.replace(b"pid=640", f"pid={os.getpid()}".encode()))])
    denials.feed([(AUDIT_LANDLOCK_ACCESS, ACCESS)])
    assert len(denials.denials({os.getppid()})) == 1  # the creator's ancestors were read when it showed up


def test_denials_are_counted_by_call_blockers_and_tree() -> None:
    records = [
        AccessRecord("1", ("fs.read_file",), "/etc/shadow"),
        AccessRecord("1", ("fs.read_file",), "/etc/ssl/private/key.pem"),
        AccessRecord("1", ("fs.read_file",), "/etc/gshadow"),
        AccessRecord("1", ("fs.read_file",), "/proc/640/status"),
        AccessRecord("1", ("fs.make_reg", "fs.refer"), "/usr/local"),
        AccessRecord("1", ("net.connect_tcp",)),
    ]
    assert denial_lines(records) == [
        "refused 3× open beneath /etc by Landlock (fs.read_file)",
        "refused 1× open beneath /proc/640 by Landlock (fs.read_file)",
        "refused 1× create beneath /usr by Landlock (fs.make_reg,fs.refer)",
        "refused 1× connect by Landlock (net.connect_tcp)",
    ]


def test_the_report_says_why_landlock_refusals_are_missing() -> None:
    report = RefusalReport()
    report.landlock_unavailable = "the kernel's audit is disabled (`auditctl -e 1` enables it)"
    assert report.lines() == []  # the program never ran: the run's own error says enough
    report.pids.add(1234)
    assert report.lines() == []  # a clean run stays quiet
    assert report.lines(failed=True) == [
        "Landlock's own refusals are not reported: the kernel's audit is disabled (`auditctl -e 1` enables it)"
    ]


def test_an_old_abi_is_a_reason() -> None:
    assert unavailable_reason(abi=6) == "Landlock ABI 6 logs no denials (audit records need ABI 7, Linux 6.15)"


# ------------------------------------------------------------------ end to end

_AUDIT_GET, _AUDIT_SET, _AUDIT_STATUS_ENABLED = 1000, 1001, 1


def _set_audit(enabled: bool) -> None:
    """The test's own switch (root only): the library never changes the audit configuration."""
    body = struct.pack("=8I", _AUDIT_STATUS_ENABLED, int(enabled), 0, 0, 0, 0, 0, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 9) as sock:
        sock.settimeout(2)
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), _AUDIT_SET, 1 | 4, 1, 0) + body)  # REQUEST | ACK
        for kind, payload in parse_messages(sock.recv(65536)):
            if kind == 2:  # NLMSG_ERROR: the ack
                code = struct.unpack_from("=i", payload)[0]
                if code:
                    raise OSError(-code, os.strerror(-code))


@contextlib.contextmanager
def audit_on() -> Iterator[None]:
    """Audit enabled for the block, and the previous state restored after it."""
    try:
        previous = audit_enabled()
    except AuditUnavailable as exc:  # no audit in this kernel
        pytest.skip(str(exc))
    if previous is None:
        yield  # cannot tell, cannot change: run as it is
        return
    if not previous:
        if os.geteuid() != 0:
            pytest.skip("the kernel's audit is disabled and only root may enable it for the test")
        _set_audit(True)
    try:
        yield
    finally:
        if not previous:
            _set_audit(False)


FORWARD_ALL = textwrap.dedent("""
    from libc_service import FORWARD, Router

    router = Router(default=FORWARD)
""")


@needs_shim
@pytest.mark.skipif(landlock_abi() < 7, reason="Landlock logs denials from ABI 7 (Linux 6.15)")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_a_forwarded_call_landlock_refused_is_reported_at_exit(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(FORWARD_ALL)
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the slave\n")
    with audit_on():
        done = subprocess.run(
            [sys.executable, "-m", "libc_service", "run", "--sandbox", str(policy), "--", "cat", str(secret)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1 and "Permission denied" in done.stderr  # the policy forwarded; Landlock refused
    missing = [line for line in done.stderr.splitlines() if "Landlock's own refusals are not reported" in line]
    if missing:
        pytest.skip(f"the kernel does not deliver Landlock's records here: {missing[0]}")
    landlock = [line for line in done.stderr.splitlines() if "by Landlock (fs.read_file): " in line]
    assert landlock and f" {secret}" in landlock[0], done.stderr  # the file is named, not its directory
    assert "after FORWARD" not in done.stderr  # Landlock's refusal is counted once, as Landlock's
    assert "Traceback" not in done.stderr


class _Records:
    """A stand-in for the audit reader: the records it would have read."""

    lost = 0

    def __init__(self, records: list[AccessRecord]) -> None:
        self.records = records

    def stop(self, **waiting: object) -> None:
        pass

    def denials(self, pids: object) -> list[AccessRecord]:
        return self.records


def _forwarded(path: str, code: int) -> Decision:
    request = OpenRequest(pid=7, tid=7, path=PurePosixPath(path), flags=frozenset({"read_only"}))
    return Decision(request, "default", "forward", -1, code, 0, 0, "pid 7")


def test_a_forwarded_call_landlock_refused_is_counted_once_as_landlock_s() -> None:
    report = RefusalReport()
    report(_forwarded("/etc/shadow", errno.EACCES))
    report(_forwarded("/etc/gshadow", errno.EACCES))  # refused for another reason: no record of it
    report.landlock = _Records([AccessRecord("1a", ("fs.read_file",), "/etc/shadow")])  # type: ignore[assignment]
    assert report.lines() == [
        "refused 1× open after FORWARD (EACCES): /etc/gshadow",
        "refused 1× open by Landlock (fs.read_file): /etc/shadow",
    ]


def test_a_refused_name_with_a_terminal_escape_is_shown_escaped() -> None:
    report = RefusalReport()
    report(_forwarded("/tmp/\x1b]0;owned\x07/secret", errno.EACCES))
    report.landlock = _Records([AccessRecord("1b", ("fs.read_file",), "/srv/\x1b[2Jx/y")])  # type: ignore[assignment]
    lines = report.lines()
    assert all("\x1b" not in line and "\x07" not in line for line in lines), lines
    assert 'refused 1× open after FORWARD (EACCES): "/tmp/\\u001b]0;owned\\u0007/secret"' in lines


def test_the_audit_reader_keeps_a_bounded_number_of_records_and_domains() -> None:
    from libc_service.confinement.landlock_audit import MAX_DOMAINS, MAX_RECORDS, LandlockDenials

    def denial(domain: str, path: str) -> tuple[int, bytes]:
        return AUDIT_LANDLOCK_ACCESS, f'audit(1.2:3): domain={domain} blockers=fs.read_file path="{path}"'.encode()

    reader = LandlockDenials()
    # One program denied without end, and denials of as many domains as it cares to make.
    reader.feed(denial("1a", f"/x/{index}") for index in range(MAX_RECORDS + 10))
    reader.feed(denial(f"{index:x}b", "/y") for index in range(MAX_DOMAINS + 10))
    assert len(reader.records) == MAX_RECORDS and len(reader.domains) == MAX_DOMAINS
    assert reader.unkept == 10 + MAX_DOMAINS + 10
    report = RefusalReport()
    report.landlock = reader
    reader.stop = lambda **waiting: None  # type: ignore[method-assign]
    assert report.lines()[-1] == (
        f"Landlock's refusals are undercounted: {reader.unkept} audit records beyond the bound were not kept"
    )
