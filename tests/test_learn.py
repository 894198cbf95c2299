"""``libc-service learn``: a starting policy from one observed run, which ``run --sandbox`` accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libc_service.learn import Learned, narrowest, render_policy
from libc_service.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

SCRIPT = "cat data/a.txt > out/out.txt && cat data/b.txt data/c.txt >> out/out.txt && ls data && cat out/out.txt"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


def test_busy_directories_merge_and_shallow_ones_do_not() -> None:
    used = [
        "/opt/app/lib/a.py",
        "/opt/app/lib/b.py",
        "/opt/app/lib/c.py",
        "/etc/passwd",
        "/etc/group",
        "/etc/hosts",
        "/opt/app/lib/sub/d.py",
    ]
    assert narrowest(used) == ["/etc/group", "/etc/hosts", "/etc/passwd", "/opt/app/lib"]


def test_the_written_policy_is_a_module_with_the_learnt_lists(tmp_path: Path) -> None:
    learned = Learned(read={"/opt/x/a"}, written={str(tmp_path / "out.txt")}, executed={"/usr/bin/cat"})
    namespace: dict[str, object] = {}
    exec(compile(render_policy(learned, ["cat", "a b"]), "policy.py", "exec"), namespace)  # noqa: S102
    sandbox = namespace["sandbox"]
    assert sandbox.allow_read == ("/opt/x/a",)  # type: ignore[attr-defined]
    assert sandbox.allow_write == (str(tmp_path),)  # type: ignore[attr-defined]
    assert sandbox.allow_exec == ("/usr/bin/cat",)  # type: ignore[attr-defined]
    assert sandbox.network is False  # type: ignore[attr-defined]


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_a_learnt_policy_lets_the_same_run_succeed_under_the_sandbox_and_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    for name in "abc":
        (tmp_path / "data" / f"{name}.txt").write_text(f"{name}\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    learnt = cli("learn", "-o", "policy.py", "--", "sh", "-c", SCRIPT, cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    assert learnt.stdout == "a.txt\nb.txt\nc.txt\na\nb\nc\n"
    assert "wrote policy.py" in learnt.stderr
    (tmp_path / "out" / "out.txt").unlink()

    again = cli("run", "--sandbox", "policy.py", "--", "sh", "-c", SCRIPT, cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, learnt.stdout), again.stderr
    outside = cli("run", "--sandbox", "policy.py", "--", "cat", "secret.txt", cwd=tmp_path)
    assert outside.returncode != 0  # never read while learning: not granted


def _learn_then_run(
    tmp_path: Path, argv: list[str], reset: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    learnt = cli("learn", "-o", "policy.py", "--", *argv, cwd=tmp_path)
    assert learnt.returncode == 0, learnt.stderr
    if reset:
        subprocess.run(reset, cwd=tmp_path, check=True)
    again = cli("run", "--sandbox", "policy.py", "--", *argv, cwd=tmp_path)
    return learnt, again


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
@pytest.mark.skipif(not all(map(Path("/usr/bin").joinpath, ("make", "cc"))), reason="no make or cc")
def test_make_of_a_small_c_project_runs_identically_under_its_learnt_policy(tmp_path: Path) -> None:
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\nint add(int, int);\nint main(void) { printf("%d\\n", add(2, 3)); return 0; }\n'
    )
    (tmp_path / "add.c").write_text("int add(int a, int b) { return a + b; }\n")
    (tmp_path / "Makefile").write_text("prog: main.o add.o\n\tcc -o prog main.o add.o\n%.o: %.c\n\tcc -c -o $@ $<\n")
    learnt, again = _learn_then_run(tmp_path, ["make"], reset=["rm", "-f", "prog", "main.o", "add.o"])
    assert (again.returncode, again.stdout) == (0, learnt.stdout), again.stderr
    # The linker's chmod of its output went through the master: the program is executable.
    assert subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, check=True).stdout == "5\n"
    assert "METADATA_TREES" in (tmp_path / "policy.py").read_text()


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
@pytest.mark.skipif(not Path("/usr/bin/git").exists(), reason="no git")
def test_git_runs_identically_under_its_learnt_policy(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=Learner", "-c", "user.email=l@example.test", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    (tmp_path / "a.txt").write_text("changed\n")
    command = ["git", "-c", "core.pager=cat", "log", "--format=%an %s"]
    learnt, again = _learn_then_run(tmp_path, command)
    assert (again.returncode, again.stdout) == (0, learnt.stdout) == (0, "Learner first\n"), again.stderr
    status_learnt, status_again = _learn_then_run(tmp_path, ["git", "status", "--porcelain"])
    assert (status_again.returncode, status_again.stdout) == (0, status_learnt.stdout), status_again.stderr
    assert status_again.stdout == " M a.txt\n?? policy.py\n"  # loading the policy left no __pycache__


def test_a_directory_the_run_created_and_removed_is_named_by_where_it_was_made(tmp_path: Path) -> None:
    learned = Learned()
    learned.changed.add(str(tmp_path / "pip-target-x8k2" / "lib" / "INSTALLER"))
    learned.written.add(str(tmp_path / "cc1234.d" / "main.o"))
    assert learned.metadata_trees() == [str(tmp_path)]
    assert learned.sandbox_arguments()["allow_write"] == [str(tmp_path)]
    (tmp_path / "kept").mkdir()
    learned.changed = {str(tmp_path / "kept" / "prog")}
    assert learned.metadata_trees() == [str(tmp_path / "kept")]
