"""Who sent a datagram on the registration socket, as the kernel names it.

Every process of a slave's tree writes to one registration socket: its
registration, and, when observers listen, reports of the calls its shim
decided. Anything a datagram *says* about its sender was written by the
sender — a process of the tree could claim to be another one (pid 1, a
sibling) and make ``trace`` print calls nobody made, or ``run`` print a
refusal of a path nobody asked for. So the master reads the sender from the
kernel instead: with ``SO_PASSCRED`` on the receiving end, each datagram
comes with ``SCM_CREDENTIALS`` naming the process that sent it (its
thread-group id, in the master's pid namespace). A sender can only put its
own pid there unless it holds ``CAP_SYS_ADMIN``, which a sandboxed slave
does not (:mod:`libc_service.isolation` empties its capability sets).

:class:`ProcessTree` then says whether a sender belongs to the program's
tree: the program itself, a descendant (its parent chain in
``/proc/PID/stat`` reaches a known member), or, when the program runs in a
session of its own (under a sandbox), a process of that session (a
descendant whose parent has exited is reparented out of the chain, but
keeps its session). A member is remembered, so each process costs one
walk; the check per datagram is a set lookup.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

__all__ = ["CREDENTIALS_SPACE", "ProcessTree", "sender_pid"]

#: struct ucred: pid, uid, gid.
_UCRED: Final = struct.Struct("=iII")
#: Room for the credentials in ``recvmsg``'s control buffer.
CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_UCRED.size)
#: The longest parent chain walked (a deeper one is not proven a member).
_MAX_DEPTH: Final = 4096


_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_SCM_CREDENTIALS: Final = int(socket.SCM_CREDENTIALS)
_PID: Final = struct.Struct("=i").unpack_from


def sender_pid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The sending process's pid from ``SCM_CREDENTIALS``, or ``None`` when the kernel named none.

    ``0`` (a sender the master's pid namespace cannot name, or a datagram
    queued before ``SO_PASSCRED`` was set) is ``None`` too. Called for every
    report (``trace`` reads many): plain ints, no attribute look-ups.
    """
    for level, kind, data in ancdata:
        if kind == _SCM_CREDENTIALS and level == _SOL_SOCKET and len(data) >= 12:
            pid: int = _PID(data)[0]
            return pid if pid > 0 else None
    return None


class ProcessTree:
    """The processes of one program's tree, as far as the kernel can show them.

    ``root`` is the program's pid; ``session`` its session id when it runs
    in a session of its own (else ``None``: the user's session holds other
    processes too). A process that no longer exists cannot be examined: its
    membership is what was known of it while it lived, and an unknown one
    that is gone is taken as a member (``gone_members`` counts them) — it
    could only have sent on the registration socket if the tree gave it the
    socket, and its pid was named by the kernel.
    """

    def __init__(self, root: int, session: int | None = None) -> None:
        self.members: set[int] = {root}
        self._session = session
        #: Senders that had exited before they could be examined.
        self.gone_members = 0

    def __contains__(self, pid: object) -> bool:
        if not isinstance(pid, int):
            return False
        if pid in self.members:
            return True
        chain: list[int] = []
        current = pid
        for _ in range(_MAX_DEPTH):
            fields = _stat_fields(current)
            if fields is None:
                if current == pid:  # the sender itself is gone: nothing left to examine
                    self.gone_members += 1
                    return True
                return False
            parent, session = fields
            chain.append(current)
            if self._session is not None and session == self._session:
                break
            if parent in self.members:
                break
            if parent <= 1:
                return False
            current = parent
        else:
            return False
        self.members.update(chain)
        return True


def _stat_fields(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid`` from ``/proc/PID/stat``, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold anything: split after the last one.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[3])
    except (IndexError, ValueError):
        return None
