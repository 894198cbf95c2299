"""perform() never lets a slave's name reach the master's own /proc.

``/proc/self`` is a symlink whose target is the pid of whoever walks it: a
link the slave planted (``x -> /proc/self/mem``), a link to ``/proc``, a
working directory in ``/proc`` all lead to the *master* when the master
follows them, unless the walk itself maps them to the slave. A stand-in
slave (a ``sleep`` process) names the requests; every answer is checked
against that process's own ``/proc/<pid>``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libc_service import perform
from libc_service.protocol.requests import LstatRequest, OpenRequest, StatRequest


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[int]:
    """A slave stand-in (not the master), working in tmp_path: its pid."""
    process = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{process.pid}/exe").split("/")[-1] != "sleep":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _opened(result: object) -> int:
    (fd,) = getattr(result, "fds")
    return int(fd)


@pytest.mark.parametrize(
    ("links", "path"),
    [
        ({"x": "/proc/self/mem"}, "x"),
        ({"p": "/proc"}, "p/self/mem"),
        ({"me": "/proc/self"}, "me/mem"),
        ({"a": "b", "b": "/proc/thread-self/../../../self/mem"}, "a"),
        ({"d": "/dev"}, "d/fd/../../self/mem"),
    ],
)
def test_a_planted_link_to_proc_self_is_the_slaves(
    tmp_path: Path, sleeper: int, links: dict[str, str], path: str
) -> None:
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = _opened(perform(OpenRequest(path=path, flags={"read_only"}, dirfd=dirfd, pid=sleeper, tid=sleeper)))
    finally:
        os.close(dirfd)
    try:
        theirs = os.stat(f"/proc/{sleeper}/mem")
        mine = os.stat(f"/proc/{os.getpid()}/mem")
        got = os.fstat(fd)
        assert (got.st_dev, got.st_ino) == (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino)
    finally:
        os.close(fd)


def test_a_working_directory_in_proc_reaches_the_slave(sleeper: int) -> None:
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        request = OpenRequest(path="self/status", flags={"read_only"}, dirfd=proc, pid=sleeper, tid=sleeper)
        fd = _opened(perform(request))
    finally:
        os.close(proc)
    try:
        assert f"\nPid:\t{sleeper}\n" in os.read(fd, 4096).decode()
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "path",
    ["/proc/{master}/mem", "/proc/{master}/fd/0", "/proc/self/../{master}/status", "/proc/{master}/task/{master}/mem"],
)
def test_the_masters_own_proc_is_refused(sleeper: int, path: str) -> None:
    text = path.format(master=os.getpid())
    with pytest.raises(PermissionError):
        perform(OpenRequest(path=text, flags={"read_only"}, pid=sleeper, tid=sleeper))


def test_names_for_the_caller_are_links_to_lstat(sleeper: int) -> None:
    """lstat of /proc/self, /dev/stdin and /dev/fd describes the link, as natively."""
    for path in ("/proc/self", "/proc/thread-self", "/dev/stdin", "/dev/fd"):
        assert perform(LstatRequest(path=path, pid=sleeper, tid=sleeper)).type == "symlink", path
    assert perform(StatRequest(path="/proc/self", pid=sleeper, tid=sleeper)).ino == os.stat(f"/proc/{sleeper}").st_ino
