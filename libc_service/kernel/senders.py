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
does not (:mod:`libc_service.confinement.isolation` empties its capability sets).

:class:`ProcessTree` then says whether a sender belongs to the program's
tree: the program itself, a descendant (its parent chain in
``/proc/PID/stat`` reaches a known member), or a process of the program's
session started since the program (a descendant whose parent has exited
is reparented out of the chain, but keeps its session). A member is
remembered, so each process costs one walk; the check per datagram is a
set lookup.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

__all__ = ["CREDENTIALS_SPACE", "ProcessTree", "parse_stat", "sender_pid"]

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

    Built from the program's pid while it exists (before it is reaped),
    which fixes its session and start time. A process is a member when its
    parent chain (``/proc/PID/stat``) reaches a known member, or — the
    chain of a descendant whose parent exited leads to init or a subreaper
    instead — when it is in the program's session and started no earlier
    than the program. A sandboxed program has a session of its own, so
    there this is exact; otherwise the user's session may hold other
    processes started meanwhile, which do not hold the registration socket
    unless the tree gave it to them.

    A process that no longer exists cannot be examined: its membership is
    what was known of it while it lived, and an unknown one that is gone is
    taken as a member (``gone_members`` counts them) — the kernel named its
    pid, and only the tree holds the socket.
    """

    def __init__(self, root: int) -> None:
        self.members: set[int] = {root}
        fields = _stat_fields(root)
        #: The program's session and start time (clock ticks since boot), or None when it was gone.
        self._session: int | None = fields[1] if fields is not None else None
        self._started = fields[2] if fields is not None else 0
        #: Senders that had exited before they could be examined.
        self.gone_members = 0

    def __contains__(self, pid: object) -> bool:
        if not isinstance(pid, int):
            return False
        if pid in self.members:
            return True
        first = _stat_fields(pid)
        if first is None:  # the sender itself is gone: nothing left to examine
            self.gone_members += 1
            return True
        if self._session is not None and first[1] == self._session and first[2] >= self._started:
            self.members.add(pid)
            return True
        chain = [pid]
        parent = first[0]
        for _ in range(_MAX_DEPTH):
            if parent in self.members:
                self.members.update(chain)
                return True
            fields = _stat_fields(parent) if parent > 1 else None
            if fields is None:
                return False
            chain.append(parent)
            parent = fields[0]
        return False


def _stat_fields(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) of ``pid`` from ``/proc/PID/stat``, or ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except OSError:
        return None
    return parse_stat(text)


def parse_stat(text: bytes) -> tuple[int, int, int] | None:
    """(parent pid, session id, start time) from a ``/proc/PID/stat`` line, or ``None`` for a process being reaped."""
    # The command name (field 2) is in parentheses and may hold anything: split after the last one.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        pid = int(text.split(maxsplit=1)[0])
        parent, session, started = int(fields[1]), int(fields[3]), int(fields[19])
    except (IndexError, ValueError):
        return None
    if parent == 0 and pid != 1:
        # Being reaped: the kernel has detached its parent and session
        # (release_task; /proc shows parent 0, session -1) while the entry
        # still exists. Only a namespace's init has no parent. Gone, as far
        # as the question can tell.
        return None
    return parent, session, started
