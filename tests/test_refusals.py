"""Under ``--sandbox``, what was refused is said once per rule, naming what was refused, when the run ends."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from ipaddress import IPv4Address
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libc_service.policy.named_tally import MAX_NAMES, NameBudget, NamedTally
from libc_service.tools.refusals import MAX_PIDS, RefusalReport
from libc_service.protocol.requests import ConnectInetRequest, OpenRequest
from libc_service.policy.router import Decision
from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import PYTHON, needs_shim

sandboxed = pytest.mark.skipif(
    landlock_abi() < 1 or network_namespaces_available() is not None,
    reason="the kernel has no Landlock or no network namespaces here",
)


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def _refused(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("libc-service: refused")]


POLICY = textwrap.dedent('''
    import errno
    from libc_service import FORWARD, Errno, Router, Sandbox
    from libc_service.policy.conditions import writing

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
    assert report == [f"libc-service: refused 3× open by read_only (EROFS): {work}/sub-z, {work}/x, and {work}/y"]


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
    assert f"libc-service: refused 1× chmod by the sandbox, metadata=False (EPERM): {target}" in (
        done.stderr.splitlines()
    ), done.stderr


BROKEN = textwrap.dedent('''
    from libc_service import FORWARD, Router

    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def serve(req):
        """A handler with a bug."""
        if "broken" in str(req.path):
            raise ValueError("a bug")
        return FORWARD
''')


@needs_shim
@sandboxed
def test_a_handler_that_raised_is_in_the_summary_with_the_paths_it_failed(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(BROKEN)
    script = f"cat {tmp_path}/broken-1 {tmp_path}/broken-2 {tmp_path}/broken-1"
    done = _run("run", "--sandbox", "--exec", os.path.dirname(_cat()), str(policy), "--", "sh", "-c", script)
    assert done.returncode != 0
    assert _refused(done.stderr) == [
        f"libc-service: refused 3× open by serve, which raised an exception (EPERM): "
        f"{tmp_path}/broken-1 (2×) and {tmp_path}/broken-2"
    ], done.stderr


def _cat() -> str:
    found = shutil.which("cat")
    if found is None:
        pytest.skip("no cat here")
    return os.path.realpath(found)


@needs_shim
@sandboxed
def test_a_forwarded_call_the_kernel_refused_names_the_file_not_its_directory(tmp_path: Path) -> None:
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the program\n")
    done = _run("run", "--sandbox", "--exec", os.path.dirname(_cat()), "--", "cat", str(secret))
    assert done.returncode == 1 and "Permission denied" in done.stderr
    # Without the kernel's audit the shim's report names it; with it, Landlock's record does.
    named = [line for line in _refused(done.stderr) if line.endswith(f": {secret}")]
    assert named and ("after FORWARD (EACCES)" in named[0] or "by Landlock (fs.read_file)" in named[0]), done.stderr
    assert "beneath" not in done.stderr


@needs_shim
@sandboxed
def test_a_refused_connect_names_its_address_and_port(tmp_path: Path) -> None:
    code = "import socket\ntry:\n socket.create_connection(('192.0.2.7', 443))\nexcept OSError as e: print(e.errno)"
    done = _run("run", "--sandbox", *_python_trees(), "--", PYTHON, "-c", code, cwd=tmp_path)
    assert done.stdout.strip() == str(errno.EACCES), done.stderr
    assert "libc-service: refused 1× connect_inet by unlisted_network (EACCES): 192.0.2.7:443" in (
        done.stderr.splitlines()
    ), done.stderr


def _python_trees() -> list[str]:
    """--read flags for what a sandboxed Python needs: its installation and its environment."""
    trees = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), os.path.dirname(PYTHON)}
    return [argument for tree in sorted(trees) for argument in ("--read", tree)]


@needs_shim
@sandboxed
def test_refusals_file_holds_every_refusal_as_a_json_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(BROKEN)
    record = tmp_path / "refusals.jsonl"
    script = f"cat {tmp_path}/broken-1 {tmp_path}/broken-2 {tmp_path}/broken-1"
    done = _run(
        "run", "--sandbox", "--refusals", str(record), "--exec", os.path.dirname(_cat()), str(policy), "--",
        "sh", "-c", script,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["by"], line["function"], line["target"], line["rule"], line["errno_name"]) for line in lines] == [
        ("handler_failure", "open", f"{tmp_path}/broken-1", "serve", "EPERM"),
        ("handler_failure", "open", f"{tmp_path}/broken-2", "serve", "EPERM"),
        ("handler_failure", "open", f"{tmp_path}/broken-1", "serve", "EPERM"),
    ]
    assert all(isinstance(line["pid"], int) for line in lines)


@needs_shim
@sandboxed
def test_a_program_that_could_not_execute_is_explained_by_its_status(tmp_path: Path) -> None:
    done = _run("run", "--sandbox", "--", "sh", "-c", f"{_cat()} /dev/null")
    assert done.returncode == 126
    if "Landlock's own refusals are not reported" in done.stderr:
        assert "libc-service: the program (sh) exited with status 126, a shell's 'cannot execute'" in done.stderr
        assert "--exec PATH" in done.stderr
    else:  # the kernel's audit is on here: Landlock's record names the program
        assert f"by Landlock (fs.execute): {_cat()}" in done.stderr, done.stderr


def _open(path: str, pid: int, code: int = errno.EACCES, route: str = "default") -> Decision:
    request = OpenRequest(pid=pid, tid=pid, path=PurePosixPath(path), flags=frozenset({"read_only"}))
    return Decision(request, route, "error", -1, code, 0, 0, f"pid {pid}")


def test_names_are_ranked_most_frequent_first_then_the_rest_counted() -> None:
    report = RefusalReport()
    for path, times in (("/a", 1), ("/b", 4), ("/c", 2), ("/d", 1), ("/e", 1), ("/f", 1), ("/g", 1)):
        for _ in range(times):
            report(_open(path, 7))
    request = ConnectInetRequest(pid=7, tid=7, address=IPv4Address("10.0.0.1"), port=443, socket=0)
    report(Decision(request, "no_net", "error", -1, errno.ECONNREFUSED, 0, 0, "pid 7"))
    assert report.lines() == [
        "refused 11× open by default (EACCES): /b (4×), /c (2×), /a, /d, /e, and 2 others",
        "refused 1× connect_inet by no_net (ECONNREFUSED): 10.0.0.1:443",
    ]


#: The modules whose allocations are the report's own.
REPORT_MODULES = ("refusals.py", "named_tally.py")


def test_forged_pids_and_paths_keep_every_structure_bounded() -> None:
    report = RefusalReport()
    forged = 200_000
    # Only what the report's own code keeps is counted: the test's requests (their paths' parts,
    # which pathlib interns on some Pythons) are the forger's memory, not the master's.
    mine = [tracemalloc.Filter(True, f"*/libc_service/{name}", all_frames=True) for name in REPORT_MODULES]
    tracemalloc.start(4)
    try:
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for index in range(forged):
            report(_open(f"/forged/{index:06d}/" + "x" * 200, 2 + index))
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(report.pids) <= MAX_PIDS
    tally = next(iter(report.tallies.values()))
    assert tally.count == forged  # every refusal counted ...
    assert len(tally.names) <= MAX_NAMES  # ... the names kept are bounded ...
    assert grown < 8 << 20, grown  # ... and so is the memory (the names alone would take ~50 MB)
    line = report.lines()[0]
    assert line.startswith(f"refused {forged}× open by default (EACCES): ")
    assert line.endswith(f"{len(tally.names) - 5} others, and {tally.unkept} more whose names were not kept")


def test_a_loader_s_127_without_audit_says_what_grants_a_library() -> None:
    report = RefusalReport(landlock_unavailable="the kernel's audit is disabled")
    report(_open("/opt/tool/lib/libx.so", 7))
    lines = report.lines(failed=True, status=127, program="/opt/tool/bin/tool")
    assert lines[-1].startswith("the program (/opt/tool/bin/tool) exited with status 127, a shell's 'not found'")
    assert "--read PATH or --exec PATH" in lines[-1]
    quiet = RefusalReport(landlock_unavailable="the kernel's audit is disabled", pids={7})
    assert quiet.lines(failed=True, status=1) == [
        "Landlock's own refusals are not reported: the kernel's audit is disabled"
    ]  # nothing to add for an ordinary failure


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=300), room=st.integers(0, 50))
def test_a_tally_counts_every_event_and_keeps_no_more_names_than_its_budget(names: list[str | None], room: int) -> None:
    budget = NameBudget(names=room, chars=room * 10)
    tally = NamedTally(budget)
    for name in names:
        tally.add(name)
    assert tally.count == len(names)
    assert sum(tally.names.values()) + tally.unkept == sum(1 for name in names if name is not None)
    assert len(tally.names) <= room and sum(len(name) for name in tally.names) <= room * 10
    shown = tally.named()
    assert shown.isprintable()  # a name with a terminal escape is shown escaped
