"""Answering a notification: a handler's outcome becomes the seccomp response.

| outcome | response |
|---|---|
| ``FORWARD`` | ``SECCOMP_USER_NOTIF_FLAG_CONTINUE``: the kernel does the call |
| an ``OSError`` with an errno | that errno |
| ``int`` | that value |
| ``WithFds`` for ``open``/``openat`` | the descriptor installed with ``ADDFD`` (``ADDFD_FLAG_SEND``: installing and answering in one step, ``O_CLOEXEC`` as the slave asked) |
| ``WithFds`` for ``connect``/``bind`` | the slave's socket replaced (``ADDFD_FLAG_SETFD``, keeping its close-on-exec flag), then the result |
| ``Stat`` | a :class:`StatWrite`: the kernel's ``struct stat`` (``statx``) to write into the slave's buffer, then answer |
| anything else, or an exception | logged; the router's ``error_errno`` (fail closed) |

The outcome becomes an answer in the step both transports share
(:func:`~libc_service.protocol.outcomes.answer_for`, through the router, which
logs a policy's mistake once); this module only carries the answer.
"""

from __future__ import annotations

import errno as errno_module
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from libc_service.kernel.descriptors import close_fds, not_open
from libc_service.seccomp.abi import ADDFD_FLAG_SEND, ADDFD_FLAG_SETFD, FLAG_CONTINUE, Gone, add_fd, respond
from libc_service.seccomp.decode import O_CLOEXEC, Notification, ReplyContext
from libc_service.seccomp.memory import slave_cloexec
from libc_service.protocol.outcomes import Summary
from libc_service.acting.files import installable
from libc_service.acting.statx import (
    STATX_BASIC_STATS,
    STATX_BTIME,
    STATX_LAYOUT,
    STATX_MNT_ID,
    STATX_MNT_ID_UNIQUE,
    STATX_SIZE,
)
from libc_service.protocol.replies import Stat

if TYPE_CHECKING:
    from libc_service.protocol.requests import Request
    from libc_service.policy.router import Router

__all__ = ["StatWrite", "answer", "fail", "stat_bytes"]


def answer(
    listener: int,
    notification: Notification,
    context: ReplyContext,
    request: Request,
    route: str,
    outcome: Any,
    router: Router,
) -> Summary | StatWrite:
    """Answer the notification as ``outcome`` says; what went out, for observers.

    The outcome becomes an answer in the one step both transports share
    (:meth:`Router.answer <libc_service.policy.router.Router.answer>`, which
    logs a policy's mistake once); only what seccomp alone can find out
    (a descriptor no longer open, a ``Stat`` with no buffer to write it to,
    a result that does not fit a register) is failed here, through
    :meth:`Router.cannot_carry <libc_service.policy.router.Router.cannot_carry>`.
    A ``Stat`` is not answered here: the caller writes the :class:`StatWrite`
    into the slave's buffer off the loop, then answers. The answer's
    descriptors are closed on every path. Raises
    :class:`~libc_service.seccomp.abi.Gone` when nobody waits for the answer.
    """
    notif_id = notification.id
    decided = router.answer(route, request, outcome)
    if decided.forwarded:
        respond(listener, notif_id, 0, 0, FLAG_CONTINUE)
        return "forward", None, 0, 0
    if decided.errno:
        respond(listener, notif_id, 0, -decided.errno, 0)
        return decided.outcome, -1, decided.errno, 0
    fds = decided.fds
    try:
        return _answer_result(listener, notification, context, request, route, outcome, decided.result, fds, router)
    except (Gone, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a Stat built unvalidated that does not pack
        return _cannot_carry(listener, notif_id, route, request, outcome, exc, router)
    finally:
        close_fds(fds)


def _answer_result(
    listener: int,
    notification: Notification,
    context: ReplyContext,
    request: Request,
    route: str,
    outcome: Any,
    result: Any,
    fds: Sequence[int],
    router: Router,
) -> Summary | StatWrite:
    notif_id = notification.id
    problem = not_open(fds)
    if problem is None and isinstance(result, Stat) and context.stat_buffer is None:
        problem = f"a Stat is no result for {request.function}"
    if problem is None and type(result) is int and not -(2**63) <= result < 2**63:
        problem = f"{result} does not fit the call's return register"
    if problem is not None:
        return _cannot_carry(listener, notif_id, route, request, outcome, problem, router)
    function = request.function
    if fds and function in ("open", "openat"):
        cloexec = O_CLOEXEC if "close_on_exec" in getattr(request, "flags", ()) else 0
        try:
            # ADDFD refuses an O_PATH descriptor: an equivalent, or the call's errno.
            given = installable(request, fds[0])
        except OSError as exc:
            code = exc.errno or errno_module.EACCES
            respond(listener, notif_id, 0, -code, 0)
            return "error", -1, code, 0
        try:
            installed = _install(listener, notif_id, given, ADDFD_FLAG_SEND, 0, cloexec)
        finally:
            if given != fds[0]:
                os.close(given)
        if installed < 0:
            return "error", -1, -installed, 0
        return "reply", installed, 0, len(fds)
    if fds and context.socket_number is not None and not _same_socket(fds[0], getattr(request, "socket", -1)):
        # A new socket replaces the slave's number. Another thread may have
        # closed that number and made something else there meanwhile, which
        # is then replaced: so the slave's own socket is used when it is the
        # one the handler connected (perform() does so for a bound socket).
        cloexec = O_CLOEXEC if slave_cloexec(notification.tid, context.socket_number) else 0
        code = _install(listener, notif_id, fds[0], ADDFD_FLAG_SETFD, context.socket_number, cloexec)
        if code < 0:
            return "error", -1, -code, 0
    if isinstance(result, Stat):
        assert context.stat_buffer is not None
        address, layout = context.stat_buffer
        # The worker that writes it checks the call is still pending first.
        return StatWrite(address, stat_bytes(result, layout, context.statx_mask), result, len(fds))
    respond(listener, notif_id, result, 0, 0)
    return "reply", result, 0, len(fds)


def fail(listener: int, notif_id: int, code: int) -> Summary:
    """Fail the call closed with ``code`` (the router's ``error_errno``)."""
    respond(listener, notif_id, 0, -code, 0)
    return "failure", -1, code, 0


def _cannot_carry(
    listener: int,
    notif_id: int,
    route: str,
    request: Request,
    outcome: Any,
    problem: str | BaseException,
    router: Router,
) -> Summary:
    """Fail the call closed for an answer seccomp cannot carry, logged once by the router."""
    failed = router.cannot_carry(route, request, outcome, problem)
    return fail(listener, notif_id, failed.errno)


def _install(listener: int, notif_id: int, fd: int, flags: int, newfd: int, newfd_flags: int) -> int:
    """Install ``fd`` in the slave: its number there, or ``-errno`` after failing the call with it."""
    try:
        return add_fd(listener, notif_id, fd, flags, newfd, newfd_flags)
    except Gone:
        raise
    except OSError as exc:
        # EMFILE and the like: the slave cannot take the descriptor; the call fails with that.
        code = exc.errno or errno_module.EMFILE
        respond(listener, notif_id, 0, -code, 0)
        return -code


#: struct stat on x86_64: dev, ino, nlink, mode, uid, gid, pad, rdev, size,
#: blksize, blocks, atime, atime_nsec, mtime, mtime_nsec, ctime, ctime_nsec, 3 unused.
_STAT: Final = struct.Struct("<QQQIIIiQqqqqqqqqq24x")
#: struct statx is acting/statx.py's layout, then spare bytes up to its 256.
_STATX_SPARE: Final = bytes(STATX_SIZE - STATX_LAYOUT.size)


@dataclass(frozen=True, slots=True)
class StatWrite:
    """A ``Stat`` reply still to be written into the slave's buffer (then answered)."""

    address: int
    data: bytes
    result: Stat
    fds: int


def stat_bytes(result: Stat, layout: Literal["stat", "statx"], mask: int = 0) -> bytes:
    """``result`` as the caller's ``struct stat`` or ``struct statx`` (``mask``: what statx asked for).

    As the kernel does, statx reports the birth time when it was asked for
    and the mount id unless the unique one was.
    """
    times = []
    for ns in (result.atime, result.mtime, result.ctime, result.btime or 0):
        times += [ns // 10**9, ns % 10**9]
    if layout == "stat":
        return _STAT.pack(
            result.dev,
            result.ino,
            result.nlink,
            result.st_mode,
            result.uid,
            result.gid,
            0,
            result.rdev,
            result.size,
            result.blksize,
            result.blocks,
            *times[:6],
        )
    got = STATX_BASIC_STATS
    btime = (0, 0, 0)
    if result.btime is not None and mask & STATX_BTIME:
        got |= STATX_BTIME
        btime = (times[6], times[7], 0)
    mnt_id = 0
    if result.mnt_id is not None and not mask & STATX_MNT_ID_UNIQUE:
        got |= STATX_MNT_ID
        mnt_id = result.mnt_id
    atime, mtime, ctime = ((times[i], times[i + 1], 0) for i in (0, 2, 4))
    return (
        STATX_LAYOUT.pack(
            got,
            result.blksize & 0xFFFFFFFF,
            result.attributes,
            result.nlink & 0xFFFFFFFF,
            result.uid,
            result.gid,
            result.st_mode,
            0,
            result.ino,
            result.size & (2**64 - 1),
            result.blocks & (2**64 - 1),
            result.attributes_mask,
            *atime,
            *btime,
            *ctime,
            *mtime,
            os.major(result.rdev),
            os.minor(result.rdev),
            os.major(result.dev),
            os.minor(result.dev),
            mnt_id,
        )
        + _STATX_SPARE
    )


def _same_socket(fd: int, slave_socket: int) -> bool:
    """Whether ``fd`` is the slave's socket itself (the master's copy of it, or a ``dup``)."""
    try:
        one, other = os.fstat(fd), os.fstat(slave_socket)
    except (OSError, TypeError):
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)
