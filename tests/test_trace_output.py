"""``libc-service trace`` answers questions: which program, relative to what, which mode, when."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from libc_service.seccomp.availability import seccomp_unavailable
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture

pytestmark = needs_shim

#: A forwarded call's duration, as its shim measured it, at the end of its line.
_TOOK = r" <[0-9]+\.[0-9]µs>$"


def trace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", "trace", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    )


def test_lines_name_the_program_the_directory_and_the_mode_in_octal(tmp_path: Path) -> None:
    done = trace("-o", "log", "--", "sh", "-c", "mkdir -m 750 d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "log").read_text().splitlines()
    programs = [line for line in log if "execve(" in line]
    assert any('execve("/usr/bin/mkdir", ["mkdir", "-m", "750", "d"])' in line for line in programs)
    mkdir = next(line for line in log if " mkdir(" in line)
    assert f'mkdir("d" (in "{tmp_path}"), 0750) = 0 [forwarded]' in mkdir


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


def test_forwarded_calls_show_what_they_returned_as_strace_does(tmp_path: Path) -> None:
    """Open, stat and connect of an existing and a missing object, relative (the master forwards them) and
    absolute (the shim's rule table does): each line carries the program's own result."""
    (tmp_path / "f").write_text("x")
    program = textwrap.dedent(f"""
        import os, socket
        fd = os.open("f", os.O_RDONLY)
        for path in ("missing", "{tmp_path}/missing"):
            try:
                os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                pass
        os.stat("{tmp_path}/f")
        server = socket.socket(socket.AF_UNIX)
        server.bind("sock")
        server.listen()
        client = socket.socket(socket.AF_UNIX)
        client.connect("sock")
        try:
            socket.socket(socket.AF_UNIX).connect("nosock")
        except FileNotFoundError:
            pass
        print(fd)
    """)
    done = trace("-o", "log", "--", sys.executable, "-c", program, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fd = int(done.stdout)
    log = (tmp_path / "log").read_text()
    enoent = "= -1 ENOENT (No such file or directory) [forwarded]"
    where = f'(in "{tmp_path}")'
    assert f'open("f" {where}, close_on_exec|read_only) = {fd} [forwarded]' in log, log
    assert f'open("missing" {where}, close_on_exec|read_only) {enoent}' in log, log
    assert f'open("{tmp_path}/missing", close_on_exec|read_only) {enoent}' in log, log
    assert f'stat("{tmp_path}/f") = 0 [forwarded]' in log, log
    assert "connect_unix(" in log and f'"sock" {where}) = 0 [forwarded]' in log, log
    assert f'"nosock" {where}) {enoent}' in log, log


def test_each_thread_gets_the_results_of_its_own_calls(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    program = textwrap.dedent("""
        import os, threading
        def work():
            for _ in range(50):
                os.close(os.open("f", os.O_RDONLY))
                try:
                    os.stat("missing")
                except FileNotFoundError:
                    pass
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    """)
    done = trace("--json", "-o", "log", "--", sys.executable, "-c", program, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    mine = [r for r in records if r["arguments"].get("path") in ("f", "missing") and r["tid"] != r["pid"]]
    opens = [r for r in mine if r["function"] == "open"]
    stats = [r for r in mine if r["function"] == "stat"]
    assert len(opens) == len(stats) == 200
    assert len({r["tid"] for r in mine}) == 4
    assert all(r["decision"] == "forward" and r["errno"] == 0 and r["result"] >= 3 for r in opens)
    assert all((r["result"], r["errno"], r["errno_name"]) == (-1, 2, "ENOENT") for r in stats)


def test_getaddrinfo_shows_its_return_code(tmp_path: Path) -> None:
    program = "import socket; socket.getaddrinfo('localhost', 80, type=socket.SOCK_STREAM)"
    done = trace("-o", "log", "--", sys.executable, "-c", program, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in (tmp_path / "log").read_text().splitlines() if " getaddrinfo(" in line]
    assert '"localhost"' in line and "= 0 [forwarded]" in line, line


def test_relative_paths_show_their_directory_from_the_shims_reports(tmp_path: Path) -> None:
    """A relative open and stat in a subdirectory (by its descriptor and as the working directory) and
    a relative rename across two directory descriptors: the shim decides and reports them, naming
    the directories itself."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "sub" / "f").write_text("x")
    program = textwrap.dedent("""
        import os
        sub = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
        other = os.open("other", os.O_RDONLY | os.O_DIRECTORY)
        os.close(os.open("f", os.O_RDONLY, dir_fd=sub))
        os.stat("f", dir_fd=sub)
        os.rename("f", "g", src_dir_fd=sub, dst_dir_fd=other)
        os.chdir("sub")
        os.stat("missing")
    """)
    done = trace("-o", "log", "--", sys.executable, "-c", program, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the last stat fails
    log = (tmp_path / "log").read_text()
    sub, other = f'(in "{tmp_path / "sub"}")', f'(in "{tmp_path / "other"}")'
    assert f'openat("f" {sub}, close_on_exec|read_only) = ' in log, log
    assert f'stat("f" {sub}) = 0 [forwarded]' in log, log
    assert f'rename("f" {sub}, "g" {other}) = 0 [forwarded]' in log, log
    assert f'stat("missing" {sub}) = -1 ENOENT' in log, log
    assert f'open("sub" (in "{tmp_path}"), ' in log, log


def test_the_program_of_a_process_that_exited_at_once_is_named(tmp_path: Path) -> None:
    """Short-lived processes whose calls the shim decided: their first report names the program."""
    done = trace("-o", "log", "--", "sh", "-c", "cat /dev/null; cat /dev/null", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    programs = [line for line in (tmp_path / "log").read_text().splitlines() if "execve(" in line]
    assert sum('execve("/usr/bin/cat", ["cat", "/dev/null"])' in line for line in programs) == 2, programs


def test_a_slave_s_non_utf8_bytes_are_escaped_not_a_crash(tmp_path: Path) -> None:
    """Paths and arguments are the slave's bytes: any of them is written, escaped, and nothing fails."""
    script = "cat \"$(printf 'missing-\\376')\" \"$(printf '/nowhere/\\377')\"; echo \"$(printf '\\033]0;x\\007')\""
    for json_lines in (False, True):
        done = trace("-o", "log", *(["--json"] if json_lines else []), "--", "sh", "-c", script, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "failed" not in done.stderr.replace("No such", ""), done.stderr
        log = (tmp_path / "log").read_text(encoding="utf-8")  # strict: no lone surrogate reached the file
        assert "\\udcfe" in log and "\\udcff" in log
        assert "\x1b" not in log and "\x07" not in log  # a terminal escape stays text
        if json_lines:
            for line in log.splitlines():
                json.loads(line)


def test_e_selects_functions_as_strace_does(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for selection in (["-e", "open"], ["-e", "trace=open,lstat"], ["-e", "open", "-e", "lstat"]):
        done = trace("-o", "log", *selection, "--", "sh", "-c", "cat f; ls missing", cwd=tmp_path)
        assert done.returncode == 2, done.stderr  # ls's status
        lines = (tmp_path / "log").read_text().splitlines()
        functions = {line.split("] ", 1)[1].split("(", 1)[0] for line in lines}
        assert functions == ({"open"} if selection == ["-e", "open"] else {"open", "lstat"}), lines
        assert f'open("f" (in "{tmp_path}"), read_only) = 3 [forwarded]' in "\n".join(lines)


def test_an_unknown_function_is_a_usage_error_that_lists_the_functions(tmp_path: Path) -> None:
    done = trace("-e", "open,opne", "--", "true", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "unknown function(s) for -e: opne (choose from open, openat, " in done.stderr, done.stderr
    assert "getaddrinfo" in done.stderr and "execve" in done.stderr


def test_failed_shows_only_the_calls_that_failed(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    done = trace("-o", "log", "--failed", "--", "sh", "-c", "cat f missing", cwd=tmp_path)
    assert done.returncode == 1
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines, done.stderr
    assert all(" = -1 E" in line for line in lines), lines  # no program line, no call that succeeded
    expected = f'open("missing" (in "{tmp_path}"), read_only) = -1 ENOENT (No such file or directory) [forwarded]'
    assert any(re.search(re.escape(expected) + _TOOK, line) for line in lines), lines


def test_an_open_shows_its_mode_only_when_it_creates_and_a_forwarded_call_its_duration(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    done = trace("-o", "log", "-e", "open", "--", "sh", "-c", "cat f > g", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "log").read_text().splitlines()
    where = f'(in "{tmp_path}")'
    created = f'open("g" {where}, create|truncate|write_only, 0666) = 3 [forwarded]'
    assert any(re.search(re.escape(created) + _TOOK, line) for line in lines), lines
    assert any(re.search(re.escape(f'open("f" {where}, read_only) = 3 [forwarded]') + _TOOK, line) for line in lines)
    assert not any("NULL" in line or "<0.0µs>" in line for line in lines), lines


def test_c_counts_the_calls_the_program_makes(tmp_path: Path, c_program: Any) -> None:
    """bench_calls N PATH stats PATH N times and opens it N times: the table says N and N."""
    calls = c_program("bench_calls")
    native = subprocess.run([str(calls), "37", "/etc/hostname"], capture_output=True, text=True, check=True)
    made = {line.split()[0]: int(line.rsplit("n=", 1)[1]) for line in native.stdout.splitlines()}
    assert made == {"stat": 37, "open_close": 37}
    done = trace("-o", "table", "-c", "--", str(calls), "37", "/etc/hostname", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "table").read_text().splitlines()
    assert table[0].split() == ["%", "time", "seconds", "usecs/call", "calls", "errors", "function"]
    rows = {line.split()[-1]: line.split()[:-1] for line in table[2:-2]}
    assert rows["stat"][3:] == [str(made["stat"])] and rows["open"][3:] == [str(made["open_close"])], table
    assert table[-1].split()[3] == str(sum(int(row[3]) for row in rows.values()))
    # A failed call is counted as an error: the program stops at its first stat of a missing file.
    missing = tmp_path / "missing"
    done = trace("-o", "table", "-c", "--", str(calls), "5", str(missing), cwd=tmp_path)
    assert done.returncode == 1
    rows = {line.split()[-1]: line.split()[:-1] for line in (tmp_path / "table").read_text().splitlines()[2:-2]}
    assert rows.keys() == {"stat"} and rows["stat"][3:] == ["1", "1"]


def test_c_times_are_the_calls_own_as_the_program_measures_them_around_its_calls(
    tmp_path: Path, c_program: Any
) -> None:
    """bench_calls reads the clock around each of its calls; the shim around the real call, inside
    them: the table's time per function is above zero and within the program's own total."""
    calls = c_program("bench_calls")
    done = trace("-o", "table", "-c", "--json", "--", str(calls), "200", "/etc/hostname", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    program = {
        line.split()[0]: int(line.split("mean_ns=")[1].split()[0]) * int(line.rsplit("n=", 1)[1])
        for line in done.stdout.splitlines()
    }
    table = {row["function"]: row for row in map(json.loads, (tmp_path / "table").read_text().splitlines())}
    for function, measured in (("stat", program["stat"]), ("open", program["open_close"])):
        assert table[function]["calls"] == 200
        # The program's mean is rounded down (up to 200 ns in all); the table's seconds to 0.5 µs.
        assert 0 < table[function]["seconds"] * 1e9 <= measured + 200 + 500, (table, program)


def test_json_records_carry_each_path_as_an_absolute_name_too(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_text("a")
    done = trace("--json", "-o", "log", "-e", "rename,stat", "--", "sh", "-c", "cd sub && mv ../a b", cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert done.returncode == 0, done.stderr
    (rename,) = [record for record in records if record["function"] == "rename"]
    assert rename["arguments"]["path1"] == "../a" and rename["arguments"]["path2"] == "b"
    sub = tmp_path / "sub"
    assert rename["absolute"] == {"path1": f"{sub}/../a", "path2": f"{sub}/b"}
    stats = [
        record for record in records if record["function"] == "stat" and record["arguments"]["path"] == "/usr/bin/mv"
    ]
    assert stats and stats[0]["absolute"] == {"path": "/usr/bin/mv"}


CLI_PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
#: What differs from run to run: process ids, times, durations, and a -c table's times.
_PIDS = re.compile(r'(pid |tid |"pid": |"tid": )\d+')
_TIME = re.compile(r'"(time|duration_us)": [0-9.]+')
_DURATION = re.compile(r"<[0-9.]+µs>")
_TABLE_TIMES = re.compile(r"^ *[0-9.]+ +[0-9.]+ +[0-9]+( +[0-9]+ +[0-9]* +\w+)$")


def _trace_examples() -> list[list[tuple[str, list[str]]]]:
    """The console blocks of the CLI page's trace section: each a list of (command, expected lines)."""
    section = CLI_PAGE.read_text().split("\n## trace\n", 1)[1].split("\n## ", 1)[0]
    examples = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        examples.append(steps)
    return examples


def _normal(lines: list[str]) -> list[str]:
    """Lines without what differs from run to run, in order (two streams interleave as they will)."""
    return sorted(
        _TABLE_TIMES.sub(r"T T T\1", _DURATION.sub("<Tµs>", _TIME.sub(r'"\1": T', _PIDS.sub(r"\1N", line))))
        for line in lines
    )


@pytest.mark.parametrize("steps", _trace_examples(), ids=lambda steps: steps[0][0].split(" -- ")[0])
def test_the_trace_examples_of_the_cli_page_run_as_documented(
    steps: list[tuple[str, list[str]]], tmp_path: Path
) -> None:
    """Each command as written (``libc-service`` on PATH, ``/tmp/example`` an empty directory of the test's),
    its output as written but for process ids, times and the order of the program's and the trace's lines."""
    if any("--seccomp" in command for command, _ in steps) and seccomp_unavailable() is not None:
        pytest.skip(f"seccomp user notifications: {seccomp_unavailable()}")
    example = tmp_path / "example"
    example.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    command_file = bin_dir / "libc-service"
    command_file.write_text(f'#!/bin/sh\nexec {sys.executable} -m libc_service "$@"\n')
    command_file.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C"}
    assert steps, "an example with no command"
    for command, expected in steps:
        done = subprocess.run(
            ["sh", "-c", command.replace("/tmp/example", str(example)) + " 2>&1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=tmp_path,
        )
        got = done.stdout.replace(str(example), "/tmp/example").splitlines()
        assert _normal(got) == _normal(expected), done.stdout
