"""A statically linked program is found before it runs, and run/trace use the seccomp transport for it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service.confinement.linkage import is_static, static_note, static_programs
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

SOURCE = r"""
#include <stdio.h>
int main(void)
{
	char line[256];
	FILE *file = fopen("/etc/hostname", "r");
	if (!file) { perror("/etc/hostname"); return 1; }
	if (fgets(line, sizeof line, file)) fputs(line, stdout);
	return 0;
}
"""


def _compile(tmp_path: Path, *flags: str) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler here")
    source = tmp_path / "hostname.c"
    source.write_text(SOURCE)
    program = tmp_path / ("static-hostname" if "-static" in flags else "dynamic-hostname")
    done = subprocess.run([compiler, *flags, "-o", str(program), str(source)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot link {' '.join(flags) or 'dynamically'} here: {done.stderr.decode()[-200:]}")
    return program


@pytest.fixture
def static_program(tmp_path: Path) -> Path:
    return _compile(tmp_path, "-static")


def _hostname() -> str:
    try:
        return Path("/etc/hostname").read_text()
    except OSError:
        pytest.skip("no readable /etc/hostname here")


def test_a_static_executable_is_static_and_a_dynamic_one_is_not(tmp_path: Path, static_program: Path) -> None:
    assert is_static(static_program) is True
    assert is_static(_compile(tmp_path, "-O0")) is False
    assert is_static(tmp_path) is None  # a directory
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert is_static(script) is None  # not an ELF file: nothing said


def test_the_command_line_shows_a_static_program_it_names(tmp_path: Path, static_program: Path) -> None:
    assert static_programs([str(static_program)]) == [static_program]
    assert static_programs(["sh", "-c", f"exec {static_program} --flag"], cwd=tmp_path) == [static_program]
    assert static_programs(["sh", "-c", "./static-hostname"], cwd=tmp_path) == [static_program]
    assert static_programs(["env", f"CC={static_program}"]) == [static_program]
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"#!{static_program}\n")
    wrapper.chmod(0o755)
    assert static_programs([str(wrapper)]) == [static_program]  # a script whose interpreter is static


def test_the_note_names_what_trace_and_learn_tell_the_user(tmp_path: Path, static_program: Path) -> None:
    assert static_note([str(static_program)]) == f"{static_program} is statically linked: the shim cannot see its calls"
    assert static_note(["sh", "-c", "true"]) is None or "sh" in str(static_note(["sh", "-c", "true"]))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_any_bytes_are_read_without_an_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("elf") / "program"
    path.write_bytes(b"\x7fELF" + data)
    assert is_static(path) in (True, False, None)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *argv], capture_output=True, text=True, timeout=60, check=False
    )


def _seccomp_unavailable() -> str | None:
    from libc_service.seccomp.availability import seccomp_unavailable

    return seccomp_unavailable()


@needs_shim
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_run_sandbox_says_a_program_is_static_and_decides_its_calls_by_seccomp(static_program: Path) -> None:
    done = _cli("run", "--sandbox", "--read", "/etc/hostname", "--", str(static_program))
    reason = _seccomp_unavailable()
    if reason is not None:  # no seccomp transport here: refused, naming the flag
        assert done.returncode == 2
        assert f"{static_program} is statically linked" in done.stderr and "--seccomp" in done.stderr
        return
    assert (
        f"libc-service: {static_program} is statically linked: the shim cannot see its calls; "
        "using the seccomp transport (as --seccomp does)"
    ) in done.stderr.splitlines()
    assert done.returncode == 0, done.stderr
    assert done.stdout == _hostname()


@needs_shim
def test_trace_seccomp_shows_the_calls_of_a_static_program(static_program: Path) -> None:
    if _seccomp_unavailable() is not None:
        pytest.skip(f"no seccomp transport here: {_seccomp_unavailable()}")
    done = _cli("trace", "--seccomp", "--", str(static_program))
    assert done.returncode == 0 and done.stdout == _hostname()
    assert '"/etc/hostname"' in done.stderr, done.stderr
