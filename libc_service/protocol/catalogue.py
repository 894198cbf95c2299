"""One catalogue of the protocol's vocabularies: function families, file types, getaddrinfo errors.

The codec, the conditions, the reply models and the router each need to
know which functions take a path, which answer with a descriptor, what a
file type or a getaddrinfo error is called. They read it here, so a
function added to a family is added everywhere at once. A leaf module: it
imports nothing of the package.
"""

from __future__ import annotations

import socket
from typing import Final, Literal, TypeAlias, get_args

__all__ = [
    "ACCESS_MODES",
    "FUNCTIONS",
    "MAX_GROUPS",
    "NODE_MAX",
    "OPENAT_FLAGS",
    "OPEN_FLAGS",
    "PATH_MAX_BYTES",
    "SERVICE_MAX",
    "UNIX_PATH_MAX",
    "AccessMode",
    "Function",
    "OpenFlag",
    "OpenatFlag",
    "ResolveFlag",
    "FD_RESULT_FUNCTIONS",
    "FILE_TYPES",
    "GAI_ERRORS",
    "GAI_ERROR_NAMES",
    "INET6_FUNCTIONS",
    "INET_FUNCTIONS",
    "METADATA_FD_FUNCTIONS",
    "METADATA_FUNCTIONS",
    "METADATA_PATH_FUNCTIONS",
    "MUTATING_FUNCTIONS",
    "NAMED_FUNCTIONS",
    "OPEN_FUNCTIONS",
    "PATH_FUNCTIONS",
    "UNIX_FUNCTIONS",
    "FileType",
    "GaiError",
]

#: Functions whose ``path`` names a file (rename has two, ``path1``/``path2``).
PATH_FUNCTIONS: Final = frozenset({"open", "openat", "unlink", "rmdir", "stat", "lstat", "access", "eaccess", "mkdir"})
OPEN_FUNCTIONS: Final = frozenset({"open", "openat"})
#: Functions that change a file's mode, owner or times by path (``path``,
#: ``dirfd``, ``no_follow``) ...
METADATA_PATH_FUNCTIONS: Final = frozenset({"chmod", "chown", "utimens"})
#: ... and through a descriptor of the slave's (``fd``).
METADATA_FD_FUNCTIONS: Final = frozenset({"fchmod", "fchown", "futimens"})
METADATA_FUNCTIONS: Final = METADATA_PATH_FUNCTIONS | METADATA_FD_FUNCTIONS
#: Functions that change the file system.
MUTATING_FUNCTIONS: Final = frozenset({"unlink", "rmdir", "mkdir", "rename"}) | METADATA_FUNCTIONS
UNIX_FUNCTIONS: Final = frozenset({"connect_unix", "bind_unix"})
INET_FUNCTIONS: Final = frozenset({"connect_inet", "bind_inet"})
INET6_FUNCTIONS: Final = frozenset({"connect_inet6", "bind_inet6"})
#: Functions whose request names something in the file system (a path condition applies).
NAMED_FUNCTIONS: Final = PATH_FUNCTIONS | {"rename"} | UNIX_FUNCTIONS | METADATA_PATH_FUNCTIONS
#: Functions whose reply may carry a descriptor that is (or replaces) the call's result.
FD_RESULT_FUNCTIONS: Final = OPEN_FUNCTIONS | UNIX_FUNCTIONS | INET_FUNCTIONS | INET6_FUNCTIONS

FileType: TypeAlias = Literal["regular", "directory", "symlink", "character_device", "block_device", "fifo", "socket"]
#: File types in wire-code order (code = index + 1).
FILE_TYPES: Final[tuple[FileType, ...]] = get_args(FileType)

GaiError: TypeAlias = Literal[
    "again", "badflags", "fail", "family", "memory", "noname", "service", "socktype", "system"
]
#: getaddrinfo's error names, in wire-code order (code = index + 1).
GAI_ERRORS: Final[tuple[GaiError, ...]] = get_args(GaiError)

#: ``socket.gaierror`` codes (what ``loop.getaddrinfo`` raises) by error name.
GAI_ERROR_NAMES: Final[dict[int, GaiError]] = {
    socket.EAI_AGAIN: "again",
    socket.EAI_BADFLAGS: "badflags",
    socket.EAI_FAIL: "fail",
    socket.EAI_FAMILY: "family",
    socket.EAI_MEMORY: "memory",
    socket.EAI_NONAME: "noname",
    socket.EAI_SERVICE: "service",
    socket.EAI_SOCKTYPE: "socktype",
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME): "noname",
    getattr(socket, "EAI_ADDRFAMILY", socket.EAI_FAMILY): "family",
}


# ---- the arbitrated functions and their argument vocabularies ----

Function: TypeAlias = Literal[
    "open",
    "openat",
    "unlink",
    "rename",
    "stat",
    "lstat",
    "access",
    "eaccess",
    "mkdir",
    "rmdir",
    "connect_unix",
    "connect_inet",
    "connect_inet6",
    "bind_unix",
    "bind_inet",
    "bind_inet6",
    "getaddrinfo",
    # Metadata changes (appended: wire codes 18-23).
    "chmod",
    "fchmod",
    "chown",
    "fchown",
    "utimens",
    "futimens",
]
#: The arbitrated functions, in protocol order (wire code = index + 1).
FUNCTIONS: Final[tuple[Function, ...]] = get_args(Function)

OpenFlag: TypeAlias = Literal[
    "read_only",
    "write_only",
    "read_write",
    "append",
    "create",
    "directory",
    "exclusive",
    "no_follow",
    "path",
    "sync_all_on_write",
    "temporary",
    "truncate",
    # Flags that grant nothing but change how the call behaves; a master
    # performing the call needs them to be exact.
    "non_blocking",
    "no_ctty",
    "close_on_exec",
    "sync_data_on_write",
    "no_atime",
    "direct",
    "async_signals",
    "large_file",
]
ResolveFlag: TypeAlias = Literal[
    "resolve_beneath",
    "resolve_in_root",
    "resolve_no_magiclinks",
    "resolve_no_symlinks",
    "resolve_no_xdev",
    "resolve_cached",
]
OpenatFlag: TypeAlias = Literal[OpenFlag, ResolveFlag]
OPEN_FLAGS: Final[tuple[OpenFlag, ...]] = get_args(OpenFlag)
OPENAT_FLAGS: Final[tuple[OpenatFlag, ...]] = OPEN_FLAGS + get_args(ResolveFlag)

AccessMode: TypeAlias = Literal["r", "w", "x"]
ACCESS_MODES: Final[tuple[AccessMode, ...]] = get_args(AccessMode)

#: The most supplementary groups a request carries (see the module docstring).
MAX_GROUPS: Final = 64

PATH_MAX_BYTES: Final = 4095
UNIX_PATH_MAX: Final = 108
NODE_MAX: Final = 1025
SERVICE_MAX: Final = 32
