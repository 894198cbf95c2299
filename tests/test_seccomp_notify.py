"""The seccomp transport (issue 16): calls the shim cannot see, decided by the same Router.

Real processes: static programs (``gcc -static``, which never load the
shim), ``getent`` reading ``/etc/passwd`` through NSS, a dynamically linked
Python loading ``zlib`` with ``dlopen`` in the sandbox, and hostile slaves
(bad pointers, a path switched by another thread, a thread killed while
its call is being decided).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from libc_service import FORWARD, AddrInfo, Router, Sandbox, Stat, WithFds, deny, perform, spawn
from libc_service.policy.conditions import under
from libc_service.seccomp.availability import SeccompUnavailable, seccomp_unavailable
from libc_service.seccomp.handoff import ListenerHandoff
from libc_service.seccomp.session import current_transport
from libc_service.policy.router import Decision

from shimtools import C_DIR, PYTHON, needs_shim

_REASON = seccomp_unavailable()
pytestmark = [
    needs_shim,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

TIMEOUT = 60


@pytest.fixture(scope="session")
def static_program(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``static_program("seccomp_calls")``: tests/c/NAME.c built with ``gcc -static``, or a skip."""
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    out_dir = tmp_path_factory.mktemp("static")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if compiler is None:
            pytest.skip("no C compiler to build static test programs")
        if name not in built:
            target = out_dir / name
            done = subprocess.run(
                [compiler, "-static", "-O2", "-Wall", "-pthread", "-o", str(target), str(C_DIR / f"{name}.c")],
                capture_output=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                pytest.skip(f"cannot link statically (no static libc?): {done.stderr.decode()[-300:]}")
            built[name] = target
        return built[name]

    return build


def memfd(text: bytes) -> int:
    """A seekable in-memory file holding ``text``, at offset 0 (NSS seeks; a pipe would not do)."""
    fd = os.memfd_create("fake", os.MFD_CLOEXEC)
    os.write(fd, text)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def run(argv: list[str], router: Router, **options: object) -> tuple[int, str, str]:
    async with spawn(argv, router, seccomp=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options) as process:  # type: ignore[arg-type]
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), (err or b"").decode()


def recorded(router: Router) -> list[Decision]:
    decisions: list[Decision] = []
    router.observe(decisions.append)
    return decisions


@pytest.fixture
def no_master_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The master logs no error or traceback (a hostile slave must not cause one)."""
    with caplog.at_level(logging.WARNING):
        yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# ---------------------------------------------------------------- the scenarios


async def test_a_static_program_opening_dev_null_reads_the_pipe_the_master_handed_it(
    static_program: Callable[[str], Path],
) -> None:
    router = Router(default=FORWARD)
    transports: list[str] = []

    @router.on("open", "openat")
    def fake_dev_null(request: object) -> object:
        transports.append(current_transport())
        if str(getattr(request, "path")) != "/dev/null":
            return FORWARD
        read_end, write_end = os.pipe()
        os.write(write_end, b"text from the master\n")
        os.close(write_end)
        return WithFds(read_end, [read_end])

    decisions = recorded(router)
    status, out, _ = await run([str(static_program("seccomp_cat")), "/dev/null"], router)
    assert (status, out) == (0, "text from the master\n")
    assert transports == ["seccomp"]
    [decision] = [d for d in decisions if d.request.function == "open"]
    assert (decision.transport, decision.outcome, decision.nfds) == ("seccomp", "reply", 1)


def test_uvloop_hands_the_listener_over_too(static_program: Callable[[str], Path], tmp_path: Path) -> None:
    """uvloop forks and runs the child code its own way; stdio from /dev/null and a cwd change are no calls to wait on."""
    uvloop = pytest.importorskip("uvloop")
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def fake(request: object) -> object:
        fd = memfd(b"through uvloop\n")
        return WithFds(fd, [fd])

    async def main() -> tuple[int, str, str]:
        return await run(
            [str(static_program("seccomp_cat")), "relative"], router, stdin=subprocess.DEVNULL, cwd=tmp_path
        )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, out, _ = runner.run(main())
    assert (status, out) == (0, "through uvloop\n")


async def test_getent_reads_the_fake_passwd_a_policy_file_hands_it(tmp_path: Path) -> None:
    if shutil.which("getent") is None:
        pytest.skip("no getent")
    policy = tmp_path / "fake_passwd.py"
    policy.write_text(
        textwrap.dedent("""
        import os
        from libc_service import FORWARD, Router, WithFds
        from libc_service.policy.conditions import under

        router = Router(default=FORWARD)

        @router.on("open", "openat", when=under("/etc/passwd"))
        def fake_passwd(request):
            \"\"\"NSS reads a passwd file the master made up (libc opens it itself: only seccomp sees it).\"\"\"
            fd = os.memfd_create("passwd", os.MFD_CLOEXEC)
            os.write(fd, b"root:x:0:0:Fake Root:/fake:/bin/false\\n")
            os.lseek(fd, 0, os.SEEK_SET)
            return WithFds(fd, [fd])
    """)
    )
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", "--seccomp", str(policy), "--", "getent", "passwd", "root"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == "root:x:0:0:Fake Root:/fake:/bin/false\n"
    assert b"seccomp without a sandbox" in done.stderr  # the loud warning


async def test_python_imports_zlib_under_the_sandbox_with_the_loaders_opens_granted_by_a_rule() -> None:
    reason = Sandbox.available()
    if reason is not None:
        pytest.skip(reason)
    prefix = sys.base_prefix
    router = Router(default=deny(errno.EACCES))

    @router.on("open", "openat", "stat", "lstat", "access", when=under(prefix, "/lib", "/usr/lib", "/etc/ld.so.cache"))
    def interpreter_tree(request: object) -> object:
        """The interpreter's own files, opened by the master: the sandbox grants none of them."""
        return perform(request)

    decisions = recorded(router)
    code = "import zlib; print(zlib.decompress(zlib.compress(b'zlib works')).decode())"
    status, out, err = await run([PYTHON, "-c", code], router, sandbox=Sandbox())
    assert (status, out) == (0, "zlib works\n"), err
    assert "cannot be preloaded" not in err  # the shim's own load is never the policy's to refuse
    dlopened = [d for d in decisions if d.request.function == "open" and "zlib" in str(getattr(d.request, "path"))]
    assert dlopened and all(d.transport == "seccomp" and d.outcome == "reply" for d in dlopened)


async def test_a_dynamic_program_has_each_call_decided_once_and_getaddrinfo_through_the_shim() -> None:
    router = Router(default=FORWARD)
    lookups: list[str] = []

    @router.on("getaddrinfo")
    def fake_lookup(request: object) -> object:
        lookups.append(current_transport())
        return [AddrInfo("192.0.2.7", 80)]

    decisions = recorded(router)
    code = (
        "import socket; print(socket.getaddrinfo('db.example', 80, type=socket.SOCK_STREAM)[0][4]); "
        "print(len(open('/etc/hostname').read()) > 0)"
    )
    status, out, err = await run([PYTHON, "-c", code], router)
    assert (status, out) == (0, "('192.0.2.7', 80)\nTrue\n"), err
    assert lookups == ["shim"]
    [lookup] = [d for d in decisions if d.request.function == "getaddrinfo"]
    assert (lookup.transport, lookup.route.rsplit(".", 1)[-1], lookup.outcome) == ("shim", "fake_lookup", "reply")
    hostname = [d for d in decisions if str(getattr(d.request, "path", "")) == "/etc/hostname"]
    assert [(d.transport, d.outcome) for d in hostname] == [("seccomp", "forward")]
    for decision in decisions:  # built without a second validation: still what validation gives
        assert type(decision.request).model_validate(dict(decision.request)) == decision.request


def test_trace_says_which_calls_came_as_seccomp_notifications(
    static_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    program = str(static_program("seccomp_calls"))
    log = tmp_path / "trace.log"
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "trace", "--seccomp", "-o", str(log), "--", program, "mkdir", "made"],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout) == (0, b"mkdir: 0\n"), done.stderr.decode()
    [line] = [line for line in log.read_text().splitlines() if "mkdir(" in line]
    assert line.startswith("[pid ") and " seccomp] mkdir(" in line
    # The kernel continued the call: what it returned is not known ("?", as strace writes it), and a
    # warning that forwarded calls are not confined does not concern a trace.
    assert line.endswith(f'mkdir("made" (in {json.dumps(str(tmp_path))}), 0750) = ? [forwarded]')
    assert b"WARNING" not in done.stderr, done.stderr.decode()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "libc_service",
            "trace",
            "--seccomp",
            "--json",
            "-o",
            str(log),
            "--",
            program,
            "stat",
            "/",
        ],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    [stat] = [r for r in records if r["function"] == "stat"]
    assert (stat["transport"], stat["decision"], stat["arguments"]) == ("seccomp", "forward", {"path": "/"})
    # The execve line, when the tracer read /proc before the program exited, has no transport.
    assert {r["transport"] for r in records if r["function"] == "execve"} <= {None}


async def test_a_call_through_the_shim_says_shim() -> None:
    router = Router(default=FORWARD)
    transports: list[str] = []

    @router.on("open", "openat")
    def note(request: object) -> object:
        transports.append(current_transport())
        return FORWARD

    decisions = recorded(router)
    async with spawn([PYTHON, "-c", "open('/etc/hostname').close()"], router) as process:
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0
    assert transports and set(transports) == {"shim"}
    assert {d.transport for d in decisions} == {"shim"}


# ------------------------------------------------------------------- each reply kind


async def test_stat_lstat_and_statx_write_the_policys_stat_into_the_programs_buffer(
    static_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    ghost = str(tmp_path / "ghost")
    router = Router(default=FORWARD)

    @router.on("stat", "lstat")
    def fake(request: object) -> object:
        if str(getattr(request, "path")) == ghost:
            return Stat(size=4242, mode=0o640, mtime=1_700_000_000_123456789)
        return FORWARD

    program = str(static_program("seccomp_calls"))
    for command in ("stat", "lstat", "statx"):
        status, out, _ = await run([program, command, ghost], router)
        assert (status, out) == (0, f"{command}: size=4242 mode=100640 mtime=1700000000.123456789\n")


async def test_errnos_and_forwarded_mutations_keep_their_dirfds(
    static_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    router = Router(default=FORWARD)
    seen: list[tuple[str, str, str | None]] = []

    @router.on("mkdir", "unlink", "rmdir", "rename", "access", "eaccess")
    def note(request: object) -> object:
        dirfd = getattr(request, "dirfd", None) or getattr(request, "dirfd1", None)
        where = os.readlink(f"/proc/self/fd/{dirfd}") if dirfd is not None else None
        seen.append((getattr(request, "function"), str(getattr(request, "path", getattr(request, "path1", ""))), where))
        if getattr(request, "function") == "eaccess":
            raise OSError(errno.EROFS, "read-only")
        return FORWARD

    program = str(static_program("seccomp_calls"))
    (tmp_path / "victim").write_text("x")
    (tmp_path / "old").write_text("x")
    (tmp_path / "new").write_text("x")
    outputs = [
        await run([program, "mkdir", "made"], router, cwd=tmp_path),
        await run([program, "unlinkat", str(tmp_path), "victim"], router),
        await run([program, "rename", str(tmp_path / "old"), str(tmp_path / "new")], router),
        await run([program, "access", str(tmp_path / "old"), "rw"], router),
    ]
    assert [out for _, out, _ in outputs] == [
        "mkdir: 0\n",
        "unlinkat: 0\n",
        "rename: EEXIST\n",
        "access: 0\neaccess: EROFS\n",
    ]
    assert (tmp_path / "made").is_dir() and not (tmp_path / "victim").exists()
    assert ("mkdir", "made", str(tmp_path)) in seen  # AT_FDCWD: the program's working directory
    assert ("unlink", "victim", str(tmp_path)) in seen  # the program's own dirfd, copied with pidfd_getfd
    assert ("eaccess", str(tmp_path / "old"), None) in seen


async def test_an_installed_descriptor_has_close_on_exec_exactly_when_the_program_asked(
    static_program: Callable[[str], Path],
) -> None:
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def hand_a_memfd(request: object) -> object:
        fd = memfd(b"")
        return WithFds(fd, [fd])

    status, out, _ = await run([str(static_program("seccomp_calls")), "cloexec", "/anything"], router)
    assert (status, out) == (0, "O_CLOEXEC: 1\nno O_CLOEXEC: 0\n")


async def test_a_connect_the_master_makes_replaces_the_programs_socket(
    static_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    server_path = str(tmp_path / "real.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(server_path)
    server.listen()
    server.setblocking(False)
    router = Router(default=FORWARD)

    @router.on("connect_unix")
    async def redirect(request: object) -> object:
        assert str(getattr(request, "path")) == "/nowhere.sock"
        mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.connect(server_path)
        return WithFds(0, [mine.detach()])

    async def serve_one() -> None:
        peer, _ = await asyncio.get_running_loop().sock_accept(server)
        peer.sendall(b"hello through the master's socket\n")
        peer.close()

    serving = asyncio.ensure_future(serve_one())
    try:
        status, out, _ = await run([str(static_program("seccomp_calls")), "connect", "/nowhere.sock"], router)
    finally:
        await asyncio.wait_for(serving, TIMEOUT)
        server.close()
    assert (status, out) == (0, "connect: 0\nFD_CLOEXEC: 1\nhello through the master's socket\n")


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
async def test_an_async_handler_answers_later_and_the_next_calls_are_served(
    static_program: Callable[[str], Path],
    concurrent: bool,
) -> None:
    router = Router(default=FORWARD, concurrent=concurrent)

    @router.on("open", "openat")
    async def slow(request: object) -> object:
        if str(getattr(request, "path")) != "/slow":
            return FORWARD
        await asyncio.sleep(0.05)
        assert current_transport() == "seccomp"
        fd = memfd(b"answered after a wait\n")
        return WithFds(fd, [fd])

    status, out, _ = await run([str(static_program("seccomp_cat")), "/slow", "/dev/null", "/slow"], router)
    assert (status, out) == (0, "answered after a wait\nanswered after a wait\n")


async def test_a_bind_the_master_performs_beneath_the_programs_cwd_replaces_its_socket(
    static_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    router = Router(default=FORWARD)
    seen: list[tuple[str, str | None]] = []

    @router.on("bind_unix")
    def bind_here(request: object) -> object:
        dirfd = getattr(request, "dirfd")
        seen.append((str(getattr(request, "path")), os.readlink(f"/proc/self/fd/{dirfd}") if dirfd else None))
        return perform(request)

    status, out, _ = await run([str(static_program("seccomp_calls")), "bind", "made.sock"], router, cwd=tmp_path)
    assert (status, out) == (0, "bind: 0\nFD_CLOEXEC: 0\nlisten: 0\n")
    assert seen == [("made.sock", str(tmp_path))]
    assert (tmp_path / "made.sock").is_socket()


# ---------------------------------------------------------------------- hostile slaves


async def test_bad_pointers_fail_with_efault_and_the_master_serves_on(
    static_program: Callable[[str], Path],
    no_master_errors: None,
) -> None:
    router = Router(default=FORWARD)
    status, out, _ = await run([str(static_program("seccomp_calls")), "badptr"], router)
    assert status == 0
    assert out.splitlines()[:6] == [
        "open NULL: EFAULT",
        "open 1: EFAULT",
        "open unterminated: EFAULT",
        "stat into read-only: EFAULT",
        "connect bad address: EFAULT",
        "openat2 bad how: EFAULT",
    ]
    assert out.splitlines()[6].startswith("open after: ")


async def test_a_path_switched_by_another_thread_gets_the_answer_for_the_path_the_master_read(
    static_program: Callable[[str], Path],
    tmp_path: Path,
    no_master_errors: None,
) -> None:
    """The master decides on its own copy: a granted open gets the master's descriptor, never the secret."""
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    router = Router(default=deny(errno.EACCES), concurrent=True)

    @router.on("open", "openat")
    def only_ok(request: object) -> object:
        if str(getattr(request, "path")) == "/ok":
            fd = memfd(b"ok")
            return WithFds(fd, [fd])
        raise OSError(errno.EACCES, "not /ok")

    status, out, _ = await run([str(static_program("seccomp_calls")), "race", "/ok", str(secret), "400"], router)
    assert status == 0
    counts = dict(item.split("=") for item in out.split())
    assert counts["other"] == "0"
    assert int(counts["granted"]) + int(counts["refused"]) == 400


async def test_a_program_killed_while_its_call_is_decided_leaves_the_master_serving(
    static_program: Callable[[str], Path],
    fd_count: object,
    no_master_errors: None,
) -> None:
    router = Router(default=FORWARD)
    asked = asyncio.Event()
    release = asyncio.Event()

    @router.on("open", "openat")
    async def slow(request: object) -> object:
        if str(getattr(request, "path")) != "/wait-here":
            return FORWARD
        asked.set()
        await release.wait()
        fd = memfd(b"too late")
        return WithFds(fd, [fd])

    before = fd_count.snapshot()  # type: ignore[attr-defined]
    async with spawn(
        [str(static_program("seccomp_calls")), "wait", "/wait-here"], router, seccomp=True, stdout=subprocess.DEVNULL
    ) as process:
        await asyncio.wait_for(asked.wait(), TIMEOUT)
        process.kill()
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 128 + 9
        release.set()
        await asyncio.sleep(0.05)
        session = process.seccomp_session
        assert session is not None and session.dropped >= 1
    fd_count.assert_unchanged(before)  # type: ignore[attr-defined]
    # The router still serves the next program.
    status, out, _ = await run([str(static_program("seccomp_cat")), "/dev/null"], router)
    assert (status, out) == (0, "")


async def test_policy_bugs_fail_only_their_call_with_error_errno(
    static_program: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router(default=FORWARD, error_errno=errno.EPERM)

    @router.on("stat", "lstat")
    def unpackable(request: object) -> object:
        return Stat.model_construct(size=2**70)  # never validated: does not fit struct stat

    @router.on("open", "openat")
    def not_a_result(request: object) -> object:
        if str(getattr(request, "path")) == "/raises":
            raise RuntimeError("policy bug")
        if str(getattr(request, "path")) == "/not-a-descriptor":
            return WithFds(0, [-5])
        return "nonsense"

    program = str(static_program("seccomp_calls"))
    assert (await run([program, "stat", "/"], router))[1] == "stat: EPERM\n"
    cat = str(static_program("seccomp_cat"))
    status, out, _ = await run([cat, "/raises", "/not-a-descriptor", "/anything"], router)
    assert (status, out) == (0, "/raises: EPERM\n/not-a-descriptor: EPERM\n/anything: EPERM\n")
    assert sum("policy bug" in r.getMessage() or "failed on" in r.getMessage() for r in caplog.records) >= 3


async def test_the_parent_gives_up_clearly_when_no_listener_arrives() -> None:
    handoff = ListenerHandoff()
    stuck_child = os.dup(handoff._child.fileno())  # a child that never gets to send, nor exits
    try:
        with pytest.raises(SeccompUnavailable, match="did not hand over its seccomp listener within 0.1 s"):
            await handoff.receive(timeout=0.1)
    finally:
        os.close(stuck_child)
        handoff.close()


async def test_the_parent_says_so_when_the_child_went_without_sending_its_listener() -> None:
    handoff = ListenerHandoff()
    try:
        with pytest.raises(SeccompUnavailable, match="closed the handoff without sending"):
            await handoff.receive(timeout=5)
    finally:
        handoff.close()
