"""``libc-service trace`` answers questions: which program, relative to what, which mode, when."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shimtools import needs_shim

pytestmark = needs_shim


def trace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "libc_service", "trace", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def test_lines_name_the_program_the_directory_and_the_mode_in_octal(tmp_path: Path) -> None:
    done = trace("-o", "log", "--", "sh", "-c", "mkdir -m 750 d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "log").read_text().splitlines()
    programs = [line for line in log if "execve(" in line]
    assert any('execve("/usr/bin/mkdir", ["mkdir", "-m", "750", "d"])' in line for line in programs)
    mkdir = next(line for line in log if " mkdir(" in line)
    assert f'mkdir("d" (in "{tmp_path}"), 0750) = forwarded' in mkdir


def mkdir_keys(records: list[dict[str, object]]) -> set[str]:
    return set(next(record for record in records if record["function"] == "mkdir").keys()) - {"directories"}


def test_json_lines_carry_a_timestamp_the_directory_and_an_execve_record(tmp_path: Path) -> None:
    done = trace("--json", "-o", "log", "--", "sh", "-c", "mkdir d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    execs = [record for record in records if record["function"] == "execve"]
    assert execs[0].keys() == mkdir_keys(records)
    assert execs[0]["arguments"]["path"] == "/usr/bin/dash" or execs[0]["arguments"]["argv"][0] == "sh"
    mkdir = next(record for record in records if record["function"] == "mkdir")
    assert mkdir["directories"] == {"path": str(tmp_path)}
    assert isinstance(mkdir["time"], float) and mkdir["time"] >= execs[0]["time"]
    assert mkdir["route"] == "default"
