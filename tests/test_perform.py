"""perform(): the master does the call for the slave, and the program cannot tell.

The end-to-end half runs real programs twice — natively, and as slaves of a
router whose only handler is ``return perform(request)`` — and compares exit
status, output and the files left behind. The unit half calls ``perform``
directly: the exact path text, FIFOs that must not block the event loop,
the slave's credentials and umask, and ``beneath=`` refusing every escape
for every function as ``openat2`` does.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import inspect
import os
import signal
import select
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FdCount
from nameserver import Nameserver, nameserver  # noqa: F401 - nameserver is a fixture
from shimtools import PYTHON, needs_shim, run_native, run_slave

from libc_service import Decision, Resolver, Router, Stat, WithFds, deny, perform, spawn

from libc_service.policy import names
from libc_service.policy.conditions import under
from libc_service.protocol.requests import (
    FUNCTIONS,
    OPEN_FLAGS,
    AccessRequest,
    BindInetRequest,
    BindUnixRequest,
    ConnectInetRequest,
    ConnectUnixRequest,
    EaccessRequest,
    GetaddrinfoRequest,
    LstatRequest,
    MkdirRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    RmdirRequest,
    StatRequest,
    UnlinkRequest,
)

ME = {"pid": os.getpid(), "tid": threading.get_native_id()}
CONTEXT_FIELDS = ("umask", "fsuid", "fsgid", "groups")
#: Whether requests carry the slave's umask and credentials (and the shim sends them).
HAS_CONTEXT = all(name in OpenRequest.model_fields for name in CONTEXT_FIELDS)
HAS_NON_BLOCKING = "non_blocking" in OPEN_FLAGS
PATH_FUNCTIONS = [
    "open",
    "openat",
    "stat",
    "lstat",
    "access",
    "eaccess",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "connect_unix",
    "bind_unix",
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")


class _WithContext:
    """A request plus the umask/credential fields, whether or not the model has them yet."""

    def __init__(self, request: Any, fields: dict[str, Any]) -> None:
        self._request = request
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        if name in self._fields:
            return self._fields[name]
        return getattr(self._request, name)


def as_slave(request: Any, **fields: Any) -> Any:
    if all(name in type(request).model_fields for name in fields):
        return request.model_copy(update=fields)
    return _WithContext(request, fields)


@pytest.fixture
def here(tmp_path: Path) -> Iterator[int]:
    """The test's directory as a slave's dirfd."""
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def errno_of(call: Any) -> str:
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    if isinstance(result, WithFds):
        for fd in result.fds:
            os.close(fd)
    return "ok"


def read_all(result: WithFds) -> bytes:
    (fd,) = result.fds
    try:
        return os.pread(fd, 4096, 0)
    finally:
        os.close(fd)


# ============================================================ real programs


class Performing:
    """A router that performs every call with perform(), and what it saw.

    With ``beneath``, calls on paths in that tree are performed beneath it
    (the kernel confines them), the others as they are.
    """

    def __init__(self, beneath: Path | None = None) -> None:
        self.router = Router(default=deny(errno.ENOSYS))
        self.calls: collections.Counter[str] = collections.Counter()
        if beneath is not None:
            root = beneath

            @self.router.on(*PATH_FUNCTIONS, when=under(str(root)))
            def perform_beneath(request: Any) -> Any:
                """Calls on the tree, performed beneath it."""
                return perform(request, beneath=root)

        @self.router.on(*FUNCTIONS)
        def perform_it(request: Any) -> Any:
            """Every call, done by the master as the slave would have done it."""
            return perform(request)

        self.router.observe(self._seen)

    def _seen(self, decision: Decision) -> None:
        self.calls[decision.request.function] += 1
        self.calls["beneath"] += decision.route.endswith("perform_beneath")
        assert decision.outcome in ("reply", "error"), decision


def tree(root: Path) -> dict[str, tuple[str, bytes | None, int, int]]:
    """Everything under root: kind, content of files, permission bits, owner."""
    found: dict[str, tuple[str, bytes | None, int, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file" if path.is_file() else "special"
        content = path.read_bytes() if kind == "file" else None
        found[str(path.relative_to(root))] = (kind, content, info.st_mode & 0o7777, info.st_uid)
    return found


def populate(root: Path) -> None:
    root.mkdir()
    (root / "f").write_text("f\n")
    (root / "dir").mkdir()
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text("a\n")
    (root / "src" / "inner").mkdir()
    (root / "src" / "inner" / "b.txt").write_text("b\n")
    (root / "src" / "rel").symlink_to("a.txt")
    (root / "tree").mkdir()
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x").write_text("a/x, reached through link/..\n")
    (root / "link").symlink_to("a/b")
    secret = root / "root_only"
    secret.write_text("secret\n")
    secret.chmod(0o600)


def py(code: str) -> list[str]:
    return [PYTHON, "-c", code]


PROGRAMS: dict[str, tuple[list[str], str]] = {
    "mv into a directory": (["mv", "f", "dir/"], "rename"),
    "cp -a into a tree": (["cp", "-a", "src", "tree/"], "open"),
    "a trailing slash is EISDIR": (
        py(
            "try:\n open('x/', 'w')\nexcept OSError as e:\n print(e.errno, e.strerror)\n"
            "import os; print(os.path.exists('x'))"
        ),
        "open",
    ),
    "dotdot after a symlink": (["cat", "link/../x"], "open"),
    "dotdot after a symlink, stat and mkdir": (
        py("import os; print(os.stat('link/../x').st_size); os.mkdir('link/../made'); print(os.listdir('a'))"),
        "mkdir",
    ),
    "a removed working directory": (
        [
            "sh",
            "-c",
            "mkdir gone && cd gone && rmdir ../gone && "
            + " ".join(
                [
                    PYTHON,
                    "-c",
                    '\'import os\ntry:\n open("x", "w")\nexcept OSError as e:\n print(e.strerror)\n'
                    'print(os.stat(".").st_nlink, os.listdir("."))\'',
                ]
            ),
        ],
        "open",
    ),
    "rename and unlink and rmdir": (
        py("import os; os.rename('f', 'dir/g'); os.unlink('dir/g'); os.rmdir('dir');print(sorted(os.listdir('.')))"),
        "rmdir",
    ),
    "access": (
        py(
            "import os; print([os.access(p, m) for p in ('f', 'dir/', 'f/', 'missing') "
            "for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)])"
        ),
        "access",
    ),
}


@needs_shim
@pytest.mark.slow
@pytest.mark.parametrize("beneath", [False, True], ids=["perform", "perform-beneath"])
@pytest.mark.parametrize("name", PROGRAMS)
async def test_a_program_under_perform_behaves_as_natively(name: str, beneath: bool, tmp_path: Path) -> None:
    argv, expected = PROGRAMS[name]
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    populate(native_dir)
    populate(slave_dir)
    native = run_native(argv, cwd=native_dir)
    performing = Performing(slave_dir.resolve() if beneath else None)
    slave = await run_slave(argv, performing.router, cwd=slave_dir)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert tree(slave_dir) == tree(native_dir)
    assert performing.calls[expected] > 0, performing.calls
    assert (performing.calls["beneath"] > 0) == beneath, performing.calls


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CONTEXT, reason="requests do not carry the slave's umask yet")
async def test_mkdir_and_create_under_umask_077_as_natively(tmp_path: Path) -> None:
    argv = [
        "sh",
        "-c",
        "umask 077 && mkdir d && mkdir -p p/q && touch t && "
        + PYTHON
        + " -c 'import os; os.close(os.open(\"o\", os.O_CREAT | os.O_WRONLY, 0o666))' && "
        "stat -c '%a %n' d p p/q t o",
    ]
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    populate(native_dir)
    populate(slave_dir)
    native = run_native(argv, cwd=native_dir)
    slave = await run_slave(argv, Performing().router, cwd=slave_dir)
    assert native.out.splitlines()[0] == "700 d"
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert tree(slave_dir) == tree(native_dir)


FIFO_PROGRAM = """
import os, time
os.mkfifo('p')
child = os.fork()
if child == 0:
    time.sleep(0.3)
    fd = os.open('p', os.O_WRONLY)   # blocks until the parent reads: it already does
    os.write(fd, b'through the fifo')
    os._exit(0)
fd = os.open('p', os.O_RDONLY)       # blocks until the child opens its end
print(os.read(fd, 100).decode())
os.waitpid(child, 0)
os.close(fd)
try:
    os.open('p', os.O_WRONLY | os.O_NONBLOCK)
except OSError as e:
    print('non-blocking write open without a reader:', e.strerror)
reader = os.open('p', os.O_RDONLY | os.O_NONBLOCK)
print('non-blocking read open: at once', os.get_blocking(reader))
writer = os.open('p', os.O_WRONLY)  # a reader exists: no wait
print('blocking write open with a reader:', os.get_blocking(writer))
"""


@needs_shim
@pytest.mark.slow
@pytest.mark.skipif(not HAS_NON_BLOCKING, reason="requests do not carry O_NONBLOCK yet")
async def test_fifo_opens_with_and_without_o_nonblock_as_natively(tmp_path: Path) -> None:
    argv = py(FIFO_PROGRAM)
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    native_dir.mkdir()
    slave_dir.mkdir()
    native = run_native(argv, cwd=native_dir)
    assert native.status == 0 and "through the fifo" in native.out, native
    performing = Performing()
    slave = await run_slave(argv, performing.router, cwd=slave_dir, timeout=20)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert performing.calls["open"] >= 5, performing.calls  # the FIFO opens were the master's


@needs_shim
@pytest.mark.slow
async def test_a_slave_blocked_on_a_fifo_leaves_the_master_free_and_killable(tmp_path: Path) -> None:
    """The open waits on a thread: the loop answers other calls, SIGTERM ends the program,
    and closing the session releases the thread that waited for a writer."""
    os.mkfifo(tmp_path / "p")
    threads = _perform_threads()
    performing = Performing()
    async with spawn(
        [PYTHON, "-c", "import os; os.open('p', os.O_RDONLY)"],
        performing.router,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        deadline = time.monotonic() + 60  # a hang's bound, not a speed
        while not (started := _perform_threads() - threads):  # the open reached the master and waits there
            assert time.monotonic() < deadline, performing.calls
            await asyncio.sleep(0.01)
        assert process.returncode is None
        ticks = 0
        for _ in range(10):  # the event loop is not blocked
            await asyncio.sleep(0.01)
            ticks += 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 60  # a hang's bound, not a speed
    while any(thread.is_alive() for thread in started):
        assert time.monotonic() < deadline, "the thread waiting on the FIFO was not released"
        await asyncio.sleep(0.01)
    assert ticks == 10


@needs_shim
@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        py("print(open('/dev/stdin').read().upper(), end='')"),
        ["cat", "/dev/stdin", "/dev/fd/0"],
        py(
            "import os; print(os.readlink('/proc/self/fd/0').startswith('pipe:'), "
            "os.stat('/proc/self').st_ino == os.stat(f'/proc/{os.getpid()}').st_ino)"
        ),
    ],
    ids=["python /dev/stdin", "cat /dev/stdin /dev/fd/0", "/proc/self"],
)
async def test_the_callers_own_names_mean_the_slave(argv: list[str], tmp_path: Path) -> None:
    native = run_native(argv, cwd=tmp_path, stdin=b"fed to stdin\n")
    performing = Performing()
    slave = await run_slave(argv, performing.router, cwd=tmp_path, stdin=b"fed to stdin\n")
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert native.status == 0 and native.out


@needs_shim
@needs_root
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CONTEXT, reason="requests do not carry the slave's credentials yet")
async def test_a_slave_that_dropped_to_nobody_is_refused_what_nobody_is(tmp_path: Path) -> None:
    argv = py(
        "import os\n"
        "os.setegid(65534); os.seteuid(65534)\n"
        "for call in (lambda: open('root_only').read(), lambda: os.mkdir('made_by_nobody'),"
        " lambda: os.access('root_only', os.R_OK, effective_ids=True), lambda: os.stat('root_only').st_mode & 0o777):\n"
        " try:\n  print(call())\n except OSError as e:\n  print(e.strerror)\n"
        "os.seteuid(0); print(open('root_only').read(), end='')\n"
    )
    native_dir, slave_dir = tmp_path / "native", tmp_path / "slave"
    populate(native_dir)
    populate(slave_dir)
    native = run_native(argv, cwd=native_dir)
    assert native.out.splitlines()[0] == "Permission denied"
    slave = await run_slave(argv, Performing().router, cwd=slave_dir)
    assert (slave.status, slave.out, slave.err) == (native.status, native.out, native.err)
    assert tree(slave_dir) == tree(native_dir)
    assert os.geteuid() == 0 and os.getegid() == 0  # the master's own identity is untouched


# ============================================================ the exact path


def test_open_x_slash_for_writing_is_eisdir_and_creates_nothing(tmp_path: Path, here: int) -> None:
    request = OpenRequest(path="x/", flags=["write_only", "create", "truncate"], mode=0o644, dirfd=here, **ME)
    assert errno_of(lambda: perform(request)) == "EISDIR"
    assert not (tmp_path / "x").exists()


def test_dotdot_after_a_symlink_is_resolved_by_the_kernel(tmp_path: Path, here: int) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").write_text("a/x")
    (tmp_path / "link").symlink_to("a/b")
    assert read_all(perform(OpenRequest(path="link/../x", flags=["read_only"], dirfd=here, **ME))) == b"a/x"
    assert perform(StatRequest(path="link/../x", dirfd=here, **ME)).size == 3


def test_a_removed_directory_still_resolves_through_its_descriptor(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    gone = os.open(tmp_path / "gone", os.O_PATH | os.O_DIRECTORY)
    try:
        (tmp_path / "gone").rmdir()
        creating = OpenRequest(path="x", flags=["write_only", "create"], mode=0o644, dirfd=gone, **ME)
        assert errno_of(lambda: perform(creating)) == "ENOENT"  # what the kernel says to the slave
        assert perform(StatRequest(path=".", dirfd=gone, **ME)).nlink == 0
    finally:
        os.close(gone)


def test_a_relative_path_without_a_directory_is_the_slaves_working_directory(tmp_path: Path, sleeper: int) -> None:
    (tmp_path / "here.txt").write_text("here")
    request = OpenRequest(path="here.txt", flags=["read_only"], pid=sleeper, tid=sleeper)
    assert read_all(perform(request)) == b"here"


def test_a_symlink_to_the_masters_descriptors_is_refused(tmp_path: Path, here: int, sleeper: int) -> None:
    """x -> /proc/self/fd/N names the slave's descriptor N, never the master's."""
    secret = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        (tmp_path / "x").symlink_to(f"/proc/self/fd/{secret}")
        (tmp_path / "victim").write_text("stays")
        # What the slave itself gets: it has no descriptor with that number.
        native = errno_of(lambda: os.stat(f"/proc/{sleeper}/fd/{secret}/"))
        assert native == "ENOENT"
        slave = {"pid": sleeper, "tid": sleeper}
        assert errno_of(lambda: perform(StatRequest(path="x/", dirfd=here, **slave))) == native
        assert errno_of(lambda: perform(UnlinkRequest(path="x/victim", dirfd=here, **slave))) == native
        assert (tmp_path / "victim").exists()
    finally:
        os.close(secret)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[int]:
    """A slave stand-in (not the master), working in tmp_path: its pid."""
    process = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60  # a hang's bound, not a speed
        while os.readlink(f"/proc/{process.pid}/exe").split("/")[-1] != "sleep":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_the_slaves_magic_links_lead_to_the_slave_and_no_further(tmp_path: Path, sleeper: int) -> None:
    (tmp_path / "file").write_text("in the slave's cwd")
    mine = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        (tmp_path / "x").symlink_to(f"/proc/self/fd/{mine}")
        slave = {"pid": sleeper, "tid": sleeper}
        opened = perform(OpenRequest(path="/proc/self/cwd/file", flags=["read_only"], **slave))
        assert read_all(opened) == b"in the slave's cwd"
        # Past the slave's own magic link, a planted symlink to /proc/self/fd/N is the
        # slave's descriptor N (which it does not have), never the master's.
        native = errno_of(lambda: os.stat(f"/proc/{sleeper}/fd/{mine}/"))
        assert native == "ENOENT"
        assert errno_of(lambda: perform(StatRequest(path="/proc/self/cwd/x/", **slave))) == native
        # The master's own /proc/<pid> is refused, however it is reached.
        climbing = f"/proc/self/../{os.getpid()}/fd/{mine}/file"
        assert errno_of(lambda: perform(StatRequest(path=climbing, **slave))) == "EACCES"
        assert perform(LstatRequest(path="/dev/fd/1", **slave)).type == "symlink"
    finally:
        os.close(mine)


@pytest.mark.parametrize(("directory", "path"), [("/", "proc/self"), ("/usr", "../proc/./self/"), ("/proc", "self")])
def test_a_relative_path_to_proc_self_is_the_slaves_too(sleeper: int, directory: str, path: str) -> None:
    dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        found = perform(StatRequest(path=path, dirfd=dirfd, pid=sleeper, tid=sleeper))
        assert found.ino == os.stat(f"/proc/{sleeper}").st_ino
    finally:
        os.close(dirfd)


def test_names_for_the_caller_need_a_pid() -> None:
    assert errno_of(lambda: perform(StatRequest(path="/dev/stdin"))) == "EACCES"
    assert errno_of(lambda: perform(OpenRequest(path="relative", flags=["read_only"]))) == "EACCES"


def test_o_path_opens_work(tmp_path: Path, here: int) -> None:
    (tmp_path / "d").mkdir()
    result = perform(OpenRequest(path="d", flags=["read_only", "path", "directory"], dirfd=here, **ME))
    (fd,) = result.fds
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "d").stat().st_ino
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


def test_every_function_answers_as_the_kernel(tmp_path: Path, here: int) -> None:
    (tmp_path / "f").write_text("f")
    (tmp_path / "d").mkdir()
    # os.lstat has stat's fields; statx's own (birth time, mount id …) are compared in test_perform_times.
    statx_only = {"btime": None, "attributes": 0, "attributes_mask": 0, "mnt_id": None}
    performed = perform(LstatRequest(path="f", dirfd=here, **ME)).model_copy(update=statx_only)
    assert performed == Stat.from_os(os.lstat(tmp_path / "f"))
    assert perform(AccessRequest(path="f", amode="rw", dirfd=here, **ME)) == 0
    assert errno_of(lambda: perform(EaccessRequest(path="f", amode="x", dirfd=here, **ME))) == "EACCES"
    assert errno_of(lambda: perform(AccessRequest(path="f/", amode="f", dirfd=here, **ME))) == "ENOTDIR"
    assert perform(MkdirRequest(path="m/", mode=0o700, dirfd=here, **ME)) == 0
    assert errno_of(lambda: perform(MkdirRequest(path="m", mode=0o700, dirfd=here, **ME))) == "EEXIST"
    assert errno_of(lambda: perform(RmdirRequest(path="f/", dirfd=here, **ME))) == "ENOTDIR"
    assert errno_of(lambda: perform(UnlinkRequest(path="d", dirfd=here, **ME))) == "EISDIR"
    assert perform(RenameRequest(path1="f", path2="d/g", dirfd1=here, dirfd2=here, **ME)) == 0
    (tmp_path / "h").write_text("h")
    noreplace = RenameRequest(path1="h", path2="d/g", dirfd1=here, dirfd2=here, no_replace=True, **ME)
    assert errno_of(lambda: perform(noreplace)) == "EEXIST"
    assert perform(RmdirRequest(path="m", dirfd=here, **ME)) == 0
    assert perform(UnlinkRequest(path="h", dirfd=here, **ME)) == 0
    assert sorted(os.listdir(tmp_path)) == ["d"] and os.listdir(tmp_path / "d") == ["g"]


def test_the_descriptor_is_blocking_unless_asked_and_close_on_exec(tmp_path: Path, here: int) -> None:
    (tmp_path / "f").write_text("f")
    result = perform(OpenatRequest(path="f", flags=["read_only"], dirfd=here, **ME))
    (fd,) = result.fds
    try:
        assert result.result == fd and os.get_blocking(fd) and not os.get_inheritable(fd)
    finally:
        os.close(fd)
    if HAS_NON_BLOCKING:
        (fd,) = perform(OpenatRequest(path="f", flags=["read_only", "non_blocking"], dirfd=here, **ME)).fds
        try:
            assert not os.get_blocking(fd)
        finally:
            os.close(fd)


# ================================================================== FIFOs


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _perform_threads() -> set[threading.Thread]:
    """perform's own threads, by identity: counting all threads would count other tests' daemons ending meanwhile."""
    return {thread for thread in threading.enumerate() if thread.name.startswith("libc-service ")}


async def test_a_blocking_fifo_open_is_awaited_not_blocking_the_loop(fifo: Path, here: int) -> None:
    pending = perform(OpenRequest(path="fifo", flags=["read_only"], dirfd=here, **ME))
    assert inspect.isawaitable(pending)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0.05)
    assert not task.done()  # the loop runs on while the open waits for a writer
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"hello")
        result = await asyncio.wait_for(task, 60)
        (fd,) = result.fds
        assert os.read(fd, 5) == b"hello" and os.get_blocking(fd)
        os.close(fd)
    finally:
        os.close(writer)


@pytest.mark.parametrize("flags", [["read_only"], ["write_only"]])
async def test_cancelling_a_blocked_fifo_open_releases_its_thread(
    fifo: Path,
    here: int,
    flags: list[str],
    fd_count: FdCount,
) -> None:
    before, threads = fd_count.snapshot(), _perform_threads()
    task = asyncio.ensure_future(perform(OpenRequest(path="fifo", flags=flags, dirfd=here, **ME)))
    deadline = time.monotonic() + 60  # a hang's bound, not a speed
    while not (started := _perform_threads() - threads):  # the open's thread starts (late on a loaded machine)
        assert time.monotonic() < deadline, "no thread took the blocking open"
        await asyncio.sleep(0.01)
    (thread,) = started
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 60  # a hang's bound, not a speed
    while thread.is_alive():  # the thread got its other end and ended
        assert time.monotonic() < deadline, "the blocked open was not released"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # its result, delivered after the cancel, is closed on the loop
    fd_count.assert_unchanged(before)


@pytest.mark.skipif(not HAS_NON_BLOCKING, reason="requests do not carry O_NONBLOCK yet")
async def test_a_non_blocking_fifo_open_is_the_kernels(fifo: Path, here: int) -> None:
    writing = OpenRequest(path="fifo", flags=["write_only", "non_blocking"], dirfd=here, **ME)
    assert errno_of(lambda: perform(writing)) == "ENXIO"
    result = perform(OpenRequest(path="fifo", flags=["read_only", "non_blocking"], dirfd=here, **ME))
    assert isinstance(result, WithFds)
    os.close(result.fds[0])


def test_without_a_running_loop_a_fifo_open_blocks_like_the_slaves(fifo: Path, here: int) -> None:
    def write_later() -> None:
        time.sleep(0.1)
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"late")
        os.close(fd)

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        result = perform(OpenRequest(path="fifo", flags=["read_only"], dirfd=here, **ME))
        (fd,) = result.fds
        assert os.read(fd, 4) == b"late"
        os.close(fd)
    finally:
        writer.join()


# ============================================================ credentials, umask


@needs_root
def test_a_root_master_acting_for_nobody_gets_eacces(tmp_path: Path, here: int) -> None:
    (tmp_path / "root_only").write_text("secret")
    (tmp_path / "root_only").chmod(0o600)
    tmp_path.chmod(0o777)
    # No pid: the requests name no thread whose capabilities could be read
    # (this test's own has them all), so the ids alone decide.
    nobody = {"fsuid": 65534, "fsgid": 65534, "groups": ()}
    reading = as_slave(OpenRequest(path="root_only", flags=["read_only"], dirfd=here), **nobody)
    assert errno_of(lambda: perform(reading)) == "EACCES"
    assert (
        errno_of(lambda: perform(as_slave(AccessRequest(path="root_only", amode="r", dirfd=here), **nobody)))
        == "EACCES"
    )
    assert perform(as_slave(MkdirRequest(path="made", mode=0o755, dirfd=here), **nobody)) == 0
    made = (tmp_path / "made").stat()
    assert (made.st_uid, made.st_gid) == (65534, 65534)
    assert (os.geteuid(), os.getegid(), os.getuid()) == (0, 0, 0)  # the master is still itself
    assert read_all(perform(OpenRequest(path="root_only", flags=["read_only"], dirfd=here, **ME))) == b"secret"


@needs_root
def test_a_perform_thread_takes_the_slaves_ids_and_gives_them_back() -> None:
    from libc_service.acting.identity import Switch, run_switched

    seen: list[Any] = []

    def on_a_thread() -> None:
        switch = Switch(ids=(65534, 65534, ()))
        before = (os.getresuid(), os.getresgid(), os.getgroups())
        seen.append(run_switched(switch, lambda: (os.geteuid(), os.getegid(), os.getgroups())))
        seen.append((os.getresuid(), os.getresgid(), os.getgroups()) == before)

    thread = threading.Thread(target=on_a_thread)
    thread.start()
    thread.join()
    assert seen == [(65534, 65534, []), True]
    assert (os.geteuid(), os.getegid()) == (0, 0)  # other threads never changed


def test_the_slaves_umask_applies_to_what_it_creates(tmp_path: Path, here: int) -> None:
    masked = {"umask": 0o077}
    create = OpenRequest(path="file", flags=["write_only", "create"], mode=0o666, dirfd=here, **ME)
    os.close(perform(as_slave(create, **masked)).fds[0])
    perform(as_slave(MkdirRequest(path="dir", mode=0o777, dirfd=here, **ME), **masked))
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700
    before = os.umask(0o022)
    os.umask(before)
    assert before == 0o022 or before == os.umask(before)  # the master's own umask is unchanged


def _default_acl_rwx(directory: Path) -> None:
    """``setfacl -d -m u::rwx,g::rwx,o::rwx``, as the xattr the kernel reads (no acl tools needed)."""
    entries = [(0x01, 7), (0x04, 7), (0x20, 7)]  # ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER: rwx
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    try:
        os.setxattr(directory, "system.posix_acl_default", value)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this filesystem: {exc.strerror}")


def test_a_default_acl_wins_over_the_umask_as_in_the_kernel(tmp_path: Path, here: int) -> None:
    """With a default ACL the kernel ignores the umask: mode & ~umask computed by hand would be wrong."""
    _default_acl_rwx(tmp_path)
    create = OpenRequest(path="file", flags=["write_only", "create"], mode=0o666, dirfd=here, **ME)
    os.close(perform(as_slave(create, umask=0o077)).fds[0])
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o666


# ================================================================ beneath=


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """root/ with ways out of it, next to outside/::

    root/in.txt, root/empty/
    root/abs  -> <tmp>/outside        (an absolute symlink)
    root/up   -> ../outside           (a relative one that climbs out)
    outside/secret, outside/empty/, outside/sock (listening)
    """
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "empty").mkdir(parents=True)
    (outside / "empty").mkdir(parents=True)
    (root / "in.txt").write_text("in")
    (outside / "secret").write_text("secret")
    (root / "abs").symlink_to(outside)
    (root / "up").symlink_to("../outside")
    return tmp_path


def _escapes(function: str, way: str, rootfd: int, unix: int) -> Any:
    """A request of ``function`` that leaves the root by ``way``."""
    out = {"dotdot": "../outside", "absolute": "abs", "climbing": "up"}[way]
    path = f"{out}/secret"
    common: dict[str, Any] = {"dirfd": rootfd, **ME}
    if function in ("open", "openat"):
        return (OpenRequest if function == "open" else OpenatRequest)(path=path, flags=["read_only"], **common)
    if function in ("stat", "lstat", "unlink"):
        return {"stat": StatRequest, "lstat": LstatRequest, "unlink": UnlinkRequest}[function](path=path, **common)
    if function in ("access", "eaccess"):
        return (AccessRequest if function == "access" else EaccessRequest)(path=path, amode="r", **common)
    if function == "mkdir":
        return MkdirRequest(path=f"{out}/made", mode=0o755, **common)
    if function == "rmdir":
        return RmdirRequest(path=f"{out}/empty", **common)
    if function == "rename":
        return RenameRequest(path1="in.txt", path2=f"{out}/moved", dirfd1=rootfd, dirfd2=rootfd, **ME)
    # A socket path comes without a dirfd here: absolute, in the root.
    in_root = os.readlink(f"/proc/self/fd/{rootfd}")
    if function == "connect_unix":
        return ConnectUnixRequest(path=f"{in_root}/{out}/sock", socket=unix, **ME)
    assert function == "bind_unix"
    return BindUnixRequest(path=f"{in_root}/{out}/bound", socket=unix, **ME)


@pytest.mark.parametrize("way", ["dotdot", "absolute", "climbing"])
@pytest.mark.parametrize("function", PATH_FUNCTIONS)
def test_beneath_refuses_every_way_out_for_every_function(
    jail: Path,
    function: str,
    way: str,
    fd_count: FdCount,
) -> None:
    root, outside = jail / "root", jail / "outside"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(outside / "sock"))
    listener.listen()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    before_tree = tree(jail)
    before = fd_count.snapshot()
    try:
        request = _escapes(function, way, rootfd, unix.fileno())
        assert errno_of(lambda: perform(request, beneath=root)) == "EXDEV"
        fd_count.assert_unchanged(before)
    finally:
        os.close(rootfd)
        unix.close()
        listener.close()
    assert tree(jail) == before_tree


@pytest.mark.parametrize("function", ["open", "stat", "access", "mkdir", "unlink", "rename", "connect_unix"])
def test_beneath_refuses_magic_links_with_eloop(function: str, tmp_path: Path) -> None:
    """/proc/self/cwd is the slave's (here: this process's) cwd — a magic link."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = "/proc/self/cwd/x"
    try:
        request: Any = {
            "open": lambda: OpenRequest(path=path, flags=["read_only"], **ME),
            "stat": lambda: StatRequest(path=path, **ME),
            "access": lambda: AccessRequest(path=path, amode="f", **ME),
            "mkdir": lambda: MkdirRequest(path=path, mode=0o755, **ME),
            "unlink": lambda: UnlinkRequest(path=path, **ME),
            "rename": lambda: RenameRequest(path1=path, path2="/proc/self/cwd/y", **ME),
            "connect_unix": lambda: ConnectUnixRequest(path=path, socket=unix.fileno(), **ME),
        }[function]()
        assert errno_of(lambda: perform(request, beneath="/proc")) == "ELOOP"
    finally:
        unix.close()


def test_beneath_allows_what_stays_inside(jail: Path) -> None:
    root = jail / "root"
    rootfd = os.open(root / "empty", os.O_PATH | os.O_DIRECTORY)
    try:
        assert (
            read_all(perform(OpenRequest(path="../in.txt", flags=["read_only"], dirfd=rootfd, **ME), beneath=root))
            == b"in"
        )
        # Leading ".." from the slave's directory leave the root's name and come back: its canonical
        # name says where they lead, so only a later ".." (after a symlink, say) is the kernel's to refuse.
        assert (
            read_all(
                perform(OpenRequest(path="../../root/in.txt", flags=["read_only"], dirfd=rootfd, **ME), beneath=root)
            )
            == b"in"
        )
        assert perform(MkdirRequest(path="../made/", mode=0o755, dirfd=rootfd, **ME), beneath=root) == 0
        assert (
            perform(RenameRequest(path1="../in.txt", path2=f"{root}/made/in.txt", dirfd1=rootfd, **ME), beneath=root)
            == 0
        )
        assert perform(StatRequest(path=f"{root}/made/in.txt", **ME), beneath=root).size == 2
        assert (
            errno_of(
                lambda: perform(
                    OpenRequest(path=f"{root}/made/", flags=["write_only", "create"], mode=0o644, **ME), beneath=root
                )
            )
            == "EISDIR"
        )
    finally:
        os.close(rootfd)


# ================================================================= network


def test_getaddrinfo_without_a_loop_answers_every_address() -> None:
    answer = perform(GetaddrinfoRequest(node="localhost", service="80", protocol="tcp", **ME))
    native = {(info[4][0], info[4][1]) for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    assert {(str(entry.address), entry.port) for entry in answer} == native


async def test_getaddrinfo_on_a_loop_is_awaited(nameserver: Nameserver) -> None:
    numeric = perform(GetaddrinfoRequest(node="127.0.0.1", service="53", protocol="udp", **ME))
    assert [(str(entry.address), entry.port) for entry in numeric] == [("127.0.0.1", 53)]  # no lookup to wait for
    nameserver.zone["known.test"] = (["192.0.2.1"], 300)
    token = names.enter(names.NameScope(Resolver([nameserver.address], hosts=None), None))
    try:
        pending = perform(GetaddrinfoRequest(node="known.test", service="53", protocol="udp", **ME))
        assert asyncio.iscoroutine(pending)
        answer = await pending
        assert [(str(entry.address), entry.port) for entry in answer] == [("192.0.2.1", 53)]
        with pytest.raises(socket.gaierror):
            await perform(GetaddrinfoRequest(node="no-such-host.test", **ME))
    finally:
        names.leave(token)


async def test_connect_inet_connects_the_slaves_own_socket() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    slaves = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slaves.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 12345)
    try:
        port = server.getsockname()[1]
        result = perform(ConnectInetRequest(address="127.0.0.1", port=port, socket=slaves.fileno(), **ME))
        if asyncio.iscoroutine(result):
            result = await asyncio.wait_for(result, 60)
        (fd,) = result.fds
        assert os.get_blocking(fd)  # the slave's socket was blocking
        with socket.socket(fileno=fd) as connected:
            assert os.fstat(fd).st_ino == os.fstat(slaves.fileno()).st_ino  # the very same socket
            peer, _ = server.accept()
            with peer:
                assert slaves.getpeername() == peer.getsockname()
                assert connected.type == socket.SOCK_STREAM
        assert slaves.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 12345  # as the program set it
        # Connected, as after a native blocking connect: connecting again is EISCONN.
        with pytest.raises(OSError) as again:
            perform(ConnectInetRequest(address="127.0.0.1", port=port, socket=slaves.fileno(), **ME))
        assert again.value.errno == errno.EISCONN
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other, pytest.raises(ConnectionRefusedError):
            refused = perform(ConnectInetRequest(address="127.0.0.1", port=1, socket=other.fileno(), **ME))
            if asyncio.iscoroutine(refused):
                await refused
    finally:
        slaves.close()
        server.close()


def test_a_nonblocking_connect_in_progress_is_the_slaves_to_finish() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    slaves = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slaves.setblocking(False)
    with server, slaves:
        native = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        native.setblocking(False)
        with native:
            expected = native.connect_ex(server.getsockname())
        try:
            perform(ConnectInetRequest(address="127.0.0.1", port=server.getsockname()[1], socket=slaves.fileno(), **ME))
            code = 0
        except OSError as exc:
            code = exc.errno or 0
        assert code == expected
        select.select([], [slaves], [], 5)
        assert slaves.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert slaves.getpeername() == server.getsockname()


def test_bind_inet_and_unix_hand_over_a_bound_socket(tmp_path: Path, here: int) -> None:
    slaves = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        result = perform(BindInetRequest(address="127.0.0.1", port=0, socket=slaves.fileno(), **ME))
        with socket.socket(fileno=result.fds[0]) as bound:
            assert bound.getsockname()[0] == "127.0.0.1" and bound.getsockname()[1] != 0
            assert bound.type == socket.SOCK_DGRAM
        binding = BindUnixRequest(path=f"{tmp_path}/sock", socket=unix.fileno(), **ME)
        result = perform(as_slave(binding, umask=0o077))
        with socket.socket(fileno=result.fds[0]) as bound:
            # The slave's own socket, bound to the slave's exact text.
            assert bound.getsockname() == unix.getsockname() == f"{tmp_path}/sock"
        assert stat.S_ISSOCK((tmp_path / "sock").stat().st_mode)
        assert stat.S_IMODE((tmp_path / "sock").stat().st_mode) == 0o700
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            again = BindUnixRequest(path=f"{tmp_path}/sock", socket=other.fileno(), **ME)
            assert errno_of(lambda: perform(again)) == "EADDRINUSE"
    finally:
        slaves.close()
        unix.close()
