"""A hostile slave: a raw-socket fuzzer for the master.

It talks to a :class:`~libc_service.Master` through a plain ``SOCK_SEQPACKET``
end — not the :class:`~libc_service.Slave` — and sends what a broken or
malicious slave could: valid requests, the same with bits flipped, cut
short, extended, with header fields overwritten or swapped between valid
encodings, lying string lengths, huge counts, random bytes, oversized
datagrams, descriptor floods of every kind (pipes, sockets, directories,
``/dev/null``, ``O_PATH``, eventfd, memfd, epoll, pidfd, the channel itself),
and hang-ups right after a request.

Every message is first judged by :func:`libc_service.protocol.wire_requests.decode_request`
itself, so the fuzzer knows what the master must do with it: answer it (a
reply with the request's function, tid and request id, whose value the
:func:`expected` oracle predicts for the handlers of :func:`fuzz_router`),
or close the session. Anything else is recorded as a *violation*.

Used by ``tests/test_fuzz.py`` and ``bench/soak.py``. Run as a program
(``python tests/hostile.py FD SEED``) it fuzzes the channel it inherited as
descriptor FD until it is killed or the master hangs up.
"""

from __future__ import annotations

import array
import errno
import os
import random
import select
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from libc_service import AddrInfo, Errno, Router, Stat, WithFds, deny
from libc_service.policy.conditions import named, to, under
from libc_service.protocol import wire_header
from libc_service.protocol import wire_replies
from libc_service.protocol import wire_requests
from libc_service.protocol.replies import Result
from libc_service.protocol.requests import (
    OPEN_FLAGS,
    OPENAT_FLAGS,
    PATH_MAX_BYTES,
    REQUEST_TYPES,
    Request,
)

__all__ = [
    "FD_KINDS",
    "Message",
    "Session",
    "Tally",
    "expected",
    "fuzz_router",
    "mutate",
    "random_message",
    "random_request",
]

#: Root of the paths the fuzz handlers answer; every other path is refused.
OK_ROOT = "/fuzz-ok/"
#: A generous bound on any wait for the master: past it, the master hung.
PATIENCE = 10.0
_INO_SALT = 0x5BD1E995

# ---------------------------------------------------------------- handlers


def stat_of(path: bytes) -> Stat:
    """What the fuzz router answers for ``stat``/``lstat`` of ``path`` under ``OK_ROOT``."""
    return Stat(size=len(path), ino=zlib.crc32(path) ^ _INO_SALT, nlink=1, mode=0o644, type="regular")


def fuzz_router(*, concurrent: bool = False, default: Any = None, router: Router | None = None) -> Router:
    """A real handler set: stat, open, access, getaddrinfo and refusals.

    It never forwards (``deny(EPERM)`` default), so a *forward* reply in a
    fuzz session is a grant nobody made. Given ``router``, the handlers are
    added to it (after its own routes) instead.
    """
    if router is None:
        router = Router(default=deny(errno.EPERM) if default is None else default, concurrent=concurrent)

    @router.on("stat", "lstat")
    def stat(request: Any) -> Stat:
        """Stat a fuzz path: a fake regular file whose size and inode come from the path."""
        raw = os.fsencode(str(request.path))
        if raw == b"/fuzz-ok/raise":
            raise RuntimeError("a buggy handler")
        if not raw.startswith(OK_ROOT.encode()):
            raise Errno(errno.ENOENT)
        return stat_of(raw)

    @router.on("open", "openat")
    def open_(request: Any) -> WithFds:
        """Open /dev/null read-only, whatever was asked; refuse anything else."""
        if str(request.path) != "/dev/null":
            raise Errno(errno.EACCES)
        return WithFds(0, [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)])

    @router.on("access", "eaccess")
    def access(request: Any) -> int:
        """Everything under the fuzz root exists; nothing else does."""
        if not os.fsencode(str(request.path)).startswith(OK_ROOT.encode()):
            raise Errno(errno.ENOENT)
        return 0

    # Routes with conditions answer what the routes after them would, so the
    # oracle stays simple while every hostile path, directory descriptor (of
    # any kind), address and name goes through the condition code.
    @router.on("mkdir", "unlink", "rmdir", "rename", when=under("/fuzz-ok"))
    def read_only_tree(request: Any) -> int:
        """The fuzz tree is read-only."""
        raise Errno(errno.EROFS)

    @router.on("mkdir", "unlink", "rmdir", "rename")
    def mutate_(request: Any) -> int:
        """A read-only file system."""
        raise Errno(errno.EROFS)

    @router.on(
        "connect_inet",
        "connect_inet6",
        "bind_inet",
        "bind_inet6",
        when=to("10.0.0.0/8:*", "127.0.0.1:80", "[::1]:*", "[fe80::]:*"),
    )
    def no_network(request: Any) -> int:
        """No network, even to the usual suspects."""
        raise Errno(errno.EPERM)

    @router.on("getaddrinfo", when=named("localhost"))
    async def resolve(request: Any) -> list[AddrInfo]:
        """Only localhost resolves (an async handler, as a resolver would be)."""
        return [AddrInfo(address=IPv4Address("127.0.0.1"), port=80)]

    @router.on("getaddrinfo")
    def unknown(request: Any) -> str:
        """Any other name is unknown."""
        return "noname"

    return router


def expected(request: Request) -> tuple[Result, int, int]:
    """``(result, errno, number of descriptors)`` :func:`fuzz_router` answers ``request`` with."""
    function = request.function
    if function in ("stat", "lstat"):
        raw = os.fsencode(str(request.path))  # type: ignore[union-attr]
        if raw == b"/fuzz-ok/raise":
            return -1, errno.EPERM, 0  # the router's error_errno: fail closed
        if raw.startswith(OK_ROOT.encode()):
            return stat_of(raw), 0, 0
        return -1, errno.ENOENT, 0
    if function in ("open", "openat"):
        if str(request.path) == "/dev/null":  # type: ignore[union-attr]
            return 0, 0, 1
        return -1, errno.EACCES, 0
    if function in ("access", "eaccess"):
        if os.fsencode(str(request.path)).startswith(OK_ROOT.encode()):  # type: ignore[union-attr]
            return 0, 0, 0
        return -1, errno.ENOENT, 0
    if function in ("mkdir", "unlink", "rmdir", "rename"):
        return -1, errno.EROFS, 0
    if function == "getaddrinfo":
        node = request.node  # type: ignore[union-attr]
        if node is not None and node.lower().rstrip(".") == "localhost":
            return [AddrInfo(address=IPv4Address("127.0.0.1"), port=80)], 0, 0
        return "noname", 0, 0
    return -1, errno.EPERM, 0  # connect_*/bind_*: the deny default


# -------------------------------------------------------------- descriptors


def _pipe_end(which: int) -> int:
    ends = os.pipe()
    os.close(ends[1 - which])
    return ends[which]


def _socket_end(kind: socket.SocketKind, family: socket.AddressFamily = socket.AF_UNIX) -> int:
    if family == socket.AF_UNIX:
        mine, theirs = socket.socketpair(family, kind)
        theirs.close()
        return mine.detach()
    return socket.socket(family, kind).detach()


def _epoll() -> int:
    poller = select.epoll()
    fd = os.dup(poller.fileno())
    poller.close()
    return fd


#: Every kind of descriptor a hostile slave can send, as a factory of a fresh one.
FD_KINDS: dict[str, Callable[[], int]] = {
    "pipe_read": lambda: _pipe_end(0),
    "pipe_write": lambda: _pipe_end(1),
    "unix_stream": lambda: _socket_end(socket.SOCK_STREAM),
    "unix_dgram": lambda: _socket_end(socket.SOCK_DGRAM),
    "unix_seqpacket": lambda: _socket_end(socket.SOCK_SEQPACKET),
    "tcp": lambda: _socket_end(socket.SOCK_STREAM, socket.AF_INET),
    "udp6": lambda: _socket_end(socket.SOCK_DGRAM, socket.AF_INET6),
    "directory": lambda: os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
    "dev_null": lambda: os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC),
    "o_path": lambda: os.open("/etc", os.O_PATH | os.O_CLOEXEC),
    "eventfd": lambda: os.eventfd(0, os.EFD_CLOEXEC),
    "memfd": lambda: os.memfd_create("hostile", os.MFD_CLOEXEC),
    "epoll": _epoll,
    "pidfd": lambda: os.pidfd_open(os.getpid()),
}
#: The channel socket sent over itself (a reference cycle through the master).
SELF = "self"
#: The most descriptors one sendmsg may carry (the kernel's SCM_MAX_FD).
SCM_MAX_FD = 253

# ----------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """One datagram a hostile slave sends, and what to do around it."""

    data: bytes
    #: Kinds (keys of :data:`FD_KINDS`, or :data:`SELF`) of the descriptors sent with it.
    fds: tuple[str, ...] = ()
    #: Hang up right after sending, without waiting for the answer.
    hang_up: bool = False
    #: How it was made, for the tally (``valid``, ``bitflip``, ``flood``, ...).
    how: str = "valid"


def judge(message: Message) -> Request | None:
    """The request the master must answer, or ``None`` if it must close the session."""
    nfds = len(message.fds)
    if nfds > wire_header.MAX_REQUEST_FDS or len(message.data) > wire_header.MAX_MESSAGE or not message.data:
        return None
    try:
        return wire_requests.decode_request(message.data, list(range(1000, 1000 + nfds)))
    except wire_header.ProtocolError:
        return None


_PATHS = [
    b"/fuzz-ok/a",
    b"/fuzz-ok/b/c",
    b"/fuzz-ok/",
    b"/fuzz-ok/raise",
    b"/dev/null",
    b"/etc/passwd",
    b"rel/ative",
    b"fuzz-ok/rel",
    b"../fuzz-ok/up",
    b".",
    b"..",
    b"/",
    b"/fuzz-ok/\xff\xfe",
    b"/proc/self/root",
    "/fuzz-ok/é".encode(),
]


def _path(rnd: random.Random) -> str:
    roll = rnd.random()
    if roll < 0.8:
        return os.fsdecode(rnd.choice(_PATHS))
    if roll < 0.9:
        return os.fsdecode(OK_ROOT.encode() + bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 40))))
    longest = OK_ROOT.encode() + b"x" * PATH_MAX_BYTES
    return os.fsdecode(longest[: rnd.randrange(PATH_MAX_BYTES - 8, PATH_MAX_BYTES + 1)])


def _metadata(rnd: random.Random, function: str) -> dict[str, Any]:
    """A metadata change's own arguments: a mode, ids (``None``: unchanged) or times."""
    if function.endswith("chmod"):
        return {"mode": rnd.randrange(0o10000)}
    if function.endswith("chown"):
        return {name: rnd.choice([None, 0, 2**32 - 1, rnd.randrange(2**32)]) for name in ("owner", "group")}
    return {
        name: rnd.choice(["now", "omit", 0, -(2**63), 2**63 - 1, rnd.randrange(-(2**63), 2**63)])
        for name in ("atime", "mtime")
    }


def random_request(rnd: random.Random) -> Request:
    """A valid request of a random function (descriptor fields hold placeholders)."""
    function = rnd.choice(list(REQUEST_TYPES))
    fields: dict[str, Any] = {
        "function": function,
        "pid": rnd.randrange(1, 2**32),
        "tid": rnd.randrange(1, 2**32),
        "request_id": rnd.randrange(2**64),
    }
    placeholder = lambda: 3 if rnd.random() < 0.5 else None  # noqa: E731
    if function in ("open", "openat"):
        vocabulary = OPENAT_FLAGS if function == "openat" else OPEN_FLAGS
        access = rnd.choice(["read_only", "write_only", "read_write"])
        others = [flag for flag in vocabulary if flag not in ("read_only", "write_only", "read_write")]
        flags = {access, *rnd.sample(others, rnd.randrange(0, 4))}
        takes_mode = bool(flags & {"create", "temporary"})
        fields |= {
            "path": _path(rnd),
            "flags": flags,
            "mode": rnd.randrange(0o10000) if takes_mode else None,
            "dirfd": placeholder(),
        }
    elif function == "rename":
        fields |= {"path1": _path(rnd), "path2": _path(rnd), "dirfd1": placeholder(), "dirfd2": placeholder()}
    elif function in ("connect_unix", "bind_unix"):
        name = rnd.choice([b"/run/x.sock", b"\0abstract", b"\0", b"s" * 108])
        fields |= {"path": os.fsdecode(name), "socket": 3}
    elif function in ("connect_inet", "bind_inet"):
        fields |= {"address": IPv4Address(rnd.randrange(2**32)), "port": rnd.randrange(65536), "socket": 3}
    elif function in ("connect_inet6", "bind_inet6"):
        text = str(IPv6Address(rnd.randrange(2**128)))
        if rnd.random() < 0.3:
            text += f"%{rnd.randrange(1, 2**32)}"
        fields |= {"address": IPv6Address(text), "port": rnd.randrange(65536), "socket": 3}
    elif function in ("fchmod", "fchown", "futimens"):
        fields |= {"fd": 3, **_metadata(rnd, function)}
    elif function in ("chmod", "chown", "utimens"):
        fields |= {
            "path": _path(rnd),
            "dirfd": placeholder(),
            "no_follow": rnd.random() < 0.5,
            **_metadata(rnd, function),
        }
    elif function == "getaddrinfo":
        node = rnd.choice(["localhost", "LocalHost.", "example.org", None, "x" * 1025, "\udcff"])
        service = rnd.choice(["http", "443", None if node is not None else "80"])
        fields |= {"node": node, "service": service, "protocol": rnd.choice([None, "tcp", "udp"])}
    else:
        fields |= {"path": _path(rnd), "dirfd": placeholder()}
        if function in ("access", "eaccess"):
            fields["amode"] = rnd.choice(["f", {"r"}, {"r", "w", "x"}])
        elif function == "mkdir":
            fields["mode"] = rnd.randrange(0o10000)
    return REQUEST_TYPES[function].model_validate(fields)  # type: ignore[return-value]


#: (offset, struct format) of every request header field, for overwrites and swaps.
HEADER_FIELDS: tuple[tuple[int, str], ...] = (
    (0, "4s"),
    (4, "<H"),
    (6, "<H"),
    (8, "<I"),
    (12, "<I"),
    (16, "<Q"),
    (24, "<I"),
    (28, "<I"),
    (32, "16s"),
    (48, "<I"),
    (52, "<H"),
    (54, "<H"),
    (56, "B"),
    (57, "7s"),
)


def _interesting(fmt: str, rnd: random.Random) -> bytes:
    size = struct.calcsize(fmt)
    if fmt.endswith("s"):
        return rnd.choice([bytes(size), b"\xff" * size, bytes(rnd.randrange(256) for _ in range(size))])
    top = 2 ** (8 * size) - 1
    value = rnd.choice(
        [
            0,
            1,
            2,
            3,
            7,
            17,
            18,
            0x7F,
            0x80,
            0xFF,
            0x7FFF,
            0xFFFF,
            0o7777,
            0o10000,
            65536,
            2**31 - 1,
            2**31,
            top,
            top - 1,
            rnd.randrange(top + 1),
        ]
    )
    return struct.pack(fmt, value & top)


def mutate(data: bytes, other: bytes, rnd: random.Random) -> tuple[bytes, str]:
    """A mutation of a valid encoding ``data`` (``other`` is a second one to splice from)."""
    buf = bytearray(data)
    how = rnd.choice(["bitflip", "truncate", "extend", "field", "swap", "splice", "lie", "huge"])
    if how == "bitflip":
        for _ in range(rnd.choice([1, 1, 2, 3, 8])):
            i = rnd.randrange(len(buf))
            buf[i] ^= 1 << rnd.randrange(8)
    elif how == "truncate":
        del buf[rnd.randrange(len(buf)) :]
    elif how == "extend":
        buf += bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 2, 7, 64, 200])))
    elif how == "field":
        offset, fmt = rnd.choice(HEADER_FIELDS)
        buf[offset : offset + struct.calcsize(fmt)] = _interesting(fmt, rnd)
    elif how == "swap":
        # Two same-sized header fields trade places, or a field takes the other encoding's value.
        (a, fa), (b, fb) = rnd.sample(HEADER_FIELDS, 2)
        if struct.calcsize(fa) == struct.calcsize(fb):
            n = struct.calcsize(fa)
            buf[a : a + n], buf[b : b + n] = buf[b : b + n], buf[a : a + n]
        else:
            n = struct.calcsize(fa)
            buf[a : a + n] = other[a : a + n]
    elif how == "splice":
        # One valid header, another valid body (or the other way round).
        cut = wire_requests.REQUEST.size
        buf = bytearray(data[:cut] + other[cut:]) if rnd.random() < 0.5 else bytearray(other[:cut] + data[cut:])
    elif how == "lie":
        struct.pack_into("<HH", buf, 52, rnd.randrange(65536), rnd.randrange(65536))
    else:  # huge counts
        choice = rnd.randrange(4)
        if choice == 0:
            struct.pack_into("<HH", buf, 52, 0xFFFF, 0xFFFF)
        elif choice == 1:
            buf[56] = 0xFF
        elif choice == 2:
            struct.pack_into("<HHIIQ", buf, 4, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 2**64 - 1)
        else:
            buf += b"A" * (wire_header.MAX_MESSAGE + 1 - len(buf) + rnd.choice([0, 0, 1, 5000]))
    return bytes(buf), how


def _random_fd_kinds(rnd: random.Random, count: int) -> tuple[str, ...]:
    kinds = [*FD_KINDS, SELF]
    return tuple(rnd.choice(kinds) for _ in range(count))


def random_message(rnd: random.Random, *, valid: float = 0.5, hang_up: float = 0.03) -> Message:
    """A message of a hostile slave: valid with probability ``valid``, else broken some way.

    A valid one hangs up right after sending with probability ``hang_up``.
    """
    request = random_request(rnd)
    data, placeholders = wire_requests.encode_request(request)
    right = _random_fd_kinds(rnd, len(placeholders))
    roll = rnd.random()
    if roll < valid:
        return Message(data, right, hang_up=rnd.random() < hang_up, how="valid")
    roll = rnd.random()
    if roll < 0.55:
        other, _ = wire_requests.encode_request(random_request(rnd))
        mutated, how = mutate(data, other, rnd)
        return Message(mutated, right, how=how)
    if roll < 0.65:
        size = rnd.choice([0, 1, 16, 63, 64, 65, 300, wire_header.MAX_MESSAGE, wire_header.MAX_MESSAGE + 1, 20000])
        return Message(
            bytes(rnd.randrange(256) for _ in range(size)) if size <= 300 else os.urandom(size),
            how="random" if size else "empty",
        )
    if roll < 0.8:
        # Descriptors that disagree with the roles: one too few or too many, or a flood.
        count = rnd.choice([0, 1, 2, 3, 4, len(placeholders) + 1, rnd.randrange(5, SCM_MAX_FD + 1)])
        if count == len(placeholders):
            count += 1
        return Message(data, _random_fd_kinds(rnd, count), how="flood" if count > 4 else "fd_count")
    if roll < 0.9:
        # Valid header, string lengths that lie about the bytes that follow.
        buf = bytearray(data)
        struct.pack_into("<H", buf, rnd.choice([52, 54]), rnd.randrange(65536))
        return Message(bytes(buf), right, how="lie")
    # A valid request, and the slave is gone before the answer.
    return Message(data, right, hang_up=True, how="hang_up")


# ------------------------------------------------------------------ session


@dataclass
class Tally:
    """What a hostile slave (or many) did and saw. Thread-safe via ``lock``."""

    sent: int = 0
    answered: int = 0
    closed_by_master: int = 0
    hung_up: int = 0
    killed: int = 0
    sessions: int = 0
    fds_sent: int = 0
    by_how: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, other: Tally) -> None:
        with self.lock:
            for name in ("sent", "answered", "closed_by_master", "hung_up", "killed", "sessions", "fds_sent"):
                setattr(self, name, getattr(self, name) + getattr(other, name))
            for how, count in other.by_how.items():
                self.by_how[how] = self.by_how.get(how, 0) + count
            self.violations.extend(other.violations[:20])

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions, {self.sent} messages ({self.fds_sent} descriptors), "
            f"{self.answered} answered, {self.closed_by_master} closed by the master, "
            f"{self.hung_up} hung up, {self.killed} killed, {len(self.violations)} violations"
        )


class Session:
    """One hostile slave on one channel end (a blocking SOCK_SEQPACKET socket).

    :meth:`play` sends messages one at a time and checks what the master
    does with each. :meth:`kill` (from another thread) shuts the channel
    down under it, as a dying process would.
    """

    def __init__(self, sock: socket.socket, tally: Tally | None = None, *, check_answers: bool = True) -> None:
        self.sock = sock
        self.tally = tally if tally is not None else Tally()
        self.check_answers = check_answers
        self._killed = threading.Event()
        sock.setblocking(True)
        sock.settimeout(PATIENCE)

    def kill(self) -> None:
        """Cut the channel as a SIGKILL would (the descriptor stays ours to close)."""
        self._killed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def play(self, messages: Iterable[Message]) -> None:
        """Send ``messages`` until one ends the session; then close the channel."""
        tally = self.tally
        tally.sessions += 1
        try:
            for message in messages:
                if not self._send(message):
                    return
                if message.hang_up:
                    tally.hung_up += 1
                    return
                request = judge(message)
                if not self._outcome(message, request):
                    return
        finally:
            self.sock.close()

    def _violation(self, text: str) -> None:
        if not self._killed.is_set():
            self.tally.violations.append(text)

    def _send(self, message: Message) -> bool:
        fds: list[int] = []
        try:
            for kind in message.fds:
                fds.append(self.sock.fileno() if kind == SELF else FD_KINDS[kind]())
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self.sock.sendmsg([message.data], ancillary, socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            # The master closed the session after an earlier message (or we were killed).
            self.tally.closed_by_master += 1
            return False
        except OSError as exc:
            if self._killed.is_set():
                return False
            if exc.errno == errno.EMSGSIZE:  # an oversized datagram our own kernel refused
                return True
            raise
        finally:
            for kind, fd in zip(message.fds, fds):
                if kind != SELF:
                    os.close(fd)
        self.tally.sent += 1
        self.tally.fds_sent += len(fds)
        self.tally.by_how[message.how] = self.tally.by_how.get(message.how, 0) + 1
        return True

    def _receive(self) -> tuple[bytes, list[int], int] | None:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                wire_header.MAX_MESSAGE + 1,
                socket.CMSG_SPACE((wire_header.MAX_REPLY_FDS + 1) * 4),
                socket.MSG_CMSG_CLOEXEC,
            )
        except TimeoutError:
            self._violation("the master neither answered nor closed the session")
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b"", [], 0
        except OSError:
            if self._killed.is_set():
                return None
            raise
        fds: list[int] = []
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", raw[: len(raw) - len(raw) % 4]))
        return data, fds, flags

    def _outcome(self, message: Message, request: Request | None) -> bool:
        """Check the master's reaction to one message; whether the session goes on."""
        received = self._receive()
        if received is None:
            return False
        data, fds, flags = received
        try:
            if not data and not fds:
                if request is not None:
                    self._violation(f"the master closed the session on a valid {request.function} ({message.how})")
                else:
                    self.tally.closed_by_master += 1
                return False
            if request is None:
                self._violation(f"the master answered a message its own decoder rejects ({message.how})")
                return False
            self._check_reply(request, data, fds, flags)
            self.tally.answered += 1
            return True
        finally:
            for fd in fds:
                os.close(fd)

    def _check_reply(self, request: Request, data: bytes, fds: list[int], flags: int) -> None:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            self._violation("a truncated reply")
            return
        try:
            reply = wire_replies.decode_reply(data, len(fds))
        except wire_header.ProtocolError as exc:
            self._violation(f"a malformed reply to {request.function}: {exc}")
            return
        if (reply.function, reply.tid, reply.request_id) != (request.function, request.tid, request.request_id):
            self._violation(
                f"a reply to {reply.function}/{reply.tid}/{reply.request_id} "
                f"for {request.function}/{request.tid}/{request.request_id}"
            )
            return
        if reply.forward:
            self._violation(f"a forward nobody granted, for {request!r}")
            return
        if not self.check_answers:
            return
        want = expected(request)
        got = (reply.result, reply.errno, len(fds))
        if got != want:
            self._violation(f"{request!r} answered {got}, the handlers say {want}")


def hostile_stream(rnd: random.Random, *, valid: float = 0.5, hang_up: float = 0.03) -> Iterator[Message]:
    """An endless stream of hostile messages."""
    while True:
        yield random_message(rnd, valid=valid, hang_up=hang_up)


def _main(argv: Sequence[str]) -> int:
    """``hostile.py FD SEED``: fuzz the inherited channel FD until killed or hung up on."""
    fd, seed = int(argv[0]), int(argv[1])
    session = Session(socket.socket(fileno=fd))

    def reporting(messages: Iterator[Message]) -> Iterator[Message]:
        # The parent kills us at a random moment: say how far we got as we go.
        for count, message in enumerate(messages):
            if count % 100 == 0:
                print(f"sent={session.tally.sent} answered={session.tally.answered}", flush=True)
            yield message

    # Valid calls (with descriptors of every kind): still talking when it is killed.
    session.play(reporting(hostile_stream(random.Random(seed), valid=1.0, hang_up=0.0)))
    print(f"sent={session.tally.sent} answered={session.tally.answered}", flush=True)
    print(session.tally.summary())
    for violation in session.tally.violations[:5]:
        print("violation:", violation)
    return 1 if session.tally.violations else 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
