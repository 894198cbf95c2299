"""The open flags: each name of the vocabulary, its bit on the wire and its value for open(2)/openat2(2).

A request names its open flags (``"read_only"``, ``"no_follow"``,
``"resolve_beneath"``, see :data:`libc_service.protocol.catalogue.OPENAT_FLAGS`); the
protocol carries each as one bit, the master passes each to ``open(2)`` as
an ``O_*`` flag (``openat2(2)``'s resolve flags as ``RESOLVE_*`` bits), and a
decoder of a system call's arguments reads the names back from those values.
Every such mapping is derived from the one table here: a second table drifts
(a flag added to one and not the other is a flag silently dropped).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from libc_service.protocol.catalogue import OpenatFlag

__all__ = [
    "ACCESS_MODES",
    "KNOWN_OS_FLAGS",
    "OPEN_FLAG_BITS",
    "OS_FLAGS",
    "RESOLVE_BENEATH",
    "RESOLVE_CACHED",
    "RESOLVE_FLAGS",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "names_of",
]

#: openat2(2)'s resolve flags (``linux/openat2.h``; the os module has none).
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10
RESOLVE_CACHED: Final = 0x20

#: Every open flag: (its bit in a request's flags field, the value ``open(2)``
#: takes for it on this system, 0 where it has none; a resolve flag's is its
#: ``RESOLVE_*`` bit). Wire bits 0-11: the original open flags; 16-21:
#: openat's resolve flags; 24-31: flags that grant nothing but change the
#: call (``docs/protocol.md``). ``O_LARGEFILE`` is 0 in a 64-bit C library.
_TABLE: Final[dict[OpenatFlag, tuple[int, int]]] = {
    "read_only": (1 << 0, os.O_RDONLY),
    "write_only": (1 << 1, os.O_WRONLY),
    "read_write": (1 << 2, os.O_RDWR),
    "append": (1 << 3, os.O_APPEND),
    "create": (1 << 4, os.O_CREAT),
    "directory": (1 << 5, os.O_DIRECTORY),
    "exclusive": (1 << 6, os.O_EXCL),
    "no_follow": (1 << 7, os.O_NOFOLLOW),
    "path": (1 << 8, os.O_PATH),
    "sync_all_on_write": (1 << 9, os.O_SYNC),
    "temporary": (1 << 10, getattr(os, "O_TMPFILE", 0)),
    "truncate": (1 << 11, os.O_TRUNC),
    "non_blocking": (1 << 24, os.O_NONBLOCK),
    "no_ctty": (1 << 25, os.O_NOCTTY),
    "close_on_exec": (1 << 26, os.O_CLOEXEC),
    "sync_data_on_write": (1 << 27, os.O_DSYNC),
    "no_atime": (1 << 28, getattr(os, "O_NOATIME", 0)),
    "direct": (1 << 29, getattr(os, "O_DIRECT", 0)),
    "async_signals": (1 << 30, os.O_ASYNC),
    "large_file": (1 << 31, getattr(os, "O_LARGEFILE", 0)),
    "resolve_beneath": (1 << 16, RESOLVE_BENEATH),
    "resolve_in_root": (1 << 17, RESOLVE_IN_ROOT),
    "resolve_no_magiclinks": (1 << 18, RESOLVE_NO_MAGICLINKS),
    "resolve_no_symlinks": (1 << 19, RESOLVE_NO_SYMLINKS),
    "resolve_no_xdev": (1 << 20, RESOLVE_NO_XDEV),
    "resolve_cached": (1 << 21, RESOLVE_CACHED),
}

#: Each flag's bit on the wire.
OPEN_FLAG_BITS: Final[dict[str, int]] = {name: bit for name, (bit, _) in _TABLE.items()}
#: Each open flag's ``O_*`` value on this system (0: none here).
OS_FLAGS: Final[dict[str, int]] = {
    name: value for name, (_, value) in _TABLE.items() if not name.startswith("resolve_")
}
#: Each resolve flag's ``RESOLVE_*`` bit.
RESOLVE_FLAGS: Final[dict[str, int]] = {
    name: value for name, (_, value) in _TABLE.items() if name.startswith("resolve_")
}
#: The access mode's name by ``flags & O_ACCMODE`` (3, ioctl-only access, has none).
ACCESS_MODES: Final = ("read_only", "write_only", "read_write")

#: Flags whose value contains another's: ``O_SYNC`` is ``O_DSYNC`` and more,
#: ``O_TMPFILE`` is ``O_DIRECTORY`` and more. Each pair (whole, part) is read whole first.
_NESTED: Final = (("sync_all_on_write", "sync_data_on_write"), ("temporary", "directory"))
#: The flags read one bit each: not the access mode, not a nested pair, not
#: large_file (whose bit a decoder names), not one this system lacks.
_SINGLE: Final = tuple(
    (value, name)
    for name, value in OS_FLAGS.items()
    if value and name not in ACCESS_MODES and name != "large_file" and not any(name in pair for pair in _NESTED)
)
#: Every bit of an open(2) flags word that :func:`names_of` names (without large_file's).
KNOWN_OS_FLAGS: Final = os.O_ACCMODE | sum(value for value, _ in _SINGLE) | sum(OS_FLAGS[whole] for whole, _ in _NESTED)


def names_of(flags: int, resolve: int = 0, *, large_file: int = OS_FLAGS["large_file"]) -> frozenset[str]:
    """The names of an ``open(2)`` flags word and of ``openat2(2)`` resolve bits.

    For a decoder of a system call's arguments. ``large_file`` is the bit
    ``O_LARGEFILE`` has in ``flags``: a 64-bit C library defines it as 0 (the
    kernel implies it), but a program may still pass the kernel's own bit,
    which only the decoder, knowing the architecture, can name. Bits no name
    says (beyond :data:`KNOWN_OS_FLAGS` and ``large_file``; resolve bits
    beyond ``RESOLVE_CACHED``) are left for the caller to refuse. Raises
    ``ValueError`` for access mode 3, which no request says.
    """
    access = flags & os.O_ACCMODE
    if access >= len(ACCESS_MODES):
        raise ValueError(f"access mode {access} has no name")
    names = {ACCESS_MODES[access]}
    names.update(name for value, name in _SINGLE if flags & value)
    for whole, part in _NESTED:
        if OS_FLAGS[whole] and flags & OS_FLAGS[whole] == OS_FLAGS[whole]:
            names.add(whole)
        elif flags & OS_FLAGS[part]:
            names.add(part)
    if large_file and flags & large_file:
        names.add("large_file")
    names.update(name for name, bit in RESOLVE_FLAGS.items() if resolve & bit)
    return frozenset(names)
