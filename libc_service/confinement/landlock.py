"""Landlock: the filesystem (and, from ABI 4, TCP) rights a sandboxed slave keeps.

The rights by the ABI that introduced them, the ABI probe, and building a
ruleset in the parent (rule descriptors opened and checked there); the
forked child only calls :func:`restrict_self`. The sandbox's modules take
the kernel-call helpers (``syscall``, ``check``) from here too; they are
:mod:`libc_service.kernel.libc`'s, this machine's numbers checked for the sandbox.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import logging
import os
import stat as stat_module
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from libc_service.kernel.libc import MACHINE, NUMBERS, check, syscall
from libc_service.confinement.loader_files import LoaderFile

__all__ = [
    "AUDIT_ABI",
    "EXECUTE",
    "READ",
    "RESTRICT_SELF_LOG_NEW_EXEC_ON",
    "WRITE",
    "SandboxUnavailable",
    "add_path_rule",
    "check",
    "create_ruleset",
    "landlock_abi",
    "local_names",
    "restrict_self",
    "syscall",
    "syscall_numbers",
]

logger = logging.getLogger("libc_service.confinement.sandbox")

_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1
# Landlock filesystem rights, by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI: Final = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS: Final = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
#: What reading a tree takes, and what writing in it adds.
READ: Final = READ_FILE | READ_DIR
WRITE: Final = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_SYM | REFER | TRUNCATE
)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
#: landlock_restrict_self flag (ABI 7): log the denials of the programs the
#: restricted process executes too. Without it a domain made before execve
#: logs nothing of the sandboxed program (see libc_service.confinement.landlock_audit).
RESTRICT_SELF_LOG_NEW_EXEC_ON: Final = 1 << 1
#: The first Landlock ABI with audit records and the restrict_self log flags.
AUDIT_ABI: Final = 7


class SandboxUnavailable(RuntimeError):
    """The kernel cannot confine the slave as asked (no Landlock, no namespaces)."""


def syscall_numbers() -> dict[str, int]:
    """This machine's numbers of the system calls the sandbox makes; raises :class:`SandboxUnavailable`."""
    if not NUMBERS:
        raise SandboxUnavailable(f"the sandbox does not know the syscall numbers of {MACHINE}")
    return NUMBERS


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    try:
        numbers = syscall_numbers()
    except SandboxUnavailable:
        return 0
    version = syscall(
        numbers["landlock_create_ruleset"], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def create_ruleset(numbers: Mapping[str, int], abi: int, *, network: bool) -> tuple[int, int]:
    """A ruleset handling every right ``abi`` knows: its descriptor and the filesystem rights handled.

    TCP bind/connect are handled (so refused) without ``network``, from
    ABI 4; signals outside the domain, and abstract unix sockets without
    ``network``, are scoped from ABI 6.
    """
    handled_fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
    handled_net = 0 if network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
    # Signals: the slave may not signal the master (or anything outside
    # its domain). Abstract unix sockets are network-namespace scoped
    # too; with network=True they stay reachable.
    scoped = 0 if abi < 6 else _SCOPE_SIGNAL | (0 if network else _SCOPE_ABSTRACT_UNIX)
    if abi >= 6:
        attr = struct.pack("<QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("<QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("<Q", handled_fs)
    ruleset = check(
        syscall(
            numbers["landlock_create_ruleset"], ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
        ),
        "landlock_create_ruleset",
    )
    return ruleset, handled_fs


def restrict_self(numbers: Mapping[str, int], ruleset: int) -> None:
    """Enforce ``ruleset`` on the calling process (the forked child, under ``no_new_privs``).

    From ABI 7 the domain logs the denials of the program executed next
    (``LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON``): they reach the kernel's
    audit log, when audit is enabled, where the master can count them.
    Older ABIs know no flags and get none.
    """
    flags = RESTRICT_SELF_LOG_NEW_EXEC_ON if landlock_abi() >= AUDIT_ABI else 0
    if flags and syscall(numbers["landlock_restrict_self"], ctypes.c_int(ruleset), ctypes.c_uint32(flags)) == 0:
        return
    if flags and ctypes.get_errno() != errno_module.EINVAL:
        check(-1, "landlock_restrict_self")
    check(
        syscall(numbers["landlock_restrict_self"], ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self"
    )


def local_names(path: Path) -> list[str]:
    """The names under which the shim may treat ``path``'s tree as statically allowed.

    The normalised path as given and, when a symlink is on the way, its
    real path: both lead to the object the Landlock rule is on.
    """
    names = [os.path.normpath(path)]
    real = os.path.realpath(path)
    if real != names[0]:
        names.append(real)
    return [name for name in names if ":" not in name]  # ':' separates the entries


def add_path_rule(
    numbers: Mapping[str, int], ruleset: int, target: Path | LoaderFile, access: int
) -> tuple[int, int] | None:
    """Allow ``access`` beneath ``target``: the ``(st_dev, st_ino)`` of the object the rule is on, or ``None``
    when no rule was added.

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
        return None  # a rule for a path that does not exist grants nothing
    except OSError as exc:
        if not isinstance(target, LoaderFile):
            raise
        logger.warning("sandbox: loader file %s cannot be opened (%s); not granted", path, exc.strerror)
        return None
    try:
        info = os.fstat(fd)
        if isinstance(target, LoaderFile) and (
            not stat_module.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (target.device, target.inode)
        ):
            logger.warning("sandbox: loader file %s changed since it was checked; not granted", path)
            return None
        if not stat_module.S_ISDIR(info.st_mode):
            access &= _FILE_RIGHTS
        rule = struct.pack("<Qi", access, fd)
        check(
            syscall(
                numbers["landlock_add_rule"],
                ctypes.c_int(ruleset),
                ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.c_char_p(rule),
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)
    return info.st_dev, info.st_ino
