"""Read-only access to one directory tree; nothing is written anywhere.

The slave may read files beneath one root directory: the master opens each
one itself, beneath the root (no `..`, no symlink out of the tree, no
`/proc` magic links), and passes the descriptor back. Every call that would
write — open for writing, create, truncate, mkdir, rmdir, unlink, rename —
fails with `EROFS`, inside the root or not. Everything else is refused with
`EACCES`.

The root is `$LIBC_SERVICE_ROOT`, or the current directory.

Run it:

    LIBC_SERVICE_ROOT=/srv/data libc-service run --sandbox examples/readonly_tree.py -- cat /srv/data/report.txt
    libc-service docs examples/readonly_tree.py

With `--sandbox` the program may read nothing by itself (the sandbox has no
static rules): every file it gets comes from the master — `fopen`s and
`opendir`s (so `ls`) included. Opens glibc makes internally (NSS, locales,
the loader) are not arbitrated and are refused by the sandbox.
"""

from __future__ import annotations

import errno
import os

from libc_service import Errno, Router, Sandbox, Stat, WithFds, deny
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
from libc_service.safepath import open_beneath, stat_beneath

#: The tree the slave may read, resolved once (conditions compare real paths).
ROOT = os.path.realpath(os.environ.get("LIBC_SERVICE_ROOT") or os.getcwd())

router = Router(default=deny(errno.EACCES))
sandbox = Sandbox()


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
