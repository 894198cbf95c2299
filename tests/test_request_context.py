"""What a request carries besides the call's arguments, seen from real
processes under the real shim: the caller's umask and filesystem
credentials, every open flag, and a relative socket path's directory.

Each scenario runs a small Python program as a slave; a policy records the
requests it is asked about the program's own paths and refuses them (so
nothing is created), and forwards the interpreter's other calls.
"""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from libc_service import FORWARD, Errno, Router
from libc_service.protocol.requests import (
    BindUnixRequest,
    ConnectUnixRequest,
    OpenatRequest,
    OpenRequest,
    Request,
    StatRequest,
)
from shimtools import PYTHON, needs_shim, run_slave

pytestmark = [needs_shim]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing credentials needs root")

#: The programs' own paths all start with this name; nothing else is refused.
MARK = "ctx-"


def recording(seen: list[Request]) -> Router:
    """A router that records and refuses (ENOENT) calls on MARK paths."""
    router = Router(default=FORWARD)

    @router.on("open", "openat", "stat", "mkdir")
    def record(request: Any) -> Any:
        if not os.path.basename(str(request.path)).startswith(MARK):
            return FORWARD
        seen.append(request)
        raise Errno(errno.ENOENT)

    return router


async def run_python(program: str, router: Router, **kwargs: Any) -> None:
    ran = await run_slave([PYTHON, "-c", textwrap.dedent(program)], router, **kwargs)
    assert ran.status == 0, ran.err


def own_status_value(field: str, pid: str = "self") -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].split()[0]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


# ------------------------------------------------------------------- umask


async def test_the_umask_a_program_sets_travels_with_its_create(tmp_path: Path) -> None:
    seen: list[Request] = []
    await run_python(
        f"""
        import os
        os.umask(0o077)
        try:
            os.open("{tmp_path}/{MARK}created", os.O_WRONLY | os.O_CREAT, 0o666)
        except FileNotFoundError:
            pass
        os.umask(0o002)
        try:
            os.mkdir("{tmp_path}/{MARK}dir", 0o777)
        except FileNotFoundError:
            pass
        """,
        recording(seen),
    )
    created, made = seen
    assert isinstance(created, OpenRequest) and created.flags >= {"create", "write_only"}
    assert (created.mode, created.umask) == (0o666, 0o077)
    assert (made.function, made.umask) == ("mkdir", 0o002)


async def test_the_umask_a_program_inherits_is_read_at_its_start(tmp_path: Path) -> None:
    # The shell sets it, then execs: the new program never called umask().
    seen: list[Request] = []
    stat_it = f"import os\ntry: os.stat('{tmp_path}/{MARK}x')\nexcept FileNotFoundError: pass"
    ran = await run_slave(["sh", "-c", 'umask 027; exec "$0" -c "$1"', PYTHON, stat_it], recording(seen))
    assert ran.status == 0, ran.err
    (request,) = seen
    assert isinstance(request, StatRequest) and request.umask == 0o027


# ----------------------------------------------------------- credentials


async def test_a_request_carries_the_callers_filesystem_ids_and_groups(tmp_path: Path) -> None:
    seen: list[Request] = []
    await run_python(
        f"""
        import os
        try:
            os.stat("{tmp_path}/{MARK}x")
        except FileNotFoundError:
            pass
        """,
        recording(seen),
    )
    (request,) = seen
    assert (request.fsuid, request.fsgid) == (os.geteuid(), os.getegid())
    assert request.groups is not None and sorted(request.groups) == sorted(os.getgroups())


@needs_root
async def test_after_seteuid_the_master_sees_the_new_fsuid_and_after_setgroups_the_new_groups(
    tmp_path: Path,
) -> None:
    seen: list[Request] = []
    await run_python(
        f"""
        import os, threading
        def stat(name):
            try:
                os.stat("{tmp_path}/" + name)
            except FileNotFoundError:
                pass
        stat("{MARK}root")
        os.setgroups([4, 24, 27])
        # A thread that exists already sees the groups glibc set for every thread.
        waiting = threading.Event(); go = threading.Event()
        def other():
            waiting.set(); go.wait(); stat("{MARK}other-thread")
        thread = threading.Thread(target=other); thread.start(); waiting.wait()
        os.setgroups([4, 24])
        go.set(); thread.join()
        os.setegid(65533)
        os.seteuid(65534)
        stat("{MARK}nobody")
        """,
        recording(seen),
    )
    root, other, nobody = seen
    assert (root.fsuid, root.fsgid) == (0, 0)
    assert other.groups == (4, 24) and (other.fsuid, other.fsgid) == (0, 0)
    assert (nobody.fsuid, nobody.fsgid, nobody.groups) == (65534, 65533, (4, 24))


@needs_root
async def test_setfsuid_in_one_thread_shows_in_that_threads_requests_only(tmp_path: Path) -> None:
    seen: list[Request] = []
    await run_python(
        f"""
        import ctypes, os, threading
        libc = ctypes.CDLL(None, use_errno=True)
        def stat(name):
            try:
                os.stat("{tmp_path}/" + name)
            except FileNotFoundError:
                pass
        def as_nobody():
            libc.setfsuid(65534)
            stat("{MARK}thread")
        thread = threading.Thread(target=as_nobody); thread.start(); thread.join()
        stat("{MARK}main")
        """,
        recording(seen),
    )
    thread, main = seen
    assert (thread.fsuid, main.fsuid) == (65534, 0)
    assert thread.tid != main.tid


@needs_root
async def test_a_caller_in_more_groups_than_the_protocol_carries_has_unknown_groups(tmp_path: Path) -> None:
    seen: list[Request] = []
    await run_python(
        f"""
        import os
        os.setgroups(list(range(1000, 1065)))
        try:
            os.stat("{tmp_path}/{MARK}x")
        except FileNotFoundError:
            pass
        """,
        recording(seen),
    )
    (request,) = seen
    assert request.groups is None, "65 groups: unknown, not a partial list"
    assert request.fsuid == 0


# ---------------------------------------------------------------- open flags


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        ("O_RDONLY", {"read_only"}),
        ("O_RDONLY | O_NONBLOCK", {"read_only", "non_blocking"}),
        ("O_RDONLY | O_NOCTTY", {"read_only", "no_ctty"}),
        ("O_RDONLY | O_CLOEXEC", {"read_only", "close_on_exec"}),
        ("O_WRONLY | O_DSYNC", {"write_only", "sync_data_on_write"}),
        ("O_WRONLY | O_SYNC", {"write_only", "sync_all_on_write"}),
        ("O_RDONLY | O_NOATIME", {"read_only", "no_atime"}),
        ("O_RDWR | O_DIRECT", {"read_write", "direct"}),
        ("O_RDONLY | O_ASYNC", {"read_only", "async_signals"}),
        ("O_RDONLY | 0o100000", {"read_only", "large_file"}),  # the kernel's O_LARGEFILE on x86
        ("O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW", {"read_only", "non_blocking", "close_on_exec", "no_follow"}),
    ],
)
async def test_every_open_flag_reaches_the_master(tmp_path: Path, flags: str, names: set[str]) -> None:
    if "0o100000" in flags and os.uname().machine not in ("x86_64", "i686"):
        pytest.skip("the kernel's O_LARGEFILE bit is x86's")
    seen: list[Request] = []
    # Through libc itself: os.open would add O_CLOEXEC to every open.
    await run_python(
        f"""
        import ctypes, os
        from errno import ENOENT
        from os import *
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.open(b"{tmp_path}/{MARK}f", {flags}) == -1 and ctypes.get_errno() == ENOENT
        directory = os.open("{tmp_path}", os.O_RDONLY)
        assert libc.openat(directory, b"{MARK}f", {flags}) == -1 and ctypes.get_errno() == ENOENT
        """,
        recording(seen),
    )
    plain, at = seen
    assert isinstance(plain, OpenRequest) and isinstance(at, OpenatRequest)
    assert plain.flags == at.flags == names


# ------------------------------------------------- relative socket paths


async def test_a_relative_socket_path_carries_the_slaves_working_directory(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    seen: list[tuple[str, str | None, bool]] = []
    router = Router(default=FORWARD)

    @router.on("connect_unix", "bind_unix")
    def record(request: ConnectUnixRequest | BindUnixRequest) -> Any:
        where = None
        if request.dirfd is not None:
            # The descriptor is the directory itself, not merely its name.
            where = os.readlink(f"/proc/self/fd/{request.dirfd}")
            assert os.path.samestat(os.fstat(request.dirfd), os.stat(tmp_path / "work"))
        seen.append((f"{request.function} {request.path}", where, request.abstract))
        raise Errno(errno.ECONNREFUSED if request.function == "connect_unix" else errno.EADDRINUSE)

    await run_python(
        f"""
        import socket
        for address in ("sock", "sub/../sock", "{tmp_path}/sock", "\\0abstract"):
            for verb in ("connect", "bind"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        getattr(sock, verb)(address)
                    except OSError:
                        pass
        """,
        router,
        cwd=tmp_path / "work",
    )
    work = str(tmp_path / "work")
    assert seen == [
        ("connect_unix sock", work, False),
        ("bind_unix sock", work, False),
        ("connect_unix sub/../sock", work, False),
        ("bind_unix sub/../sock", work, False),
        (f"connect_unix {tmp_path}/sock", None, False),
        (f"bind_unix {tmp_path}/sock", None, False),
        ("connect_unix \0abstract", None, True),
        ("bind_unix \0abstract", None, True),
    ]


async def test_a_master_can_connect_a_relative_path_where_the_slave_would(tmp_path: Path) -> None:
    # The policy connects on the slave's behalf, resolving the path against
    # the directory that came with it, and hands the connected socket back.
    (tmp_path / "work").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "work" / "sock"))
    listener.listen()
    listener.setblocking(False)
    router = Router(default=FORWARD)

    @router.on("connect_unix")
    def connect_there(request: ConnectUnixRequest) -> Any:
        assert request.dirfd is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{request.dirfd}/{request.path}")
        except OSError:
            sock.close()
            raise
        from libc_service import WithFds

        return WithFds(0, [sock.detach()])

    try:
        await run_python(
            """
            import socket
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect("sock")
                sock.sendall(b"hello from the slave")
            """,
            router,
            cwd=tmp_path / "work",
        )
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(100) == b"hello from the slave"
    finally:
        listener.close()
