"""Under ``--sandbox``, what the policy refused is said once per rule when the run ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from libc_service.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

POLICY = textwrap.dedent('''
    import errno
    from libc_service import FORWARD, Errno, Router, Sandbox
    from libc_service.conditions import writing

    router = Router(default=FORWARD)
    sandbox = Sandbox(allow_read=["/tmp"])

    @router.on("open", "openat", when=writing())
    def read_only(req):
        """Nothing is written."""
        raise Errno(errno.EROFS)
''')


@needs_shim
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_each_refusing_rule_is_reported_once_with_its_count_and_tree(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    work = tmp_path / "work"
    work.mkdir()
    script = f"echo a > {work}/x; echo b > {work}/y; echo c > {work}/sub-z"
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", "--sandbox", str(policy), "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = [line for line in done.stderr.splitlines() if line.startswith("libc-service: refused")]
    assert report == [f"libc-service: refused 3× open beneath {work} by read_only (EROFS)"]


def test_without_the_sandbox_nothing_is_reported(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", str(policy), "--", "sh", "-c", f"echo a > {tmp_path}/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "refused" not in done.stderr.replace("Read-only", "")


@needs_shim
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_a_metadata_change_the_sandbox_refused_names_the_setting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(
        "from libc_service import FORWARD, Router, Sandbox\n"
        f"sandbox = Sandbox(allow_write=[{str(tmp_path)!r}])\n"
        "router = Router(default=FORWARD)\n"
    )
    target = tmp_path / "prog"
    target.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", "--sandbox", str(policy), "--", "chmod", "755", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"libc-service: refused 1× chmod beneath {tmp_path} by the sandbox, metadata=False (EPERM)" in (
        done.stderr.splitlines()
    ), done.stderr
