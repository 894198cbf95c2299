"""Policy: the master performs every arbitrated call itself, as the slave would have.

The exactness oracle (``bench/oracle.py``) runs CPython's own tests under
this policy: every call the shim arbitrates goes through
``libc_service.acting.perform`` and its reply (descriptors, stat results, errnos)
instead of the slave's own libc, so any test whose outcome changes points at
a call ``perform`` (or the reply path) does not reproduce exactly.

    libc-service run bench/perform_all.py -- python3 -m unittest test.test_os
"""

from __future__ import annotations

import atexit
import os
import socket
from pathlib import Path
from typing import Any

from libc_service import FORWARD, Router, perform  # type: ignore[attr-defined,unused-ignore]  # until perform lands
from libc_service.policy.conditions import named
from libc_service.protocol.requests import FUNCTIONS, Request

#: FORWARD is never used while the handler covers every function; it is the
#: default so that a function added later is forwarded, not refused.
router = Router(default=FORWARD)

#: Calls performed; written to $LIBC_SERVICE_ORACLE_CALLS at exit, so the
#: oracle can tell a run the shim never reached from one that changed nothing.
performed = 0


@router.on("getaddrinfo", when=named("localhost", socket.gethostname()))
def look_up(req: Request) -> Any:
    """The master resolves the names the test suites use: localhost and this machine's own name.

    The master resolves only names a pattern allows; a name no pattern names is ``noname`` unasked.
    """
    global performed
    performed += 1
    return perform(req)


@router.on(*FUNCTIONS)
def perform_all(req: Request) -> Any:
    """Every call is performed by the master with the slave's exact arguments."""
    global performed
    performed += 1
    return perform(req)


def _write_count(path: str) -> None:
    Path(path).write_text(f"{performed}\n", encoding="utf-8")


if os.environ.get("LIBC_SERVICE_ORACLE_CALLS"):
    atexit.register(_write_count, os.environ["LIBC_SERVICE_ORACLE_CALLS"])
