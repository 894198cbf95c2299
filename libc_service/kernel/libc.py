"""The master's one handle on libc, and the raw system call numbers it uses.

Python's ``os`` has no binding for several calls the master makes
(``openat2``, ``capget``/``capset``, Landlock, ``seccomp``, ``pidfd_getfd``,
``kcmp``, ``close_range`` with flags, ``process_vm_readv``), so they go
through ctypes. This module is where that happens once, as the shim's
``real.c`` is for C: one ``CDLL`` (with ``use_errno``, so errno survives to
Python), one table of syscall numbers by architecture, one way from a
failed call's errno to an ``OSError``.

A module that sets ``argtypes`` on a libc function takes its own function
object with ``libc["name"]`` (a fresh one each time), so the declaration
cannot leak to another module's use of the same function.

The seccomp filters keep their own per-architecture tables
(``syscall_filter``, ``socket_filter``, ``notify_filter``): those are the
numbers a BPF program compares for *another* architecture's audit value,
chosen by a ``machine`` argument, not the numbers this process calls.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
from typing import Any, Final

__all__ = ["MACHINE", "NUMBERS", "SYSCALLS", "call", "check", "last_error", "libc", "syscall"]

#: What ``platform.machine()`` returns, without importing ``platform``.
MACHINE: Final = os.uname().machine

#: Raw system call numbers by architecture: name → number.
SYSCALLS: Final[dict[str, dict[str, int]]] = {
    "x86_64": {
        "capget": 125,
        "capset": 126,
        "setgroups": 116,
        "setresuid": 117,
        "setresgid": 119,
        "prctl": 157,
        "unshare": 272,
        "kcmp": 312,
        "renameat2": 316,
        "seccomp": 317,
        "close_range": 436,
        "openat2": 437,
        "pidfd_getfd": 438,
        "faccessat2": 439,
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
    "aarch64": {
        "capget": 90,
        "capset": 91,
        "setgroups": 159,
        "setresuid": 147,
        "setresgid": 149,
        "prctl": 167,
        "unshare": 97,
        "kcmp": 272,
        "renameat2": 276,
        "seccomp": 277,
        "close_range": 436,
        "openat2": 437,
        "pidfd_getfd": 438,
        "faccessat2": 439,
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
}

#: This machine's numbers (empty on an architecture the table lacks).
NUMBERS: Final[dict[str, int]] = SYSCALLS.get(MACHINE, {})

#: The process's C library.
libc: Final = ctypes.CDLL(None, use_errno=True)

#: ``syscall(2)``: returns a ``long`` (a descriptor, or ``-1`` with errno).
syscall: Final = libc.syscall
syscall.restype = ctypes.c_long


def last_error(what: str = "", filename: str | None = None) -> OSError:
    """The ``OSError`` the errno of the last failed ctypes call means.

    ``what`` (the call's name) prefixes the message; ``filename`` becomes
    the error's ``filename``, as ``os`` functions give it.
    """
    code = ctypes.get_errno()
    message = f"{what}: {os.strerror(code)}" if what else os.strerror(code)
    if filename is None:
        return OSError(code, message)
    return OSError(code, message, filename)


def check(result: int, what: str) -> int:
    """``result`` of a raw system call, or the ``OSError`` its errno means."""
    if result < 0:
        raise last_error(what)
    return result


def call(name: str, *args: Any) -> int:
    """System call ``name`` by this machine's number; ``OSError`` on failure.

    ``ENOSYS`` when the table has no number for ``name`` here: the call is
    refused as the kernel would refuse a call it does not have.
    """
    number = NUMBERS.get(name)
    if number is None:
        raise OSError(errno_module.ENOSYS, f"{name}: unknown system call number on {MACHINE}")
    return check(int(syscall(ctypes.c_long(number), *args)), name)
