"""Handing the seccomp listener from the child to the parent.

The filter is installed in the forked child just before ``exec``
(``SECCOMP_FILTER_FLAG_NEW_LISTENER``); the child sends the listener to
the parent over a socketpair (``SCM_RIGHTS``, ``MSG_DONTWAIT``) and closes
its copy. Nothing the child does after installing the filter is notified,
so it cannot wait on the master (which is still inside ``fork``/``exec``
until the program runs); the parent waits for the listener at most
:data:`HANDOFF_TIMEOUT` seconds.
"""

from __future__ import annotations

import array
import ctypes
import errno as errno_module
import os
import socket
import struct
from typing import TYPE_CHECKING, Final

from libc_service.kernel import libc as kernel

from libc_service.kernel import readiness
from libc_service.kernel.descriptors import close_fds
from libc_service.seccomp.abi import (
    FILTER_FLAG_NEW_LISTENER,
    FILTER_FLAG_WAIT_KILLABLE_RECV,
    PR_SET_NO_NEW_PRIVS,
    SECCOMP_SET_MODE_FILTER,
    SYS_SECCOMP,
)
from libc_service.seccomp.availability import SeccompUnavailable, seccomp_unavailable
from libc_service.seccomp.filter import build_notify_filter

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["HANDOFF_TIMEOUT", "ListenerHandoff"]

#: Seconds the parent waits for the child's listener after the program started.
HANDOFF_TIMEOUT: Final = 5.0
_INT: Final = struct.Struct("i")


class ListenerHandoff:
    """Built in the parent before the fork; installs the filter in the child; receives the listener.

    Everything that can fail or allocate is prepared here: the BPF program,
    its ``sock_fprog`` and the socketpair. The child only calls ``prctl``,
    ``seccomp`` and ``sendmsg`` (with ``MSG_DONTWAIT``), none of which the
    new filter notifies and none of which can block.
    """

    def __init__(self) -> None:
        reason = seccomp_unavailable()
        if reason is not None:
            raise SeccompUnavailable(f"cannot use --seccomp: {reason}")
        self._program = ctypes.create_string_buffer(build_notify_filter())
        self._prog = ctypes.create_string_buffer(
            struct.pack("<HxxxxxxQ", len(self._program.raw) // 8, ctypes.addressof(self._program))
        )
        self._parent, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._message = [b"k"]
        self._failed = [b"-"]

    def install_in_child(self) -> None:
        """Runs between fork and exec, last: install the filter and send the listener.

        After the filter is in place nothing here may make a notified call
        (the parent would serve it only after ``exec``): no imports, no file
        access. A failure is written to stderr and stops the ``exec``.
        """
        if kernel.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            self._fail("prctl(PR_SET_NO_NEW_PRIVS)")
        message = self._message
        flags = FILTER_FLAG_NEW_LISTENER | FILTER_FLAG_WAIT_KILLABLE_RECV
        listener = kernel.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, self._prog)
        if listener < 0 and ctypes.get_errno() == errno_module.EINVAL:
            # Before Linux 5.19: no WAIT_KILLABLE_RECV; a signal may then restart a notified call.
            message = self._failed
            listener = kernel.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, FILTER_FLAG_NEW_LISTENER, self._prog)
        if listener < 0:
            self._fail("seccomp(SECCOMPFILTER_FLAG_NEW_LISTENER)")
        try:
            self._child.sendmsg(
                message,
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _INT.pack(listener))],
                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
            )
        finally:
            os.close(listener)

    def launch_steps(self) -> tuple[list[str], list[int]]:
        """What :meth:`install_in_child` does, as the launcher's steps (:mod:`libc_service.processes.launching`), and its descriptor."""
        fd = self._child.fileno()
        return [f"h={fd}:{self._program.raw[:-1].hex()}", f"x={fd}"], [fd]

    def _fail(self, what: str) -> None:
        error = kernel.last_error(what)
        try:
            os.write(2, f"libc-service: cannot install the seccomp listener: {error.strerror}\n".encode())
        except OSError:
            pass
        raise error

    async def receive(self, timeout: float = HANDOFF_TIMEOUT) -> tuple[int, bool]:
        """The listener descriptor and whether received calls are killable only.

        Called once the program runs (its ``exec`` succeeded, so the child
        sent the listener before). Raises :class:`SeccompUnavailable` when
        nothing arrives within ``timeout`` seconds.
        """
        self._child.close()
        sock = self._parent
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                data, ancdata, flags, _ = sock.recvmsg(16, socket.CMSG_SPACE(2 * _INT.size), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise SeccompUnavailable(
                        f"the program did not hand over its seccomp listener within {timeout:g} s"
                    ) from None
                await readiness.readable(sock.fileno(), remaining)
                continue
            if not data and not ancdata:
                raise SeccompUnavailable("the program closed the handoff without sending its seccomp listener")
            fds = [
                fd
                for level, kind, raw in ancdata
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for fd in array.array("i", raw[: len(raw) - len(raw) % _INT.size])
            ]
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 1 or data not in (b"k", b"-"):
                close_fds(fds)
                raise SeccompUnavailable("the program sent a malformed seccomp listener handoff")
            return fds[0], data == b"k"

    def close(self) -> None:
        """Close both ends of the socketpair (idempotent)."""
        self._parent.close()
        self._child.close()
