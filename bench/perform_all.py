"""Policy: the master performs every arbitrated call itself, as the slave would have.

The exactness oracle (``bench/oracle.py``) runs CPython's own tests under
this policy: every call the shim arbitrates goes through
``libc_service.perform`` and its reply (descriptors, stat results, errnos)
instead of the slave's own libc, so any test whose outcome changes points at
a call ``perform`` (or the reply path) does not reproduce exactly.

    libc-service run bench/perform_all.py -- python3 -m unittest test.test_os
"""

from __future__ import annotations

from typing import Any

from libc_service import FORWARD, Router, perform  # type: ignore[attr-defined]  # until perform lands
from libc_service.requests import FUNCTIONS, Request

#: FORWARD is never used while the handler covers every function; it is the
#: default so that a function added later is forwarded, not refused.
router = Router(default=FORWARD)


@router.on(*FUNCTIONS)
def perform_all(req: Request) -> Any:
    """Every call is performed by the master with the slave's exact arguments."""
    return perform(req)
