"""Take the slave's own authority away, so the master is the only door.

The shim only *advises*: a static binary or a raw syscall walks past it. A
:class:`Sandbox` confines the program with the kernel before it runs:

- **Filesystem — Landlock.** The ruleset handles every filesystem right the
  kernel knows; the slave keeps only what loading the program needs (the
  executable, its ELF interpreter and the libraries it links, the shim,
  ``ld.so.cache``) plus the static ``allow_read`` / ``allow_write`` /
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
import re
import shutil
import stat as stat_module
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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

# The seccomp filter: calls Landlock does not mediate that change a file the
# slave's uid owns (mode, owner, times, extended attributes) fail with EPERM;
# io_uring (whose SETXATTR requests would walk past the list) with ENOSYS,
# which programs take as "no io_uring here" and fall back from.
_AUDIT_ARCH: Final = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT: Final = 0x40000000
_METADATA_CALLS: Final = {
    # chmod fchmod chown fchown lchown utime setxattr lsetxattr fsetxattr removexattr lremovexattr
    # fremovexattr utimes fchownat futimesat fchmodat utimensat fchmodat2 setxattrat removexattrat
    "x86_64": (90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452, 463, 466),
    # setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr fchmod fchmodat fchownat fchown
    # utimensat fchmodat2 setxattrat removexattrat
    "aarch64": (5, 6, 7, 14, 15, 16, 52, 53, 54, 55, 88, 452, 463, 466),
}
_IO_URING_CALLS: Final = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register: both arches
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW: Final = 0x7FFF0000
_RET_ERRNO: Final = 0x00050000
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
_MAX_SCRIPT_DEPTH: Final = 4


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


def _elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP of an ELF executable (None for static or non-ELF files)."""
    try:
        with path.open("rb") as file:
            ident = file.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
                return None  # only 64-bit little-endian ELF is parsed
            phoff, = struct.unpack_from("<Q", ident, 32)
            phentsize, phnum = struct.unpack_from("<HH", ident, 54)
            file.seek(phoff)
            table = file.read(phentsize * phnum)
            for index in range(phnum):
                kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", table, index * phentsize)
                if kind == 3:  # PT_INTERP
                    file.seek(offset)
                    return file.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _shebang(path: Path) -> list[str] | None:
    """The ``#!`` line of a script as ``[interpreter, optional argument]``."""
    try:
        with path.open("rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line:
        return None
    interpreter, _, argument = line.partition(" ")
    argument = argument.strip()
    return [interpreter, argument] if argument else [interpreter]


_LOADER_NAME: Final = re.compile(r"ld(-linux)?(-[\w.-]+)?\.so(\.\d+)*|ld64\.so(\.\d+)*|ld-musl-[\w.-]+\.so\.1")
_LIBRARY_DIRS: Final = ("/lib/", "/lib64/", "/lib32/", "/usr/lib/", "/usr/lib64/", "/usr/lib32/")


def _is_system_loader(interpreter: str) -> bool:
    """Whether a ``PT_INTERP`` is the system's dynamic loader, safe to run in trace mode.

    The program chooses its ``PT_INTERP``; running whatever it names (a
    shell, a script interpreter) on the program's bytes would execute them
    in the master. Only a file named like a dynamic loader (``ld-linux*.so*``,
    ``ld64.so*``, ``ld-musl-*.so.1``) whose real path is in a system library
    directory is run.
    """
    real = os.path.realpath(interpreter)
    return (
        _LOADER_NAME.fullmatch(Path(interpreter).name) is not None
        and _LOADER_NAME.fullmatch(Path(real).name) is not None
        and real.startswith(_LIBRARY_DIRS)
        and os.path.isfile(real)
    )


def program_files(
    executable: Path, env: Mapping[str, str] | None = None, *, _depth: int = 0
) -> list[Path]:
    """What loading ``executable`` needs: itself, its interpreter, its libraries.

    Libraries are listed by the system's own dynamic loader in trace mode
    (``LD_TRACE_LOADED_OBJECTS``), which runs none of the program's code;
    the program's ``PT_INTERP`` is run only when it is a dynamic loader in
    a system library directory (see ``_is_system_loader``), otherwise only
    the program and its interpreter are listed. For a ``#!``
    script, what its interpreter needs is added (and, for ``#!/usr/bin/env
    NAME``, what ``NAME`` found on ``PATH`` needs). Libraries a program
    ``dlopen`` later are not known here: allow their directories.
    """
    files = [executable]
    interpreter = _elf_interpreter(executable)
    if interpreter is None:
        return files + _script_files(executable, env, _depth)
    files.append(Path(interpreter))
    if not _is_system_loader(interpreter):
        return files  # never run what the (untrusted) program names: it could be /bin/sh
    trace_env = {"LD_TRACE_LOADED_OBJECTS": "1", "PATH": "/usr/bin:/bin"}
    if env and "LD_LIBRARY_PATH" in env:
        trace_env["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
    try:
        output = subprocess.run(
            [interpreter, str(executable)], env=trace_env, capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return files
    for line in output.splitlines():
        # "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "\t/lib64/ld-linux... (0x...)"
        target = line.split("=>")[-1].strip().split(" (")[0].strip()
        if target.startswith("/"):
            files.append(Path(target))
    return files


def _script_files(script: Path, env: Mapping[str, str] | None, depth: int) -> list[Path]:
    """What the kernel execs for a ``#!`` script (nothing for other files)."""
    shebang = _shebang(script)
    if shebang is None or depth >= _MAX_SCRIPT_DEPTH or not shebang[0].startswith("/"):
        return []
    interpreter = Path(shebang[0])
    files = program_files(interpreter, env, _depth=depth + 1)
    if interpreter.name == "env" and len(shebang) > 1:
        # "#!/usr/bin/env NAME" (or "env -S NAME ARGS"): env execs NAME from PATH.
        words = [word for word in shebang[1].split() if not word.startswith("-")]
        search = (env or os.environ).get("PATH", os.defpath)
        found = shutil.which(words[0], path=search) if words else None
        if found is not None:
            files += program_files(Path(found).resolve(), env, _depth=depth + 1)
    return files


def _resolve_program(argv0: str, env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Path:
    if "/" in argv0:
        base = Path(cwd) if cwd is not None else Path.cwd()
        return (base / argv0).resolve()
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno_module.ENOENT, f"program not found on PATH: {argv0}")
    return Path(found).resolve()


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

    Everything else the program needs — ``/dev/null``, locales, the files it
    works on — it can only get through the master: a policy that forwards
    such a call makes it fail with ``EACCES``. That is the point.
    """

    allow_read: Sequence[str | os.PathLike[str]] = field(default=())
    allow_write: Sequence[str | os.PathLike[str]] = field(default=())
    allow_exec: Sequence[str | os.PathLike[str]] = field(default=())
    network: bool = False
    metadata: bool = False

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
        """The policy's own rules as (path, access) pairs, for documentation."""
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
        program = _resolve_program(argv[0], env, cwd)
        loading = [*program_files(program, env), shim, Path("/etc/ld.so.cache")]
        rules: list[tuple[Path, int, bool]] = [(path, EXECUTE | _READ, False) for path in loading]
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
            for path, access, from_policy in rules:
                if _add_path_rule(numbers, ruleset, path, access & handled_fs):
                    if from_policy:
                        local += _local_names(path)
                elif from_policy:
                    logger.warning("sandbox: %s does not exist; its rule grants nothing", path)
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


def _add_path_rule(numbers: Mapping[str, int], ruleset: int, path: Path, access: int) -> bool:
    """Allow ``access`` beneath ``path``; ``False`` when the path does not exist.

    A rule on anything but a directory may carry file rights only (the
    kernel refuses directory rights there with ``EINVAL``).
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False  # a rule for a path that does not exist grants nothing
    try:
        if not stat_module.S_ISDIR(os.fstat(fd).st_mode):
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


def _metadata_filter(machine: str) -> bytes:
    """A classic-BPF seccomp program refusing the metadata calls and io_uring.

    System calls of another ABI (i386 through ``int 0x80``, x32) fail with
    ``ENOSYS``: their numbers differ, so the list could not cover them.
    """
    arch, calls = _AUDIT_ARCH[machine], _METADATA_CALLS[machine]

    def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("<HBBI", code, jt, jf, k)

    checks = [(nr, "eperm") for nr in calls] + [(nr, "enosys") for nr in _IO_URING_CALLS]
    # Layout: [0] ld arch, [1] jeq arch, [2] ret ENOSYS, [3] ld nr, [4] jge x32,
    # [5 .. 5+n-1] jeq nr, [5+n] ret ALLOW, [6+n] ret EPERM, [7+n] ret ENOSYS.
    n = len(checks)
    allow, eperm, enosys = 5 + n, 6 + n, 7 + n
    program = [
        insn(_BPF_LD_W_ABS, 4),                      # seccomp_data.arch
        insn(_BPF_JEQ_K, arch, jt=1, jf=0),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.ENOSYS),
        insn(_BPF_LD_W_ABS, 0),                      # seccomp_data.nr
        insn(_BPF_JGE_K, _X32_BIT, jt=enosys - 5, jf=0),
    ]
    for index, (nr, outcome) in enumerate(checks):
        here = 5 + index
        target = eperm if outcome == "eperm" else enosys
        program.append(insn(_BPF_JEQ_K, nr, jt=target - here - 1, jf=0))
    program += [
        insn(_BPF_RET_K, _RET_ALLOW),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.EPERM),
        insn(_BPF_RET_K, _RET_ERRNO | errno_module.ENOSYS),
    ]
    return b"".join(program)


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
        self._filter: ctypes.Array[ctypes.c_char] | None = None
        self._filter_prog: ctypes.Array[ctypes.c_char] | None = None
        if not metadata:
            self._filter = ctypes.create_string_buffer(_metadata_filter(platform.machine()))
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
        if not self._network:
            if _syscall(numbers["unshare"], ctypes.c_int(_ISOLATE)) < 0:
                self._unshare_as_user()
        _check(_syscall(numbers["prctl"], _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_syscall(numbers["restrict_self"], ctypes.c_int(self.ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
        self._drop_capabilities()
        if self._filter_prog is not None:
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
