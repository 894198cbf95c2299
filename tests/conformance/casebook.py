"""The conformance cases' registry and the recorder a case observes with.

Imported by the test (to list and parametrise the cases) and by the slave
program (``slave_main.py``, to run them), so it uses the standard library
only and imports nothing of libc-service: the slave must not need it.

A case is a function of one :class:`Probe`, registered with :func:`case`,
that makes calls and records what the kernel answered::

    @case(setup=make_file)
    def open_twice(p: Probe) -> None:
        p.call("first", os.open, "f", os.O_RDONLY)
        p.call("second", os.open, "f", os.O_RDONLY)

It runs in its own forked child, with its own directory as working
directory, as each *identity* (root, root with every capability dropped,
nobody, …). Everything it records, its exit status and the tree its
directory holds afterwards are compared between the native run and the
runs through a master whose every handler is ``return perform(request)``.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CASES", "IDENTITIES", "Case", "Probe", "become", "case", "load_cases"]

#: Who a case runs as. ``root``: as the test (uid 0, every capability);
#: ``nocaps``: uid 0 with every capability dropped; ``nobody``: uid and gid
#: 65534, no groups, no capabilities; ``nobody+dac``: nobody keeping
#: ``CAP_DAC_OVERRIDE`` (as an ambient capability would give it); ``self``:
#: the test's own identity, when the test does not run as root.
IDENTITIES = ("root", "nocaps", "nobody", "nobody+dac", "self")
#: The identities a case runs as unless it says otherwise: as root the first
#: three, otherwise ``self`` (a case that needs root to set up leaves ``self`` out).
DEFAULT_IDENTITIES = ("root", "nocaps", "nobody", "self")
NOBODY = 65534
CAP_DAC_OVERRIDE = 1

Setup = Callable[[Path, str], None]


@dataclass(frozen=True)
class Case:
    """One registered case: what it runs, how its directory is prepared, who runs it.

    ``setup(directory, identity)`` runs in the test process (as the test's
    user) before the case, natively, so every configuration starts from
    the same tree. ``cwd`` (relative to the case's directory) is where the
    case starts, entered *before* it takes on its identity (so an identity
    may start in a directory it could not reach). ``differs`` maps a transport (``"shim"``, ``"seccomp"``),
    an identity, or a ``(transport, identity)`` pair to the reason a
    difference from native is known today; those runs are strict xfails.
    """

    name: str
    body: Callable[[Probe], None]
    setup: Setup | None = None
    identities: tuple[str, ...] = DEFAULT_IDENTITIES
    differs: dict[Any, str] = field(default_factory=dict)
    timeout: int = 10
    cwd: str = "."

    def known_difference(self, transport: str, identity: str) -> str | None:
        for key in ((transport, identity), transport, identity):
            if key in self.differs:
                return self.differs[key]
        return None


CASES: dict[str, Case] = {}


def load_cases() -> dict[str, Case]:
    """Import every ``cases_*.py`` module beside this one (each registers its cases)."""
    for module in sorted(Path(__file__).resolve().parent.glob("cases_*.py")):
        importlib.import_module(f"conformance.{module.stem}")
    return CASES


def case(
    *,
    setup: Setup | None = None,
    identities: tuple[str, ...] = DEFAULT_IDENTITIES,
    differs: dict[Any, str] | None = None,
    timeout: int = 10,
    cwd: str = ".",
) -> Callable[[Callable[[Probe], None]], Callable[[Probe], None]]:
    """Register the decorated function as a case named after it."""

    def register(body: Callable[[Probe], None]) -> Callable[[Probe], None]:
        name = body.__name__
        if name in CASES:
            raise ValueError(f"two conformance cases are named {name!r}")
        unknown = set(identities) - set(IDENTITIES)
        if unknown:
            raise ValueError(f"{name}: unknown identities {sorted(unknown)}")
        CASES[name] = Case(name, body, setup, tuple(identities), dict(differs or {}), timeout, cwd)
        return body

    return register


# ------------------------------------------------------------------ recording


def plain(value: Any) -> Any:
    """``value`` as JSON can carry it, keeping what is comparable between runs.

    A ``stat`` result keeps type, permissions, owner, size and link count:
    inode and device numbers and times differ between two runs of the same
    case by nature (each run makes its tree afresh).
    """
    if isinstance(value, os.stat_result):
        kind = stat.S_IFMT(value.st_mode)
        fields = {
            "type": kind,
            "mode": stat.S_IMODE(value.st_mode),
            "uid": value.st_uid,
            "gid": value.st_gid,
            "nlink": value.st_nlink,
        }
        if stat.S_ISREG(value.st_mode) or stat.S_ISLNK(value.st_mode):
            fields["size"] = value.st_size
        return fields
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


class Probe:
    """What a case saw, in order: ``[label, "ok", value]`` or ``[label, "errno", NAME]``."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    def call(self, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, recording its result or its errno; ``None`` on error."""
        try:
            value = function(*args, **kwargs)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.seen.append([label, "errno", name])
            return None
        self.seen.append([label, "ok", plain(value)])
        return value

    def note(self, label: str, value: Any) -> None:
        """Record a value the case computed itself (a comparison, a flag)."""
        self.seen.append([label, "note", plain(value)])

    def socket(self, label: str, sock: Any) -> None:
        """Record what a program can observe of a socket: its names and the options that carry over.

        ``getsockname``/``getpeername`` and each option of :data:`SOCKET_OPTIONS`
        that the socket's family has, as ``label name``.
        """
        import socket as socket_module

        self.call(f"{label} getsockname", sock.getsockname)
        self.call(f"{label} getpeername", sock.getpeername)
        for level_name, option_name in SOCKET_OPTIONS:
            level = getattr(socket_module, level_name, None)
            option = getattr(socket_module, option_name, None)
            if level is None or option is None:
                continue
            if level_name.startswith("IPPROTO_IP") and sock.family == socket_module.AF_UNIX:
                continue
            if level_name == "IPPROTO_TCP" and sock.type != socket_module.SOCK_STREAM:
                continue
            self.call(f"{label} {option_name}", sock.getsockopt, level, option)


#: (level, option) names a program may have set before bind or connect.
SOCKET_OPTIONS = (
    ("SOL_SOCKET", "SO_TYPE"),
    ("SOL_SOCKET", "SO_DOMAIN"),
    ("SOL_SOCKET", "SO_REUSEADDR"),
    ("SOL_SOCKET", "SO_KEEPALIVE"),
    ("SOL_SOCKET", "SO_SNDBUF"),
    ("SOL_SOCKET", "SO_RCVBUF"),
    ("SOL_SOCKET", "SO_PASSCRED"),
    ("SOL_SOCKET", "SO_BROADCAST"),
    ("IPPROTO_IP", "IP_TOS"),
    ("IPPROTO_IPV6", "IPV6_V6ONLY"),
    ("IPPROTO_TCP", "TCP_NODELAY"),
)


# ------------------------------------------------------------------ identities

_CAPSET = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def _capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """Set this thread's capability sets with the raw system call (a single-threaded child)."""
    if _CAPSET is None:
        raise OSError(errno.ENOSYS, f"capset: unknown system call number on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(
        effective & 0xFFFFFFFF,
        permitted & 0xFFFFFFFF,
        inheritable & 0xFFFFFFFF,
        effective >> 32,
        permitted >> 32,
        inheritable >> 32,
    )
    if libc.syscall(ctypes.c_long(_CAPSET), header, data) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"capset: {os.strerror(code)}")


def become(identity: str) -> None:
    """Take on ``identity`` in this (forked, single-threaded) process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if identity in ("root", "self"):
        return
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if identity == "nocaps":
        _capset(0, 0)
        return
    if identity == "nobody+dac":
        libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if identity == "nobody+dac":
        _capset(1 << CAP_DAC_OVERRIDE, 1 << CAP_DAC_OVERRIDE)
    elif identity != "nobody":
        raise ValueError(f"unknown identity {identity!r}")


def identity_ids(identity: str) -> tuple[int, int]:
    """The uid and gid ``identity`` runs with (the owner its directory gets)."""
    if identity.startswith("nobody"):
        return NOBODY, NOBODY
    return os.geteuid(), os.getegid()
