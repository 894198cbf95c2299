"""Take the slave's own authority away, so the master is the only door.

The shim only *advises*: a static binary or a raw syscall walks past it. A
:class:`Sandbox` confines the program with the kernel before it runs:

- **Filesystem — Landlock.** The ruleset handles every filesystem right the
  kernel knows; the slave keeps only what loading the program needs (the
  executable, its ELF interpreter and the libraries it links, the shim,
  ``ld.so.cache``; by default also the system's shared-library directories,
  read and execute) plus the static ``allow_read`` / ``allow_write`` /
  ``allow_exec`` paths. Anything else the policy grants dynamically, the
  master opens and passes back as a descriptor: Landlock checks a path when
  it is opened, and the master opened it outside the sandbox.
- **Network.** With ``network=False`` the slave gets a fresh, empty network
  namespace (no interfaces but a down loopback: no TCP, UDP, ICMP, nor
  abstract unix sockets of the host) and a fresh IPC namespace (no SysV
  shared memory, semaphores or message queues of the host), and, where the kernel has Landlock
  ABI 4, TCP bind/connect are also refused by Landlock; with ABI 6 abstract
  unix sockets outside its Landlock domain are refused as well. The
  host's *named* unix sockets, which Landlock does not check, are out of
  reach too: a second seccomp filter (:mod:`.socket_filter`) refuses the
  slave's own ``connect`` and unix datagram sockets. A connect
  the policy allows is done by the master on a socket of its own, which
  then replaces the slave's. Without network namespaces ``network=False``
  fails rather than run half-isolated.
- **Signals.** With Landlock ABI 6 the slave cannot signal processes outside
  its domain (the master, in particular).
- **Metadata.** Landlock does not mediate ``chmod``, ``chown``, ``utime``
  or extended attributes: with the default ``metadata=False`` a seccomp
  filter refuses them (``EPERM``), and io_uring (``ENOSYS``), so a slave
  cannot, say, make its user's private key world-readable.
- **Capabilities.** The slave starts with no capabilities at all (bounding,
  ambient, effective, permitted and inheritable sets emptied, and
  ``no_new_privs``): a root slave cannot use what Landlock does not
  mediate — ``chown``, ``init_module``, ``sethostname``, raw sockets.

Everything that can fail is prepared in the parent (kernel support probed,
rule descriptors opened, the ruleset built); the child only makes the few
syscalls that apply it. :func:`~libc_service.processes.spawn` has them made by the
launcher (:meth:`PreparedSandbox.launch_steps`, :mod:`.launching`), a small
C program executed after a ``vfork``, which inherits the ruleset descriptor
and closes it before it executes the program. :meth:`~PreparedSandbox.apply_in_child`
makes the same calls from a ``preexec_fn``, where the launcher is missing:
both ``subprocess`` (the default loop) and uvloop run it *before* they close
inherited descriptors, so the ruleset descriptor is still open there (it is
close-on-exec, so the program never sees it).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from libc_service.confinement.isolation import Isolation, namespace_stock, network_namespaces_available
from libc_service.confinement.landlock import (
    AUDIT_ABI,
    EXECUTE,
    RESTRICT_SELF_LOG_NEW_EXEC_ON,
    READ,
    WRITE,
    SandboxUnavailable,
    add_path_rule,
    check,
    create_ruleset,
    landlock_abi,
    local_names,
    restrict_self,
    syscall,
    syscall_numbers,
)
from libc_service.confinement.loader import LoaderFile, program_files, resolve_program, system_library_dirs
from libc_service.confinement.ruleset_cache import cached_ruleset
from libc_service.confinement.socket_filter import build_socket_filter, socket_numbers_for
from libc_service.confinement.syscall_filter import build_filter, numbers_for

__all__ = ["Sandbox", "SandboxUnavailable", "landlock_abi", "network_namespaces_available"]

logger = logging.getLogger(__name__)

_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


@dataclass(frozen=True)
class Sandbox:
    """What the slave may still do by itself.

    ``allow_read``: trees (or single files) it may read (and list) directly;
    ``allow_write``: trees it may also modify; ``allow_exec``: trees it may
    execute from (and read). Paths must be absolute; a path that does not
    exist when the program starts grants nothing. ``network``: keep the
    host's network (``True``) or get none (``False``, the default).
    ``metadata``: let the slave change the mode, owner, times and extended
    attributes of files its uid owns by itself (``True``), which Landlock
    does not mediate; by default (``False``) a seccomp filter refuses those
    calls (``EPERM``) and io_uring (``ENOSYS``).
    ``system_libraries``: let the slave read and execute (never write)
    beneath the system's shared-library directories (``/lib``, ``/usr/lib``
    and their ``lib64``/``lib32`` siblings, ``/usr/local/lib``, and those
    ``/etc/ld.so.conf`` lists) — the default, ``True``. What loading the
    program needs is granted anyway, file by file; but libraries it
    ``dlopen``s later (Python extension modules and what they link, NSS,
    PAM, gconv modules) are opened by the loader inside the slave, where the
    shim cannot see the open and Landlock would refuse it. With ``False``
    only the discovered files are granted, and such a program must list
    its libraries in ``allow_read`` itself.

    Everything else the program needs — ``/dev/null``, locales, the files it
    works on — it can only get through the master: a policy that forwards
    such a call makes it fail with ``EACCES``. That is the point.
    """

    allow_read: Sequence[str | os.PathLike[str]] = field(default=())
    allow_write: Sequence[str | os.PathLike[str]] = field(default=())
    allow_exec: Sequence[str | os.PathLike[str]] = field(default=())
    network: bool = False
    metadata: bool = False
    system_libraries: bool = True

    def __post_init__(self) -> None:
        for name in ("allow_read", "allow_write", "allow_exec"):
            value = getattr(self, name)
            if isinstance(value, str | bytes | os.PathLike):
                raise TypeError(f"Sandbox({name}=...) takes a list of paths, not one path: {value!r}")
            paths = tuple(value)
            for path in paths:
                if not os.fspath(path).startswith("/"):
                    raise ValueError(f"Sandbox({name}=...) takes absolute paths, not {os.fspath(path)!r}")
            object.__setattr__(self, name, paths)

    @staticmethod
    def available() -> str | None:
        """Why the sandbox cannot work here, or ``None`` when it can."""
        abi = landlock_abi()
        if abi < 1:
            return "the kernel has no Landlock (needs Linux 5.13+ with landlock in the lsm= list)"
        return None

    def static_rules(self) -> list[tuple[str, str]]:
        """The policy's own rules as (path, access) pairs, for documentation.

        The system's library directories (``system_libraries``) are not
        listed: they differ between machines, and a policy's page says in
        words that they are granted.
        """
        rules = [(os.fspath(p), "read") for p in self.allow_read]
        rules += [(os.fspath(p), "read, write") for p in self.allow_write]
        rules += [(os.fspath(p), "read, execute") for p in self.allow_exec]
        return rules

    def prepare(
        self,
        argv: Sequence[str],
        shim: Path,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
        *,
        seccomp: bool = False,
    ) -> PreparedSandbox:
        """Build the ruleset for ``argv`` in the parent; raises ``SandboxUnavailable``.

        Everything that can fail is done here, so that the child only makes
        the syscalls that apply the ruleset. A ruleset built before for the
        same rules is reused while every path still leads to the object its
        rule is on (:mod:`.ruleset_cache`); the filters are built once. ``seccomp``: the program
        also runs under the seccomp transport, which decides its ``connect``
        calls (the sandbox's filter then leaves them to it).
        """
        reason = self.available()
        if reason is not None:
            raise SandboxUnavailable(f"cannot sandbox: {reason}")
        if not self.network:
            reason = network_namespaces_available()
            if reason is not None:
                raise SandboxUnavailable(f"cannot sandbox without network (network=False): {reason}")
            namespace_stock()  # started early: the first job's namespaces are made while this one is prepared
        abi = landlock_abi()
        numbers = syscall_numbers()
        program = resolve_program(argv[0], env, cwd)
        # Loader files carry the identity they were checked with; the shim and
        # the loader's cache are ours and root's. System library directories
        # are not policy trees: calls beneath them still reach the master.
        rules: list[tuple[Path | LoaderFile, int, bool]] = [
            (file, EXECUTE | READ, False) for file in program_files(program, env, cwd=cwd)
        ]
        rules += [(shim, EXECUTE | READ, False), (Path("/etc/ld.so.cache"), READ, False)]
        if self.system_libraries:
            rules += [(path, EXECUTE | READ, False) for path in system_library_dirs()]
        rules += [(Path(p), READ, True) for p in self.allow_read]
        rules += [(Path(p), READ | WRITE, True) for p in self.allow_write]
        rules += [(Path(p), EXECUTE | READ, True) for p in self.allow_exec]

        def build(rules: Sequence[tuple[Path | LoaderFile, int, bool]]) -> tuple[int, list[tuple[int, int] | None]]:
            ruleset, handled_fs = create_ruleset(numbers, abi, network=self.network)
            try:
                return ruleset, [
                    add_path_rule(numbers, ruleset, target, access & handled_fs) for target, access, _ in rules
                ]
            except BaseException:
                os.close(ruleset)
                raise

        ruleset, added = cached_ruleset(abi, self.network, rules, build)
        local: list[str] = []
        for (target, _, from_policy), is_added in zip(rules, added, strict=True):
            if is_added:
                if from_policy and isinstance(target, Path):
                    local += local_names(target)
            elif from_policy:
                logger.warning("sandbox: %s does not exist; its rule grants nothing", target)
        prepared = PreparedSandbox(
            ruleset, numbers, network=self.network, abi=abi, metadata=self.metadata, connect_notified=seccomp
        )
        prepared.local_trees = tuple(dict.fromkeys(local))
        return prepared


@functools.cache
def _system_call_filter(machine: str, metadata: bool) -> bytes:
    """The first filter's program: the same for every sandbox with these settings, built once."""
    table = numbers_for(machine)
    if table is None:
        raise SandboxUnavailable(f"the seccomp filter does not know the system calls of {machine}")
    return build_filter(table, metadata=metadata)


@functools.cache
def _socket_filter(machine: str, connect: bool) -> bytes:
    """The socket filter's program, built once per setting."""
    sockets = socket_numbers_for(machine)
    if sockets is None:
        raise SandboxUnavailable(f"the socket filter does not know the system calls of {machine}")
    return build_socket_filter(sockets, connect=connect)


class PreparedSandbox:
    """A built ruleset, applied in the forked child just before ``exec``."""

    def __init__(
        self,
        ruleset: int,
        numbers: Mapping[str, int],
        *,
        network: bool,
        abi: int,
        metadata: bool = False,
        connect_notified: bool = False,
    ) -> None:
        self.ruleset = ruleset
        self.abi = abi
        #: The policy's static trees that exist (normalised absolute paths):
        #: read-only calls beneath them need no round trip (``LIBC_SERVICE_LOCAL``).
        self.local_trees: tuple[str, ...] = ()
        self._numbers = dict(numbers)
        self._network = network
        # Built here, in the parent: the child only hands the kernel a pointer.
        self._filter_code = _system_call_filter(platform.machine(), metadata)
        self._filter = ctypes.create_string_buffer(self._filter_code)
        self._filter_prog = ctypes.create_string_buffer(
            struct.pack("<HxxxxxxQ", len(self._filter.raw) // 8, ctypes.addressof(self._filter))
        )
        # Without a network, the host's named unix sockets are out of reach too (Landlock does not check them).
        self._socket_filter_prog: ctypes.Array[ctypes.c_char] | None = None
        self._socket_filter_code = b""
        if not network:
            self._socket_filter_code = _socket_filter(platform.machine(), not connect_notified)
            self._socket_filter = ctypes.create_string_buffer(self._socket_filter_code)
            self._socket_filter_prog = ctypes.create_string_buffer(
                struct.pack("<HxxxxxxQ", len(self._socket_filter.raw) // 8, ctypes.addressof(self._socket_filter))
            )
        self._isolation = Isolation(numbers)
        #: Namespaces made ahead (:class:`~libc_service.confinement.isolation.NamespaceStock`) handed to the launcher.
        self._namespaces: tuple[int, int] | None = None

    def apply_in_child(self) -> None:
        """Runs between fork and exec: isolate the network, then restrict.

        On failure the program is not run: the step that failed is written
        to the child's stderr (``subprocess`` itself only reports "Exception
        occurred in preexec_fn") and the exception propagates.
        """
        try:
            self._apply()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"libc-service: cannot apply the sandbox: {exc.strerror}\n".encode())
            raise

    def _apply(self) -> None:
        numbers = self._numbers
        # A session of its own: the user's terminal is no longer the slave's
        # controlling terminal, so TIOCSTI there fails even without the
        # filter, and the terminal's job-control signals reach the master,
        # which relays them (see the command line's signal handling).
        os.setsid()
        if not self._network:
            self._isolation.unshare_network()
        check(syscall(numbers["prctl"], _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        restrict_self(numbers, self.ruleset)
        self._isolation.drop_capabilities()
        check(
            syscall(numbers["prctl"], _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._filter_prog, 0, 0),
            "prctl(PR_SET_SECCOMP)",
        )
        if self._socket_filter_prog is not None:
            check(
                syscall(numbers["prctl"], _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._socket_filter_prog, 0, 0),
                "prctl(PR_SET_SECCOMP) for the socket filter",
            )

    def launch_steps(self) -> tuple[list[str], list[int]]:
        """What :meth:`apply_in_child` does, as the launcher's steps, and the descriptors it needs.

        The same calls in the same order, made by the launcher
        (:mod:`libc_service.processes.launching`) instead of Python in a forked child.
        """
        flags = RESTRICT_SELF_LOG_NEW_EXEC_ON if self.abi >= AUDIT_ABI else 0
        steps = ["s"]
        fds = [self.ruleset]
        if not self._network:
            stock = namespace_stock()
            self._namespaces = stock.take() if stock is not None else None
            if self._namespaces is not None:
                # Namespaces made ahead for this job alone: the launcher enters them.
                net, ipc = self._namespaces
                steps += [f"N={net}:{ipc}", f"x={net}", f"x={ipc}"]
                fds += [net, ipc]
            else:
                steps.append(self._isolation.unshare_step())
        steps += [f"l={self.ruleset}:{flags}", self._isolation.capabilities_step(), f"f={self._filter_code.hex()}"]
        if self._socket_filter_code:
            steps.append(f"f={self._socket_filter_code.hex()}")
        steps.append(f"x={self.ruleset}")
        return steps, fds

    def close(self) -> None:
        """Close the ruleset descriptor (and the namespaces the launcher was given) in the parent."""
        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1
        if self._namespaces is not None:
            for fd in self._namespaces:
                os.close(fd)
            self._namespaces = None
