"""Confine the calling thread to making socket files beneath one directory.

``getsockname()`` of a unix socket returns the very text ``bind()`` was
given, so a socket the master binds for the slave reports the slave's name
only if the master binds the slave's exact text, resolved from the slave's
working directory. That walk is the kernel's own: it follows whatever the
slave planted on the way, magic links (``/proc/self/fd/N`` of the *master*)
included, which the guarded walk of :mod:`libc_service.acting.slavewalk` refuses.

So the thread that binds first takes a Landlock domain of its own —
``landlock_restrict_self`` restricts the calling thread only — in which it
may make a socket file only beneath the directory the guarded walk found:
wherever else the slave's text leads, the kernel refuses the bind with
``EACCES``, and the caller binds the last name in that directory instead.
The domain handles nothing but ``MAKE_SOCK``; the thread ends after the call.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Final

from libc_service.confinement import landlock

__all__ = ["available", "confine_socket_files"]

_PR_SET_NO_NEW_PRIVS: Final = 38
_RULE_PATH_BENEATH: Final = 1


@functools.cache
def available() -> bool:
    """Whether the kernel has Landlock, so :func:`confine_socket_files` can work."""
    return landlock.landlock_abi() >= 1


def confine_socket_files(directory_fd: int) -> None:
    """Let this thread make socket files only beneath ``directory_fd`` (for the rest of its life).

    ``no_new_privs`` (needed by an unprivileged ``landlock_restrict_self``)
    is a per-thread attribute too; it only affects ``execve``, which this
    thread never calls.
    """
    numbers = landlock.syscall_numbers()
    syscall = landlock.syscall
    landlock.check(
        syscall(
            numbers["prctl"],
            ctypes.c_int(_PR_SET_NO_NEW_PRIVS),
            ctypes.c_ulong(1),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        "prctl(PR_SET_NO_NEW_PRIVS)",
    )
    attr = struct.pack("<Q", landlock.MAKE_SOCK)
    ruleset = landlock.check(
        syscall(
            numbers["landlock_create_ruleset"], ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
        ),
        "landlock_create_ruleset",
    )
    try:
        rule = struct.pack("<Qi", landlock.MAKE_SOCK, directory_fd)
        landlock.check(
            syscall(
                numbers["landlock_add_rule"],
                ctypes.c_int(ruleset),
                ctypes.c_int(_RULE_PATH_BENEATH),
                ctypes.c_char_p(rule),
                ctypes.c_uint32(0),
            ),
            "landlock_add_rule",
        )
        landlock.check(
            syscall(numbers["landlock_restrict_self"], ctypes.c_int(ruleset), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)
