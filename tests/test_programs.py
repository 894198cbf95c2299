"""Unmodified programs under a forwarding policy behave exactly as without the shim.

Each program runs twice, natively and as a slave of a router that forwards
every call (and records which functions it saw, so the comparison is not
vacuous): the exit status, stdout and stderr must be identical, and so must
the files a mutating command leaves behind.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from libc_service import FORWARD, Decision, Router
from shimtools import PYTHON, needs_shim, run_native, run_slave

pytestmark = [needs_shim]


class Recorded:
    """A forwarding router and the functions its slaves called."""

    def __init__(self) -> None:
        self.router = Router(default=FORWARD)
        self.calls: collections.Counter[str] = collections.Counter()
        self.decisions: list[Decision] = []
        self.router.observe(self._seen)

    def _seen(self, decision: Decision) -> None:
        self.calls[decision.request.function] += 1
        self.decisions.append(decision)
        assert decision.outcome == "forward"


def tree(root: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Everything under root: kind, content of files, permission bits."""
    found: dict[str, tuple[str, bytes | None, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "dir" if path.is_dir() else "link" if path.is_symlink() else "file"
        found[str(path.relative_to(root))] = (
            kind,
            path.read_bytes() if kind == "file" else None,
            info.st_mode & 0o7777,
        )
    return found


def populate(root: Path) -> None:
    root.mkdir(exist_ok=True)
    (root / "hello.txt").write_text("hello, world\n")
    (root / "numbers").write_text("".join(f"{n}\n" for n in range(100)))
    (root / "sub").mkdir()
    (root / "sub" / "inner").write_text("inner\n")
    (root / "empty").mkdir()
    (root / "link").symlink_to("hello.txt")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    populate(root)
    return root


# ------------------------------------------------------------- read-only

READ_ONLY = {
    "cat": (["cat", "hello.txt", "sub/inner"], "open"),
    "cat-missing": (["cat", "hello.txt", "missing"], "open"),
    "ls": (["ls", "-la", "--time-style=+%s", ".", "sub"], "lstat"),
    "ls-missing": (["ls", "missing"], "lstat"),
    "ls-directories": (["ls", "sub", "empty"], "open"),  # opendir asks as open(directory)
    "sort": (["sort", "-r", "numbers", "hello.txt"], "open"),  # fopen
    "sort-missing": (["sort", "missing"], "eaccess"),  # checked before any fopen
    "stat": (["stat", "hello.txt", "link", "sub"], "lstat"),
    "stat-dereference": (["stat", "-L", "-c", "%n %s %F %a", "link"], "stat"),
    "stat-missing": (["stat", "missing"], "lstat"),
    "python3": (
        [
            PYTHON,
            "-c",
            "import os; print(open('hello.txt').read(), sorted(os.listdir('.')), "
            "os.stat('sub/inner').st_size, os.path.exists('missing'))",
        ],
        "open",
    ),
    "python3-error": ([PYTHON, "-c", "open('missing')"], "open"),
}


@pytest.mark.parametrize("name", READ_ONLY)
async def test_read_only_program_behaves_as_natively(name: str, workdir: Path) -> None:
    argv, expected_function = READ_ONLY[name]
    run_native(argv, cwd=workdir)  # reading a fresh file or symlink moves its atime, once (relatime)
    native = run_native(argv, cwd=workdir)
    recorded = Recorded()
    slave = await run_slave(argv, recorded.router, cwd=workdir)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert recorded.calls[expected_function] > 0, recorded.calls


@pytest.mark.slow
async def test_getent_ahosts_localhost_behaves_as_natively() -> None:
    argv = ["getent", "ahosts", "localhost"]
    native = run_native(argv)
    recorded = Recorded()
    slave = await run_slave(argv, recorded.router)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert native.status == 0 and native.out
    assert recorded.calls["getaddrinfo"] == 1


# -------------------------------------------------------------- mutating

Setup = Callable[[Path], None]

MUTATING: dict[str, tuple[list[str], str | None]] = {
    "mkdir": (["mkdir", "new"], "mkdir"),
    "mkdir-mode": (["mkdir", "-m", "0700", "private"], "mkdir"),
    "mkdir-p": (["mkdir", "-p", "a/b/c"], "mkdir"),
    "mkdir-exists": (["mkdir", "sub"], "mkdir"),
    "touch": (["touch", "created"], "open"),
    "touch-existing": (["touch", "-d", "@0", "hello.txt"], "open"),
    "mv": (["mv", "hello.txt", "renamed.txt"], "rename"),
    "mv-over": (["mv", "hello.txt", "numbers"], "rename"),
    "mv-no-clobber": (["mv", "-n", "hello.txt", "numbers"], "rename"),
    "mv-into-dir": (["mv", "numbers", "sub/"], "rename"),
    "mv-missing": (["mv", "missing", "elsewhere"], "rename"),
    "rm": (["rm", "hello.txt", "link"], "unlink"),
    "rm-missing": (["rm", "missing"], "unlink"),
    "rm-r": (["rm", "-r", "sub"], "unlink"),
    "rmdir": (["rmdir", "empty"], "rmdir"),
    "rmdir-not-empty": (["rmdir", "sub"], "rmdir"),
    "python3-mutations": (
        [
            PYTHON,
            "-c",
            "import os; os.mkdir('p', 0o750); os.rename('numbers', 'p/n'); "
            "os.unlink('link'); os.rmdir('empty'); open('p/w', 'w').write('w')",
        ],
        "rename",
    ),
}


@pytest.mark.parametrize("name", MUTATING)
async def test_mutating_program_behaves_as_natively(name: str, tmp_path: Path) -> None:
    argv, expected_function = MUTATING[name]
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    populate(native_dir)
    populate(slave_dir)
    native = run_native(argv, cwd=native_dir)
    recorded = Recorded()
    slave = await run_slave(argv, recorded.router, cwd=slave_dir)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert tree(slave_dir) == tree(native_dir)
    if expected_function is not None:
        assert recorded.calls[expected_function] > 0, recorded.calls


# ------------------------------------------------------------ pipelines

PIPELINES = {
    "pipe": "cat numbers | wc -l",
    "redirect": "cat hello.txt > out.txt && cat out.txt sub/inner | sort -r",
    "loop": "for f in hello.txt sub/inner missing; do test -e $f && cat $f || echo no $f; done",
    "subshell": "(cd sub && ls && cat inner) | tr a-z A-Z; ls -1 | head -n 3",
    "status": "cat missing 2>/dev/null; echo status=$?; exit 4",
}


@pytest.mark.parametrize("name", PIPELINES)
async def test_shell_pipeline_behaves_as_natively(name: str, tmp_path: Path) -> None:
    argv = ["sh", "-c", PIPELINES[name]]
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    populate(native_dir)
    populate(slave_dir)
    native = run_native(argv, cwd=native_dir)
    recorded = Recorded()
    slave = await run_slave(argv, recorded.router, cwd=slave_dir)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert tree(slave_dir) == tree(native_dir)
    assert len({d.request.pid for d in recorded.decisions}) >= 2, "the pipeline's processes each had a session"


def test_programs_used_here_exist() -> None:
    for program in ("cat", "ls", "stat", "mkdir", "touch", "mv", "rm", "rmdir", "getent", "sh", "wc", "sort"):
        assert shutil.which(program), program
    assert os.access(PYTHON, os.X_OK)


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar")
async def test_creat_is_asked_as_the_open_it_is(tmp_path: Path) -> None:
    """tar creates its archive with creat(): the router sees it as open(create|truncate|write_only)."""
    populate(tmp_path)
    recorded = Recorded()
    slave = await run_slave(["tar", "cf", "archive.tar", "sub"], recorded.router, cwd=tmp_path)
    assert slave.status == 0, slave.err
    created = [
        d
        for d in recorded.decisions
        if d.request.function == "open" and str(getattr(d.request, "path")) == "archive.tar"
    ]
    assert created, [str(getattr(d.request, "path", "")) for d in recorded.decisions]
    assert {"create", "truncate", "write_only"} <= set(getattr(created[0].request, "flags"))
    assert getattr(created[0].request, "mode") == 0o666
    assert (tmp_path / "archive.tar").stat().st_size > 0
