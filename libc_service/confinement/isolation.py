"""Isolation beyond Landlock: fresh network and IPC namespaces, no capabilities.

Landlock mediates neither the network namespace's sockets (UDP, ICMP,
abstract unix sockets before ABI 6) nor SysV IPC nor what a capability
lets a root slave do (``chown``, ``init_module``, ``sethostname``): these
are taken away here, in the forked child, with state computed in the parent
(:class:`Isolation`). :func:`network_namespaces_available` probes, once,
whether ``unshare`` works here the way the child will call it.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import functools
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Final

from libc_service.confinement.landlock import SandboxUnavailable, check, syscall, syscall_numbers

__all__ = ["Isolation", "NamespaceStock", "namespace_stock", "network_namespaces_available", "stop_namespace_stock"]

_PR_CAPBSET_DROP: Final = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3: Final = 0x20080522

_CLONE_NEWNET: Final = 0x40000000
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWIPC: Final = 0x08000000
#: With network=False: no network, no abstract unix sockets, no SysV IPC or
#: POSIX message queues of the host (Landlock mediates none of these).
_ISOLATE: Final = _CLONE_NEWNET | _CLONE_NEWIPC


@functools.cache  # the kernel's, fixed while it runs
def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 63  # drop every possible bit; unknown ones fail with EINVAL


class Isolation:
    """What the child needs to leave the host's namespaces and drop every capability, built in the parent."""

    def __init__(self, numbers: Mapping[str, int]) -> None:
        self._numbers = dict(numbers)
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._last_cap = _last_capability()
        # capset(header {version, pid 0}, data[2] {effective, permitted, inheritable}): all empty.
        self._no_caps_header = ctypes.create_string_buffer(struct.pack("<Ii", _CAPABILITY_VERSION_3, 0))
        self._no_caps_data = ctypes.create_string_buffer(bytes(24))

    def unshare_step(self) -> str:
        """The launcher's step (:mod:`libc_service.processes.launching`) doing what :meth:`unshare_network` does."""
        return f"n={self._uid}:{self._gid}"

    def capabilities_step(self) -> str:
        """The launcher's step doing what :meth:`drop_capabilities` does."""
        return f"c={self._last_cap}"

    def unshare_network(self) -> None:
        """Enter fresh network and IPC namespaces (inside a user namespace without ``CAP_SYS_ADMIN``)."""
        if syscall(self._numbers["unshare"], ctypes.c_int(_ISOLATE)) < 0:
            self._unshare_as_user()

    def drop_capabilities(self) -> None:
        """Empty every capability set of the calling process.

        Bounding, ambient, effective, permitted and inheritable: the child
        runs this after ``no_new_privs``, so exec cannot grant them back.
        """
        # A root slave keeps capabilities Landlock knows nothing of (loading a
        # kernel module from memory, changing the host's name or clock, chown):
        # empty every set. Under no_new_privs exec cannot grant them back.
        numbers = self._numbers
        for cap in range(self._last_cap + 1):
            if syscall(numbers["prctl"], _PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
                if ctypes.get_errno() == errno_module.EPERM:
                    break  # no CAP_SETPCAP: nothing in the bounding set to fear under no_new_privs
                if ctypes.get_errno() != errno_module.EINVAL:  # EINVAL: a capability this kernel lacks
                    check(-1, "prctl(PR_CAPBSET_DROP)")
        check(
            syscall(numbers["prctl"], _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
            "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        )
        check(syscall(numbers["capset"], self._no_caps_header, self._no_caps_data), "capset")

    def _unshare_as_user(self) -> None:
        # Without CAP_SYS_ADMIN, a user namespace grants it for the new netns.
        check(syscall(self._numbers["unshare"], ctypes.c_int(_CLONE_NEWUSER | _ISOLATE)), "unshare(network, ipc)")
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{self._uid} {self._uid} 1"),
            ("gid_map", f"{self._gid} {self._gid} 1"),
        ):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


class NamespaceStock:
    """Fresh network and IPC namespaces made ahead of time, each given to one job only.

    Making a network namespace costs the kernel about a millisecond; made in
    the child, that is on every sandboxed job's path. A thread of the master
    makes them instead, a few ahead: it ``unshare``s (which moves only that
    thread), keeps descriptors of its new namespaces and goes on to the
    next. :meth:`take` hands a pair out once — no namespace is ever given
    to two jobs, so each job still gets one that nothing else has used — and
    the launcher ``setns``es into it. The thread itself makes no sockets
    and no IPC objects. Only where ``unshare`` works without a user
    namespace (``CAP_SYS_ADMIN``; a threaded process cannot make a user
    namespace): elsewhere :meth:`take` returns ``None`` and the child makes
    its own namespaces, as before.
    """

    def __init__(self, unshare: int, ahead: int = 4) -> None:
        self._unshare = unshare
        self._ahead = ahead
        self._ready: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self.failed = False
        self._stopping = False
        self._thread = threading.Thread(target=self._make, name="libc-service namespaces", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread and close the namespaces not handed out."""
        with self._lock:
            self._stopping = True
            self._wanted.notify()
        self._thread.join()
        with self._lock:
            for pair in self._ready:
                for fd in pair:
                    os.close(fd)
            self._ready.clear()

    def take(self) -> tuple[int, int] | None:
        """Descriptors of a fresh network namespace and a fresh IPC namespace (the caller's to close), or ``None``."""
        with self._lock:
            pair = self._ready.pop() if self._ready else None
            self._wanted.notify()
        return pair

    def _make(self) -> None:
        while True:
            with self._lock:
                self._wanted.wait_for(lambda: self._stopping or len(self._ready) < self._ahead)
                if self._stopping:
                    return
            if syscall(self._unshare, ctypes.c_int(_ISOLATE)) < 0:
                with self._lock:
                    self.failed = True
                return
            try:
                net = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.failed = True
                return
            try:
                ipc = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                os.close(net)
                self.failed = True
                return
            with self._lock:
                self._ready.append((net, ipc))


_stock: NamespaceStock | None = None
_stock_lock = threading.Lock()


def namespace_stock() -> NamespaceStock | None:
    """The process's :class:`NamespaceStock`, started on first use; ``None`` where it cannot work."""
    global _stock
    if os.geteuid() != 0:
        return None  # without CAP_SYS_ADMIN the namespaces need a user namespace: made in the child
    with _stock_lock:
        if _stock is None:
            _stock = NamespaceStock(syscall_numbers()["unshare"])
        return None if _stock.failed else _stock


def stop_namespace_stock() -> None:
    """Stop the process's :class:`NamespaceStock` (if any) and close what it holds; the next use starts another."""
    global _stock
    with _stock_lock:
        stock, _stock = _stock, None
    if stock is not None:
        stock.stop()


def _probe_unshare() -> None:  # pragma: no cover - runs in the probe's child
    numbers = syscall_numbers()
    if syscall(numbers["unshare"], ctypes.c_int(_ISOLATE)) == 0:
        return
    check(syscall(numbers["unshare"], ctypes.c_int(_CLONE_NEWUSER | _ISOLATE)), "unshare")


@functools.cache
def _network_namespace_reason() -> str | None:
    try:
        syscall_numbers()
    except SandboxUnavailable as exc:
        return str(exc)
    program = "/bin/true" if os.access("/bin/true", os.X_OK) else sys.executable
    argv = [program] if program == "/bin/true" else [program, "-S", "-c", ""]
    try:
        # The same fork-then-unshare path spawn() takes, on a harmless program.
        done = subprocess.run(argv, preexec_fn=_probe_unshare, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return (
            "cannot create a network namespace (unshare(CLONE_NEWNET | CLONE_NEWIPC) failed, "
            "also inside a user namespace)"
        )
    if done.returncode != 0:
        return f"the network namespace probe failed (exit status {done.returncode})"
    return None


def network_namespaces_available() -> str | None:
    """Why a fresh network namespace cannot be made here, or ``None``.

    Probed once per process, by starting a harmless program the way
    :func:`~libc_service.processes.spawn` starts a sandboxed one.
    """
    return _network_namespace_reason()
