"""The program the conformance suite runs, natively and as a slave.

    python slave_main.py BASE CASE:IDENTITY ...

For each ``CASE:IDENTITY`` it forks a child that changes into
``BASE/CASE/IDENTITY``, takes on the identity and runs the case, which
reports what it saw through a pipe; the parent prints one JSON object,
``{"CASE:IDENTITY": {"status": N, "seen": [...]}, ...}``, on its stdout.
One interpreter serves every case, so the whole table costs one start-up
per configuration; a fork per case keeps each case's descriptors, working
directory and identity its own.
"""

from __future__ import annotations

import fcntl  # noqa: F401 - imported before the fork, for the cases
import json
import os
import select  # noqa: F401
import signal
import socket  # noqa: F401
import sys
import time  # noqa: F401
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.casebook import CASES, Probe, become, load_cases  # noqa: E402

#: Where a case's child writes its report: high, so the case's own descriptors start low.
REPORT_FD = 900


def run_child(name: str, identity: str, directory: str, report: int) -> None:
    """In the forked child: run one case and write what it saw to ``report``; never returns."""
    code = 0
    probe = Probe()
    try:
        os.dup2(report, REPORT_FD, inheritable=False)
        os.close(report)
        os.chdir(os.path.join(directory, CASES[name].cwd))
        become(identity)
        signal.alarm(CASES[name].timeout)
        CASES[name].body(probe)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        probe.seen.append(["exception", "raised", f"{type(exc).__name__}: {exc}"])
        code = 1
    data = json.dumps(probe.seen).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(REPORT_FD, view) :]
    os._exit(code)


def main(argv: list[str]) -> int:
    base = argv[1]
    load_cases()
    results: dict[str, object] = {}
    for item in argv[2:]:
        name, identity = item.split(":", 1)
        reading, writing = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reading)
            run_child(name, identity, os.path.join(base, name, identity), writing)
        os.close(writing)
        chunks = []
        while chunk := os.read(reading, 65536):
            chunks.append(chunk)
        os.close(reading)
        _, status = os.waitpid(pid, 0)
        exit_status = os.waitstatus_to_exitcode(status)
        try:
            seen = json.loads(b"".join(chunks) or b"[]")
        except ValueError:
            seen = [["report", "garbled", b"".join(chunks).decode("latin-1")]]
        results[item] = {"status": exit_status, "seen": seen}
    sys.stdout.write(json.dumps(results))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
