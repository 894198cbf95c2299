"""A FIFO's two ends opened through one sequential master: no deadlock.

A blocking FIFO open waits for the other end. When both ends are opened by
slaves of the same master — two threads of one program, or two processes
under the seccomp transport — the first open must not hold the session, or
the second is never read and both wait forever. Each program's output is
compared with its native run on this machine. The test makes the FIFO
itself: creating one (``mknod``) is refused under the seccomp transport, as
no request expresses it; opening its two ends is what is served here.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from perform_kernel import TRANSPORTS, perform_everything, run_as, run_native
from shimtools import PYTHON, needs_shim

pytestmark = [needs_shim]

PROGRAM = textwrap.dedent(
    """
    import os, sys, threading
    case, fifo = sys.argv[1], sys.argv[2]

    def write_end():
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"through the fifo")
        os.close(fd)

    if case == "threads":
        writer = threading.Thread(target=write_end)
        writer.start()
        fd = os.open(fifo, os.O_RDONLY)
        print(os.read(fd, 100).decode())
        os.close(fd)
        writer.join()
    else:
        child = os.fork()
        if child == 0:
            write_end()
            os._exit(0)
        fd = os.open(fifo, os.O_RDONLY)
        print(os.read(fd, 100).decode())
        os.close(fd)
        print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    """
)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", ["threads", "processes"])
async def test_both_ends_of_a_fifo_through_a_sequential_router(case: str, transport: str, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "native")
    os.mkfifo(tmp_path / "served")
    native = run_native([PYTHON, "-c", PROGRAM, case, str(tmp_path / "native")])
    assert native.status == 0, native.err
    argv = [PYTHON, "-c", PROGRAM, case, str(tmp_path / "served")]
    served = await run_as(transport, argv, router=perform_everything(concurrent=False), timeout=30)
    assert (served.status, served.out) == (native.status, native.out), served.err
