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
    return subprocess.run([sys.executable, "-m", "libc_service", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def test_busy_directories_merge_and_shallow_ones_do_not() -> None:
    used = ["/opt/app/lib/a.py", "/opt/app/lib/b.py", "/opt/app/lib/c.py", "/etc/passwd", "/etc/group",
            "/etc/hosts", "/opt/app/lib/sub/d.py"]
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
