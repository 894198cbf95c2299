"""The seccomp user-notification kernel interface: its structures, its ioctls, its answers.

Everything the transport says to the listener descriptor goes through the
functions here (receive, ``ID_VALID``, send a response, ``ADDFD``), with
the kernel's structures packed by :mod:`struct` objects built once. The
exceptions say what a call's answer will be when it is known before the
router is asked: :class:`Gone` (nobody to answer), :class:`Refuse` (an
errno, as the kernel would say), :class:`Continue` (let the kernel do it).

The transport runs on x86_64 only (:func:`seccomp_unavailable`); the
system call numbers it makes come from :mod:`libc_service.kernel.libc`.
"""

from __future__ import annotations

import errno as errno_module
import fcntl
import struct
from typing import Final

from libc_service.kernel import libc as kernel

__all__ = [
    "SECCOMP_GET_ACTION_AVAIL",
    "ADDFD_FLAG_SEND",
    "ADDFD_FLAG_SETFD",
    "FLAG_CONTINUE",
    "FILTER_FLAG_NEW_LISTENER",
    "FILTER_FLAG_WAIT_KILLABLE_RECV",
    "NOTIF",
    "PR_SET_NO_NEW_PRIVS",
    "SECCOMP_SET_MODE_FILTER",
    "SYS_KCMP",
    "SYS_PIDFD_GETFD",
    "SYS_SECCOMP",
    "Continue",
    "Gone",
    "Refuse",
    "add_fd",
    "check_valid",
    "receive",
    "respond",
    "sync_wake_up",
]

# The transport runs on x86_64 only (see seccomp_unavailable).
SYS_SECCOMP: Final = kernel.SYSCALLS["x86_64"]["seccomp"]
SYS_PIDFD_GETFD: Final = kernel.SYSCALLS["x86_64"]["pidfd_getfd"]
SYS_KCMP: Final = kernel.SYSCALLS["x86_64"]["kcmp"]
SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_GET_ACTION_AVAIL: Final = 2
FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5
PR_SET_NO_NEW_PRIVS: Final = 38

# ioctl requests: _IOWR('!', 0, struct seccomp_notif) and friends.
_NOTIF_RECV: Final = 0xC0502100
_NOTIF_SEND: Final = 0xC0182101
_NOTIF_ID_VALID: Final = 0x40082102
_NOTIF_ADDFD: Final = 0x40182103
_NOTIF_SET_FLAGS: Final = 0x40082104
_FD_SYNC_WAKE_UP: Final = 1
#: Response flag: continue the call in the kernel.
FLAG_CONTINUE: Final = 1
#: ADDFD flags: install at the number given (replacing it); install and answer in one step.
ADDFD_FLAG_SETFD: Final = 1
ADDFD_FLAG_SEND: Final = 2

#: struct seccomp_notif: id, pid, flags, then seccomp_data (nr, arch, ip, args[6]).
NOTIF: Final = struct.Struct("<QIIiIQ6Q")
#: struct seccomp_notif_resp: id, val, error, flags.
_RESP: Final = struct.Struct("<QqiI")
#: struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags.
_ADDFD: Final = struct.Struct("<QIIII")
_ID: Final = struct.Struct("<Q")


class Gone(Exception):
    """The notification is no longer pending (the thread died or was interrupted)."""


class Refuse(Exception):
    """Answer the call with this errno without asking the router (what the kernel would say; 0: success)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Continue(Exception):
    """Continue the call unasked: only for sockets of domains no request models (netlink, packet ...)."""


def sync_wake_up(listener: int) -> None:
    """Ask the kernel to wake the caller on the replying CPU (Linux 6.6+; before, ordinary wake-ups)."""
    try:
        fcntl.ioctl(listener, _NOTIF_SET_FLAGS, bytearray(_ID.pack(_FD_SYNC_WAKE_UP)), True)
    except OSError:
        pass


def receive(listener: int, buffer: bytearray) -> None:
    """Receive one notification into ``buffer`` (``NOTIF.size`` bytes, zeroed here); ``OSError`` as the kernel says."""
    buffer[:] = bytes(len(buffer))
    fcntl.ioctl(listener, _NOTIF_RECV, buffer, True)


def check_valid(listener: int, notif_id: int) -> None:
    """``ID_VALID``: raise :class:`Gone` unless the call is still pending (its thread still in it)."""
    if listener < 0:
        raise Gone
    try:
        fcntl.ioctl(listener, _NOTIF_ID_VALID, bytearray(_ID.pack(notif_id)), True)
    except OSError:
        raise Gone from None


def respond(listener: int, notif_id: int, value: int, error: int, flags: int) -> None:
    """Answer the call: ``value``, or ``error`` (a negative errno), or ``FLAG_CONTINUE``; :class:`Gone` if nobody waits."""
    if listener < 0:
        raise Gone
    try:
        fcntl.ioctl(listener, _NOTIF_SEND, bytearray(_RESP.pack(notif_id, value, error, flags)), True)
    except OSError as exc:
        if exc.errno in (errno_module.ENOENT, errno_module.EINPROGRESS):
            raise Gone from None
        raise


def add_fd(listener: int, notif_id: int, fd: int, flags: int, newfd: int, newfd_flags: int) -> int:
    """Install ``fd`` in the caller: its number there; :class:`Gone` if nobody waits, else ``OSError``."""
    if listener < 0:
        raise Gone
    try:
        return int(
            fcntl.ioctl(listener, _NOTIF_ADDFD, bytearray(_ADDFD.pack(notif_id, flags, fd, newfd, newfd_flags)), True)
        )
    except OSError as exc:
        if exc.errno in (errno_module.ENOENT, errno_module.EINPROGRESS):
            raise Gone from None
        raise
