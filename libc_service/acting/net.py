"""The network calls done as the slave: bind and connect (of its own socket where the master can), getaddrinfo.

The slave's own socket is bound or connected in the master wherever the
master can act on it — a unix socket named by a path, any socket of the
master's network namespace, one bound already — so its options, ``epoll``
registrations and ``getsockname`` stay the program's; otherwise a socket
like it, carrying its options, is made in the master and replaces it. A
connect in progress is finished without blocking a running event loop.
``getaddrinfo`` answers numeric nodes at once and asks the policy's
:class:`~libc_service.Resolver` for a name only when a ``named()`` or
``resolved()`` pattern grants it.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import fcntl
import functools
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from libc_service.kernel import libc as kernel

from libc_service.policy import names

from libc_service.kernel import readiness
from libc_service.protocol import (
    replies,
)  # loaded on first use (libc_service/__init__.py): a policy importing perform starts without pydantic
from libc_service.kernel.lazyimport import on_first_use
from libc_service.acting.identity import Switch, as_slave, running_loop, switch_for
from libc_service.acting.target import open_at, open_parent, path_target, slave_cwd
from libc_service.policy.resolver import Resolver
from libc_service.protocol.outcomes import WithFds

if TYPE_CHECKING:
    import asyncio

    from libc_service.protocol.replies import AddrInfo
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["perform_bind_inet", "perform_bind_unix", "perform_connect", "perform_getaddrinfo"]

#: How long a unix connect whose listener's backlog is full waits between tries.
_BACKLOG_RETRY: Final = 0.01


# -------------------------------------------------------------- sockets

#: Options a socket that replaces the slave's takes from it: those that
#: change what bind and connect do, and those a program sets before
#: connecting that the connection keeps. Compared and copied as raw bytes.
_CARRIED_OPTIONS: Final = (
    (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    (socket.SOL_SOCKET, getattr(socket, "SO_REUSEPORT", 15)),
    (socket.SOL_SOCKET, socket.SO_BROADCAST),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    (socket.SOL_SOCKET, socket.SO_OOBINLINE),
    (socket.SOL_SOCKET, socket.SO_LINGER),
    (socket.SOL_SOCKET, getattr(socket, "SO_PASSCRED", 16)),
    (socket.SOL_SOCKET, getattr(socket, "SO_PRIORITY", 12)),
    (socket.SOL_SOCKET, socket.SO_RCVLOWAT),
    (socket.SOL_SOCKET, socket.SO_RCVTIMEO),
    (socket.SOL_SOCKET, socket.SO_SNDTIMEO),
    (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
    (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TCLASS", 67)),
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 4)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 5)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 6)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18)),
    (socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15)),
    (socket.IPPROTO_IP, socket.IP_TOS),
    (socket.IPPROTO_IP, socket.IP_TTL),
)
#: Buffer sizes: the kernel doubles what is set, so half of what is read is set.
_BUFFER_OPTIONS: Final = ((socket.SOL_SOCKET, socket.SO_SNDBUF), (socket.SOL_SOCKET, socket.SO_RCVBUF))
_SIOCGSKNS: Final = 0x894C
_FAMILY_OF: Final = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}


def _bound(probe: socket.socket) -> bool:
    try:
        name = probe.getsockname()
    except OSError:
        return False
    if probe.family in (socket.AF_INET, socket.AF_INET6):
        return bool(name[1])
    return bool(name)


def _network_namespace(fd: int, pid: int) -> tuple[int, int] | None:
    """The network namespace socket ``fd`` belongs to (``SIOCGSKNS``), else process ``pid``'s; ``None``: unknown."""
    try:
        namespace = fcntl.ioctl(fd, _SIOCGSKNS, 0)
    except OSError:  # EPERM without CAP_NET_ADMIN over it, ENOTTY before Linux 4.9
        namespace = -1
    try:
        found = os.fstat(namespace) if namespace >= 0 else os.stat(f"/proc/{pid}/ns/net") if pid > 0 else None
    except OSError:
        return None
    finally:
        if namespace >= 0:
            os.close(namespace)
    return None if found is None else (found.st_dev, found.st_ino)


@functools.cache
def _own_network_namespace() -> tuple[int, int]:
    found = os.stat("/proc/self/ns/net")
    return found.st_dev, found.st_ino


def _socket_for(request: Any) -> tuple[socket.socket, bool]:
    """The socket to bind or connect (the master's reference), and whether the slave's was non-blocking.

    The slave's own socket wherever the master can act on it: a unix
    socket named by a path (the filesystem does not depend on the network
    namespace), a socket of the master's network namespace, or one bound
    already. Binding or connecting *it* keeps everything the program did
    to it — options, ``epoll`` registrations, other threads' and other
    processes' view of it, its ``getsockname``. Otherwise (an inet or
    abstract unix socket made in the sandbox's own network namespace) a
    socket like it is made in the master's namespace, with the options of
    ``_CARRIED_OPTIONS`` and the buffer sizes copied; it replaces the slave's.
    """
    slave_fd = int(request.socket)
    nonblocking = not os.get_blocking(slave_fd)
    probe = socket.socket(fileno=slave_fd)
    try:
        by_path = request.function.endswith("_unix") and not request.abstract
        if by_path or _bound(probe):
            return socket.socket(fileno=os.dup(slave_fd)), nonblocking
        if _network_namespace(slave_fd, int(getattr(request, "pid", 0))) == _own_network_namespace():
            return socket.socket(fileno=os.dup(slave_fd)), nonblocking
        fresh = socket.socket(probe.family, probe.type, probe.proto)
        try:
            _carry_options(probe, fresh)
        except BaseException:
            fresh.close()
            raise
        return fresh, nonblocking
    finally:
        probe.detach()


def _carry_options(source: socket.socket, target: socket.socket) -> None:
    for level, name in _CARRIED_OPTIONS:
        try:
            value = source.getsockopt(level, name, 64)
            if value != target.getsockopt(level, name, 64):
                target.setsockopt(level, name, value)
        except OSError:
            continue  # not an option of this family, or not ours to set
    for level, name in _BUFFER_OPTIONS:
        try:
            size = source.getsockopt(level, name)
            if size != target.getsockopt(level, name):
                target.setsockopt(level, name, size // 2)
        except OSError:
            continue


def _handed_over(sock: socket.socket, nonblocking: bool) -> WithFds:
    sock.setblocking(not nonblocking)
    fd = sock.detach()
    return WithFds(0, [fd])


def _dropped(sock: socket.socket, nonblocking: bool) -> None:
    """Give up ``sock`` after a failure: the slave's own keeps its blocking mode."""
    try:
        sock.setblocking(not nonblocking)
    except OSError:
        pass
    sock.close()


def _address(request: Any) -> Any:
    function = request.function
    if function.endswith("_inet6"):
        address = request.address
        scope = int(address.scope_id or 0) if address.scope_id else 0
        return (str(address).split("%", 1)[0], request.port, 0, scope)
    return (str(request.address), request.port)


def _sockaddr(request: Any) -> bytes:
    """The request's inet address as the slave's ``struct sockaddr_in``/``sockaddr_in6``."""
    port = struct.pack("!H", request.port)
    packed: bytes = request.address.packed
    if request.function.endswith("_inet6"):
        scope = int(request.address.scope_id or 0) if request.address.scope_id else 0
        return struct.pack("=H", socket.AF_INET6) + port + bytes(4) + packed + struct.pack("=I", scope)
    return struct.pack("=H", socket.AF_INET) + port + packed + bytes(8)


def _inet_call(name: str, sock: socket.socket, request: Any) -> int:
    """``bind``/``connect`` of an inet request: 0 or the kernel's errno.

    A socket of the other family (an ``AF_INET6`` socket given an
    ``AF_INET`` address) gets the slave's address structure as it is, so
    the kernel answers as it would have the slave (``EINVAL`` for a TCP
    connect, a v4-mapped connection for UDP, ``EAFNOSUPPORT`` …).
    """
    if sock.family == _FAMILY_OF[request.function.rsplit("_", 1)[1]]:
        if name == "connect":
            return sock.connect_ex(_address(request))
        sock.bind(_address(request))
        return 0
    raw = _sockaddr(request)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    if getattr(kernel.libc, name)(ctypes.c_int(sock.fileno()), buffer, ctypes.c_uint(len(raw))) == 0:
        return 0
    if name == "bind":
        raise kernel.last_error()
    return ctypes.get_errno()


def perform_bind_inet(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        as_slave(switch_for(request), lambda: _inet_call("bind", sock, request))
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _handed_over(sock, nonblocking)


def perform_bind_unix(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        if request.abstract:
            as_slave(switch_for(request), lambda: sock.bind(os.fsencode(str(request.path))))
            return _handed_over(sock, nonblocking)
        # Created in the parent opened as the slave resolves it: bind the last
        # component from a thread whose working directory is that parent
        # (and whose umask is the slave's: the socket file is created).
        with path_target(request, request.path, getattr(request, "dirfd", None), root) as where:
            parent, name = as_slave(switch_for(request), lambda: open_parent(where))
        try:
            if root is None and _bind_exact(request, sock, parent):
                return _handed_over(sock, nonblocking)
            switch = switch_for(request, creates=True, chdir=parent)
            as_slave(switch, lambda: sock.bind(os.fsencode(name)))
        finally:
            os.close(parent)
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _handed_over(sock, nonblocking)


class _Unconfined(Exception):
    """The bind thread could not confine itself (no Landlock)."""


def _bind_exact(request: Any, sock: socket.socket, parent: int) -> bool:
    """Bind the slave's exact text, so ``getsockname`` reports it; ``False``: bind the last name instead.

    The text is resolved from the slave's working directory (or dirfd) by
    a thread that may make socket files only beneath ``parent``, the
    directory the guarded walk found (:mod:`libc_service.acting.bindguard`). A
    text that leads elsewhere (through ``/proc/self``, a magic link) is
    refused there with ``EACCES``, and so is one the slave may not bind
    at all: the bind of the last name in ``parent`` then gives the
    kernel's answer for the object the slave names.
    """
    from libc_service.acting import bindguard

    if not bindguard.available():
        return False
    text = os.fsencode(str(request.path))
    start = getattr(request, "dirfd", None)
    owned = -1
    if start is None:
        # An absolute text ignores the working directory: any will do.
        start = parent if text.startswith(b"/") else slave_cwd(request)
        owned = -1 if start == parent else start

    def bind() -> None:
        try:
            bindguard.confine_socket_files(parent)
        except OSError as exc:
            raise _Unconfined(str(exc)) from None
        sock.bind(text)

    try:
        as_slave(switch_for(request, creates=True, chdir=int(start)), bind)
    except (_Unconfined, PermissionError):
        return False
    finally:
        if owned >= 0:
            os.close(owned)
    return True


def perform_connect(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        attempt: Callable[[], int]
        if request.function == "connect_unix" and not request.abstract:

            def open_socket_file() -> int:
                with path_target(request, request.path, getattr(request, "dirfd", None), root) as where:
                    return open_at(where, os.O_PATH | os.O_CLOEXEC)

            switch = switch_for(request)
            path_fd = as_slave(switch, open_socket_file)
            # The very socket file the kernel resolved, through the master's descriptor.
            address = f"/proc/self/fd/{path_fd}"

            def attempt() -> int:
                return sock.connect_ex(address)

        elif request.function == "connect_unix":
            switch, path_fd = switch_for(request), -1
            name = os.fsencode(str(request.path))

            def attempt() -> int:
                return sock.connect_ex(name)

        else:
            switch, path_fd = switch_for(request), -1

            def attempt() -> int:
                return _inet_call("connect", sock, request)

        # A non-blocking connect of the slave's own socket in progress is
        # the slave's to finish, as natively: EINPROGRESS, then its poll.
        in_progress_is_answer = nonblocking and os.fstat(sock.fileno()).st_ino == os.fstat(request.socket).st_ino
        sock.setblocking(False)
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _connect(sock, attempt, switch, nonblocking, path_fd, in_progress_is_answer)


def _connect(
    sock: socket.socket,
    attempt: Callable[[], int],
    switch: Switch | None,
    nonblocking: bool,
    path_fd: int,
    in_progress_is_answer: bool,
) -> Any:
    """Start a non-blocking connect as the slave; finish it without blocking a running loop.

    Once the connection is made, ``connect`` is called once more, as a
    blocking ``connect`` does in the kernel before it returns: the socket
    is then "connected" to the kernel too (a later ``connect`` fails with
    ``EISCONN``, as natively, instead of returning 0).
    """

    def close_path() -> None:
        if path_fd >= 0:
            os.close(path_fd)

    try:
        code = as_slave(switch, attempt)
    except BaseException:
        close_path()
        _dropped(sock, nonblocking)
        raise
    if code == 0:
        close_path()
        return _handed_over(sock, nonblocking)
    if (
        code not in (errno_module.EINPROGRESS, errno_module.EAGAIN)
        or (code == errno_module.EAGAIN and nonblocking)
        or (code == errno_module.EINPROGRESS and in_progress_is_answer)
    ):
        close_path()
        _dropped(sock, nonblocking)
        raise OSError(code, os.strerror(code))
    if running_loop() is None:
        try:
            while code == errno_module.EAGAIN:  # a unix listener's backlog is full: try again
                time.sleep(_BACKLOG_RETRY)
                code = as_slave(switch, attempt)
            if code == errno_module.EINPROGRESS:
                readiness.poll_events({sock.fileno(): readiness.WRITABLE})
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or as_slave(switch, attempt)
        except BaseException:
            close_path()
            _dropped(sock, nonblocking)
            raise
        close_path()
        if code:
            _dropped(sock, nonblocking)
            raise OSError(code, os.strerror(code))
        return _handed_over(sock, nonblocking)
    return _await_connect(sock, code, attempt, switch, nonblocking, close_path)


async def _await_connect(
    sock: socket.socket,
    code: int,
    attempt: Callable[[], int],
    switch: Switch | None,
    nonblocking: bool,
    close_path: Callable[[], None],
) -> WithFds:
    try:
        while code == errno_module.EAGAIN:
            await asyncio.sleep(_BACKLOG_RETRY)
            code = as_slave(switch, attempt)
        if code == errno_module.EINPROGRESS:
            await readiness.writable(sock.fileno())
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or as_slave(switch, attempt)
        if code:
            raise OSError(code, os.strerror(code))
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    finally:
        close_path()
    return _handed_over(sock, nonblocking)


# ---------------------------------------------------------- getaddrinfo

#: The wire's protocol hint as the services database names it.
_SERVICE_PROTOCOLS: Final = {"tcp": ("tcp",), "udp": ("udp",), None: ("tcp", "udp")}
#: The most addresses one answer carries (the wire's bound).
_MAX_ANSWER: Final = 128


def _service_port(request: Any) -> int:
    """The port ``request.service`` names, as glibc reads it: decimal digits, else ``/etc/services``."""
    service = request.service
    if service is None:
        return 0
    if service.isascii() and service.isdigit():
        return min(int(service), 2**64 - 1) & 0xFFFF  # strtoul, then htons
    for protocol in _SERVICE_PROTOCOLS[request.protocol]:
        try:
            return socket.getservbyname(service, protocol)
        except OSError:
            continue
    raise socket.gaierror(socket.EAI_SERVICE, "Servname not supported for ai_socktype")


def _numeric_addresses(node: str) -> list[str] | None:
    """The address a numeric ``node`` is, read by libc itself (no lookup); ``None`` for a name."""
    try:
        found = socket.getaddrinfo(node, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return list(dict.fromkeys(_host_text(family, address) for family, _, _, _, address in found))


def _host_text(family: int, address: Any) -> str:
    host = str(address[0]).split("%", 1)[0]
    if family == socket.AF_INET6 and address[3]:
        host += f"%{int(address[3])}"
    return host


def perform_getaddrinfo(request: Any, root: str | None) -> Any:
    """Numeric nodes and the loopback (no node) at once; a name only if the policy allows it, without blocking.

    A name is looked up by the serving policy's :class:`~libc_service.Resolver`
    (``/etc/hosts``, then DNS, asynchronously, with TTLs), and only when
    one of the policy's ``named()``/``resolved()`` patterns matches it:
    any other name is ``noname`` and no nameserver ever sees it. The
    answers are recorded for ``resolved()`` in the process tree's scope.
    """
    port = _service_port(request)
    node = request.node
    if node is None:  # the loopback addresses, IPv6 first (AI_PASSIVE never reaches the master)
        return [replies.AddrInfo("::1", port), replies.AddrInfo("127.0.0.1", port)]
    numeric = _numeric_addresses(node)
    if numeric is not None:
        return [replies.AddrInfo(host, port) for host in numeric]
    labels = names.host_labels(node)
    scope = names.current_scope()
    if labels is None or (scope is not None and not scope.may_resolve(labels)):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    lookup = _resolve_name(scope, labels, port)
    if running_loop() is None:
        return asyncio.run(lookup)
    return lookup


async def _resolve_name(scope: names.NameScope | None, labels: tuple[str, ...], port: int) -> list[AddrInfo]:
    resolver = scope.resolver if scope is not None else Resolver.system()
    found = (await resolver.lookup(labels))[:_MAX_ANSWER]
    if scope is not None:
        scope.answers.record(".".join(labels), found)
    return [replies.AddrInfo(address, port) for address, _ in found]
