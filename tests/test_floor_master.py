"""bench/floor_master.c, the C floor the benchmarks compare the Python master to, speaks the current protocol.

A floor that no longer understands the shim measures nothing: the shim
falls back to the real libc and the "floor" rows show native figures.
Run with the real shim and real programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shimtools import needs_shim, shim

FLOOR = Path(__file__).resolve().parent.parent / "bench" / "floor_master.c"


@pytest.fixture(scope="module")
def floor_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc) to build bench/floor_master.c")
    target = tmp_path_factory.mktemp("floor") / "floor_master"
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(target), str(FLOOR)], check=True, timeout=60)
    return target


@needs_shim
def test_the_floor_answers_the_shim_s_stat(floor_master: Path) -> None:
    done = subprocess.run(
        [str(floor_master), "-s", str(shim()), "stat", "--", "stat", "-c", "%s", "/etc/hostname"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4242\n"  # the floor's fixed answer, not the file's size
    assert "bad registration" not in done.stderr and "malformed" not in done.stderr


@needs_shim
def test_the_floor_opens_for_the_program_and_forwards_the_rest(floor_master: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("through the floor\n")
    done = subprocess.run(
        [str(floor_master), "-vv", "-s", str(shim()), "answer", "--", "sh", "-c", "cat f; mkdir d"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "through the floor\n"
    assert (tmp_path / "d").is_dir()
    assert " open f" in done.stderr or " openat f" in done.stderr, done.stderr
    assert " mkdir d" in done.stderr, done.stderr
