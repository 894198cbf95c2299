"""perform() refuses to resolve paths for a process with another root or mount namespace.

A slave that called ``chroot`` (possible inside a user namespace) or made
its own mount namespace must not have the master read or create files in
the master's root or under mounts it does not see: every path request of
such a process is refused with ``EXDEV``, and nothing is created.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libc_service import perform
from libc_service.protocol.requests import MkdirRequest, OpenRequest, StatRequest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chroot and unshare(CLONE_NEWNS)")

#: Enters its new root or mount namespace, says so, and waits until stdin closes.
HELPER = r"""
import ctypes, os, sys
how, place = sys.argv[1], sys.argv[2]
if how == "chroot":
    os.chroot(place)
    os.chdir("/")
elif how == "mounts":
    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        print("unshare failed", ctypes.get_errno(), flush=True)
        sys.exit(0)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("the jail's own\n")
    return tmp_path


def _helper(how: str, place: Path) -> Iterator[int]:
    helper = subprocess.Popen(
        [sys.executable, "-S", "-c", HELPER, how, str(place)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert helper.stdout is not None
    line = helper.stdout.readline().strip()
    try:
        if line != "ready":
            pytest.skip(f"the helper could not enter its {how}: {line}")
        yield helper.pid
    finally:
        helper.communicate("")


@pytest.mark.parametrize("how", ["chroot", "mounts", "same"])
def test_a_process_elsewhere_gets_exdev_for_every_path(
    jail: Path, tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    made = tmp_path_factory.mktemp("elsewhere") / "made-by-the-slave"
    for pid in _helper(how, jail):
        ids = {"pid": pid, "tid": pid}
        requests = [
            OpenRequest(path="/etc/hostname", flags={"read_only"}, **ids),
            StatRequest(path="/etc/hostname", **ids),
            MkdirRequest(path=str(made), mode=0o755, **ids),
        ]
        for request in requests:
            if how == "same":
                result = perform(request)
                for fd in getattr(result, "fds", None) or []:
                    os.close(fd)
                continue
            with pytest.raises(OSError) as raised:
                perform(request)
            assert raised.value.errno == errno.EXDEV, request
    assert made.exists() == (how == "same")
