"""Times past 2262 and statx's own fields arrive through the master as the kernel gives them.

A filesystem stores seconds in 64 bits, so a file's mtime can lie past
2262, beyond int64 nanoseconds. A program that stats it through a
perform-everything policy must see what it sees natively (not EPERM), and
``ls -l`` must list it; ``statx`` keeps the birth time, the attributes and
the mount id.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from libc_service import Stat
from libc_service.protocol.wire_replies import ReplyMessage, decode_reply, encode_reply
from perform_kernel import TRANSPORTS, run_as, run_native
from shimtools import PYTHON, needs_shim

pytestmark = [needs_shim]

#: 2400-01-01, past int64 nanoseconds (2262-04-11).
FAR_FUTURE_NS = 13_569_465_600 * 10**9 + 123_456_789

#: Prints what stat, lstat and statx say of each path, as JSON.
STAT_PROGRAM = textwrap.dedent(
    """
    import ctypes, json, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    STATX = struct.Struct("<IIQIIIHHQQQQ" + "qIi" * 4 + "IIIIQ")
    out = {}
    for path in sys.argv[1:]:
        entry = {}
        for name, call in (("stat", os.stat), ("lstat", os.lstat)):
            try:
                st = call(path)
                entry[name] = [st.st_mode, st.st_ino, st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]
            except OSError as exc:
                entry[name] = exc.errno
        buffer = ctypes.create_string_buffer(256)
        mask = 0x7FF | 0x800 | 0x1000
        if libc.statx(-100, path.encode(), 0, mask, buffer) == 0:
            f = STATX.unpack_from(buffer.raw)
            entry["statx"] = {
                "mask": f[0], "attributes": f[2], "attributes_mask": f[11],
                "atime": f[12:14], "btime": f[15:17], "ctime": f[18:20], "mtime": f[21:23],
                "mnt_id": f[28],
            }
        else:
            entry["statx"] = ctypes.get_errno()
        out[path] = entry
    print(json.dumps(out, sort_keys=True))
    """
)


def test_a_stat_record_carries_a_time_past_2262() -> None:
    far = Stat(mtime=FAR_FUTURE_NS, atime=-1, btime=FAR_FUTURE_NS + 1, mnt_id=42, attributes=0x2000)
    decoded = decode_reply(encode_reply(ReplyMessage("stat", 1, 2, far))).result
    assert decoded == far


@pytest.fixture
def far_file(tmp_path: Path) -> Path:
    target = tmp_path / "future.txt"
    target.write_text("from the future\n")
    os.utime(target, ns=(FAR_FUTURE_NS, FAR_FUTURE_NS))
    if os.stat(target).st_mtime_ns < 2**63:
        pytest.skip("this filesystem does not store a time past 2262")
    return target


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stat_of_a_file_from_2400_is_the_native_one(transport: str, far_file: Path) -> None:
    argv = [PYTHON, "-c", STAT_PROGRAM, str(far_file), str(far_file.parent)]
    native = run_native(argv)
    assert native.status == 0, native.err
    served = await run_as(transport, argv)
    assert served.status == 0, served.err
    assert json.loads(served.out) == json.loads(native.out)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ls_lists_a_file_from_2400_as_natively(transport: str, far_file: Path) -> None:
    ls = shutil.which("ls")
    if ls is None:
        pytest.skip("no ls")
    argv = [ls, "-l", "--full-time", str(far_file)]
    native = run_native(argv)
    served = await run_as(transport, argv)
    assert (served.status, served.out, served.err) == (native.status, native.out, native.err)
