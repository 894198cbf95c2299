"""The seccomp program of the user-notification transport (``spawn(..., seccomp=True)``).

It returns ``SECCOMP_RET_USER_NOTIF`` for the system calls the master
arbitrates, so the kernel suspends the calling thread and hands the call to
the master (:mod:`libc_service.seccomp.session`); everything else is allowed. It is
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

- **``--seccomp`` is a boundary on its own.** Every system call that
  names, creates or changes a file is notified and decided (:data:`NOTIFIED`)
  or refused here (:data:`REFUSED`), by one rule per errno:

  - ``EPERM``: calls that create or change files or mounts no request
    expresses (``link``, ``symlink``, ``mknod``, ``truncate``, ``mount``,
    ``chroot``, ``pivot_root``, ``swapon``, ``acct``, ``quotactl``), and
    the calls that reach into other processes of the same user
    (``ptrace``, ``process_vm_readv``/``writev``, ``pidfd_getfd``) or into
    the kernel's object store (``bpf``), all of which a process without
    privilege is commonly refused;
  - ``ENOTSUP``: extended attributes by path (what a filesystem without
    them answers: programs that copy attributes go on without them);
  - ``ENOSYS``: whole interfaces programs probe and fall back from: io_uring
    (whose requests would be performed without a system call per file),
    the new mount API (``open_tree``, ``move_mount``, ``fsopen`` ...), file
    handles (``name_to_handle_at``, ``open_by_handle_at``), ``uselib``,
    ``file_getattr``/``file_setattr``, and every number above the highest
    one the table was reviewed against (:data:`~.syscall_filter.HIGHEST_KNOWN`).

  Calls that name a path and are continued, each for a reason
  (:data:`CONTINUED`): ``execve``/``execveat`` (running a file is the
  sandbox's ``allow_exec``), ``chdir`` (the master reads the working
  directory itself, from the kernel, for every relative path),
  ``readlink``/``readlinkat``, ``statfs``, ``inotify_add_watch`` and
  ``fanotify_mark`` (metadata and events, which Landlock does not hide
  either), and ``fstat`` as below.

Classic BPF is built with :mod:`.syscall_filter`'s assembler (the project
builds its filters itself, so that nothing but a C compiler is needed to
install it and no libseccomp is needed at run time).
"""

from __future__ import annotations

import errno as errno_module
import platform
from typing import Final

from libc_service.confinement.syscall_filter import (
    DATA_ARCH,
    DATA_NR,
    HIGHEST_KNOWN,
    JEQ_K,
    JGE_K,
    JGT_K,
    JSET_K,
    RET_ALLOW,
    RET_ERRNO,
    Assembler,
    arg_low,
)

__all__ = [
    "AT_EMPTY_PATH",
    "CONTINUED",
    "NOTIFIED",
    "REFUSED",
    "RET_USER_NOTIF",
    "build_notify_filter",
    "notified_numbers",
]

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
    "creat": 85,
    "chmod": 90,
    "fchmod": 91,
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "utime": 132,
    "utimes": 235,
    "fchownat": 260,
    "futimesat": 261,
    "fchmodat": 268,
    "utimensat": 280,
    "fchmodat2": 452,
}
_EPERM: Final = errno_module.EPERM
_ENOSYS: Final = errno_module.ENOSYS
_ENOTSUP: Final = errno_module.EOPNOTSUPP
#: Refused system calls on x86_64: name → (number, errno). See the module's docstring.
REFUSED: Final[dict[str, tuple[int, int]]] = {
    "truncate": (76, _EPERM),
    "link": (86, _EPERM),
    "symlink": (88, _EPERM),
    "ptrace": (101, _EPERM),
    "mknod": (133, _EPERM),
    "uselib": (134, _ENOSYS),
    "pivot_root": (155, _EPERM),
    "chroot": (161, _EPERM),
    "acct": (163, _EPERM),
    "mount": (165, _EPERM),
    "umount2": (166, _EPERM),
    "swapon": (167, _EPERM),
    "swapoff": (168, _EPERM),
    "quotactl": (179, _EPERM),
    "setxattr": (188, _ENOTSUP),
    "lsetxattr": (189, _ENOTSUP),
    "getxattr": (191, _ENOTSUP),
    "lgetxattr": (192, _ENOTSUP),
    "listxattr": (194, _ENOTSUP),
    "llistxattr": (195, _ENOTSUP),
    "removexattr": (197, _ENOTSUP),
    "lremovexattr": (198, _ENOTSUP),
    "lookup_dcookie": (212, _ENOSYS),
    "mknodat": (259, _EPERM),
    "linkat": (265, _EPERM),
    "symlinkat": (266, _EPERM),
    "name_to_handle_at": (303, _ENOSYS),
    "open_by_handle_at": (304, _ENOSYS),
    "process_vm_readv": (310, _EPERM),
    "process_vm_writev": (311, _EPERM),
    "bpf": (321, _EPERM),
    "io_uring_setup": (425, _ENOSYS),
    "io_uring_enter": (426, _ENOSYS),
    "io_uring_register": (427, _ENOSYS),
    "open_tree": (428, _ENOSYS),
    "move_mount": (429, _ENOSYS),
    "fsopen": (430, _ENOSYS),
    "fsconfig": (431, _ENOSYS),
    "fsmount": (432, _ENOSYS),
    "fspick": (433, _ENOSYS),
    "pidfd_getfd": (438, _EPERM),
    "mount_setattr": (442, _ENOSYS),
    "quotactl_fd": (443, _EPERM),
    "setxattrat": (463, _ENOTSUP),
    "getxattrat": (464, _ENOTSUP),
    "listxattrat": (465, _ENOTSUP),
    "removexattrat": (466, _ENOTSUP),
    "open_tree_attr": (467, _ENOSYS),
    "file_getattr": (468, _ENOSYS),
    "file_setattr": (469, _ENOSYS),
}
#: System calls that name a path and are continued unasked, each for a reason given above.
CONTINUED: Final[dict[str, int]] = {
    "execve": 59,
    "chdir": 80,
    "readlink": 89,
    "statfs": 137,
    "inotify_add_watch": 254,
    "readlinkat": 267,
    "fanotify_mark": 301,
    "execveat": 322,
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
    asm.jump_if(JGT_K, HIGHEST_KNOWN, "enosys")
    for name, number in NOTIFIED.items():
        asm.jump_if(JEQ_K, number, name if name in _EMPTY_PATH_FLAG_ARG else "notify")
    for number, code in REFUSED.values():
        asm.jump_if(JEQ_K, number, _ERRNO_LABELS[code])
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
    asm.label("eperm")
    asm.ret(RET_ERRNO | errno_module.EPERM)
    asm.label("enotsup")
    asm.ret(RET_ERRNO | errno_module.EOPNOTSUPP)
    return asm.assemble()


_ERRNO_LABELS: Final = {_EPERM: "eperm", _ENOSYS: "enosys", _ENOTSUP: "enotsup"}
