"""perform() acts with the calling thread's capabilities, never the master's.

A slave that runs as root but dropped its capabilities (or a thread that
holds just one) asks a root master to do what it may not: the master must
give the refusal the kernel gives the slave. Each expected answer is the
same call made natively by the helper process the requests name.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shimtools import PYTHON, run_native, run_slave

from libc_service import FORWARD, Router, perform
from libc_service.protocol.catalogue import FUNCTIONS
from libc_service.processes.spawn_launch import ShimNotFound, shim_path
from libc_service.protocol.requests import AccessRequest, BindInetRequest, ChownRequest, OpenRequest, UtimensRequest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the helper drops capabilities a root master has")

#: Drops every capability of its only thread (or keeps CAP_DAC_OVERRIDE as nobody),
#: makes the calls natively, prints their errnos, then waits until stdin closes.
HELPER = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def capset(effective, permitted):
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(effective, permitted, 0, 0, 0, 0)
    assert libc.syscall(126, header, data) == 0, ctypes.get_errno()
mode, directory = sys.argv[1], sys.argv[2]
if mode == "nocaps":
    capset(0, 0)
else:
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    capset(1 << 1, 1 << 1)  # CAP_DAC_OVERRIDE
def attempt(call):
    try:
        call()
        return 0
    except OSError as exc:
        return exc.errno
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
answers = {
    "chown": attempt(lambda: os.chown(f"{directory}/mine", 12345, -1)),
    "utime": attempt(lambda: os.utime(f"{directory}/theirs", (1, 2))),
    "access": attempt(lambda: os.access(f"{directory}/theirs", os.W_OK) or (_ for _ in ()).throw(OSError(errno.EACCES, ""))),
    "open": attempt(lambda: os.close(os.open(f"{directory}/secret", os.O_RDONLY))),
    "bind": attempt(lambda: sock.bind(("127.0.0.1", 99))),
}
sock.close()
print(json.dumps(answers), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "files"
    directory.mkdir()
    for name, mode in (("mine", 0o644), ("theirs", 0o644), ("secret", 0o600)):
        (directory / name).write_text(name)
        os.chmod(directory / name, mode)
    os.chown(directory / "theirs", 65534, 65534)
    os.chown(directory / "secret", 65534 + 1, 65534 + 1)
    for path in (tmp_path, directory):
        os.chmod(path, 0o755)
    yield directory


def perform_everything() -> Router:
    router = Router(default=FORWARD)

    @router.on(*FUNCTIONS)
    def performed(request: Any) -> Any:
        return perform(request)

    return router


def _shim_built() -> bool:
    try:
        shim_path()
    except ShimNotFound:
        return False
    return True


def _helper(mode: str, directory: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    helper = subprocess.Popen(
        [sys.executable, "-S", "-c", HELPER, mode, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert helper.stdout is not None
    return helper, json.loads(helper.stdout.readline())


def _errno(call: object) -> int:
    try:
        result = call()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    fds = getattr(result, "fds", None) or []
    for fd in fds:
        os.close(fd)
    return 0


@pytest.mark.parametrize("mode", ["nocaps", "nobody+dac"])
def test_the_callers_capabilities_decide(files: Path, mode: str) -> None:
    helper, native = _helper(mode, files)
    try:
        ids = {"pid": helper.pid, "tid": helper.pid}
        if mode != "nocaps":
            ids |= {"fsuid": 65534, "fsgid": 65534, "groups": ()}
        through = {
            "chown": _errno(lambda: perform(ChownRequest(path=files / "mine", owner=12345, **ids))),
            "utime": _errno(lambda: perform(UtimensRequest(path=files / "theirs", atime=1, mtime=2, **ids))),
            "access": _errno(lambda: perform(AccessRequest(path=files / "theirs", amode="w", **ids))),
            "open": _errno(lambda: perform(OpenRequest(path=files / "secret", flags={"read_only"}, **ids))),
        }
        sock = __import__("socket").socket()
        try:
            through["bind"] = _errno(
                lambda: perform(BindInetRequest(socket=sock.fileno(), address="127.0.0.1", port=99, **ids))
            )
        finally:
            sock.close()
    finally:
        helper.communicate("")
    assert through == native
    if mode == "nocaps":
        # The refusals themselves: a master acting with its own capabilities grants all of these.
        assert native["chown"] == errno.EPERM and native["bind"] == errno.EACCES and native["access"] == errno.EACCES
    else:
        assert native["open"] == 0  # CAP_DAC_OVERRIDE kept


@pytest.mark.skipif(not _shim_built(), reason="the preload shim is not built")
@pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to start a program with ambient capabilities"
)
async def test_a_program_with_an_ambient_capability_keeps_it(tmp_path: Path) -> None:
    """nobody with an ambient CAP_DAC_OVERRIDE reads a root-only file through the master, as natively."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    tmp_path.chmod(0o700)
    argv = [
        shutil.which("setpriv") or "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
        PYTHON,
        "-S",
        "-c",
        f"print(open({str(secret)!r}).read())",
    ]
    native = run_native(argv)
    assert (native.status, native.out) == (0, "root only\n"), native.err
    through = await run_slave(argv, perform_everything())
    assert (through.status, through.out) == (native.status, native.out), through.err


def test_calls_of_different_identities_interleaved_each_get_their_own(files: Path) -> None:
    """A thread kept for one identity serves only it: the master's, nobody's and no capabilities, in turn."""
    nocaps, nocaps_native = _helper("nocaps", files)
    nobody, nobody_native = _helper("nobody+dac", files)
    try:
        as_nocaps = {"pid": nocaps.pid, "tid": nocaps.pid}
        as_nobody = {"pid": nobody.pid, "tid": nobody.pid, "fsuid": 65534, "fsgid": 65534, "groups": ()}

        def chown(ids: dict[str, object]) -> int:
            return _errno(lambda: perform(ChownRequest(path=files / "mine", owner=12345, **ids)))

        def open_secret(ids: dict[str, object]) -> int:
            return _errno(lambda: perform(OpenRequest(path=files / "secret", flags={"read_only"}, **ids)))

        seen = []
        for _ in range(3):
            seen.append(("nocaps", open_secret(as_nocaps), chown(as_nocaps)))
            seen.append(("master", open_secret({}), chown({})))
            seen.append(("nobody", open_secret(as_nobody), chown(as_nobody)))
    finally:
        nocaps.communicate("")
        nobody.communicate("")
    expected = [
        ("nocaps", nocaps_native["open"], nocaps_native["chown"]),
        ("master", 0, 0),
        ("nobody", nobody_native["open"], nobody_native["chown"]),
    ] * 3
    assert seen == expected
    assert nocaps_native["open"] == errno.EACCES and nobody_native["open"] == 0  # identities that differ
