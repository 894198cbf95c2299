"""Metadata changes as policy: chmod, chown and utimensat arbitrated by the master.

Real programs under ``libc-service run --sandbox``: the sandbox's seccomp
filter refuses the metadata system calls to the slave itself, so a change
happens only where a handler performs it in the master.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from shimtools import needs_shim

from libc_service import Sandbox

_NO_SANDBOX = Sandbox.available()
pytestmark = [
    pytest.mark.slow,
    needs_shim,
    pytest.mark.skipif(_NO_SANDBOX is not None, reason=f"no Landlock sandbox here: {_NO_SANDBOX}"),
]
COMMAND = [sys.executable, "-m", "libc_service"]

#: Mode, owner and times change through the master beneath BUILD; chmod
#: elsewhere is refused by the policy, metadata calls it forwards by the
#: sandbox's seccomp filter.
POLICY = """
    import errno
    import os

    from libc_service import FORWARD, Errno, Router, Sandbox, perform
    from libc_service.policy.conditions import under

    BUILD = os.environ["TEST_BUILD"]
    OTHER = os.environ["TEST_OTHER"]

    router = Router(default=FORWARD)
    sandbox = Sandbox(allow_read=["/usr"], allow_exec=["/usr"], allow_write=[BUILD, OTHER])

    @router.on("chmod", "chown", "utimens", when=under(BUILD))
    def build_metadata(req):
        \"\"\"Files beneath the build directory change mode, owner and times.\"\"\"
        return perform(req, beneath=BUILD)

    @router.on("fchmod", "fchown", "futimens")
    def open_metadata(req):
        \"\"\"An open file changes only beneath the build directory.\"\"\"
        return perform(req, beneath=BUILD)

    @router.on("chmod", when=~under(OTHER))
    def no_chmod(req):
        \"\"\"Modes change nowhere else.\"\"\"
        raise Errno(errno.EPERM)
"""


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    build, other = tmp_path / "build", tmp_path / "other"
    build.mkdir()
    other.mkdir()
    policy = tmp_path / "policy.py"
    policy.write_text(textwrap.dedent(POLICY))
    return policy, build, other


def run(
    policy: Path, build: Path, other: Path, *argv: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C", TEST_BUILD=str(build), TEST_OTHER=str(other), TMPDIR=str(build))
    return subprocess.run(
        [*COMMAND, "run", "--sandbox", str(policy), "--", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_chmod_beneath_the_build_directory_is_done_by_the_master(dirs: tuple[Path, Path, Path]) -> None:
    policy, build, other = dirs
    target = build / "f"
    target.write_text("x")
    target.chmod(0o600)
    done = run(policy, build, other, "chmod", "755", "f", cwd=build)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_chmod_elsewhere_is_refused_and_reported(dirs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    policy, build, other = dirs
    target = tmp_path / "elsewhere"
    target.write_text("x")
    target.chmod(0o600)
    done = run(policy, build, other, "chmod", "755", str(target))
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert f"refused 1× chmod by no_chmod (EPERM): {target}" in done.stderr


def test_a_forwarded_chmod_is_refused_by_the_sandboxs_filter(dirs: tuple[Path, Path, Path]) -> None:
    policy, build, other = dirs
    target = other / "f"
    target.write_text("x")
    target.chmod(0o600)
    done = run(policy, build, other, "chmod", "755", str(target))
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_chown_beneath_the_build_directory_goes_through_the_master(dirs: tuple[Path, Path, Path]) -> None:
    policy, build, other = dirs
    target = build / "f"
    target.write_text("x")
    ids = f"{os.getuid()}:{os.getgid()}"
    done = run(policy, build, other, "chown", ids, str(target))
    assert done.returncode == 0, done.stderr
    forwarded = run(policy, build, other, "chown", ids, str(other))
    assert forwarded.returncode != 0
    assert "Operation not permitted" in forwarded.stderr


def test_touch_sets_times_through_the_master(dirs: tuple[Path, Path, Path]) -> None:
    policy, build, other = dirs
    target = build / "f"
    target.write_text("x")
    done = run(policy, build, other, "touch", "-d", "2001-02-03 04:05:06 UTC", str(target))
    assert done.returncode == 0, done.stderr
    assert target.stat().st_mtime == 981173106
    new = build / "new"
    created = run(policy, build, other, "touch", "-m", "-d", "@1000000000", str(new))
    assert created.returncode == 0, created.stderr
    assert new.stat().st_mtime == 1000000000


def test_a_sandboxed_compiler_links_an_executable_in_the_build_directory(dirs: tuple[Path, Path, Path]) -> None:
    policy, build, other = dirs
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc)")
    (build / "prog.c").write_text("int main(void) { return 7; }\n")
    done = run(policy, build, other, compiler, "-o", "prog", "prog.c", cwd=build)
    assert done.returncode == 0, done.stderr
    program = build / "prog"
    assert program.stat().st_mode & stat.S_IXUSR
    assert subprocess.run([str(program)], check=False).returncode == 7


def test_a_descriptor_outside_the_build_directory_is_not_changed(dirs: tuple[Path, Path, Path]) -> None:
    """touch opens the file, then futimens on its descriptor: performed beneath BUILD only."""
    policy, build, other = dirs
    target = other / "f"
    target.write_text("x")
    before = target.stat().st_mtime_ns
    done = run(policy, build, other, "touch", "-d", "@1000000000", str(target))
    assert done.returncode != 0
    assert "Invalid cross-device link" in done.stderr
    assert target.stat().st_mtime_ns == before


def test_trace_shows_metadata_changes_with_octal_modes(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    done = subprocess.run(
        [*COMMAND, "trace", "--", "chmod", "640", str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f'chmod("{target}", 0640) = 0 [forwarded]' in done.stderr
    touched = subprocess.run(
        [*COMMAND, "trace", "--", "touch", "-h", "-d", "@5", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert f'utimens("{target}", 5000000000, 5000000000, no_follow) = 0 [forwarded]' in touched.stderr
    assert target.stat().st_mtime == 5


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=60, check=False)


def test_learn_has_the_master_change_modes_where_the_run_did(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    (tmp_path / "elsewhere").write_text("x")
    out = tmp_path / "policy.py"
    done = command("learn", "-o", str(out), "--", "chmod", "640", str(tree / "f"))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o640
    namespace: dict[str, object] = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)  # noqa: S102 - the policy learn wrote
    assert namespace["METADATA_TREES"] == [str(tree)], out.read_text()

    again = command("run", "--sandbox", str(out), "--", "chmod", "600", str(tree / "f"))
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o600
    refused = command("run", "--sandbox", str(out), "--", "chmod", "600", str(tmp_path / "elsewhere"))
    assert refused.returncode != 0  # not where the learnt run changed modes
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) != 0o600


# ------------------------------------------------------------- perform() itself


def test_perform_beneath_a_root_refuses_a_symlink_out_of_it(tmp_path: Path) -> None:
    from libc_service import perform
    from libc_service.protocol.requests import ChmodRequest, UtimensRequest

    root, outside = tmp_path / "root", tmp_path / "secret"
    root.mkdir()
    outside.write_text("x")
    outside.chmod(0o600)
    (root / "link").symlink_to(outside)
    with pytest.raises(OSError) as refused:
        perform(ChmodRequest(path=str(root / "link"), mode=0o777), beneath=root)
    assert refused.value.errno == errno.EXDEV
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    # no_follow changes the link itself (utimensat's AT_SYMLINK_NOFOLLOW), never its target.
    before = outside.stat().st_mtime_ns
    assert perform(UtimensRequest(path=str(root / "link"), atime="omit", mtime=7, no_follow=True), beneath=root) == 0
    assert (root / "link").lstat().st_mtime_ns == 7
    assert outside.stat().st_mtime_ns == before


def test_perform_of_a_descriptor_change_uses_the_slaves_descriptor(tmp_path: Path) -> None:
    from libc_service import perform
    from libc_service.protocol.requests import FchmodRequest, FchownRequest

    target = tmp_path / "f"
    target.write_text("x")
    fd = os.open(target, os.O_RDONLY)
    try:
        assert perform(FchmodRequest(fd=fd, mode=0o4711)) == 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o4711
        assert perform(FchownRequest(fd=fd, owner=None, group=os.getgid())) == 0
        os.close(fd)
        fd = os.open(target, os.O_PATH)
        with pytest.raises(OSError) as refused:
            perform(FchmodRequest(fd=fd, mode=0o600))  # as fchmod on an O_PATH descriptor
        assert refused.value.errno == errno.EBADF
    finally:
        os.close(fd)
