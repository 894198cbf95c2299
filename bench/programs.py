"""Whole programs under a forwarding policy vs native, fakeroot and strace.

    python bench/programs.py [--runs 10] [--pin same|none]

Workloads (stdout discarded):

- ``find``: ``find /usr/share -name '*.txt'`` (stat-heavy: an lstat per
  entry, an openat per directory)
- ``python``: ``/usr/bin/python3 -c "import json, email, asyncio"`` (the
  system interpreter, not a pyenv shim script; a stat per import path probe,
  an open per module)

Wrappers, run interleaved, ``--runs`` times each after one warm-up run,
wall time per run, median (hyperfine-style):

- ``native``
- ``forward``   ``bench/pymaster.py forward``: spawn() with
                ``Router(default=FORWARD)`` on uvloop — what ``libc-service
                run`` does with a forwarding policy
- ``floor-fwd`` ``bench/floor_master.c forward``: the C transport floor
- ``fakeroot``  ``fakeroot --``
- ``strace``    ``strace -f -o /dev/null``

``forward`` includes the Python master's own start-up (interpreter, imports,
spawn); the ``net`` column subtracts the median of the same master running
``/bin/true``. The number of arbitrated calls per workload is counted once
with ``floor_master -vv``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

WORKLOADS: dict[str, list[str]] = {
    "find": ["find", "/usr/share", "-name", "*.txt"],
    "python": ["/usr/bin/python3", "-c", "import json, email, asyncio"],
    "true": ["/bin/true"],
}
WRAPPERS = ("native", "forward", "floor-fwd", "fakeroot", "strace")


def wrap(wrapper: str, argv: list[str], pinning: str) -> list[str] | None:
    prefix = ["taskset", "-c", "0"] if pinning == "same" else []
    if wrapper == "native":
        return prefix + argv
    if wrapper == "forward":
        return prefix + [_common.PYTHON, str(_common.BENCH / "pymaster.py"), "forward", "--", *argv]
    if wrapper == "floor-fwd":
        return prefix + [_common.build("floor_master"), "-s", _common.shim(), "forward", "--", *argv]
    tool = _common.need(wrapper)
    if tool is None:
        return None
    if wrapper == "fakeroot":
        return prefix + [tool, "--", *argv]
    if wrapper == "strace":
        return prefix + [tool, "-f", "-o", "/dev/null", *argv]
    raise ValueError(wrapper)


def timed(argv: list[str]) -> float:
    """Wall seconds of one run (repeated while others loaded the machine, see _common.run)."""
    for attempt in range(5):
        before = _common._cpu_now()
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        elapsed = time.perf_counter() - start
        after = _common._cpu_now()
        foreign = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (elapsed * (os.cpu_count() or 1))
        if foreign <= _common.MAX_FOREIGN or attempt == 4:
            _common.FOREIGN.append(min(foreign, 1.0))
            return elapsed
    raise AssertionError("unreachable")


def arbitrated(argv: list[str]) -> Counter[str]:
    """Requests per function, from floor_master -vv's log."""
    done = subprocess.run([_common.build("floor_master"), "-vv", "-s", _common.shim(), "forward", "--", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return Counter(line.split()[3] for line in done.stderr.splitlines()
                   if "tid=" in line and len(line.split()) > 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-foreign", type=float, default=1.0, metavar="SHARE",
                        help="repeat a run (up to 5 tries) while other processes used more than SHARE "
                             "(0..1) of the machine; the default never repeats")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pin", choices=("none", "same"), default="none")
    args = parser.parse_args()
    _common.MAX_FOREIGN = args.max_foreign
    times: dict[str, dict[str, list[float]]] = {w: {x: [] for x in WRAPPERS} for w in WORKLOADS}
    for round_ in range(args.runs + 1):
        for workload, argv in WORKLOADS.items():
            for wrapper in WRAPPERS:
                if workload == "true" and wrapper != "forward":
                    continue
                command = wrap(wrapper, argv, args.pin)
                if command is None:
                    continue
                elapsed = timed(command)
                if round_:  # round 0 warms the caches
                    times[workload][wrapper].append(elapsed)
    startup = _common.median(times["true"]["forward"])
    print(f"# programs: {args.runs} interleaved runs after a warm-up, pin={args.pin}, median wall ms (range)")
    print(f"# {_common.machine()}")
    print(_common.noise())
    print(f"# the forward master's own start-up (running /bin/true): {startup * 1000:.1f} ms")
    for workload, argv in WORKLOADS.items():
        if workload == "true":
            continue
        counts = arbitrated(argv)
        print(f"\n## {workload}: {' '.join(argv)}")
        print(f"arbitrated calls: {sum(counts.values())} ({', '.join(f'{n} {f}' for f, n in counts.most_common())})")
        native = _common.median(times[workload]["native"])
        rows = []
        for wrapper, values in times[workload].items():
            if not values:
                continue
            m = _common.median(values)
            net = m - startup if wrapper == "forward" else m
            rows.append((wrapper, f"{m * 1000:.1f}", f"{min(values) * 1000:.0f}..{max(values) * 1000:.0f}",
                         f"{m / native:.2f}", f"{net * 1000:.1f}" if wrapper == "forward" else "",
                         f"{net / native:.2f}" if wrapper == "forward" else ""))
        print(_common.table(rows, ("wrapper", "ms", "range", "÷native", "net ms", "net ÷native")))


if __name__ == "__main__":
    main()
