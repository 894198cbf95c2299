"""Run the conformance table natively and through a perform-everything master.

:func:`run_table` prepares one directory per case and identity (the case's
``setup``, natively, as the test's user), runs ``slave_main.py`` over the
whole table in one configuration and collects, per case and identity, what
the case recorded, its exit status and the tree its directory holds after.
The configurations run one after the other in the same place, so absolute
paths are the same in each.

The policy of the master runs is the one the framework promises is
invisible: every handler is ``return perform(request)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.casebook import CASES, identity_ids

from libc_service import FORWARD, Router, perform
from libc_service.protocol.catalogue import FUNCTIONS

HERE = Path(__file__).resolve().parent
SLAVE_MAIN = HERE / "slave_main.py"
#: A real interpreter (not a wrapper script), started without site-packages: the cases use the standard library only.
PYTHON = os.path.realpath(sys.executable)
TRANSPORTS = ("shim", "seccomp")
#: How long one configuration may take for the whole table.
TABLE_TIMEOUT = 240


def perform_everything() -> Router:
    """A router whose every handler is ``return perform(request)``."""
    router = Router(default=FORWARD)

    @router.on(*FUNCTIONS)
    def performed(request: Any) -> Any:
        return perform(request)

    return router


def identities_for(names: tuple[str, ...]) -> list[str]:
    """The identities of ``names`` this test process can take on: ``self`` only, when not root."""
    if os.geteuid() != 0:
        return ["self"] if "self" in names else []
    return [name for name in names if name != "self"]


def runs() -> list[tuple[str, str]]:
    """Every ``(case, identity)`` of the table this process can run."""
    return [(name, identity) for name, entry in CASES.items() for identity in identities_for(entry.identities)]


@dataclass
class Outcome:
    """One case as one identity in one configuration."""

    status: int
    seen: list[Any]
    tree: dict[str, Any]


def _prepare(base: Path, items: list[tuple[str, str]]) -> None:
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)  # the umask must not keep nobody out
    for name, identity in items:
        directory = base / name / identity
        directory.mkdir(parents=True)
        os.chmod(directory.parent, 0o755)
        setup = CASES[name].setup
        if setup is not None:
            setup(directory, identity)
        uid, gid = identity_ids(identity)
        os.chown(directory, uid, gid)


def snapshot(directory: Path) -> dict[str, Any]:
    """What a case left behind: each entry's type, permissions, owner, size, contents and link target.

    Walked through directory descriptors (``os.fwalk``): a case may leave a
    tree deeper than ``PATH_MAX``.
    """
    tree: dict[str, Any] = {}
    if not directory.exists():
        return tree
    for root, dirs, files, root_fd in os.fwalk(directory):
        for entry in sorted(dirs + files):
            info = os.lstat(entry, dir_fd=root_fd)
            item: dict[str, Any] = {
                "type": stat.S_IFMT(info.st_mode),
                "mode": oct(stat.S_IMODE(info.st_mode)),
                "owner": (info.st_uid, info.st_gid),
            }
            if stat.S_ISLNK(info.st_mode):
                item["target"] = os.readlink(entry, dir_fd=root_fd)
            elif stat.S_ISREG(info.st_mode):
                item["size"] = info.st_size
                if info.st_size <= 4096:
                    fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=root_fd)
                    try:
                        item["data"] = os.read(fd, 4096).decode("latin-1")
                    finally:
                        os.close(fd)
            tree[os.path.relpath(os.path.join(root, entry), directory)] = item
    return tree


def _argv(base: Path, items: list[tuple[str, str]]) -> list[str]:
    return [PYTHON, "-S", "-E", str(SLAVE_MAIN), str(base), *(f"{name}:{identity}" for name, identity in items)]


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/"}


async def _through_master(argv: list[str], transport: str) -> tuple[int, bytes, bytes]:
    from libc_service import spawn

    async with spawn(
        argv,
        perform_everything(),
        env=_env(),
        seccomp=transport == "seccomp",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), TABLE_TIMEOUT)
        status = await process.wait()
    return status, out or b"", err or b""


def run_table(base: Path, config: str, items: list[tuple[str, str]]) -> dict[tuple[str, str], Outcome]:
    """Run ``items`` in ``config`` (``native``, ``shim`` or ``seccomp``) under ``base``."""
    _prepare(base, items)
    argv = _argv(base, items)
    if config == "native":
        done = subprocess.run(
            argv, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=TABLE_TIMEOUT, check=False
        )
        status, out, err = done.returncode, done.stdout, done.stderr
    else:
        status, out, err = asyncio.run(_through_master(argv, config))
    if status != 0:
        raise RuntimeError(f"{config}: the conformance program failed ({status}):\n{err.decode(errors='replace')}")
    reported = json.loads(out)
    outcomes: dict[tuple[str, str], Outcome] = {}
    for name, identity in items:
        result = reported[f"{name}:{identity}"]
        outcomes[name, identity] = Outcome(result["status"], result["seen"], snapshot(base / name / identity))
    shutil.rmtree(base)
    return outcomes


def differences(native: Outcome, other: Outcome) -> list[str]:
    """What ``other`` shows that ``native`` does not, one line per difference."""
    lines: list[str] = []
    if native.status != other.status:
        lines.append(f"exit status: native {native.status}, here {other.status}")
    for index in range(max(len(native.seen), len(other.seen))):
        mine = native.seen[index] if index < len(native.seen) else None
        theirs = other.seen[index] if index < len(other.seen) else None
        if mine != theirs:
            lines.append(f"call {index}: native {mine}, here {theirs}")
    for path in sorted(set(native.tree) | set(other.tree)):
        if native.tree.get(path) != other.tree.get(path):
            lines.append(f"tree {path}: native {native.tree.get(path)}, here {other.tree.get(path)}")
    return lines
