"""Whether this kernel can run the seccomp transport, and the error when it cannot.

Asked before a program starts (``spawn(seccomp=True)``, ``run --seccomp``,
tests that skip): the answer names what is missing, so that a kernel
without the transport gets a clear refusal instead of an unconfined run.
"""

from __future__ import annotations

import ctypes
import os

from libc_service.kernel import libc as kernel
from libc_service.seccomp.abi import SECCOMP_GET_ACTION_AVAIL, SYS_SECCOMP
from libc_service.seccomp.filter import RET_USER_NOTIF, notified_numbers

__all__ = ["SeccompUnavailable", "seccomp_unavailable"]


class SeccompUnavailable(RuntimeError):
    """The kernel cannot run the seccomp transport (or the listener never arrived)."""


def seccomp_unavailable() -> str | None:
    """Why the seccomp transport cannot work here, or ``None`` when it can.

    Needs x86_64, Linux 5.14+ (``SECCOMP_ADDFD_FLAG_SEND``; ``pidfd_getfd``
    is 5.6) and ``SECCOMP_RET_USER_NOTIF`` available.
    """
    if notified_numbers() is None:
        return "the seccomp transport supports x86_64 only"
    release = os.uname().release.split("-")[0].split(".")
    try:
        version = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        version = (0, 0)
    if version < (5, 14):
        return f"the seccomp transport needs Linux 5.14+ (SECCOMP_ADDFD_FLAG_SEND), not {os.uname().release}"
    action = ctypes.c_uint32(RET_USER_NOTIF)
    if kernel.syscall(SYS_SECCOMP, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) != 0:
        return f"the kernel has no SECCOMP_RET_USER_NOTIF ({kernel.last_error().strerror})"
    return None
