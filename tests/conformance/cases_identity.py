"""Cases on who acts: capabilities carried (or not), the slave's root directory."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from conformance.casebook import NOBODY, Probe, case


def _others_files(directory: Path, identity: str) -> None:
    """Files of another user (nobody for root identities, root for nobody)."""
    other = 0 if identity.startswith("nobody") else NOBODY
    for name, mode in (("theirs", 0o644), ("secret", 0o600), ("mine", 0o644)):
        (directory / name).write_text(name)
        os.chmod(directory / name, mode)
    os.chown(directory / "theirs", other, other)
    os.chown(directory / "secret", other, other)
    (directory / "their-dir").mkdir(mode=0o755)
    os.chown(directory / "their-dir", other, other)
    if identity.startswith("nobody"):
        os.chown(directory / "mine", NOBODY, NOBODY)


_ROOT = "refused with EXDEV: the master resolves no path for a process with another root or mount namespace"


@case(
    setup=_others_files,
    identities=("root", "nocaps", "nobody", "nobody+dac"),
)
def capabilities_decide(p: Probe) -> None:
    """What CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE allow is what the caller has."""
    p.call("chown mine to another", os.chown, "mine", NOBODY + 1, -1)
    p.call("utime theirs", os.utime, "theirs", (1_000_000, 2_000_000))
    p.call("utime theirs now", os.utime, "theirs", None)
    p.call("chmod theirs", os.chmod, "theirs", 0o640)
    p.call("access theirs W_OK", os.access, "theirs", os.W_OK)
    p.call("eaccess theirs W_OK", lambda: os.access("theirs", os.W_OK, effective_ids=True))
    p.call("open secret", lambda: os.read(os.open("secret", os.O_RDONLY), 10))
    p.call("write theirs", lambda: os.open("theirs", os.O_WRONLY))
    p.call("create in their directory", os.open, "their-dir/new", os.O_WRONLY | os.O_CREAT, 0o644)
    p.call("mkdir in their directory", os.mkdir, "their-dir/sub")
    p.call("stat theirs", os.stat, "theirs")


@case(identities=("root", "nocaps", "nobody", "self"))
def privileged_port(p: Probe) -> None:
    """Binding a port below 1024 needs CAP_NET_BIND_SERVICE."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", 99))
        p.note("bind 99", "ok")
    except OSError as exc:
        p.note("bind 99", errno.errorcode.get(exc.errno or 0, exc.errno))
    finally:
        sock.close()


def _jail(directory: Path, identity: str) -> None:
    (directory / "jail" / "etc").mkdir(parents=True)
    (directory / "jail" / "etc" / "hostname").write_text("the jail's own\n")
    (directory / "jail" / "link").symlink_to("/etc/hostname")


@case(
    setup=_jail,
    identities=("root",),
    differs={"root": _ROOT, ("seccomp", "root"): "chroot(2) is refused under --seccomp (EPERM): no request decides it"},
)
def chroot_names_the_jail(p: Probe) -> None:
    """After chroot, ``/`` is the jail: absolute names and absolute links resolve in it."""
    os.chroot("jail")
    os.chdir("/")
    fd = p.call("open /etc/hostname", os.open, "/etc/hostname", os.O_RDONLY)
    if fd is not None:
        p.call("read", os.read, fd, 100)
    fd = p.call("open through an absolute link", os.open, "link", os.O_RDONLY)
    if fd is not None:
        p.call("read it", os.read, fd, 100)
    p.call("create /made-here", os.open, "/made-here", os.O_WRONLY | os.O_CREAT, 0o644)
    p.call("stat /jail", os.stat, "/jail")


@case(identities=("root", "self"))
def sockets_keep_what_the_program_set(p: Probe) -> None:
    """Options set before bind/connect and the names a program reads back (getsockname, getpeername)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    p.call("bind", server.bind, "listening")
    server.listen()
    p.socket("server", server)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    p.call("connect", client.connect, "listening")
    p.socket("client", client)
    inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inet.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    p.call("bind inet", inet.bind, ("127.0.0.1", 0))
    p.call("inet port chosen", lambda: inet.getsockname()[1] > 0)
    p.call("inet IP_TOS", inet.getsockopt, socket.IPPROTO_IP, socket.IP_TOS)
    for sock in (server, client, inet):
        sock.close()
