"""The sandbox's second seccomp program: the host's named unix sockets, without a network.

Landlock (up to ABI 7) does not check ``connect`` to a *pathname* unix
socket, nor ``sendto``/``sendmsg`` to one from a datagram socket, and the
network namespace does not cover the filesystem: without this filter a
sandboxed slave reaches any local daemon whose socket file its user may
write (a session bus, a container runtime, the journal) with a raw system
call or a static program, walking past the shim. Landlock's
``LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET`` (ABI 6) covers abstract names only.

A classic BPF program cannot read the socket a ``connect`` names, nor the
address a ``sendmsg`` carries, so it decides on what it can see — the
system call and its integer arguments — and leaves the slave no way to
address a unix socket by itself:

- **``connect`` fails with ``EACCES``** (any family: only the kernel knows
  the descriptor's, and a descriptor number can be re-pointed by another
  thread between a check and the call). The slave connects through the
  master: the shim asks, the master connects a socket of its own when the
  policy allows it, and that socket replaces the slave's. Without a network
  the slave's own connects could only fail anyway (its namespace is
  empty), and a ``FORWARD`` reply is not a grant. Under the seccomp
  transport ``connect`` is left to the user-notification filter instead,
  whose master never continues one (:mod:`libc_service.seccomp.session`), so that
  connects the policy performs still reach static programs.
- **No unix datagram socket** (``socket``/``socketpair`` with ``AF_UNIX``
  and ``SOCK_DGRAM``, or ``SOCK_RAW``, which the kernel makes a datagram
  socket): ``EACCES``. A datagram socket sends to any address given to
  ``sendto``/``sendmsg``, connected or not; stream and sequenced-packet
  sockets ignore or refuse an address once connected, and cannot send
  before. So ``sendto``/``sendmsg``/``sendmmsg`` need no check.
- **io_uring fails with ``ENOSYS``** (its ``IORING_OP_CONNECT`` and
  ``IORING_OP_SOCKET`` never pass through seccomp), even with
  ``metadata=True``.

Everything else is allowed here; the first filter (:mod:`.syscall_filter`)
still applies, and the kernel takes the stricter answer of the two.
"""

from __future__ import annotations

import errno as errno_module
import socket
from dataclasses import dataclass
from typing import Final

from libc_service.confinement.syscall_filter import (
    DATA_ARCH,
    DATA_NR,
    JEQ_K,
    JGE_K,
    JSET_K,
    RET_ALLOW,
    RET_ERRNO,
    Assembler,
    arg_low,
)

__all__ = ["SocketNumbers", "build_socket_filter", "socket_numbers_for"]


@dataclass(frozen=True)
class SocketNumbers:
    """The system calls this filter looks at, on one architecture."""

    audit_arch: int
    foreign_abi_bit: int | None
    socket: int
    socketpair: int
    connect: int
    io_uring: tuple[int, ...]


_NUMBERS: Final = {
    "x86_64": SocketNumbers(
        audit_arch=0xC000003E,
        foreign_abi_bit=0x40000000,
        socket=41,
        socketpair=53,
        connect=42,
        io_uring=(425, 426, 427),
    ),
    "aarch64": SocketNumbers(
        audit_arch=0xC00000B7,
        foreign_abi_bit=None,
        socket=198,
        socketpair=199,
        connect=203,
        io_uring=(425, 426, 427),
    ),
}

#: ``SOCK_DGRAM`` (2) and ``SOCK_RAW`` (3) are the types with bit 1 set and bits 2–3 clear: ``SOCK_STREAM``
#: (1), ``SOCK_SEQPACKET`` (5) and the rest differ there. Higher bits are flags (``SOCK_NONBLOCK``,
#: ``SOCK_CLOEXEC``) or make the call fail with ``EINVAL``.
_DATAGRAM_BIT: Final = 0x2
_NOT_DATAGRAM_BITS: Final = 0xC


def socket_numbers_for(machine: str) -> SocketNumbers | None:
    """The table for ``machine`` (``platform.machine()``), or ``None``."""
    return _NUMBERS.get(machine)


def build_socket_filter(numbers: SocketNumbers, *, connect: bool) -> bytes:
    """The program; ``connect``: refuse the slave's own ``connect`` (the shim transport)."""
    asm = Assembler()
    asm.load(DATA_ARCH)
    asm.jump_if(JEQ_K, numbers.audit_arch, None, "allow")  # the first filter refuses other ABIs
    asm.load(DATA_NR)
    if numbers.foreign_abi_bit is not None:
        asm.jump_if(JGE_K, numbers.foreign_abi_bit, "allow")
    asm.jump_if(JEQ_K, numbers.socket, "socket")
    asm.jump_if(JEQ_K, numbers.socketpair, "socket")
    if connect:
        asm.jump_if(JEQ_K, numbers.connect, "eacces")
    for number in numbers.io_uring:
        asm.jump_if(JEQ_K, number, "enosys")
    asm.goto("allow")

    asm.label("socket")  # socket(domain, type, protocol), socketpair(domain, type, protocol, sv)
    asm.load(arg_low(0))
    asm.jump_if(JEQ_K, socket.AF_UNIX, None, "allow")
    asm.load(arg_low(1))
    asm.jump_if(JSET_K, _DATAGRAM_BIT, None, "allow")
    asm.jump_if(JSET_K, _NOT_DATAGRAM_BITS, "allow", "eacces")

    asm.label("allow")
    asm.ret(RET_ALLOW)
    asm.label("eacces")
    asm.ret(RET_ERRNO | errno_module.EACCES)
    asm.label("enosys")
    asm.ret(RET_ERRNO | errno_module.ENOSYS)
    return asm.assemble()
