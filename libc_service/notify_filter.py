"""The seccomp program of the user-notification transport (``spawn(..., seccomp=True)``).

It returns ``SECCOMP_RET_USER_NOTIF`` for the system calls the master
arbitrates, so the kernel suspends the calling thread and hands the call to
the master (:mod:`libc_service.notify`); everything else is allowed. It is
a second filter, independent of the sandbox's (:mod:`.syscall_filter`): the
kernel runs both and the stricter action wins, so a call the sandbox's
filter refuses stays refused and is never notified.

Two choices are made here rather than in the master:

- **``fstat`` is not notified.** glibc implements ``fstat(fd)`` as
  ``newfstatat(fd, "", AT_EMPTY_PATH)`` (and ``statx`` likewise): notifying
  every one would cost a round trip for a call that names no path. So
  ``newfstatat``/``statx`` with ``AT_EMPTY_PATH`` pass. A program can pass a
  non-empty path with that flag and stat it unasked; ``stat`` discloses
  metadata only, which Landlock does not confine either (see
  ``docs/limits.md``).
- **Other ABIs fail with ``ENOSYS``.** i386 system calls (``int 0x80``) and
  x32 ones have other numbers and argument layouts; rather than let them pass
  unarbitrated, they are refused, as the sandbox's filter refuses them.

Classic BPF is built with :mod:`.syscall_filter`'s assembler (the project
builds its filters itself, so that nothing but a C compiler is needed to
install it and no libseccomp is needed at run time).
"""

from __future__ import annotations

import errno as errno_module
import platform
from typing import Final

from .syscall_filter import DATA_ARCH, JEQ_K, JGE_K, JSET_K, DATA_NR, RET_ALLOW, RET_ERRNO, Assembler, arg_low

__all__ = ["AT_EMPTY_PATH", "NOTIFIED", "RET_USER_NOTIF", "build_notify_filter", "notified_numbers"]

#: The action that suspends the caller and queues a notification.
RET_USER_NOTIF: Final = 0x7FC00000
AT_EMPTY_PATH: Final = 0x1000

_AUDIT_ARCH_X86_64: Final = 0xC000003E
_X32_BIT: Final = 0x40000000

#: The notified system calls on x86_64, by name. Only x86_64 is supported:
#: the master also needs each architecture's ``struct stat`` layout.
NOTIFIED: Final[dict[str, int]] = {
    "open": 2,
    "stat": 4,
    "lstat": 6,
    "access": 21,
    "connect": 42,
    "bind": 49,
    "rename": 82,
    "mkdir": 83,
    "rmdir": 84,
    "unlink": 87,
    "openat": 257,
    "mkdirat": 258,
    "newfstatat": 262,
    "unlinkat": 263,
    "renameat": 264,
    "faccessat": 269,
    "renameat2": 316,
    "statx": 332,
    "openat2": 437,
    "faccessat2": 439,
}
#: Calls whose ``AT_EMPTY_PATH`` flag (argument index) makes them an fstat.
_EMPTY_PATH_FLAG_ARG: Final = {"newfstatat": 3, "statx": 2}


def notified_numbers(machine: str | None = None) -> dict[str, int] | None:
    """The notified system calls on ``machine`` (default: this one), or ``None`` when unsupported."""
    return NOTIFIED if (machine or platform.machine()) == "x86_64" else None


def build_notify_filter() -> bytes:
    """The classic BPF program: notify the arbitrated calls, allow the rest."""
    asm = Assembler()
    asm.load(DATA_ARCH)
    asm.jump_if(JEQ_K, _AUDIT_ARCH_X86_64, None, "enosys")
    asm.load(DATA_NR)
    asm.jump_if(JGE_K, _X32_BIT, "enosys")
    for name, number in NOTIFIED.items():
        asm.jump_if(JEQ_K, number, name if name in _EMPTY_PATH_FLAG_ARG else "notify")
    asm.goto("allow")
    for name, index in _EMPTY_PATH_FLAG_ARG.items():
        asm.label(name)
        asm.load(arg_low(index))
        asm.jump_if(JSET_K, AT_EMPTY_PATH, "allow", "notify")
    asm.label("notify")
    asm.ret(RET_USER_NOTIF)
    asm.label("allow")
    asm.ret(RET_ALLOW)
    asm.label("enosys")
    asm.ret(RET_ERRNO | errno_module.ENOSYS)
    return asm.assemble()
