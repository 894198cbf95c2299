"""Landlock's own refusals, read from the kernel's audit log.

A call the policy ``FORWARD``\\ s is made by the slave with its own,
sandboxed, authority: when Landlock refuses it the master never hears of
it. From Landlock ABI 7 (Linux 6.15) the kernel logs such denials as audit
records — ``AUDIT_LANDLOCK_ACCESS`` (the domain, the missing rights as
``blockers=fs.read_file``, the object: ``path=``...) and
``AUDIT_LANDLOCK_DOMAIN`` (a domain's creator ``pid`` the first time it
denies something; ``status=deallocated`` when it is gone) — provided:

- the kernel has audit (``CONFIG_AUDIT``) and it is *enabled*
  (``auditctl -e 1``; Landlock logs nothing while it is off),
- the domain asked for the executed program's denials to be logged
  (``LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON``, which
  :func:`~libc_service.confinement.landlock.restrict_self` passes from ABI 7),
- the reader may read the log: :class:`LandlockDenials` joins the audit
  netlink *read-log* multicast group (``AUDIT_NLGRP_READLOG``, which needs
  ``CAP_AUDIT_READ``). It only listens: it never becomes the audit daemon
  and never changes the audit configuration.

:func:`unavailable_reason` says which of these is missing. The reader runs
in a thread of its own (the event loop never waits for the kernel); the
records of the slave's domains — those created by a process of the slave's
tree — are turned into one line per (call, blockers, top-level directory) by
:func:`denial_lines`::

    refused 3× open beneath /etc by Landlock (fs.read_file)
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from libc_service.confinement.landlock import AUDIT_ABI, landlock_abi
from libc_service.policy.slavepath import printable

__all__ = [
    "AUDIT_LANDLOCK_ACCESS",
    "AUDIT_LANDLOCK_DOMAIN",
    "AccessRecord",
    "AuditUnavailable",
    "DomainRecord",
    "LandlockDenials",
    "audit_enabled",
    "denial_lines",
    "parse_fields",
    "parse_messages",
    "parse_record",
    "unavailable_reason",
]

NETLINK_AUDIT: Final = 9
AUDIT_GET: Final = 1000
AUDIT_LANDLOCK_ACCESS: Final = 1423
AUDIT_LANDLOCK_DOMAIN: Final = 1424
#: The read-only multicast group of the audit log (needs CAP_AUDIT_READ).
AUDIT_NLGRP_READLOG: Final = 1
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 1
_HEADER: Final = struct.Struct("=IHHII")
#: Fields the kernel writes with audit_log_untrustedstring: quoted, or hex
#: when they hold a space, a quote or a control character.
_UNTRUSTED: Final = frozenset({"path", "exe", "comm", "ocomm", "name"})
_PREFIX: Final = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s*")
_HEX: Final = re.compile(r"[0-9A-F]+")
#: The call a blocker stands for, in the words RefusalReport uses.
_VERBS: Final = {
    "fs.execute": "execve",
    "fs.write_file": "open",
    "fs.read_file": "open",
    "fs.read_dir": "open",
    "fs.remove_dir": "rmdir",
    "fs.remove_file": "unlink",
    "fs.make_char": "mknod",
    "fs.make_dir": "mkdir",
    "fs.make_reg": "create",
    "fs.make_sock": "bind",
    "fs.make_fifo": "mkfifo",
    "fs.make_block": "mknod",
    "fs.make_sym": "symlink",
    "fs.refer": "rename",
    "fs.truncate": "truncate",
    "fs.ioctl_dev": "ioctl",
    "net.bind_tcp": "bind",
    "net.connect_tcp": "connect",
    "net.bind_udp": "bind",
    "net.connect_send_udp": "connect",
    "scope.abstract_unix_socket": "connect",
    "scope.signal": "kill",
}


class AuditUnavailable(RuntimeError):
    """Landlock's denials cannot be read here; the message says why."""


@dataclass(frozen=True)
class AccessRecord:
    """One ``AUDIT_LANDLOCK_ACCESS`` record: a request a Landlock domain denied."""

    domain: str
    blockers: tuple[str, ...]
    path: str | None = None
    serial: int | None = None

    @property
    def verb(self) -> str:
        """The kind of call refused, named after its first blocker."""
        return _VERBS.get(self.blockers[0], "access") if self.blockers else "access"


@dataclass(frozen=True)
class DomainRecord:
    """One ``AUDIT_LANDLOCK_DOMAIN`` record: a domain's creator, or its end."""

    domain: str
    status: str
    pid: int | None = None
    denials: int | None = None


def parse_fields(text: str) -> dict[str, str]:
    """The ``key=value`` fields of an audit record's text (after its ``audit(...):`` prefix).

    Quoted values are taken as written; an unquoted value of a field the
    kernel writes as an untrusted string is hex and decoded. Anything
    malformed is skipped, never raised.
    """
    fields: dict[str, str] = {}
    index, end = 0, len(text)
    while index < end:
        while index < end and text[index] in " \t\n\x00":
            index += 1
        equals = text.find("=", index)
        space = text.find(" ", index)
        if equals < 0:
            break
        if 0 <= space < equals:  # a word without a value
            index = space + 1
            continue
        key = text[index:equals]
        index = equals + 1
        if index < end and text[index] == '"':
            close = text.find('"', index + 1)
            close = end if close < 0 else close
            value = text[index + 1 : close]
            index = close + 1
        else:
            stop = text.find(" ", index)
            stop = end if stop < 0 else stop
            value = text[index:stop]
            index = stop
            if key in _UNTRUSTED and len(value) % 2 == 0 and _HEX.fullmatch(value):
                value = bytes.fromhex(value).decode("utf-8", "surrogateescape")
        if key:
            fields.setdefault(key, value)
    return fields


def parse_record(kind: int, payload: bytes) -> AccessRecord | DomainRecord | None:
    """A Landlock audit record from a netlink message's type and payload; ``None`` for anything else."""
    if kind not in (AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN):
        return None
    text = payload.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
    serial: int | None = None
    prefix = _PREFIX.match(text)
    if prefix is not None:
        serial = int(prefix.group(3))
        text = text[prefix.end() :]
    fields = parse_fields(text)
    domain = fields.get("domain")
    if not domain:
        return None
    if kind == AUDIT_LANDLOCK_ACCESS:
        blockers = tuple(name for name in fields.get("blockers", "").split(",") if name)
        return AccessRecord(domain, blockers, fields.get("path"), serial)
    return DomainRecord(domain, fields.get("status", ""), _integer(fields.get("pid")), _integer(fields.get("denials")))


def _integer(text: str | None) -> int | None:
    if text is None or not text.isdigit() or not text.isascii():
        return None
    return int(text)


def parse_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each netlink message in ``data``; stops at the first malformed one."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return
        yield kind, data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3


def audit_enabled(timeout: float = 1.0) -> bool | None:
    """Whether the kernel's audit is enabled (``AUDIT_GET``); ``None`` when it cannot be asked.

    Asking needs ``CAP_AUDIT_CONTROL``; raises :class:`AuditUnavailable`
    when the kernel has no audit at all.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    except OSError as exc:
        raise AuditUnavailable("the kernel has no audit support (CONFIG_AUDIT)") from exc
    with sock:
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            sock.send(_HEADER.pack(_HEADER.size, AUDIT_GET, _NLM_F_REQUEST, 1, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for kind, payload in parse_messages(sock.recv(65536)):
                    if kind == AUDIT_GET and len(payload) >= 8:
                        return bool(struct.unpack_from("=II", payload)[1] != 0)
                    if kind == _NLMSG_ERROR and len(payload) >= 4 and struct.unpack_from("=i", payload)[0] < 0:
                        return None  # EPERM: no CAP_AUDIT_CONTROL (or not the initial pid namespace)
        except OSError:
            return None
    return None


def unavailable_reason(abi: int | None = None) -> str | None:
    """Why Landlock's denials cannot be read here, or ``None`` when they can (as far as can be told).

    Only looks: it opens and closes a netlink socket, and changes nothing.
    """
    abi = landlock_abi() if abi is None else abi
    if abi < AUDIT_ABI:
        return f"Landlock ABI {abi} logs no denials (audit records need ABI {AUDIT_ABI}, Linux 6.15)"
    try:
        sock = _open_reader()
    except AuditUnavailable as exc:
        return str(exc)
    sock.close()
    try:
        enabled = audit_enabled()
    except AuditUnavailable as exc:
        return str(exc)
    if enabled is False:
        return "the kernel's audit is disabled (`auditctl -e 1` enables it)"
    return None


def _open_reader() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    except OSError as exc:
        raise AuditUnavailable("the kernel has no audit support (CONFIG_AUDIT)") from exc
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno_module.EPERM, errno_module.EACCES):
            raise AuditUnavailable("reading the kernel's audit log needs CAP_AUDIT_READ (run as root)") from exc
        raise AuditUnavailable(f"cannot join the audit log's read group: {exc.strerror}") from exc
    return sock


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


@dataclass
class _Domain:
    creator: int | None = None
    #: The creator's ancestors when its record arrived (it may be gone at the end).
    ancestors: tuple[int, ...] = ()
    deallocated: bool = False


#: Denial records and domains kept for one run: the report stays bounded whatever is denied.
MAX_RECORDS: Final = 65536
MAX_DOMAINS: Final = 4096


@dataclass
class LandlockDenials:
    """Reads the kernel's Landlock audit records in a thread while the slave runs.

    :meth:`start` raises :class:`AuditUnavailable` with the reason when the
    records cannot be read; :meth:`stop` waits briefly for the records still
    on their way, and :meth:`denials` returns those of the domains created
    by the given processes (or their descendants).
    """

    records: list[AccessRecord] = field(default_factory=list)
    domains: dict[str, _Domain] = field(default_factory=dict)
    #: Records lost because the socket's buffer overflowed.
    lost: int = 0
    #: Records not kept: beyond :data:`MAX_RECORDS`, or of a domain beyond :data:`MAX_DOMAINS`
    #: (the log is the whole machine's, and a program can make denials without end).
    unkept: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: float = 0.0

    def start(self, *, check_enabled: bool = True) -> None:
        """Join the read-log group and start the reader thread; raises :class:`AuditUnavailable`."""
        reason = unavailable_reason() if check_enabled else None
        if reason is not None:
            raise AuditUnavailable(reason)
        self._sock = _open_reader()
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._read, name="landlock-audit", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno_module.ENOBUFS:
                    self.lost += 1
                    continue
                return
            self.feed(parse_messages(data))

    def feed(self, messages: Iterable[tuple[int, bytes]]) -> None:
        """Keep the Landlock records among ``messages`` (the reader thread's, or a test's)."""
        for kind, payload in messages:
            record = parse_record(kind, payload)
            if record is None:
                continue
            with self._lock:
                self._last = time.monotonic()
                if record.domain not in self.domains and len(self.domains) >= MAX_DOMAINS:
                    self.unkept += isinstance(record, AccessRecord)
                    continue
                domain = self.domains.setdefault(record.domain, _Domain())
                if isinstance(record, AccessRecord):
                    if len(self.records) >= MAX_RECORDS:
                        self.unkept += 1
                        continue
                    self.records.append(record)
                elif record.status == "allocated" and record.pid is not None:
                    domain.creator = record.pid
                    domain.ancestors = _ancestors(record.pid)
                elif record.status == "deallocated":
                    domain.deallocated = True

    def stop(self, *, settle: float = 0.1, limit: float = 1.0, expected: int = 0) -> None:
        """Stop reading, once no record came for ``settle`` s and every denying domain is gone (at most ``limit`` s).

        Records are delivered asynchronously (the kernel's audit thread): a
        denial made just before the slave exited may still be on its way. A
        domain's ``deallocated`` record comes after all its denials.
        ``expected``: denials known to have happened (forwarded calls the
        kernel refused with ``EACCES``): until that many records came, a
        quiet moment is not the end (a loaded machine delivers late), up to
        ``limit``.
        """
        if self._thread is None:
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._lock:
                quiet = time.monotonic() - self._last >= settle
                pending = len(self.records) < expected or any(
                    not self.domains[r.domain].deallocated for r in self.records
                )
            if quiet and not pending:
                break
            time.sleep(settle / 4)
        self._stopping.set()
        self._thread.join()
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def denials(self, pids: Iterable[int]) -> list[AccessRecord]:
        """The records of domains created by one of ``pids`` or a descendant of one."""
        roots = set(pids)
        with self._lock:
            ours = {
                name
                for name, domain in self.domains.items()
                if domain.creator is not None and (domain.creator in roots or roots.intersection(domain.ancestors))
            }
            return [record for record in self.records if record.domain in ours]


def _ancestors(pid: int, parent_of: Callable[[int], int | None] = _parent_of) -> tuple[int, ...]:
    chain: list[int] = []
    current: int | None = pid
    while current is not None and current > 1 and len(chain) < 64:
        current = parent_of(current)
        if current is not None:
            chain.append(current)
    return tuple(chain)


@dataclass
class _Tally:
    count: int = 0
    beneath: str | None = None


def _tree(path: str | None) -> str:
    """The top-level directory of an absolute path ("" for none): denials under /etc and /proc stay apart."""
    if path is None or not path.startswith("/"):
        return ""
    return "/" + path.strip("/").split("/", 1)[0]


def denial_lines(records: Iterable[AccessRecord]) -> list[str]:
    """One line per (call, blockers, top-level tree), most frequent first, naming the directory the paths share."""
    tallies: dict[tuple[str, str, str], _Tally] = {}
    for record in records:
        tally = tallies.setdefault((record.verb, ",".join(record.blockers) or "?", _tree(record.path)), _Tally())
        tally.count += 1
        if record.path is None or not record.path.startswith("/"):
            continue
        directory = record.path if record.path == "/" else os.path.dirname(record.path.rstrip("/")) or "/"
        tally.beneath = directory if tally.beneath is None else os.path.commonpath([tally.beneath, directory])
    out = []
    for (verb, blockers, _), tally in sorted(tallies.items(), key=lambda item: -item[1].count):
        where = f" beneath {printable(tally.beneath)}" if tally.beneath else ""
        out.append(f"refused {tally.count}× {verb}{where} by Landlock ({blockers})")
    return out
