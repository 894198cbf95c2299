"""The ``libc-service`` command, run as a person would: a real process.

`run` takes a policy and passes the program's exit status through; a bad
policy is one line on stderr and exit status 2, never a traceback. `trace`
logs every call (text or JSON lines, to stderr or a file) and forwards it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shimtools import needs_shim

pytestmark = [needs_shim]

COMMAND = [sys.executable, "-m", "libc_service"]


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_policy(directory: Path, source: str, name: str = "policy.py", extra: str = "") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source) + extra)
    return path


READ_ONLY_POLICY = """
    import errno
    from libc_service import FORWARD, Errno, Router

    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def read_only(req):
        \"\"\"Nothing is written.\"\"\"
        if req.flags & {"write_only", "read_write", "create", "truncate", "append"}:
            raise Errno(errno.EROFS)
        return FORWARD

    @router.on("mkdir", "unlink", "rmdir", "rename")
    def no_changes(req):
        raise Errno(errno.EROFS)
"""


# -------------------------------------------------------------------- run


def test_run_applies_the_policy(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    done = cli("run", str(policy), "--", "sh", "-c", "cat policy.py && touch new", cwd=tmp_path)
    assert done.returncode == 1
    assert "touch: cannot touch 'new': Read-only file system" in done.stderr
    assert not (tmp_path / "new").exists()


def test_run_accepts_module_attr_policies(tmp_path: Path) -> None:
    write_policy(tmp_path, READ_ONLY_POLICY, name="mypolicy.py", extra="\nstrict = router\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LC_ALL="C")
    done = subprocess.run(
        [*COMMAND, "run", "mypolicy:strict", "--", "mkdir", "d"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Read-only file system" in done.stderr


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + signal.SIGKILL)])
def test_run_exits_with_the_programs_status(tmp_path: Path, script: str, status: int) -> None:
    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    done = cli("run", str(policy), "--", "sh", "-c", f"cat /dev/null; {script}")
    assert done.returncode == status
    assert "Traceback" not in done.stderr


BAD_POLICIES = {
    "missing file": (None, "no such file"),
    "syntax error": ("router = Router(\n", "syntax error on line 1"),
    "import failure": ("import no_such_module_here\n", "failed to import: ModuleNotFoundError"),
    "raises": ("raise RuntimeError('policy is broken')\n", "policy is broken"),
    "no router": ("x = 1\n", "defines no 'router'"),
    "wrong type": ("router = 42\n", "'router' is an int, not a libc_service.Router"),
    "bad handler": (
        "from libc_service import Router\nrouter = Router()\n@router.on('opne')\ndef h(req): pass\n",
        "unknown function",
    ),
}


@pytest.mark.parametrize("problem", BAD_POLICIES)
def test_a_bad_policy_is_one_line_and_exit_status_2(tmp_path: Path, problem: str) -> None:
    source, message = BAD_POLICIES[problem]
    policy = tmp_path / "bad_policy.py"
    if source is not None:
        policy.write_text(source)
    done = cli("run", str(policy), "--", "true")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("libc-service: error: policy ")
    assert str(policy) in lines[0] and message in lines[0]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        # A typo in the function name: the error is raised inside Router.on.
        ("from libc_service import Router\nrouter = Router()\n@router.on('opne')\ndef h(req): pass\n", 3),
        # A relative root: raised inside conditions.under.
        (
            "from libc_service import Router\nfrom libc_service.policy.conditions import under\n"
            "router = Router()\n@router.on('open', when=under('data'))\ndef h(req): pass\n",
            4,
        ),
        # A result the function cannot have: refused when decorated, not when a call comes.
        (
            "from libc_service import Router\nrouter = Router()\n\n"
            "@router.on('open', 'openat')\ndef h(req) -> str:\n    return 'ok'\n",
            4,
        ),
    ],
)
def test_a_bad_policy_error_names_the_policys_own_line(tmp_path: Path, source: str, line: int) -> None:
    policy = tmp_path / "bad_policy.py"
    policy.write_text(source)
    done = cli("run", str(policy), "--", "true")
    assert done.returncode == 2
    assert done.stderr.rstrip().endswith(f"(line {line} of bad_policy.py)"), done.stderr


def test_a_module_attr_policy_is_found_in_the_working_directory(tmp_path: Path) -> None:
    # As the console script runs: no working directory on sys.path (-P), no PYTHONPATH.
    (tmp_path / "policies").mkdir()
    write_policy(tmp_path / "policies", READ_ONLY_POLICY, name="strict.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-P", "-m", "libc_service", "run", "policies.strict:router", "--", "mkdir", "d"],
        cwd=tmp_path,
        env=dict(env, LC_ALL="C"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Read-only file system" in done.stderr


def test_a_missing_policy_module_is_one_line_and_exit_status_2() -> None:
    done = cli("run", "no_such_policy_module:router", "--", "true")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "libc-service: error: policy no_such_policy_module:router: no module named 'no_such_policy_module'"
    ]


def test_run_without_a_program_is_a_usage_error_naming_run(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    done = cli("run", str(policy))
    assert done.returncode == 2
    assert "usage: libc-service run" in done.stderr
    assert "no program given" in done.stderr


def test_a_program_that_does_not_exist_is_127(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    done = cli("run", str(policy), "--", "/nonexistent/program")
    assert done.returncode == 127
    assert "Traceback" not in done.stderr
    assert "/nonexistent/program" in done.stderr


@pytest.mark.parametrize("command", ["run", "trace"])
def test_a_program_that_cannot_be_executed_is_126(tmp_path: Path, command: str) -> None:
    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    policy_args = [str(policy)] if command == "run" else []
    done = cli(command, *policy_args, "--", str(tmp_path))  # a directory: said as a shell says it
    assert done.returncode == 126
    assert done.stderr.splitlines() == [f"libc-service: error: Is a directory: {tmp_path}"]
    program = tmp_path / "not-executable"
    program.write_text("")
    done = cli(command, *policy_args, "--", str(program))
    assert done.returncode == 126
    assert done.stderr.splitlines() == [f"libc-service: error: Permission denied: {program}"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
@pytest.mark.parametrize("served", [True, False], ids=["master-serving", "no-master-yet"])
def test_a_terminating_signal_is_passed_on_to_the_program(tmp_path: Path, signum: int, served: bool) -> None:
    # `timeout`, `kill`, a supervisor: the program ends with it (and the
    # command with the program's status) instead of running on without its master.
    # A session of its own: no terminal delivers a Ctrl-C to the program here.
    # trace's master starts at the program's first report; under a FORWARD
    # policy the shim decides every call and no master ever starts.
    policy = write_policy(tmp_path, "from libc_service import FORWARD, Router\nrouter = Router(default=FORWARD)\n")
    command = ["trace", "-o", os.devnull] if served else ["run", str(policy)]
    pidfile = tmp_path / "pid"
    process = subprocess.Popen(
        [*COMMAND, *command, "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        program = int(pidfile.read_text())
        time.sleep(0.2)  # past the exec
        process.send_signal(signum)
        assert process.wait(timeout=30) == 128 + signum
        assert process.stderr is not None and "Traceback" not in process.stderr.read()
        with pytest.raises(ProcessLookupError):
            os.kill(program, 0)
    finally:
        process.kill()
        process.wait()


LOGGING_POLICY = """
    import errno
    import logging
    from libc_service import Errno, FORWARD, Router

    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def read_only(req):
        if req.flags & {"write_only", "read_write", "create", "truncate", "append"}:
            # Logged before the reply: the program cannot end before the line is written.
            logging.getLogger("policy").debug("refused a write")
            raise Errno(errno.EROFS)
        return FORWARD
"""


def test_verbose_is_accepted_after_the_command(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, LOGGING_POLICY)
    quiet = cli("run", str(policy), "--", "touch", "new", cwd=tmp_path)
    done = cli("run", "-vv", str(policy), "--", "touch", "new", cwd=tmp_path)
    assert done.returncode == quiet.returncode == 1, done.stderr
    assert "DEBUG" not in quiet.stderr
    assert "libc-service: DEBUG: policy: refused a write" in done.stderr


# ------------------------------------------------------------------ trace


def test_trace_writes_one_readable_line_per_call(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("content\n")
    # -o: on stderr the log would interleave with cat's own message (the
    # reports of calls the shim decided arrive whenever they arrive).
    done = cli("trace", "-o", "trace.log", "--", "sh", "-c", "cat f; cat missing", cwd=tmp_path)
    assert done.returncode == 1  # the program's status
    assert done.stdout == "content\n"
    log = (tmp_path / "trace.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("[pid ") and "execve(" not in line]
    # What the program's own calls returned, as strace shows it (the shim reports it after the call).
    opened = [line for line in lines if f' open("f" (in "{tmp_path}"), read_only) = 3 [forwarded]' in line]
    missing = [
        line
        for line in lines
        if f' open("missing" (in "{tmp_path}"), read_only) = -1 ENOENT (No such file or directory) [forwarded]' in line
    ]
    assert len(opened) == 1 and len(missing) == 1, log
    assert re.search(r"\[forwarded\] <[0-9]+\.[0-9]µs>$", opened[0])  # the call's duration, as its shim measured it
    assert "cat: missing: No such file or directory" in done.stderr
    pid, tid = opened[0].removeprefix("[pid ").split("]")[0].split(" tid ")
    assert pid == tid


def test_trace_json_lines_have_the_documented_keys(tmp_path: Path) -> None:
    done = cli("trace", "--json", "--", "stat", "-c", "%s", "/etc/hostname", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout == f"{os.stat('/etc/hostname').st_size}\n"
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records, done.stderr
    for record in records:
        assert {"pid", "tid", "function", "arguments", "decision", "result", "errno", "latency_us"} <= record.keys()
        # One "observed" execve record per process image, when it is still there to be read.
        assert record["decision"] == ("observed" if record["function"] == "execve" else "forward")
        assert isinstance(record["latency_us"], float | int) and record["latency_us"] >= 0
    (lstat,) = [r for r in records if r["function"] == "lstat"]
    assert lstat["arguments"] == {"path": "/etc/hostname"}
    assert lstat["pid"] == lstat["tid"] > 0
    assert lstat["errno"] == 0


def test_trace_shows_a_no_replace_rename(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    text = cli("trace", "--", "mv", "a", "b", cwd=tmp_path)
    assert text.returncode == 0
    assert f' rename("a" (in "{tmp_path}"), "b" (in "{tmp_path}"), no_replace) = 0 [forwarded]' in text.stderr
    (tmp_path / "b").rename(tmp_path / "a")
    done = cli("trace", "--json", "--", "mv", "a", "b", cwd=tmp_path)
    (rename,) = [json.loads(line) for line in done.stderr.splitlines() if '"rename"' in line]
    assert rename["arguments"] == {"path1": "a", "path2": "b", "no_replace": True}
    assert (tmp_path / "b").read_text() == "a"


def test_trace_output_goes_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    done = cli("trace", "--json", "-o", str(log), "--", "cat", "/etc/hostname")
    assert done.returncode == 0
    assert done.stderr == ""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["function"] == "open" and r["arguments"]["path"] == "/etc/hostname" for r in records)


def test_trace_passes_the_exit_status_through() -> None:
    assert cli("trace", "--", "sh", "-c", "exit 7").returncode == 7


def test_trace_to_an_unwritable_file_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    done = cli("trace", "-o", str(tmp_path / "no" / "such" / "dir"), "--", "true")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


# ------------------------------------------------------------------- help


def test_help_is_readable() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for word in ("run", "trace", "docs", "exit status"):
        assert word in done.stdout
    for command in ("run", "trace", "docs"):
        sub = cli(command, "--help")
        assert sub.returncode == 0
        assert sub.stdout.startswith(f"usage: libc-service {command}")
    assert "POLICY" in cli("run", "--help").stdout
    assert "--json" in cli("trace", "--help").stdout


def test_no_command_is_a_usage_error() -> None:
    done = cli()
    assert done.returncode == 2
    assert done.stderr.startswith("usage: libc-service")


def test_version_names_the_installed_release() -> None:
    from libc_service import __version__

    done = cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"libc-service {__version__}")


@pytest.mark.parametrize("command", ["run", "trace"])
def test_usage_shows_the_command_after_a_double_dash(command: str) -> None:
    done = cli(command, "--help")
    assert done.stdout.splitlines()[0].endswith("-- CMD [ARG...]")


def test_the_command_s_output_is_complete_though_it_skips_the_interpreter_s_finalization(tmp_path: Path) -> None:
    """The executable ends with os._exit (libc_service.tools.console): everything it buffered is still written."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}

    def buffered(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    policy = write_policy(tmp_path, READ_ONLY_POLICY)
    in_process = subprocess.run(
        [sys.executable, "-c", "import sys; from libc_service.tools.cli import main; sys.exit(main(sys.argv[1:]))"]
        + ["docs", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    ).stdout
    for _ in range(3):
        done = buffered("docs", str(policy))
        assert done.returncode == 0 and done.stdout == in_process and in_process.count("\n") > 5
    big = tmp_path / "big"
    big.write_text("x" * 100_000 + "\n")
    done = buffered("run", str(policy), "--", "sh", "-c", f"cat {big}; exit 7")
    assert done.returncode == 7 and done.stdout == big.read_text()
    done = buffered("trace", "--", "cat", str(big))
    assert done.returncode == 0 and f'"{big}"' in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("[pid ")


def test_a_policy_s_exit_functions_and_threads_still_run_at_the_command_s_end(tmp_path: Path) -> None:
    """The fast exit keeps what an ordinary one promises: atexit functions, and waiting for non-daemon threads."""
    marker, late = tmp_path / "at-exit", tmp_path / "thread"
    policy = write_policy(
        tmp_path,
        f"""
        import atexit, threading, time
        from libc_service import FORWARD, Router

        router = Router(default=FORWARD)
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))

        def later():
            time.sleep(0.5)
            open({str(late)!r}, "w").write("finished")

        threading.Thread(target=later).start()
        """,
    )
    done = cli("run", str(policy), "--", "true")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "ran"
    assert late.read_text() == "finished"


def _imported(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` says were imported."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_run_the_shim_decides_whole_never_starts_the_master_and_one_that_asks_does(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("inside\n")
    policy = write_policy(
        tmp_path,
        f"""
        from libc_service import FORWARD, Router, perform, under

        router = Router(default=FORWARD)

        @router.on("open", "openat", when=under({str(tmp_path / "data")!r}))
        def data(request):
            return perform(request)
        """,
    )
    command = [sys.executable, "-X", "importtime", "-m", "libc_service", "run", str(policy), "--"]
    done = subprocess.run([*command, "cat", "/etc/hostname"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == Path("/etc/hostname").read_text()
    imported = _imported(done.stderr)
    assert "libc_service.tools.cli" in imported and "libc_service.policy.router" in imported
    assert "asyncio" not in imported and "pydantic" not in imported
    # What a run needs only for a flag, a message, a kind of program or a call it may never make.
    lazy = {
        "dns",  # the resolver's, on the first name looked up
        "elftools",  # reading a program's ELF, under --sandbox only
        "importlib.metadata",  # --version
        "libc_service.tools.flagpolicy",  # --read/--write/... only
        "libc_service.confinement.linkage",
        "libc_service.seccomp.abi",  # --seccomp, or a static program under --sandbox
        "libc_service.seccomp.handoff",  # --seccomp
        "libc_service.seccomp.session",
        "libc_service.seccomp.relay",
        "libc_service.confinement.sandbox",  # --sandbox
        "platform",  # os.uname() says the machine
        "shlex",  # learn's closing message
        "shutil",  # argparse's formatter, for the terminal's width
    }
    assert imported.isdisjoint(lazy), imported & lazy
    done = subprocess.run(
        [*command, "cat", "/etc/hostname", str(tmp_path / "data" / "f")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.endswith("inside\n")
    assert "asyncio" in _imported(done.stderr)
