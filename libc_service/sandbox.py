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
  unix sockets outside its Landlock domain are refused as well. A connect
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
rule descriptors opened, the ruleset built); the forked child only makes the
few syscalls that apply it. Both ``subprocess`` (the default loop) and
uvloop run the ``preexec_fn`` *before* they close inherited descriptors, so
the ruleset descriptor is still open there (it is close-on-exec, so the
program never sees it); the tests check this on both loops.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_module
import functools
import logging
import os
import platform
import stat as stat_module
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .loader import LoaderFile, program_files, resolve_program, system_library_dirs
from .syscall_filter import build_filter, numbers_for

__all__ = [
    "PreparedSandbox",
    "Sandbox",
    "SandboxUnavailable",
    "landlock_abi",
    "network_namespaces_available",
    "program_files",
]

logger = logging.getLogger(__name__)

_SYSCALLS: Final = {
    "x86_64": {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446, "unshare": 272, "prctl": 157,
               "capset": 126},
    "aarch64": {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446, "unshare": 97, "prctl": 167,
                "capset": 91},
}
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAPBSET_DROP: Final = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3: Final = 0x20080522
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

_CLONE_NEWNET: Final = 0x40000000
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWIPC: Final = 0x08000000
#: With network=False: no network, no abstract unix sockets, no SysV IPC or
#: POSIX message queues of the host (Landlock mediates none of these).
_ISOLATE: Final = _CLONE_NEWNET | _CLONE_NEWIPC

# Landlock filesystem rights, by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS: Final = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
_READ: Final = READ_FILE | READ_DIR
_WRITE: Final = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_SYM
    | REFER | TRUNCATE
)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class SandboxUnavailable(RuntimeError):
    """The kernel cannot confine the slave as asked (no Landlock, no namespaces)."""


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _numbers() -> dict[str, int]:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise SandboxUnavailable(f"the sandbox does not know the syscall numbers of {platform.machine()}")
    return numbers


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    try:
        numbers = _numbers()
    except SandboxUnavailable:
        return 0
    version = _syscall(numbers["create_ruleset"], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


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
    ) -> PreparedSandbox:
        """Build the ruleset for ``argv`` in the parent; raises ``SandboxUnavailable``.

        Everything that can fail is done here, so that the forked child only
        makes the syscalls that apply the ruleset.
        """
        reason = self.available()
        if reason is not None:
            raise SandboxUnavailable(f"cannot sandbox: {reason}")
        if not self.network:
            reason = network_namespaces_available()
            if reason is not None:
                raise SandboxUnavailable(f"cannot sandbox without network (network=False): {reason}")
        abi = landlock_abi()
        numbers = _numbers()
        program = resolve_program(argv[0], env, cwd)
        # Loader files carry the identity they were checked with; the shim and
        # the loader's cache are ours and root's. System library directories
        # are not policy trees: calls beneath them still reach the master.
        rules: list[tuple[Path | LoaderFile, int, bool]] = [
            (file, EXECUTE | _READ, False) for file in program_files(program, env, cwd=cwd)
        ]
        rules += [(shim, EXECUTE | _READ, False), (Path("/etc/ld.so.cache"), _READ, False)]
        if self.system_libraries:
            rules += [(path, EXECUTE | _READ, False) for path in system_library_dirs()]
        rules += [(Path(p), _READ, True) for p in self.allow_read]
        rules += [(Path(p), _READ | _WRITE, True) for p in self.allow_write]
        rules += [(Path(p), EXECUTE | _READ, True) for p in self.allow_exec]
        handled_fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
        handled_net = 0 if self.network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
        # Signals: the slave may not signal the master (or anything outside
        # its domain). Abstract unix sockets are network-namespace scoped
        # too; with network=True they stay reachable.
        scoped = 0 if abi < 6 else _SCOPE_SIGNAL | (0 if self.network else _SCOPE_ABSTRACT_UNIX)
        if abi >= 6:
            attr = struct.pack("<QQQ", handled_fs, handled_net, scoped)
        elif abi >= 4:
            attr = struct.pack("<QQ", handled_fs, handled_net)
        else:
            attr = struct.pack("<Q", handled_fs)
        ruleset = _check(
            _syscall(numbers["create_ruleset"], ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)),
            "landlock_create_ruleset",
        )
        local: list[str] = []
        try:
            for target, access, from_policy in rules:
                if _add_path_rule(numbers, ruleset, target, access & handled_fs):
                    if from_policy and isinstance(target, Path):
                        local += _local_names(target)
                elif from_policy:
                    logger.warning("sandbox: %s does not exist; its rule grants nothing", target)
        except BaseException:
            os.close(ruleset)
            raise
        prepared = PreparedSandbox(ruleset, numbers, network=self.network, abi=abi, metadata=self.metadata)
        prepared.local_trees = tuple(dict.fromkeys(local))
        return prepared


def _local_names(path: Path) -> list[str]:
    """The names under which the shim may treat ``path``'s tree as statically allowed.

    The normalised path as given and, when a symlink is on the way, its
    real path: both lead to the object the Landlock rule is on.
    """
    names = [os.path.normpath(path)]
    real = os.path.realpath(path)
    if real != names[0]:
        names.append(real)
    return [name for name in names if ":" not in name]  # ':' separates the entries


def _add_path_rule(numbers: Mapping[str, int], ruleset: int, target: Path | LoaderFile, access: int) -> bool:
    """Allow ``access`` beneath ``target``; ``False`` when no rule was added.

    A plain path (the policy's, the shim, system library directories) may
    be a directory or a file; one that does not exist grants nothing. A
    :class:`LoaderFile` comes from loader discovery, which read the file
    the program named: the rule goes on the object opened here only if it
    is still a regular file with the identity discovery checked, so a path
    swapped since (for a secret, or a directory) is skipped with a
    warning, never granted. A rule on anything but a directory may carry
    file rights only (the kernel refuses directory rights there with
    ``EINVAL``).
    """
    path = target.path if isinstance(target, LoaderFile) else target
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False  # a rule for a path that does not exist grants nothing
    except OSError as exc:
        if not isinstance(target, LoaderFile):
            raise
        logger.warning("sandbox: loader file %s cannot be opened (%s); not granted", path, exc.strerror)
        return False
    try:
        info = os.fstat(fd)
        if isinstance(target, LoaderFile) and (
            not stat_module.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (target.device, target.inode)
        ):
            logger.warning("sandbox: loader file %s changed since it was checked; not granted", path)
            return False
        if not stat_module.S_ISDIR(info.st_mode):
            access &= _FILE_RIGHTS
        rule = struct.pack("<Qi", access, fd)
        _check(
            _syscall(numbers["add_rule"], ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                     ctypes.c_char_p(rule), ctypes.c_uint32(0)),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)
    return True


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 63  # drop every possible bit; unknown ones fail with EINVAL


class PreparedSandbox:
    """A built ruleset, applied in the forked child just before ``exec``."""

    def __init__(
        self, ruleset: int, numbers: Mapping[str, int], *, network: bool, abi: int, metadata: bool = False,
    ) -> None:
        self.ruleset = ruleset
        self.abi = abi
        #: The policy's static trees that exist (normalised absolute paths):
        #: read-only calls beneath them need no round trip (``LIBC_SERVICE_LOCAL``).
        self.local_trees: tuple[str, ...] = ()
        self._numbers = dict(numbers)
        self._network = network
        # Built here, in the parent: the child only hands the kernel a pointer.
        table = numbers_for(platform.machine())
        if table is None:
            raise SandboxUnavailable(f"the seccomp filter does not know the system calls of {platform.machine()}")
        self._filter = ctypes.create_string_buffer(build_filter(table, metadata=metadata))
        self._filter_prog = ctypes.create_string_buffer(
            struct.pack("<HxxxxxxQ", len(self._filter.raw) // 8, ctypes.addressof(self._filter))
        )
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._last_cap = _last_capability()
        # capset(header {version, pid 0}, data[2] {effective, permitted, inheritable}): all empty.
        self._no_caps_header = ctypes.create_string_buffer(struct.pack("<Ii", _CAPABILITY_VERSION_3, 0))
        self._no_caps_data = ctypes.create_string_buffer(bytes(24))

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
            if _syscall(numbers["unshare"], ctypes.c_int(_ISOLATE)) < 0:
                self._unshare_as_user()
        _check(_syscall(numbers["prctl"], _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_syscall(numbers["restrict_self"], ctypes.c_int(self.ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
        self._drop_capabilities()
        _check(_syscall(numbers["prctl"], _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._filter_prog, 0, 0),
               "prctl(PR_SET_SECCOMP)")

    def _drop_capabilities(self) -> None:
        # A root slave keeps capabilities Landlock knows nothing of (loading a
        # kernel module from memory, changing the host's name or clock, chown):
        # empty every set. Under no_new_privs exec cannot grant them back.
        numbers = self._numbers
        for cap in range(self._last_cap + 1):
            if _syscall(numbers["prctl"], _PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
                if ctypes.get_errno() == errno_module.EPERM:
                    break  # no CAP_SETPCAP: nothing in the bounding set to fear under no_new_privs
                if ctypes.get_errno() != errno_module.EINVAL:  # EINVAL: a capability this kernel lacks
                    _check(-1, "prctl(PR_CAPBSET_DROP)")
        _check(_syscall(numbers["prctl"], _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
               "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
        _check(_syscall(numbers["capset"], self._no_caps_header, self._no_caps_data), "capset")

    def _unshare_as_user(self) -> None:
        # Without CAP_SYS_ADMIN, a user namespace grants it for the new netns.
        _check(_syscall(self._numbers["unshare"], ctypes.c_int(_CLONE_NEWUSER | _ISOLATE)), "unshare(network, ipc)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{self._uid} {self._uid} 1"),
                           ("gid_map", f"{self._gid} {self._gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the ruleset descriptor in the parent."""
        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1


def _probe_unshare() -> None:  # pragma: no cover - runs in the probe's child
    numbers = _numbers()
    if _syscall(numbers["unshare"], ctypes.c_int(_ISOLATE)) == 0:
        return
    _check(_syscall(numbers["unshare"], ctypes.c_int(_CLONE_NEWUSER | _ISOLATE)), "unshare")


@functools.cache
def _network_namespace_reason() -> str | None:
    try:
        _numbers()
    except SandboxUnavailable as exc:
        return str(exc)
    program = "/bin/true" if os.access("/bin/true", os.X_OK) else sys.executable
    argv = [program] if program == "/bin/true" else [program, "-S", "-c", ""]
    try:
        # The same fork-then-unshare path spawn() takes, on a harmless program.
        done = subprocess.run(argv, preexec_fn=_probe_unshare, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ("cannot create a network namespace (unshare(CLONE_NEWNET | CLONE_NEWIPC) failed, "
                "also inside a user namespace)")
    if done.returncode != 0:
        return f"the network namespace probe failed (exit status {done.returncode})"
    return None


def network_namespaces_available() -> str | None:
    """Why a fresh network namespace cannot be made here, or ``None``.

    Probed once per process, by starting a harmless program the way
    :func:`~libc_service.spawn` starts a sandboxed one.
    """
    return _network_namespace_reason()
