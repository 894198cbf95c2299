"""spawn(): real programs with the real shim, and the effects policies have on them.

Each scenario is a policy and an unmodified program; the program must see
what the policy decided.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, AddrInfo, Decision, Errno, Router, SlaveProcess, Stat, WithFds, spawn
from libc_service.protocol.requests import (
    ConnectInetRequest,
    GetaddrinfoRequest,
    LstatRequest,
    MkdirRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    Request,
    StatRequest,
)
from shimtools import PYTHON, c_program, needs_shim, run_slave  # noqa: F401 - c_program is a fixture

pytestmark = [needs_shim]

_WRITE_FLAGS = {"write_only", "read_write", "create", "truncate", "append", "temporary"}


def observed(router: Router) -> list[Decision]:
    decisions: list[Decision] = []
    router.observe(decisions.append)
    return decisions


# --------------------------------------------------------- the effects (a)-(g)


async def test_cat_dev_null_reads_the_pipe_the_master_handed_it() -> None:
    router = Router()

    @router.on("open", "openat")
    def dev_null_is_a_pipe(req: OpenRequest | OpenatRequest) -> Any:
        if str(req.path) != "/dev/null":
            return FORWARD
        read_end, write_end = os.pipe()
        os.write(write_end, b"not so empty\n")
        os.close(write_end)
        return WithFds(0, [read_end])

    ran = await run_slave(["cat", "/dev/null"], router)
    assert (ran.status, ran.out) == (0, "not so empty\n")


def _pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


async def test_fopen_reads_the_pipe_the_master_handed_it(c_program: Callable[[str], Path]) -> None:
    router = Router()
    asked: list[OpenRequest | OpenatRequest] = []

    @router.on("open", "openat")
    def config_is_a_pipe(req: OpenRequest | OpenatRequest) -> Any:
        if str(req.path) != "/nonexistent/app.conf":
            return FORWARD
        asked.append(req)
        return WithFds(0, [_pipe_with(b"from the master\n")])

    program = str(c_program("fopen_read"))
    plain = await run_slave([program, "/nonexistent/app.conf", "r"], router)
    cloexec = await run_slave([program, "/nonexistent/app.conf", "rbe"], router)
    assert (plain.status, plain.out) == (0, "from the master\ncloexec=0\n")
    assert (cloexec.status, cloexec.out) == (0, "from the master\ncloexec=1\n")
    assert [(req.function, sorted(req.flags)) for req in asked] == [
        ("open", ["read_only"]),
        ("open", ["close_on_exec", "read_only"]),
    ]


async def test_fopen_for_writing_asks_with_open_flags_and_gets_the_policys_errno(
    c_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    router = Router()
    asked: list[tuple[list[str], int | None]] = []

    @router.on("open", "openat")
    def read_only_fs(req: OpenRequest | OpenatRequest) -> Any:
        if not str(req.path).startswith(str(tmp_path)):
            return FORWARD
        asked.append((sorted(req.flags), req.mode))
        raise Errno(errno.EROFS)

    program = str(c_program("fopen_read"))
    for mode in ("w", "a+", "wx"):
        ran = await run_slave([program, str(tmp_path / "out"), mode], router)
        assert (ran.status, ran.out) == (1, "fopen: EROFS\n")
    assert asked == [
        (["create", "truncate", "write_only"], 0o666),
        (["append", "create", "read_write"], 0o666),
        (["create", "exclusive", "truncate", "write_only"], 0o666),
    ]
    assert not (tmp_path / "out").exists()


async def test_fopen_with_a_mode_the_shim_does_not_parse_goes_to_the_real_fopen(
    c_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    (tmp_path / "text").write_text("plain\n")
    router = Router(default=FORWARD)
    decisions = observed(router)
    program = str(c_program("fopen_read"))
    # glibc's 'm' (mmap the file) and ",ccs=" (a wide stream, which fgets cannot read): no protocol form.
    mapped = await run_slave([program, str(tmp_path / "text"), "rm"], router)
    wide = await run_slave([program, str(tmp_path / "text"), "r,ccs=UTF-8"], router)
    assert (mapped.status, mapped.out) == (0, "plain\ncloexec=0\n")
    assert (wide.status, wide.out) == (0, "cloexec=0\n")
    assert not [d for d in decisions if str(getattr(d.request, "path", "")) == str(tmp_path / "text")]


async def test_opendir_lists_the_directory_the_master_opened(
    c_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    (tmp_path / "asked").mkdir()
    (tmp_path / "asked" / "visible").write_text("")
    (tmp_path / "shown").mkdir()
    (tmp_path / "shown" / "substitute").write_text("")
    (tmp_path / "f").write_text("f\n")
    router = Router()

    @router.on("open", "openat")
    def substitute(req: OpenRequest | OpenatRequest) -> Any:
        if str(req.path) != str(tmp_path / "asked"):
            return FORWARD
        assert {"read_only", "directory"} <= set(req.flags)  # and what libc adds (close_on_exec)
        return WithFds(0, [os.open(tmp_path / "shown", os.O_RDONLY | os.O_DIRECTORY)])

    ran = await run_slave([str(c_program("fopen_read")), str(tmp_path / "f"), "r", str(tmp_path / "asked")], router)
    assert (ran.status, ran.out) == (0, "f\ncloexec=0\nentries: substitute\n")


async def test_opendir_fails_with_the_errno_the_policy_raised(
    c_program: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    (tmp_path / "f").write_text("f\n")
    router = Router()

    @router.on("open", "openat")
    def no_directories(req: OpenRequest | OpenatRequest) -> Any:
        if "directory" in req.flags:
            raise Errno(errno.EACCES)
        return FORWARD

    ran = await run_slave([str(c_program("fopen_read")), str(tmp_path / "f"), "r", str(tmp_path)], router)
    assert (ran.status, ran.out) == (1, "f\ncloexec=0\nopendir: EACCES\n")


async def test_an_inherited_static_tree_list_is_dropped_without_a_sandbox(tmp_path: Path) -> None:
    """LIBC_SERVICE_LOCAL tells the shim a kernel rule allows a tree: only spawn(sandbox=...) sets it."""
    (tmp_path / "f").write_text("f\n")
    router = Router(default=FORWARD)
    decisions = observed(router)
    ran = await run_slave(
        ["sh", "-c", f'echo "${{LIBC_SERVICE_LOCAL-unset}}"; cat {tmp_path}/f'], router, env={"LIBC_SERVICE_LOCAL": "/"}
    )
    assert (ran.status, ran.out) == (0, "unset\nf\n")
    assert str(tmp_path / "f") in [str(getattr(d.request, "path", "")) for d in decisions]


async def test_stat_fails_with_the_errno_the_policy_raised(tmp_path: Path) -> None:
    router = Router()
    target = tmp_path / "locked"
    target.write_text("x")

    @router.on("stat", "lstat")
    def deadlock(req: StatRequest | LstatRequest) -> Any:
        if req.path == target:
            raise Errno(errno.EDEADLK)
        return FORWARD

    ran = await run_slave(["stat", str(target)], router)
    assert ran.status == 1
    assert f"stat: cannot statx '{target}': {os.strerror(errno.EDEADLK)}" in ran.err


async def test_a_faked_lstat_result_is_what_stat_prints(tmp_path: Path) -> None:
    router = Router()
    target = tmp_path / "plain"
    target.write_text("twelve bytes")

    @router.on("lstat")
    def fake(req: LstatRequest) -> Any:
        if req.path == target:
            return Stat(size=4242, mode=0o600, type="fifo", uid=123, nlink=7, mtime=86400 * 10**9)
        return FORWARD

    ran = await run_slave(["stat", "-c", "%s %a %F %u %h %Y", str(target)], router)
    assert (ran.status, ran.out) == (0, "4242 600 fifo 123 7 86400\n")


async def test_getaddrinfo_answers_an_invented_name() -> None:
    router = Router()

    @router.on("getaddrinfo")
    def invented(req: GetaddrinfoRequest) -> Any:
        if req.node == "invented.example":
            return [AddrInfo("192.0.2.7"), AddrInfo("2001:db8::7")]
        return FORWARD

    ran = await run_slave(["getent", "ahosts", "invented.example"], router)
    assert ran.status == 0
    lines = [line.split() for line in ran.out.splitlines()]
    assert [line[:2] for line in lines] == [
        ["192.0.2.7", "STREAM"],
        ["192.0.2.7", "DGRAM"],
        ["192.0.2.7", "RAW"],
        ["2001:db8::7", "STREAM"],
        ["2001:db8::7", "DGRAM"],
        ["2001:db8::7", "RAW"],
    ]
    native = await run_slave(["getent", "ahosts", "invented.example"], Router())
    assert native.status == 2  # the name really is invented


async def test_connect_is_replaced_by_a_socketpair_the_master_talks_on() -> None:
    router = Router()
    conversations: list[bytes] = []
    tasks: list[asyncio.Task[None]] = []

    async def talk(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with sock:
            sock.setblocking(False)
            question = await loop.sock_recv(sock, 100)
            conversations.append(question)
            await loop.sock_sendall(sock, b"pong to " + question)

    @router.on("connect_inet")
    def intercept(req: ConnectInetRequest) -> Any:
        if req.address != ip_address("127.0.0.1") or req.port != 1:
            return FORWARD
        mine, theirs = socket.socketpair()
        tasks.append(asyncio.ensure_future(talk(mine)))
        return WithFds(0, [theirs.detach()])

    client = (
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', 1))\n"
        "s.sendall(b'ping')\n"
        "print(s.recv(100).decode())\n"
    )
    ran = await run_slave([PYTHON, "-c", client], router)
    await asyncio.gather(*tasks)
    assert (ran.status, ran.out, conversations) == (0, "pong to ping\n", [b"ping"])


async def test_writes_denied_with_erofs_fail_touch_and_mkdir(tmp_path: Path) -> None:
    router = Router()

    @router.on("open", "openat")
    def read_only_fs(req: OpenRequest | OpenatRequest) -> Any:
        if req.flags & _WRITE_FLAGS:
            raise Errno(errno.EROFS)
        return FORWARD

    @router.on("mkdir", "unlink", "rmdir", "rename")
    def no_changes(req: Request) -> Any:
        raise Errno(errno.EROFS)

    touched = await run_slave(["touch", "new-file"], router, cwd=tmp_path)
    made = await run_slave(["mkdir", "new-dir"], router, cwd=tmp_path)
    assert touched.status == 1 and "touch: cannot touch 'new-file': Read-only file system" in touched.err
    assert made.status == 1 and "mkdir: cannot create directory 'new-dir': Read-only file system" in made.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
async def test_8_threads_x_500_stats_each_get_the_masters_answer(
    c_program: Callable[[str], Path], concurrent: bool
) -> None:
    program = c_program("stat_threads")
    router = Router(concurrent=concurrent)
    decisions = observed(router)

    @router.on("stat")
    def answer(req: StatRequest) -> Any:
        return Stat(size=4242 + req.tid % 1) if str(req.path) == "/nonexistent/threads" else FORWARD

    ran = await run_slave([str(program), "8", "500", "/nonexistent/threads", "4242"], router, timeout=60)
    assert (ran.status, ran.out) == (0, "calls=4000 mismatches=0 errors=0\n")
    threads = {d.request.tid for d in decisions if str(getattr(d.request, "path", "")) == "/nonexistent/threads"}
    assert len(threads) == 8


# ------------------------------------------------------------ process trees


def fake_tree_stats(router: Router) -> None:
    @router.on("stat")
    def tree(req: StatRequest) -> Any:
        return Stat(size=1) if str(req.path).startswith("/tree/") else FORWARD


def tree_calls(decisions: list[Decision]) -> dict[str, tuple[int, int]]:
    return {
        str(d.request.path): (d.request.pid, d.request.tid)  # type: ignore[union-attr]
        for d in decisions
        if d.request.function == "stat" and str(d.request.path).startswith("/tree/")
    }


async def test_a_pipeline_is_several_sessions_with_distinct_pids(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "b").write_text("b\n")
    router = Router()
    decisions = observed(router)
    async with spawn(["sh", "-c", "cat a | cat - b | sort > out"], router, cwd=tmp_path) as process:
        assert await process.wait() == 0
    assert (tmp_path / "out").read_text() == "a\nb\n"
    opener = {str(d.request.path): d.request.pid for d in decisions if d.request.function == "open"}
    # Each element is a forked child of the shell (the last one opens the
    # redirection before it execs sort): three pids, none the shell's.
    assert len({opener["a"], opener["b"], opener["out"]}) == 3
    assert process.pid not in (opener["a"], opener["b"], opener["out"])
    assert process.sessions_started >= 3
    assert len({d.session for d in decisions}) >= 3


async def test_aclose_ends_the_sessions_and_the_program_falls_back_to_its_own_calls(tmp_path: Path) -> None:
    # Closing is spelled as a Master's: await aclose(), which contextlib.aclosing calls.
    target = tmp_path / "four"
    target.write_bytes(b"four")
    router = Router()

    @router.on("stat")
    def fake_size(req: StatRequest) -> Any:
        return Stat(size=4242, mode=0o644) if str(req.path) == str(target) else FORWARD

    program = (
        "import os, sys\n"
        "print(os.stat(sys.argv[1]).st_size, flush=True)\n"
        "sys.stdin.readline()\n"
        "print(os.stat(sys.argv[1]).st_size, flush=True)\n"
    )
    pipe = asyncio.subprocess.PIPE
    process = spawn([PYTHON, "-c", program, str(target)], router, stdin=pipe, stdout=pipe)
    async with contextlib.aclosing(await process.start()):
        assert process.stdout is not None
        assert await process.stdout.readline() == b"4242\n"
    out, _ = await process.communicate(b"\n")
    assert await process.wait() == 0
    assert int(out) == os.stat(target).st_size  # the channel is gone: the shim did the real call


async def test_a_forked_child_has_its_own_session_and_pid() -> None:
    router = Router()
    fake_tree_stats(router)
    decisions = observed(router)
    program = (
        "import os\n"
        "os.stat('/tree/parent-before')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.stat('/tree/child')\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "os.stat('/tree/parent-after')\n"
        "print(pid)\n"
    )
    async with spawn([PYTHON, "-c", program], router, stdout=asyncio.subprocess.PIPE) as process:
        out, _ = await process.communicate()
    child = int(out)
    calls = tree_calls(decisions)
    assert calls["/tree/parent-before"] == (process.pid, process.pid)
    assert calls["/tree/parent-after"] == (process.pid, process.pid)
    assert calls["/tree/child"] == (child, child)
    assert process.sessions_started == 2


async def test_an_execd_program_registers_a_new_session() -> None:
    router = Router()
    fake_tree_stats(router)
    decisions = observed(router)
    program = (
        "import os, sys\n"
        "os.stat('/tree/before-exec')\n"
        "os.execv(sys.executable, [sys.executable, '-c', 'import os; os.stat(\"/tree/after-exec\")'])\n"
    )
    async with spawn([PYTHON, "-c", program], router) as process:
        assert await process.wait() == 0
    calls = tree_calls(decisions)
    assert calls["/tree/before-exec"][0] == calls["/tree/after-exec"][0] == process.pid
    assert process.sessions_started == 2


async def test_requests_carry_the_calling_threads_id() -> None:
    router = Router()
    fake_tree_stats(router)
    decisions = observed(router)
    program = (
        "import os, threading\n"
        "ids = []\n"
        "def work(): ids.append(threading.get_native_id()); os.stat('/tree/thread')\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "os.stat('/tree/main')\n"
        "print(ids[0])\n"
    )
    async with spawn([PYTHON, "-c", program], router, stdout=asyncio.subprocess.PIPE) as process:
        out, _ = await process.communicate()
    calls = tree_calls(decisions)
    assert calls["/tree/main"] == (process.pid, process.pid)
    assert calls["/tree/thread"] == (process.pid, int(out))
    assert int(out) != process.pid


async def test_relative_paths_arrive_with_the_directory_they_are_relative_to(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner").write_text("x")
    router = Router()
    seen: list[tuple[str, str | None]] = []

    @router.on("stat", "mkdir")
    def where(req: StatRequest | MkdirRequest) -> Any:
        directory = os.readlink(f"/proc/self/fd/{req.dirfd}") if req.dirfd is not None else None
        seen.append((str(req.path), directory))
        return FORWARD

    program = (
        "import os\n"
        "os.stat('sub/inner')\n"
        "fd = os.open('sub', os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.stat('inner', dir_fd=fd)\n"
        "os.mkdir('made', dir_fd=fd)\n"
        f"os.stat({str(tmp_path)!r})\n"
    )
    ran = await run_slave([PYTHON, "-c", program], router, cwd=tmp_path)
    assert ran.status == 0, ran.err
    # From the program's first call on: the interpreter's own start-up may stat
    # the working directory too (Python 3.13 does).
    first = next(index for index, entry in enumerate(seen) if entry[0] == "sub/inner")
    mine = [entry for entry in seen[first:] if entry[0] in ("sub/inner", "inner", "made", str(tmp_path))]
    assert mine == [
        ("sub/inner", str(tmp_path)),
        ("inner", str(tmp_path / "sub")),
        ("made", str(tmp_path / "sub")),
        (str(tmp_path), None),
    ]
    assert (tmp_path / "sub" / "made").is_dir()


async def test_mv_asks_for_no_replace_and_sees_the_policys_answer(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    router = Router()
    seen: list[tuple[str, str, bool]] = []

    @router.on("rename")
    def read_only(req: RenameRequest) -> Any:
        seen.append((str(req.path1), str(req.path2), req.no_replace))
        raise Errno(errno.EROFS)

    ran = await run_slave(["mv", "a", "b"], router, cwd=tmp_path)
    assert ran.status == 1
    assert "mv: cannot move 'a' to 'b': Read-only file system" in ran.err
    assert seen == [("a", "b", True)]
    renamed = await run_slave([PYTHON, "-c", "import os; os.rename('a', 'b')"], Router(), cwd=tmp_path)
    assert renamed.status == 0 and (tmp_path / "b").read_text() == "a"


async def test_a_rename_of_two_path_max_paths_reaches_the_master() -> None:
    router = Router()
    lengths: list[tuple[int, int]] = []

    @router.on("rename")
    def measure(req: RenameRequest) -> Any:
        lengths.append((len(os.fsencode(req.path1)), len(os.fsencode(req.path2))))
        raise Errno(errno.EXDEV)

    long_path = "/" + "d/" * 2046 + "ff"  # 4095 bytes: the protocol's longest
    program = (
        f"import os\np = {long_path!r}\n"
        "try:\n    os.rename(p, p[:-1] + 'g')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    ran = await run_slave([PYTHON, "-c", program], router)
    assert (ran.status, ran.out) == (0, f"{errno.EXDEV}\n")
    assert lengths == [(4095, 4095)]


# --------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + signal.SIGKILL), ("kill -TERM $$", 128 + signal.SIGTERM)],
)
async def test_exit_status_passes_through(script: str, status: int) -> None:
    async with spawn(["sh", "-c", f"cat /dev/null; {script}"], Router()) as process:
        assert await process.wait() == status
    assert process.returncode == status


async def test_stdio_and_environment_pass_through(tmp_path: Path) -> None:
    ran = await run_slave(
        ["sh", "-c", 'read line; echo "got $line in $PWD with $GREETING"; echo oops >&2; exit 5'],
        Router(),
        cwd=tmp_path,
        env={"GREETING": "hi"},
        stdin=b"input\n",
    )
    assert (ran.status, ran.out, ran.err) == (5, f"got input in {tmp_path} with hi\n", "oops\n")


async def test_cancelling_spawn_kills_reaps_and_closes_every_descriptor(fd_count: Any) -> None:
    before = fd_count.snapshot()
    router = Router()
    blocked = asyncio.Event()

    @router.on("stat")
    async def never(req: StatRequest) -> Any:
        if str(req.path) != "/tree/never":
            return FORWARD
        blocked.set()
        await asyncio.sleep(3600)

    processes = []

    async def run() -> None:
        async with spawn([PYTHON, "-c", "import os; os.stat('/tree/never')"], router) as process:
            processes.append(process)
            await process.wait()

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(blocked.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (process,) = processes
    assert process.returncode == 128 + signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # reaped, not a zombie
    fd_count.assert_unchanged(before)


async def test_an_error_in_the_block_kills_the_program(fd_count: Any) -> None:
    before = fd_count.snapshot()
    with pytest.raises(RuntimeError, match="boom"):
        async with spawn(["sleep", "60"], Router()) as process:
            raise RuntimeError("boom")
    assert process.returncode == 128 + signal.SIGKILL
    fd_count.assert_unchanged(before)


async def test_every_descriptor_is_closed_after_a_busy_tree(fd_count: Any, tmp_path: Path) -> None:
    before = fd_count.snapshot()
    (tmp_path / "f").write_text("data\n")
    for _ in range(3):
        ran = await run_slave(["sh", "-c", "cat f | cat | wc -l; ls; stat f >/dev/null"], Router(), cwd=tmp_path)
        assert ran.status == 0
    fd_count.assert_unchanged(before)


def test_spawn_needs_a_program() -> None:
    with pytest.raises(ValueError):
        spawn([], Router())


@pytest.mark.parametrize("make", [spawn, SlaveProcess], ids=["spawn", "SlaveProcess"])
@pytest.mark.parametrize("keyword", ["sandbx", "seccmop", "timeout"])
def test_a_keyword_spawn_does_not_take_is_refused_at_the_call(make: Callable[..., Any], keyword: str) -> None:
    # Before anything starts: a misspelt sandbox= that were ignored would run the program unconfined.
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
        make(["true"], Router(), **{keyword: None})


async def test_a_program_that_does_not_exist_raises_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        async with spawn(["/nonexistent/program"], Router()):
            pass


def test_python_is_a_real_binary() -> None:
    assert os.path.isfile(PYTHON) and sys.executable


# ------------------------------------------------------ the registration listener


async def test_the_registration_listener_yields_each_channel_and_ends_when_the_tree_hangs_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from libc_service.protocol import wire_registration
    from libc_service.processes.spawn import RegistrationListener

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = RegistrationListener(mine)
    channel, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.send(b"not a registration")
    for pid in (4242, os.getpid()):  # the kernel names the sender: only its own pid is believed
        theirs.sendmsg(
            [wire_registration.encode_registration(pid)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [channel.fileno()]))],
        )
    channel.close()
    theirs.close()
    registered = [(pid, sock) async for pid, sock in listener]
    assert [pid for pid, _ in registered] == [os.getpid()]
    ((_, received),) = registered
    received.send(b"ping")
    assert kept.recv(16) == b"ping"
    received.close()
    kept.close()
    assert "ignoring a malformed registration" in caplog.text
    assert f"it names pid 4242 but was sent by pid {os.getpid()}" in caplog.text


async def test_closing_the_registration_listener_ends_a_waiting_iteration() -> None:
    from libc_service.processes.spawn_register import RegistrationListener

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = RegistrationListener(mine)

    async def drain() -> list[tuple[int, socket.socket]]:
        return [item async for item in listener]

    waiting = asyncio.ensure_future(drain())
    await asyncio.sleep(0.01)
    listener.close()
    assert await asyncio.wait_for(waiting, 60) == []
    theirs.close()
