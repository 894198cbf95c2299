"""Read-only access to one directory tree; nothing is written anywhere.

The slave may read files beneath one root directory: the master opens each
one itself, beneath the root (no `..`, no symlink out of the tree, no
`/proc` magic links), and passes the descriptor back. Every call that would
write — open for writing, create, truncate, mkdir, rmdir, unlink, rename —
fails with `EROFS`, inside the root or not. The programs of the `PATH`
directories can be found, read and run (so a shell works); everything else
is refused with `EACCES`.

The root is `$LIBC_SERVICE_ROOT`, or the current directory.

Run it (from a checkout, which is then the tree):

    libc-service run --sandbox examples/readonly_tree.py -- sh -c 'ls; head -n 3 README.md'
    libc-service run --sandbox examples/readonly_tree.py -- sh -c 'touch new-file || echo "touch failed with status $?"'
    LIBC_SERVICE_ROOT=$PWD/docs libc-service run --sandbox examples/readonly_tree.py -- sh -c 'head -n 1 docs/index.md; cat README.md || echo "README.md is outside the tree"'
    libc-service docs examples/readonly_tree.py

With `--sandbox` the program may read nothing by itself but the `PATH`
directories (the sandbox's static rules let it read and execute there, and
nothing more): every other file it gets comes from the master — `fopen`s and
`opendir`s (so `ls`) included. Opens glibc makes internally (NSS, locales,
the loader) are not arbitrated and are refused by the sandbox.
"""

from __future__ import annotations

import errno
import os

from libc_service import Errno, FORWARD, Router, Sandbox, Stat, WithFds, deny, open_beneath, stat_beneath
from libc_service.conditions import under, writing
from libc_service.requests import (
    AccessRequest,
    EaccessRequest,
    LstatRequest,
    OpenatRequest,
    OpenRequest,
    Request,
    StatRequest,
)

#: The tree the slave may read, resolved once (conditions compare real paths).
ROOT = os.path.realpath(os.environ.get("LIBC_SERVICE_ROOT") or os.getcwd())


def _program_directories(root: str) -> tuple[str, ...]:
    """The absolute directories of `$PATH` that exist, as the shell spells them.

    A shell builds a program's path from these strings (`/bin` + `/ls`), and
    `under()` compares those strings, so they are kept unresolved. A
    directory that is the root or contains it is left out: a static rule
    there would let the program read the whole tree, and what lies beside
    it, without asking the master.
    """
    found: dict[str, None] = {}
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not entry.startswith("/") or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if root == real or root.startswith(real.rstrip("/") + "/"):
            continue
        found[os.path.normpath(entry)] = None
    return tuple(found)


#: Where the program finds, reads and runs programs by itself (as read when the policy is loaded).
PROGRAMS = _program_directories(ROOT)

router = Router(default=deny(errno.EACCES))
#: The program may read and execute the `PATH` directories by itself, and nothing else.
sandbox = Sandbox(allow_exec=PROGRAMS)


@router.on("open", "openat", "mkdir", "rmdir", "unlink", "rename", when=writing())
def refuse_writes(request: Request) -> int:
    """Nothing is written, anywhere: the call fails with `EROFS`.

    Checked first, so a write beneath the root is refused too.
    """
    raise Errno(errno.EROFS)


@router.on("open", "openat", when=under(ROOT))
def open_beneath_root(request: OpenRequest | OpenatRequest) -> WithFds:
    """Files beneath the root are opened by the master, beneath the root, and passed back.

    The kernel resolves the path beneath the root (`openat2` with
    `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`): a `..` or a symlink that
    leads out of the tree fails with `EACCES`.
    """
    return WithFds(0, [open_beneath(ROOT, request)])


@router.on("stat", "lstat", when=under(ROOT))
def stat_beneath_root(request: StatRequest | LstatRequest) -> Stat:
    """`stat`/`lstat` beneath the root are answered from the object the master opened beneath it."""
    return stat_beneath(ROOT, request)


_AMODE_BITS = {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}


@router.on("access", "eaccess", when=under(ROOT))
def access_beneath_root(request: AccessRequest | EaccessRequest) -> int:
    """`access` beneath the root checks the object opened beneath it; asking for write gives `EROFS`."""
    if request.amode != "f" and "w" in request.amode:
        raise Errno(errno.EROFS)
    fd = open_beneath(ROOT, request, os.O_PATH | os.O_CLOEXEC, 0)
    try:
        mode = os.F_OK if request.amode == "f" else sum(_AMODE_BITS[bit] for bit in request.amode)
        if not os.access(f"/proc/self/fd/{fd}", mode, effective_ids=request.function == "eaccess"):
            raise Errno(errno.EACCES)
        return 0
    finally:
        os.close(fd)


if PROGRAMS:

    @router.on("open", "openat", "stat", "lstat", "access", "eaccess", when=under(*PROGRAMS))
    def programs_on_path(request: Request) -> object:
        """Looking up and reading the programs of the `PATH` directories: the program does it itself.

        So a shell finds `ls` and `cat`. Writes there were refused first;
        under `--sandbox` the program can only read and execute these
        directories (the sandbox's static rules), and asks nothing for them.
        """
        return FORWARD
