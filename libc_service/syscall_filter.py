"""The slave's seccomp filter: system calls Landlock does not mediate.

Built in the parent as a classic-BPF program; the forked child only hands
the kernel a pointer to it.
"""

from __future__ import annotations

import errno as errno_module
import struct
from typing import Final

__all__ = ["metadata_filter"]

# The seccomp filter: calls Landlock does not mediate that change a file the
# slave's uid owns (mode, owner, times, extended attributes) fail with EPERM;
# io_uring (whose SETXATTR requests would walk past the list) with ENOSYS,
# which programs take as "no io_uring here" and fall back from.
_AUDIT_ARCH: Final = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT: Final = 0x40000000
_METADATA_CALLS: Final = {
    # chmod fchmod chown fchown lchown utime setxattr lsetxattr fsetxattr removexattr lremovexattr
    # fremovexattr utimes fchownat futimesat fchmodat utimensat fchmodat2 setxattrat removexattrat
    "x86_64": (90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452, 463, 466),
    # setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr fchmod fchmodat fchownat fchown
    # utimensat fchmodat2 setxattrat removexattrat
    "aarch64": (5, 6, 7, 14, 15, 16, 52, 53, 54, 55, 88, 452, 463, 466),
}
_IO_URING_CALLS: Final = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register: both arches
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW: Final = 0x7FFF0000
_RET_ERRNO: Final = 0x00050000


def metadata_filter(machine: str) -> bytes:
    """A classic-BPF seccomp program refusing the metadata calls and io_uring.

    System calls of another ABI (i386 through ``int 0x80``, x32) fail with
    ``ENOSYS``: their numbers differ, so the list could not cover them.
    """
    arch, calls = _AUDIT_ARCH[machine], _METADATA_CALLS[machine]

    def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("<HBBI", code, jt, jf, k)

    checks = [(nr, "eperm") for nr in calls] + [(nr, "enosys") for nr in _IO_URING_CALLS]
    # Layout: [0] ld arch, [1] jeq arch, [2] ret ENOSYS, [3] ld nr, [4] jge x32,
    # [5 .. 5+n-1] jeq nr, [5+n] ret ALLOW, [6+n] ret EPERM, [7+n] ret ENOSYS.
    n = len(checks)
    allow, eperm, enosys = 5 + n, 6 + n, 7 + n
    program = [
        insn(_BPF_LD_W_ABS, 4),                      # seccomp_data.arch
        insn(_BPF_JEQ_K, arch, jt=1, jf=0),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.ENOSYS),
        insn(_BPF_LD_W_ABS, 0),                      # seccomp_data.nr
        insn(_BPF_JGE_K, _X32_BIT, jt=enosys - 5, jf=0),
    ]
    for index, (nr, outcome) in enumerate(checks):
        here = 5 + index
        target = eperm if outcome == "eperm" else enosys
        program.append(insn(_BPF_JEQ_K, nr, jt=target - here - 1, jf=0))
    program += [
        insn(_BPF_RET_K, _RET_ALLOW),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.EPERM),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.ENOSYS),
    ]
    return b"".join(program)
