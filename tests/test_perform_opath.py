"""``O_PATH`` opens under the seccomp transport: ``mv a b/c/`` and ``tar xpf`` as natively.

The kernel's ``SECCOMP_IOCTL_NOTIF_ADDFD`` refuses an ``O_PATH`` descriptor,
so the master installs a read-only descriptor of the very directory or
file instead, and refuses (``EOPNOTSUPP``) where no such descriptor exists
— a symlink, as glibc's ``fchmodat(AT_SYMLINK_NOFOLLOW)`` does after its
``O_PATH`` open, so ``tar`` restores modes as natively (but makes no
symlink: ``--seccomp`` refuses ``symlink(2)``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from perform_kernel import TRANSPORTS, run_as, run_native
from shimtools import PYTHON, needs_shim

pytestmark = [needs_shim]


def _tree(root: Path) -> list[tuple[str, int, str]]:
    """Every entry under ``root``: relative name, mode, and the content or link target."""
    found = []
    for here, directories, files in os.walk(root):
        for name in sorted(directories + files):
            path = Path(here) / name
            info = path.lstat()
            if path.is_symlink():
                detail = os.readlink(path)
            elif path.is_file():
                detail = path.read_text()
            else:
                detail = ""
            found.append((str(path.relative_to(root)), info.st_mode, detail))
    return sorted(found)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"no {name}")
    return found


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mv_into_a_directory_named_with_a_slash(transport: str, tmp_path: Path) -> None:
    results = {}
    for kind in ("native", transport):
        where = tmp_path / kind
        (where / "b" / "c").mkdir(parents=True)
        (where / "a").write_text("moved\n")
        argv = [_tool("mv"), "a", "b/c/"]
        ran = run_native(argv, cwd=where) if kind == "native" else await run_as(transport, argv, cwd=str(where))
        results[kind] = (ran.status, ran.err, _tree(where))
    assert results[transport] == results["native"]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    (source / "d" / "e").mkdir(parents=True)
    (source / "d" / "f").write_text("file\n")
    (source / "d" / "l").symlink_to("f")
    os.chmod(source / "d" / "f", 0o640)
    os.chmod(source / "d" / "e", 0o705)
    os.chmod(source / "d", 0o750)
    target = tmp_path / "a.tar"
    subprocess.run([_tool("tar"), "cf", str(target), "d"], cwd=source, check=True)
    return target


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tar_xpf_restores_modes_as_natively(transport: str, tmp_path: Path, archive: Path) -> None:
    """Every mode is restored as natively; under seccomp the archive's symlink is not made.

    ``--seccomp`` refuses ``symlink(2)`` with ``EPERM`` (no request decides
    it, docs/limits.md): there ``tar`` reports that member, exits 2, and
    every other entry is what the native run left, with its mode.
    """
    results = {}
    for kind in ("native", transport):
        where = tmp_path / kind
        where.mkdir()
        argv = [_tool("tar"), "xpf", str(archive)]
        ran = run_native(argv, cwd=where) if kind == "native" else await run_as(transport, argv, cwd=str(where))
        results[kind] = (ran.status, ran.err, _tree(where))
    if transport == "seccomp":
        status, err, tree = results[transport]
        native_status, _, native_tree = results["native"]
        assert native_status == 0
        assert status == 2, err
        refused = [line for line in err.splitlines() if "d/l" in line]
        assert len(refused) == 1 and os.strerror(errno.EPERM) in refused[0], err
        assert len(err.splitlines()) == 2, err  # the refusal and tar's closing "exiting with failure status"
        assert tree == [entry for entry in native_tree if entry[0] != "d/l"]
    else:
        assert results[transport] == results["native"]


OPATH_PROGRAM = """
import errno, os, sys
out = []
for name in ("dir", "file", "link"):
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW)
    except OSError as exc:
        out.append((name, errno.errorcode[exc.errno]))
        continue
    info = os.fstat(fd)
    out.append((name, info.st_ino, info.st_mode))
    if name == "dir":
        os.fchdir(fd)
        out.append(sorted(os.listdir(".")))
        os.chdir("..")
    os.close(fd)
print(out)
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_o_path_opens_name_the_very_objects(transport: str, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("x")
    (tmp_path / "file").write_text("y")
    (tmp_path / "link").symlink_to("file")
    argv = [PYTHON, "-c", OPATH_PROGRAM]
    native = run_native(argv, cwd=tmp_path)
    served = await run_as(transport, argv, cwd=str(tmp_path))
    assert served.status == native.status == 0, served.err
    expected = native.out
    if transport == "seccomp":
        # No descriptor of a symlink can be installed by seccomp (docs/limits.md).
        link = os.lstat(tmp_path / "link")
        expected = expected.replace(
            f"('link', {link.st_ino}, {link.st_mode})", f"('link', '{errno.errorcode[errno.EOPNOTSUPP]}')"
        )
    assert served.out == expected
