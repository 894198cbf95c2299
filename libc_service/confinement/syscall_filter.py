"""The slave's seccomp filter: what Landlock does not mediate.

Landlock confines the filesystem (and, with recent ABIs, TCP and signals);
a handful of other system calls still let a process with the user's uid
reach outside its sandbox. The filter refuses them:

- **System calls it does not know.** Every number above the highest one
  this table knows (``HIGHEST_KNOWN``) fails with ``ENOSYS``, so a call a
  later kernel adds (as ``file_setattr`` was) is refused until it has been
  reviewed, instead of passing because a denylist fell behind. System calls
  of another ABI (i386 through ``int 0x80``, x32) fail with ``ENOSYS`` too:
  their numbers differ, so no list could cover them.
- **Terminal injection.** ``ioctl(TIOCSTI)`` pushes bytes into a terminal's
  input queue, to be read by the user's shell once the program exits;
  ``TIOCLINUX`` can do the same through the console's selection. Both fail
  with ``EPERM`` (the slave also runs in a session of its own, where the
  terminal is not its controlling one).
- **The kernel's keyrings** (``add_key``, ``keyctl``, ``request_key``):
  keyrings are not namespaced and the user's session keyring holds
  credentials; ``EPERM``, as container runtimes' default profiles do.
- **Resource limits, priority and CPU placement of other processes**
  (``prlimit64``, ``setpriority``, ``sched_set*``, ``ioprio_set``): with
  the same uid a slave could set the master's ``RLIMIT_CPU`` to 0 or its
  ``RLIMIT_NOFILE`` to 4 (killing it), or starve it. These checks are uid
  comparisons Landlock does not hook, so only calls about the caller itself
  (pid 0, its own process group) pass; ``prlimit64`` may still *read*
  another process's limits.
- **Metadata** (unless ``metadata=True``): ``chmod``, ``chown``, the
  ``utime`` and ``xattr`` families, ``file_setattr`` and the inode-flag
  ``ioctl`` requests (``FS_IOC_SETFLAGS``, ``FS_IOC_FSSETXATTR``,
  ``FS_IOC_SETVERSION``) fail with ``EPERM``; io_uring (whose requests would
  walk past the list) with ``ENOSYS``, which programs take as "no io_uring
  here" and fall back from.

``ioctl`` request numbers are compared on their low 32 bits only: the kernel
truncates the request to ``unsigned int``, so a filter comparing all 64 bits
is bypassed by setting the high ones.

The program is classic BPF built here, in the parent, by a small assembler
with named jump targets; the forked child only hands the kernel a pointer.
It is built by hand rather than with libseccomp so that installing needs
nothing but a C compiler, and so that the "refuse what is newer" rule uses
this table's knowledge rather than the installed libseccomp's (which may
predate the running kernel).
"""

from __future__ import annotations

import errno as errno_module
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["HIGHEST_KNOWN", "SyscallNumbers", "build_filter", "numbers_for"]


@dataclass(frozen=True)
class SyscallNumbers:
    """The numbers the filter needs on one architecture."""

    audit_arch: int
    #: Numbers at or above this belong to another ABI on the same arch (x32).
    foreign_abi_bit: int | None
    metadata: tuple[int, ...]
    io_uring: tuple[int, ...]
    keyrings: tuple[int, ...]
    ioctl: int
    prlimit64: int
    setpriority: int
    #: sched_setparam, sched_setscheduler, sched_setaffinity, sched_setattr: pid is argument 0.
    sched_by_pid: tuple[int, ...]
    ioprio_set: int


#: The highest system call number the tables below were reviewed against
#: (``file_setattr``, Linux 6.17; the same number on every architecture for
#: calls added since 5.1). Anything above fails with ``ENOSYS``.
HIGHEST_KNOWN: Final = 469

_NUMBERS: Final = {
    "x86_64": SyscallNumbers(
        audit_arch=0xC000003E,
        foreign_abi_bit=0x40000000,
        # chmod fchmod chown fchown lchown utime setxattr lsetxattr fsetxattr removexattr
        # lremovexattr fremovexattr utimes fchownat futimesat fchmodat utimensat fchmodat2
        # setxattrat removexattrat file_setattr
        metadata=(90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452, 463, 466, 469),
        io_uring=(425, 426, 427),
        keyrings=(248, 249, 250),  # add_key request_key keyctl
        ioctl=16,
        prlimit64=302,
        setpriority=141,
        sched_by_pid=(142, 144, 203, 314),
        ioprio_set=251,
    ),
    "aarch64": SyscallNumbers(
        audit_arch=0xC00000B7,
        foreign_abi_bit=None,
        # setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr fchmod fchmodat
        # fchownat fchown utimensat fchmodat2 setxattrat removexattrat file_setattr
        metadata=(5, 6, 7, 14, 15, 16, 52, 53, 54, 55, 88, 452, 463, 466, 469),
        io_uring=(425, 426, 427),
        keyrings=(217, 218, 219),  # add_key request_key keyctl
        ioctl=29,
        prlimit64=261,
        setpriority=140,
        sched_by_pid=(118, 119, 122, 274),
        ioprio_set=30,
    ),
}

# ioctl requests (the kernel compares them as unsigned int).
TIOCSTI: Final = 0x5412
TIOCLINUX: Final = 0x541C
FS_IOC_SETFLAGS: Final = 0x40086602
FS_IOC32_SETFLAGS: Final = 0x40046602
FS_IOC_SETVERSION: Final = 0x40087602
FS_IOC32_SETVERSION: Final = 0x40047602
FS_IOC_FSSETXATTR: Final = 0x401C5820
_TERMINAL_INJECTION: Final = (TIOCSTI, TIOCLINUX)
_INODE_ATTRIBUTES: Final = (
    FS_IOC_SETFLAGS,
    FS_IOC32_SETFLAGS,
    FS_IOC_SETVERSION,
    FS_IOC32_SETVERSION,
    FS_IOC_FSSETXATTR,
)
_PRIO_USER: Final = 2  # setpriority's "every process of a uid"
_IOPRIO_WHO_USER: Final = 3

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
DATA_NR, DATA_ARCH = 0, 4


def arg_low(index: int) -> int:
    return 16 + 8 * index  # little-endian: the low word comes first


def arg_high(index: int) -> int:
    return 20 + 8 * index


LD_W_ABS, JEQ_K, JGE_K, JGT_K, JA, RET_K = 0x20, 0x15, 0x35, 0x25, 0x05, 0x06
#: ``jset``: jump when the accumulator has any of the bits of ``k`` (used by :mod:`.notify_filter`).
JSET_K: Final = 0x45
RET_ALLOW: Final = 0x7FFF0000
RET_ERRNO: Final = 0x00050000
_INSTRUCTION: Final = struct.Struct("<HBBI")


def numbers_for(machine: str) -> SyscallNumbers | None:
    """The filter's table for ``machine`` (``platform.machine()``), or ``None``."""
    return _NUMBERS.get(machine)


class Assembler:
    """Classic BPF with named jump targets, resolved when the program is done.

    Conditional jumps in classic BPF are relative 8-bit offsets forward
    only; naming targets keeps the program readable and the offsets right.
    """

    def __init__(self) -> None:
        self._code: list[tuple[int, int, str | None, str | None]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name} defined twice")
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((LD_W_ABS, offset, None, None))

    def jump_if(self, code: int, k: int, true: str | None, false: str | None = None) -> None:
        """Compare the accumulator; ``None`` as a target means the next instruction."""
        self._code.append((code, k, true, false))

    def goto(self, target: str) -> None:
        self._code.append((JA, 0, target, None))

    def ret(self, value: int) -> None:
        self._code.append((RET_K, value, None, None))

    def assemble(self) -> bytes:
        out = []
        for index, (code, k, true, false) in enumerate(self._code):
            if code == JA:
                out.append(_INSTRUCTION.pack(code, 0, 0, self._offset(index, true)))
            elif code in (JEQ_K, JGE_K, JGT_K, JSET_K):
                jt, jf = self._offset(index, true), self._offset(index, false)
                if jt > 255 or jf > 255:
                    raise ValueError("a conditional jump is too long for classic BPF")
                out.append(_INSTRUCTION.pack(code, jt, jf, k))
            else:
                out.append(_INSTRUCTION.pack(code, 0, 0, k))
        return b"".join(out)

    def _offset(self, index: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - index - 1
        if offset < 0:
            raise ValueError(f"jump backwards to {target}")
        return offset


def build_filter(numbers: SyscallNumbers, *, metadata: bool) -> bytes:
    """The seccomp program for one architecture; ``metadata``: let metadata calls pass."""
    asm = Assembler()
    asm.load(DATA_ARCH)
    asm.jump_if(JEQ_K, numbers.audit_arch, None, "enosys")
    asm.load(DATA_NR)
    if numbers.foreign_abi_bit is not None:
        asm.jump_if(JGE_K, numbers.foreign_abi_bit, "enosys")
    asm.jump_if(JGT_K, HIGHEST_KNOWN, "enosys")
    _each_to(asm, numbers.keyrings, "eperm")
    if not metadata:
        _each_to(asm, numbers.metadata, "eperm")
        _each_to(asm, numbers.io_uring, "enosys")
    asm.jump_if(JEQ_K, numbers.ioctl, "ioctl")
    asm.jump_if(JEQ_K, numbers.prlimit64, "prlimit64")
    asm.jump_if(JEQ_K, numbers.setpriority, "setpriority")
    asm.jump_if(JEQ_K, numbers.ioprio_set, "ioprio_set")
    _each_to(asm, numbers.sched_by_pid, "own_pid")
    asm.goto("allow")

    asm.label("ioctl")
    asm.load(arg_low(1))
    _each_to(asm, _TERMINAL_INJECTION, "eperm")
    if not metadata:
        _each_to(asm, _INODE_ATTRIBUTES, "eperm")
    asm.goto("allow")

    asm.label("prlimit64")  # prlimit64(pid, resource, new_limit, old_limit)
    asm.load(arg_low(0))
    asm.jump_if(JEQ_K, 0, "allow")
    asm.load(arg_low(2))
    asm.jump_if(JEQ_K, 0, None, "eperm")
    asm.load(arg_high(2))
    asm.jump_if(JEQ_K, 0, "allow", "eperm")

    asm.label("setpriority")  # setpriority(which, who, prio): only "me" or "my process group"
    asm.load(arg_low(1))
    asm.jump_if(JEQ_K, 0, None, "eperm")
    asm.load(arg_low(0))
    asm.jump_if(JEQ_K, _PRIO_USER, "eperm", "allow")

    asm.label("ioprio_set")  # ioprio_set(which, who, ioprio)
    asm.load(arg_low(1))
    asm.jump_if(JEQ_K, 0, None, "eperm")
    asm.load(arg_low(0))
    asm.jump_if(JEQ_K, _IOPRIO_WHO_USER, "eperm", "allow")

    asm.label("own_pid")  # sched_set*(pid, ...)
    asm.load(arg_low(0))
    asm.jump_if(JEQ_K, 0, "allow", "eperm")

    asm.label("allow")
    asm.ret(RET_ALLOW)
    asm.label("eperm")
    asm.ret(RET_ERRNO | errno_module.EPERM)
    asm.label("enosys")
    asm.ret(RET_ERRNO | errno_module.ENOSYS)
    return asm.assemble()


def _each_to(asm: Assembler, values: Iterable[int], target: str) -> None:
    for value in values:
        asm.jump_if(JEQ_K, value, target)
