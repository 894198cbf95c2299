"""CPython's own file-system tests pass and fail exactly as natively under libc-service.

A few fast classes of the interpreter's ``test`` package (os, shutil,
tempfile, fileio, glob, socket, socketserver, logging's socket handlers,
asyncio's socket and unix-socket tests) run through ``bench/oracle.py``: natively, under
``libc-service trace`` (every call forwarded, the slave does it), and under
``bench/perform_all.py`` (the master performs every call with
``libc_service.acting.perform``) once that exists. Each test case must have the
native outcome in every configuration. A difference the framework has today
is listed in ``KNOWN`` with its cause: it is excluded from the comparison and
gets its own ``xfail(strict=True)`` test, so fixing it turns that test into
an unexpected pass and the entry must go.

The whole oracle (ten modules, ``--confirm``) is ``python bench/oracle.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shimtools import needs_shim

ROOT = Path(__file__).resolve().parent.parent
ORACLE = ROOT / "bench" / "oracle.py"

#: Test classes that finish in a few seconds natively and exercise open,
#: stat, lstat, access, mkdir, rmdir, unlink, rename, bind and connect
#: through the shim.
SELECTION = (
    "test.test_os.FileTests",
    "test.test_os.MakedirTests",
    "test.test_os.RemoveDirsTests",
    "test.test_os.StatAttributeTests",
    "test.test_os.UtimeTests",
    "test.test_shutil.TestRmTree",
    "test.test_shutil.TestCopy",
    "test.test_shutil.TestMove",
    "test.test_tempfile.TestMkstempInner",
    "test.test_tempfile.TestMkdtemp",
    "test.test_tempfile.TestTemporaryDirectory",
    "test.test_fileio.CAutoFileTests",
    "test.test_fileio.COtherFileTests",
    "test.test_glob.GlobTests",
    # Sockets bound and connected through the master: getsockname, options,
    # non-blocking connects, unix servers (socketserver, asyncio, logging).
    "test.test_socket.GeneralModuleTests",
    "test.test_socket.BasicTCPTest",
    "test.test_socket.BasicUDPTest",
    "test.test_socket.NonBlockingTCPTests",
    "test.test_socket.TestUnixDomain",
    "test.test_socket.TestLinuxAbstractNamespace",
    "test.test_socket.RecvmsgUnixStreamTest",
    "test.test_socket.SendmsgUnixStreamTest",
    "test.test_socketserver.SocketServerTest",
    "test.test_logging.UnixSocketHandlerTest",
    "test.test_logging.UnixDatagramHandlerTest",
    "test.test_logging.DatagramHandlerTest",
    "test.test_asyncio.test_unix_events.SelectorEventLoopUnixSocketTests",
    "test.test_asyncio.test_sock_lowlevel",
    # The one case of the full oracle (ten modules) that differs today.
    "test.test_subprocess.POSIXProcessTestCase.test_pass_fds_redirected",
)

#: (configuration, test id) -> why it differs from native today (a framework bug).
_SHIM_FDS = (
    "the shim's own descriptors (its registration socket, channel and /proc/self/fd, from fd 1000, LCS_FD_BASE in "
    "docs/shim.md) are open in every slave: a child that lists its descriptors with fstat "
    "(subprocessdata/fd_status.py) sees them besides 0, 1, 2 and the ones it was passed"
)
KNOWN: dict[tuple[str, str], str] = {
    ("trace", "test.test_subprocess.POSIXProcessTestCase.test_pass_fds_redirected"): _SHIM_FDS,
    ("perform", "test.test_subprocess.POSIXProcessTestCase.test_pass_fds_redirected"): _SHIM_FDS,
}


def _has_test_package() -> bool:
    try:
        return importlib.util.find_spec("test.support") is not None
    except ImportError:
        return False


pytestmark = [
    pytest.mark.slow,
    needs_shim,
    pytest.mark.skipif(not _has_test_package(), reason=f"{sys.executable} has no CPython `test` package"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The oracle's JSON report for SELECTION in every configuration (run once)."""
    report = tmp_path_factory.mktemp("oracle") / "oracle.json"
    ran = subprocess.run(
        [
            sys.executable,
            str(ORACLE),
            "--configs",
            "native,trace,perform",
            "--timeout",
            "240",
            "--test-timeout",
            "60",
            "--use",
            "network",  # socketserver's tests need it; they use the loopback only
            "--json",
            str(report),
            "--select",
            *SELECTION,
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert report.exists(), f"the oracle wrote no report (status {ran.returncode}):\n{ran.stdout}\n{ran.stderr}"
    result: dict[str, Any] = json.loads(report.read_text())
    result["text"] = ran.stdout
    return result


def _differences(oracle: dict[str, Any], config: str) -> dict[str, dict[str, Any]]:
    if config in oracle["unavailable"]:
        pytest.skip(f"{config}: {oracle['unavailable'][config]}")
    return {d["test"]: d for d in oracle["differences"] if d["config"] == config}


def test_native_run_is_a_real_reference(oracle: dict[str, Any]) -> None:
    """The native run finished and ran the selection: an empty comparison is not a pass."""
    (native,) = (r for r in oracle["runs"] if r["config"] == "native")
    assert native["done"], native["problem"]
    unloadable = {test: native["details"].get(test) for test in native["outcomes"] if test.startswith("load (")}
    assert not unloadable, unloadable
    assert sum(o == "pass" for o in native["outcomes"].values()) > 100


@pytest.mark.parametrize("config", ["trace", "perform"])
def test_outcomes_match_native(oracle: dict[str, Any], config: str) -> None:
    """Every test case of the selection has its native outcome under ``config``."""
    differences = _differences(oracle, config)
    (run,) = (r for r in oracle["runs"] if r["config"] == config)
    assert not run["problem"], f"{run['problem']}\n{run['stderr_tail']}"
    unexpected = {test: d for test, d in differences.items() if (config, test) not in KNOWN}
    assert not unexpected, "\n".join(
        f"{test}: native {d['native']} -> {d['other']}\n{d['detail']}" for test, d in unexpected.items()
    )


@pytest.mark.parametrize(
    ("config", "test"),
    [
        pytest.param(config, test, marks=pytest.mark.xfail(strict=True, reason=reason), id=f"{config}-{test}")
        for (config, test), reason in KNOWN.items()
    ],
)
def test_known_difference_is_fixed(oracle: dict[str, Any], config: str, test: str) -> None:
    """A difference listed in KNOWN; passes (and so fails strictly) once fixed."""
    difference = _differences(oracle, config).get(test)
    assert difference is None, f"native {difference['native']} -> {difference['other']}\n{difference['detail']}"
