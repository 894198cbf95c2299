"""Helpers shared by the bench scripts: building the C programs, pinning, medians.

Not a library module: the scripts in ``bench/`` import it from their own
directory. Builds go to ``bench/out/`` (ignored by git).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
PYTHON = sys.executable

#: C programs the benchmarks run: output name -> (sources, extra flags).
PROGRAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bench_calls": (("tests/c/bench_calls.c",), ()),
    "stat_threads": (("tests/c/stat_threads.c",), ("-pthread",)),
    "floor_master": (("bench/floor_master.c",), ()),
    "stat_loop": (("bench/stat_loop.c",), ()),
    "idle_tree": (("bench/idle_tree.c",), ()),
}

#: Pinning configurations. "same": master and slave on CPU 0 (taskset -c 0
#: for both); "split": master on CPU 0, slave on CPU 1 (every round trip is
#: a cross-CPU wake-up); "none": the scheduler decides (bimodal on this VM).
PINNINGS = ("same", "split", "none")


def build(name: str) -> str:
    """Compile ``name`` into ``bench/out`` if missing or stale; its path."""
    sources, flags = PROGRAMS[name]
    paths = [ROOT / s for s in sources]
    OUT.mkdir(exist_ok=True)
    target = OUT / name
    if not target.exists() or any(p.stat().st_mtime > target.stat().st_mtime for p in paths):
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(target), *map(str, paths), *flags], check=True)
    return str(target)


def shim() -> str:
    """The built shim; exits with a hint when it is missing."""
    path = ROOT / "libc_service" / "_shim.so"
    if not path.is_file():
        sys.exit(f"{path} is missing: run `pip install -e .` or `python setup.py build_ext --inplace`")
    return str(path)


def need(tool: str) -> str | None:
    """The path of an external tool, or None (the benchmark skips it)."""
    return shutil.which(tool)


def pin_master(pinning: str) -> list[str]:
    """Prefix for the master (or the native program) under ``pinning``."""
    return ["taskset", "-c", "0"] if pinning in ("same", "split") else []


def pin_slave(pinning: str) -> list[str]:
    """Prefix for the slave program started by a master under ``pinning``."""
    return ["taskset", "-c", "1"] if pinning == "split" else []


#: Share of the machine (0..1) that *other* processes used during each run().
FOREIGN: list[float] = []
#: run() repeats a measurement (up to 5 tries) while others used more than
#: this share of the machine; 1.0 (the default) never repeats.
MAX_FOREIGN = 1.0


def _cpu_now() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of our waited children, wall)."""
    fields_ = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    jiffies = [int(x) for x in fields_[:8]]
    busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, usage.ru_utime + usage.ru_stime, time.monotonic()


def run(argv: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run ``argv``; its stdout (stderr is shown on failure).

    Records in :data:`FOREIGN` how much of the machine other processes used
    meanwhile (busy CPU time from ``/proc/stat`` less this run's own), and
    repeats the run while that exceeds :data:`MAX_FOREIGN`.
    """
    for attempt in range(5):
        before = _cpu_now()
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
        after = _cpu_now()
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
        wall = max(after[2] - before[2], 1e-6)
        foreign = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (wall * (os.cpu_count() or 1))
        if foreign <= MAX_FOREIGN or attempt == 4:
            FOREIGN.append(min(foreign, 1.0))
            return done.stdout
    raise AssertionError("unreachable")


def noise() -> str:
    """One line on what other processes used while the figures were taken."""
    if not FOREIGN:
        return "# others' share of the machine: not measured"
    return (
        f"# others' share of the machine during the runs: median {statistics.median(FOREIGN):.0%}, "
        f"max {max(FOREIGN):.0%} over {len(FOREIGN)} runs"
        + (f" (runs repeated above {MAX_FOREIGN:.0%})" if MAX_FOREIGN < 1 else "")
    )


def fields(text: str) -> dict[str, dict[str, float]]:
    """Parse lines like ``stat median_ns=812 mean_ns=830 n=1000``."""
    parsed: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        values = dict(re.findall(r"(\w+)=([-\d.]+)", line))
        if values:
            parsed[parts[0] if "=" not in parts[0] else ""] = {k: float(v) for k, v in values.items()}
    return parsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """``min..max`` of repeated runs, to show the noise."""
    return f"{min(values):.0f}..{max(values):.0f}"


def machine() -> str:
    """One line describing the machine (for the printed report)."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"nproc={os.cpu_count()} cpu={model!r} kernel={platform.release()} "
        f"python={platform.python_version()} load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}"
    )


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
