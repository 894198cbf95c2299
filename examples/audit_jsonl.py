"""An audit log: every decision is written as one JSON line.

The policy itself is permissive — every call is forwarded, except that
nothing may be deleted (`unlink`, `rmdir` fail with `EPERM`) — and a router
observer appends each decision to the file named by `$LIBC_SERVICE_AUDIT`
(default `audit.jsonl` in the current directory), after the reply went out.
Each line is `libc_service.tools.tracing.decision_record`: `pid`, `tid`,
`function`, `arguments`, `route` (the deciding handler, or `default`),
`decision` (`reply`, `forward`, `error`, `failure`), `result`, `errno`,
`errno_name`, `fds`, `latency_us`, plus `session`.

The file is opened at the first decision, in append mode, so documenting
the policy creates nothing.

Run it (the first command leaves `keep-me` and `audit.jsonl` in the
current directory; the `rm` is refused, so `ls` finds the file):

    libc-service run examples/audit_jsonl.py -- sh -c 'cat /etc/hostname; touch keep-me; rm keep-me || ls keep-me'
    grep '"function": "unlink"' audit.jsonl
    libc-service docs examples/audit_jsonl.py

Any router can be audited the same way: `router.observe(JsonlAudit(path))`.
"""

from __future__ import annotations

import errno
import json
import os
from typing import TextIO

from libc_service import FORWARD, Decision, Errno, Router
from libc_service.requests import RmdirRequest, UnlinkRequest
from libc_service.tools.tracing import decision_record


class JsonlAudit:
    """A router observer appending one JSON object per decision to a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: TextIO | None = None

    def __call__(self, decision: Decision) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the policy
        record = decision_record(decision)
        record["session"] = decision.session
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the log file (a later decision opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None


router = Router(default=FORWARD)
audit = router.observe(JsonlAudit(os.environ.get("LIBC_SERVICE_AUDIT") or "audit.jsonl"))


@router.on("unlink", "rmdir")
def no_deletes(request: UnlinkRequest | RmdirRequest) -> int:
    """Nothing is deleted: `unlink` and `rmdir` fail with `EPERM` (and are logged like everything else)."""
    raise Errno(errno.EPERM)
