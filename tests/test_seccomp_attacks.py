"""The seccomp transport attacked: what a hostile static program tries, with real threads.

Each test runs ``tests/c/seccomp_attacks.c`` (built ``-static``: no shim is
involved, only the filter and the master) under ``--seccomp`` with a policy
that grants nothing the attack needs, and counts outcomes: races run for a
bounded number of tries, and not one try may get through.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, Errno, Router, Sandbox, deny, perform, spawn
from libc_service.policy.conditions import under
from libc_service.seccomp.availability import seccomp_unavailable
from libc_service.protocol.requests import OpenatRequest
from libc_service.policy.slavepath import exact_name

from shimtools import C_DIR, c_program, needs_shim  # noqa: F401 - c_program is a fixture

_REASON = seccomp_unavailable()
pytestmark = [
    needs_shim,
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

TIMEOUT = 120


def _build(out_dir: Path, *static: str) -> Path:
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build tests/c programs")
    target = out_dir / "seccomp_attacks"
    done = subprocess.run(
        [compiler, *static, "-O2", "-Wall", "-pthread", "-o", str(target), str(C_DIR / "seccomp_attacks.c")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build seccomp_attacks {' '.join(static)}: {done.stderr.decode()[-300:]}")
    return target


@pytest.fixture(scope="session")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/seccomp_attacks.c built with ``gcc -static`` (or a skip): no shim can be involved."""
    return _build(tmp_path_factory.mktemp("static"), "-static")


@pytest.fixture(scope="session")
def dynamic_attacker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same program linked dynamically, for the shim transport."""
    return _build(tmp_path_factory.mktemp("dynamic"))


async def run(argv: list[str], router: Router, **options: object) -> tuple[int, str, str]:
    async with spawn(argv, router, seccomp=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options) as process:  # type: ignore[arg-type]
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), (err or b"").decode()


def counts(out: str) -> dict[str, int]:
    return {key: int(value) for key, value in (word.split("=") for word in out.split())}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A named unix socket of the host that says ``DAEMON-PRIVATE-API`` to whoever connects."""
    path = tmp_path / "daemon.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    server.settimeout(0.2)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                peer, _ = server.accept()
            except OSError:
                continue
            accepted[0] += 1
            with peer:
                peer.sendall(b"DAEMON-PRIVATE-API\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, accepted
    finally:
        stop.set()
        thread.join()
        server.close()


# --------------------------------------------------------- the address family


@pytest.mark.parametrize("sandboxed", [False, True], ids=["seccomp", "sandbox+seccomp"])
async def test_connect_flipping_the_address_family_never_reaches_a_named_socket(
    attacker: Path, daemon: tuple[Path, list[int]], sandboxed: bool
) -> None:
    """The socket's own domain decides: a unix socket's connect is a unix request, whatever its bytes say."""
    path, accepted = daemon
    router = Router(default=deny(errno.EACCES))
    options: dict[str, object] = {"sandbox": Sandbox()} if sandboxed else {}
    status, out, err = await run([str(attacker), "flip", "connect", str(path), "3000"], router, **options)
    assert status == 0, err
    outcome = counts(out)
    assert outcome["connected"] == 0 and accepted[0] == 0, outcome
    assert outcome["refused"] == 3000, outcome


async def test_bind_flipping_the_address_family_plants_no_socket_file(attacker: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted.sock"
    router = Router(default=deny(errno.EACCES))
    status, out, err = await run([str(attacker), "flip", "bind", str(planted), "3000"], router)
    assert status == 0, err
    outcome = counts(out)
    assert outcome["bound"] == 0 and not planted.exists(), outcome
    assert outcome["refused"] == 3000, outcome


# ------------------------------------------------- a thread's own descriptors


def _tree_policy(allowed: Path) -> Router:
    """Directories may be opened anywhere; files only beneath ``allowed``."""
    router = Router(default=deny(errno.EACCES))

    @router.on("open", "openat")
    def files_beneath(request: object) -> object:
        if "directory" in getattr(request, "flags"):
            return FORWARD
        if under(str(allowed))(request):  # type: ignore[arg-type]
            return FORWARD
        raise Errno(errno.EACCES)

    return router


async def test_a_thread_with_its_own_descriptor_table_is_decided_on_its_own_descriptors(
    attacker: Path, tmp_path: Path
) -> None:
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "data.txt").write_text("allowed\n")
    (secret / "data.txt").write_text("SECRET\n")
    router = _tree_policy(allowed)
    status, out, err = await run([str(attacker), "threadfiles", str(allowed), str(secret), "data.txt"], router)
    assert status == 0, err
    assert out.strip() == "open: EACCES"


async def test_a_thread_with_its_own_descriptor_table_is_served_its_own_directorys_file(
    attacker: Path, tmp_path: Path
) -> None:
    """A master-opens policy resolves from the thread's descriptor, not the leader's."""
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    (allowed / "b").mkdir()
    (allowed / "a" / "data.txt").write_text("from a\n")
    (allowed / "b" / "data.txt").write_text("from b\n")
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def beneath(request: object) -> object:
        return perform(request, beneath=allowed)

    status, out, err = await run(
        [str(attacker), "threadfiles", str(allowed / "a"), str(allowed / "b"), "data.txt"], router
    )
    assert status == 0, err
    assert out.strip() == "read: from b"


# ------------------------------------------------- a name longer than PATH_MAX

_COMPONENT = "d" * 200
_LEVELS = 25  # 25 × 201 bytes: the working directory's name outgrows PATH_MAX


def _deep_tree(base: Path) -> Path:
    """``base/d…d/d…d/…`` (``_LEVELS`` deep) holding ``secret.txt``; made with dirfds, as no path reaches it."""
    base.mkdir()
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        for _ in range(_LEVELS):
            os.mkdir(_COMPONENT, dir_fd=fd)
            deeper = os.open(_COMPONENT, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        write = os.open("secret.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(write, b"SECRET outside the root\n")
        os.close(write)
    finally:
        os.close(fd)
    return base


def _beneath_router(root: Path) -> Router:
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def beneath(request: object) -> object:
        return perform(request, beneath=root)

    return router


def _native_open_from_deep(program: Path, base: Path) -> str:
    done = subprocess.run(
        [str(program), "deep", str(base), _COMPONENT, str(_LEVELS), "secret.txt"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.stdout.decode().strip()


async def test_perform_beneath_a_root_refuses_a_working_directory_it_cannot_name(
    attacker: Path, tmp_path: Path
) -> None:
    base = _deep_tree(tmp_path / "outside")
    assert _native_open_from_deep(attacker, base) == "read: SECRET outside the root"  # the attack works natively
    root = tmp_path / "root"
    root.mkdir()
    status, out, err = await run(
        [str(attacker), "deep", str(base), _COMPONENT, str(_LEVELS), "secret.txt"], _beneath_router(root)
    )
    assert status == 0, err
    assert out.strip() == "open: ENAMETOOLONG"


async def test_the_shim_transport_refuses_it_too(dynamic_attacker: Path, tmp_path: Path) -> None:
    program = dynamic_attacker
    base = _deep_tree(tmp_path / "outside")
    root = tmp_path / "root"
    root.mkdir()
    argv = [str(program), "deep", str(base), _COMPONENT, str(_LEVELS), "secret.txt"]
    async with spawn(argv, _beneath_router(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0, err
    assert out.decode().strip() == "open: ENAMETOOLONG"


def test_a_removed_working_directory_is_still_resolved_from_its_descriptor(tmp_path: Path) -> None:
    """ "Removed" is st_nlink == 0: perform() beneath a root still answers from a removed directory."""
    root = tmp_path / "root"
    (root / "gone").mkdir(parents=True)
    fd = os.open(root / "gone", os.O_PATH | os.O_DIRECTORY)
    try:
        assert exact_name(fd) == str(root / "gone")
        os.rmdir(root / "gone")
        assert exact_name(fd) is None
        request = OpenatRequest(path="x", flags=["read_only"], dirfd=fd, pid=os.getpid(), tid=threading.get_native_id())
        with pytest.raises(OSError) as raised:
            perform(request, beneath=root)
        assert raised.value.errno == errno.ENOENT  # what the kernel says from the removed directory
    finally:
        os.close(fd)


def test_a_detached_mount_has_no_exact_name(tmp_path: Path) -> None:
    """``open_tree(OPEN_TREE_CLONE)`` gives a directory the kernel names "/": not its name, so refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    open_tree_clone = 1
    (tmp_path / "tree").mkdir()
    fd = libc.syscall(428, -100, os.fsencode(tmp_path / "tree"), open_tree_clone | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip(f"open_tree(OPEN_TREE_CLONE): {os.strerror(ctypes.get_errno())}")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "/"
        with pytest.raises(OSError) as raised:
            exact_name(fd)
        assert raised.value.errno == errno.EXDEV
    finally:
        os.close(fd)


# ----------------------------------------------------- the loading shortcut


def _a_library_file() -> str:
    """A regular file beneath one of the system's library directories (what loading may read unasked)."""
    from libc_service.confinement.loader import system_library_dirs

    for directory in system_library_dirs():
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and os.access(entry.path, os.R_OK):
                return os.path.join(os.fspath(directory), entry.name)
    pytest.skip("no readable file in the system's library directories")


async def test_a_path_switched_during_a_loading_open_never_opens_the_other_file(attacker: Path, tmp_path: Path) -> None:
    """Read-only opens beneath the library directories are answered by the master on the path it read."""
    library = _a_library_file()
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    router = Router(default=deny(errno.EACCES), concurrent=True)
    status, out, err = await run([str(attacker), "loadrace", library, str(secret), "4000"], router)
    assert status == 0, err
    outcome = counts(out)
    assert outcome["bad"] == 0, outcome
    assert outcome["ok"] + outcome["refused"] == 4000, outcome
    assert outcome["ok"] > 0, outcome  # the shortcut still serves loading


# ------------------------------------------------ calls the filter must not miss

#: Every x86_64 system call that takes a path name, or creates, changes or
#: reaches a file or a mount some other way (handles, io_uring, the new mount
#: API), or reaches into another process of the same user. Each must be
#: notified, refused, or continued for a documented reason.
PATH_CALLS = {
    # path names
    *("open", "creat", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "access", "faccessat"),
    *("faccessat2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2"),
    *("link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "mknod", "mknodat", "truncate"),
    *("chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes", "futimesat"),
    *("utimensat", "setxattr", "lsetxattr", "getxattr", "lgetxattr", "listxattr", "llistxattr"),
    *("removexattr", "lremovexattr", "setxattrat", "getxattrat", "listxattrat", "removexattrat"),
    *("file_getattr", "file_setattr", "chdir", "chroot", "pivot_root", "mount", "umount2", "swapon"),
    *("swapoff", "acct", "quotactl", "statfs", "execve", "execveat", "uselib", "inotify_add_watch"),
    *("fanotify_mark", "name_to_handle_at", "connect", "bind"),
    # files without a name, mounts, io_uring, descriptors
    *("open_by_handle_at", "open_tree", "open_tree_attr", "move_mount", "fsopen", "fsconfig", "fsmount"),
    *("fspick", "mount_setattr", "quotactl_fd", "io_uring_setup", "io_uring_enter", "io_uring_register"),
    *("fchmod", "fchown", "lookup_dcookie"),
    # other processes of the same user
    *("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "bpf"),
}


def test_every_call_that_names_a_file_is_notified_refused_or_continued_for_a_reason() -> None:
    from libc_service.seccomp.filter import CONTINUED, NOTIFIED, REFUSED

    assert not set(NOTIFIED) & set(REFUSED) and not set(NOTIFIED) & set(CONTINUED)
    assert not set(REFUSED) & set(CONTINUED)
    missing = PATH_CALLS - set(NOTIFIED) - set(REFUSED) - set(CONTINUED)
    assert not missing, missing
    assert set(CONTINUED) == {
        *("execve", "execveat", "chdir", "readlink", "readlinkat", "statfs"),
        *("inotify_add_watch", "fanotify_mark"),
    }
    numbers = [*NOTIFIED.values(), *(number for number, _ in REFUSED.values()), *CONTINUED.values()]
    assert len(numbers) == len(set(numbers))


async def test_each_refused_call_and_every_newer_number_fail_with_their_errno(attacker: Path) -> None:
    from libc_service.seccomp.filter import REFUSED
    from libc_service.confinement.syscall_filter import HIGHEST_KNOWN

    names = {errno.EOPNOTSUPP: "EOPNOTSUPP"}  # the C library's name for ENOTSUP, the same number
    expected = {number: names.get(code, errno.errorcode[code]) for number, code in REFUSED.values()}
    expected |= {HIGHEST_KNOWN + 1: "ENOSYS", 1000: "ENOSYS"}
    router = Router(default=deny(errno.EACCES))
    status, out, err = await run([str(attacker), "numbers", *map(str, expected)], router)
    assert status == 0, err
    got = dict(line.split(": ") for line in out.splitlines())
    assert got == {str(number): name for number, name in expected.items()}


async def test_calls_the_filter_used_to_miss_change_nothing_under_a_deny_everything_policy(
    attacker: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    victim, other = work / "victim", work / "other"
    victim.write_text("victim\n")
    other.write_text("other\n")
    victim.chmod(0o640)
    before = {
        entry.name: (entry.stat(follow_symlinks=False).st_mode, entry.stat().st_mtime_ns) for entry in os.scandir(work)
    }
    router = Router(default=deny(errno.EACCES))
    status, out, err = await run([str(attacker), "calls", str(work)], router)
    assert status == 0, err
    assert dict(line.split(": ") for line in out.splitlines()) == {
        "name_to_handle_at": "ENOSYS",
        "open_by_handle_at": "ENOSYS",
        "renameat2_exchange": "EINVAL",
        "renameat2_whiteout": "EINVAL",
        "link": "EPERM",
        "linkat": "EPERM",
        "symlink": "EPERM",
        "symlinkat": "EPERM",
        "mknod": "EPERM",
        "mknodat": "EPERM",
        "truncate": "EPERM",
        "creat": "EACCES",  # decided: an open that creates
        "open_accmode3_trunc": "EINVAL",
        "open_accmode3_creat": "EINVAL",
        "chmod": "EACCES",  # decided
        "fchmodat": "EACCES",
        "utimensat": "EACCES",
        "setxattr": "EOPNOTSUPP",
        "open_tree": "ENOSYS",
        "move_mount": "ENOSYS",
        "fsopen": "ENOSYS",
        "mount": "EPERM",
        "chroot": "EPERM",
        "io_uring_setup": "ENOSYS",
    }
    after = {
        entry.name: (entry.stat(follow_symlinks=False).st_mode, entry.stat().st_mtime_ns) for entry in os.scandir(work)
    }
    assert after == before
    assert victim.read_text() == "victim\n" and other.read_text() == "other\n"


async def test_metadata_changes_are_decided_as_chmod_chown_and_utimens(attacker: Path, tmp_path: Path) -> None:
    from libc_service.policy.router import Decision

    work = tmp_path / "work"
    work.mkdir()
    (work / "victim").write_text("victim\n")
    (work / "other").write_text("other\n")
    router = Router(default=FORWARD)
    seen: list[Decision] = []
    router.observe(seen.append)
    status, _, err = await run([str(attacker), "calls", str(work)], router)
    assert status == 0, err
    functions = {decision.request.function for decision in seen}
    assert {"chmod", "utimens", "open"} <= functions


# ------------------------------------------- memory that makes a reader wait


async def _line(process: Any, prefix: str) -> str:
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        if not raw:
            raise AssertionError(f"the program ended before printing {prefix!r}")
        line = raw.decode().strip()
        if line.startswith("unavailable:"):
            pytest.skip(f"userfaultfd for kernel accesses is not available here ({line})")
        if line.startswith(prefix):
            return line


def _blocked_in_open(pid: int) -> bool:
    """Whether the program's main thread waits inside ``open`` (the kernel's word, /proc/PID/syscall)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == "2"
    except (OSError, IndexError):
        return False


def _reading_router() -> Router:
    """Forwards everything, but a route decides each open: the master reads its path first."""
    router = Router(default=FORWARD)

    @router.on("open", "openat")
    def read_then_forward(request: Any) -> Any:
        return FORWARD

    return router


async def test_a_call_no_route_can_decide_is_continued_without_reading_its_arguments(
    attacker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to decide an open (FORWARD default, no route, no observer) the master reads nothing.

    The path in memory nobody serves is never read, so no bound passes and
    the open is not failed with EFAULT: it waits in the program's own thread,
    as it would natively, and opens once the program serves its page.
    """
    import libc_service.seccomp.session as notify_session

    monkeypatch.setattr(notify_session, "MEMORY_BOUND", 0.5)
    plain = tmp_path / "plain.txt"
    plain.write_text("plain\n")
    async with spawn(
        [str(attacker), "uffd", str(plain)],
        Router(default=FORWARD),
        seccomp=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        await _line(process, "stalling")
        served = await _line(process, "plain open:")
        await asyncio.sleep(1.0)  # twice the bound: a read would have failed the open by now
        process.stdin.close()  # the page is served: the open goes on, in the kernel
        rest, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert served == "plain open: opened"
    assert b"stalled open: opened" in rest


async def test_a_stat_whose_buffer_stalls_the_write_fails_with_efault_and_the_session_serves_on(
    attacker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's Stat written into memory nobody serves: past the bound that stat fails with EFAULT.

    The worker writing it stays stuck until the program serves the page; the
    session answers the program's other open meanwhile, and the loop never waits.
    """
    import libc_service.seccomp.session as notify_session

    monkeypatch.setattr(notify_session, "MEMORY_BOUND", 0.5)
    plain = tmp_path / "plain.txt"
    plain.write_text("plain\n")
    router = _reading_router()

    @router.on("stat")
    def answered(request: Any) -> Any:
        return perform(request)

    async with spawn(
        [str(attacker), "uffd-stat", str(plain)],
        router,
        seccomp=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        await _line(process, "stalling")
        stalled = await _line(process, "stalled stat:")
        served = await _line(process, "plain open:")
        process.stdin.close()
        rest, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert stalled == "stalled stat: EFAULT"
    assert served == "plain open: opened"
    assert b"watchdog" not in rest


async def test_a_stalled_read_fails_its_call_and_the_session_serves_on(
    attacker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path in memory nobody serves: that open fails with EFAULT; the program's other open is answered."""
    import libc_service.seccomp.session as notify_session

    monkeypatch.setattr(notify_session, "MEMORY_BOUND", 0.5)
    plain = tmp_path / "plain.txt"
    plain.write_text("plain\n")
    router = _reading_router()
    async with spawn(
        [str(attacker), "uffd", str(plain)],
        router,
        seccomp=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        stalled = await _line(process, "stalled open:")
        served = await _line(process, "plain open:")
        process.stdin.close()
        rest, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert stalled == "stalled open: EFAULT"
    assert served == "plain open: opened"
    assert b"watchdog" not in rest


async def test_another_program_is_served_while_one_stalls_the_read_of_its_arguments(
    attacker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import libc_service.seccomp.session as notify_session

    monkeypatch.setattr(notify_session, "MEMORY_BOUND", float(TIMEOUT))
    plain = tmp_path / "plain.txt"
    plain.write_text("plain\n")
    router = _reading_router()
    async with spawn(
        [str(attacker), "uffd", str(plain)],
        router,
        seccomp=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as stalling:
        await _line(stalling, "stalling")
        while not _blocked_in_open(stalling.pid):
            await asyncio.sleep(0.01)
        status, out, err = await run(
            [str(attacker), "deep", str(tmp_path), ".", "1", "plain.txt"], Router(default=FORWARD)
        )
        assert (status, out.strip()) == (0, "read: plain"), err
        stalling.stdin.close()  # now the page is served, and the stalled open goes on
        rest, _ = await asyncio.wait_for(stalling.communicate(), TIMEOUT)
    assert b"watchdog" not in rest
    assert b"stalled open: opened" in rest


# ------------------------------------------- a connect's reply and a reused number


async def test_a_connect_performed_on_the_programs_own_socket_never_replaces_what_another_thread_made(
    attacker: Path,
) -> None:
    """A bound socket is connected as itself (perform() uses it), so the reply installs nothing over its number."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    router = Router(default=FORWARD)

    @router.on("connect_inet")
    def connect_as_the_master(request: object) -> object:
        return perform(request)

    try:
        port = server.getsockname()[1]
        status, out, err = await run([str(attacker), "setfd", str(port), "400"], router)
    finally:
        server.close()
    assert status == 0, err
    outcome = counts(out)
    assert outcome["replaced"] == 0, outcome
    assert outcome["kept"] > 0, outcome


async def test_an_access_that_does_not_follow_symlinks_is_decided_as_an_lstat(attacker: Path, tmp_path: Path) -> None:
    """faccessat2(AT_SYMLINK_NOFOLLOW) has no request: ENOSYS, and glibc asks with a stat, which is decided."""
    from libc_service.policy.router import Decision

    (tmp_path / "file").write_text("x")
    router = Router(default=FORWARD)
    seen: list[Decision] = []
    router.observe(seen.append)

    @router.on("lstat")
    def no_metadata(request: object) -> object:
        raise Errno(errno.EACCES)

    status, out, err = await run([str(attacker), "nofollow", str(tmp_path / "file")], router)
    assert status == 0, err
    assert out.strip() == "faccessat nofollow: EACCES"
    assert [str(getattr(d.request, "path")) for d in seen if d.request.function == "lstat"] == [str(tmp_path / "file")]
