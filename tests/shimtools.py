"""Helpers for end-to-end tests: real programs under the real shim.

``run_slave`` runs a program as a slave of a router and returns its exit
status and output; ``run_native`` runs it without the shim, for
comparison. ``c_program`` (a fixture) compiles a program of ``tests/c``
once per session, or skips the test when there is no C compiler.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from libc_service import Router, spawn
from libc_service.processes.spawn_launch import ShimNotFound, shim_path

__all__ = ["PYTHON", "C_DIR", "Ran", "c_program", "needs_shim", "run_native", "run_slave", "shim"]

#: A real Python binary (not a pyenv or wrapper script), for `python3 -c`.
PYTHON = os.path.realpath(sys.executable)
C_DIR = Path(__file__).with_name("c")


def _shim_available() -> bool:
    try:
        shim_path()
    except ShimNotFound:
        return False
    return True


needs_shim = pytest.mark.skipif(not _shim_available(), reason="the preload shim is not built")


def shim() -> Path:
    return shim_path()


@dataclass(frozen=True)
class Ran:
    """A finished program: exit status (128+N for signal N) and output."""

    status: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": os.environ.get("HOME", "/")}
    env.update(extra or {})
    return env


async def run_slave(
    argv: Sequence[str],
    router: Router,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 30,
) -> Ran:
    """Run ``argv`` as a slave of ``router``; collect its status and output."""
    async with spawn(
        argv,
        router,
        cwd=cwd,
        env=_env(env),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        status = await process.wait()
    return Ran(status, out or b"", err or b"")


def run_native(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> Ran:
    """Run ``argv`` without the shim, as ``run_slave`` would."""
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        env=_env(env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    status = 128 - done.returncode if done.returncode < 0 else done.returncode
    return Ran(status, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def c_program(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``c_program("stat_threads")``: tests/c/stat_threads.c, compiled once."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    built: dict[str, Path] = {}
    out_dir = tmp_path_factory.mktemp("cprograms")

    def build(name: str) -> Path:
        if compiler is None:
            pytest.skip("no C compiler (gcc or cc) to build tests/c programs")
        if name not in built:
            source = C_DIR / f"{name}.c"
            target = out_dir / name
            subprocess.run(
                [compiler, "-O2", "-Wall", "-pthread", "-o", str(target), str(source)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            built[name] = target
        return built[name]

    return build
