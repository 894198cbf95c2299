"""Who sent a datagram: the kernel's credentials, and whether the sender is of a program's tree."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

from libc_service.kernel.senders import ProcessTree, sender_pid

#: A child that names itself like a /proc/PID/stat line (its name is the slave's to choose), then waits.
NAMED = textwrap.dedent("""
    import ctypes, sys, time
    ctypes.CDLL(None).prctl(15, b") S 1 1 1 1", 0, 0, 0)
    print("ready", flush=True)
    time.sleep(30)
""")


def test_the_sender_is_the_kernel_s_word_not_the_datagram_s() -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        theirs.send(b"pid 1")
        _, ancdata, _, _ = mine.recvmsg(64, socket.CMSG_SPACE(12))
        assert sender_pid(ancdata) == os.getpid()
    assert sender_pid([]) is None


def test_descendants_are_members_whatever_their_name_and_others_are_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", NAMED], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        tree = ProcessTree(os.getpid())
        assert child.pid in tree and child.pid in tree.members
        assert os.getppid() not in ProcessTree(child.pid)  # an ancestor is not a descendant
        assert 1 not in tree
        assert os.getpid() not in ProcessTree(child.pid)  # its parent started before it
    finally:
        child.kill()
        child.wait()
    tree = ProcessTree(os.getpid())
    assert child.pid in tree and tree.gone_members == 1  # gone before it could be examined


def _stat_line(pid: int, parent: int, session: int, started: int, name: bytes = b"sh") -> bytes:
    """A ``/proc/PID/stat`` line with the fields membership reads (the rest zero)."""
    rest = ["S", str(parent), "0", str(session)] + ["0"] * 15 + [str(started)] + ["0"] * 30
    return f"{pid} (".encode() + name + b") " + " ".join(rest).encode()


def test_a_process_being_reaped_is_not_judged_by_the_parent_and_session_the_kernel_detached() -> None:
    from libc_service.kernel.senders import parse_stat

    assert parse_stat(_stat_line(7, 3, 3, 99)) == (3, 3, 99)
    assert parse_stat(_stat_line(7, 3, 3, 99, name=b"a) (b")) == (3, 3, 99)
    # release_task detaches them before /proc forgets the pid: what a reap in progress shows.
    assert parse_stat(_stat_line(7, 0, -1, 99)) is None
    assert parse_stat(_stat_line(7, 0, 3, 99)) is None
    assert parse_stat(_stat_line(1, 0, 0, 5)) == (0, 0, 5)  # a namespace's init has no parent, and is alive
    assert parse_stat(b"7 (x) S 1") is None


def test_the_tree_takes_its_own_process_for_a_member() -> None:
    from libc_service.kernel.senders import ProcessTree

    tree = ProcessTree(os.getpid())
    assert os.getpid() in tree
