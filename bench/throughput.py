"""Throughput: stat calls per second through the shim, Python master vs C floor.

    python bench/throughput.py [--total 64000] [--runs 5] [--pin none|same] [--json FILE]

``bench/stat_loop.c`` runs N workers — forked processes (each registers its
own channel, so the master serves N sessions) or threads of one process
(one channel, pipelined by thread id) — each calling stat(PATH) ``--total``
/ N times after a warm-up call and a barrier; it prints calls per second
from the barrier's release to the last worker's end. Configurations:
1 process, 8 processes, 1 process × 8 threads, 64 processes.

Masters: ``python`` is ``bench/pymaster.py answer`` (a Router whose stat
handler returns a fixed Stat; sequential dispatch per session, sessions
concurrent on one event loop); ``floor`` is ``bench/floor_master.c stat``
(the same answer from a C poll() loop). Runs are interleaved; figures are
the median over ``--runs``.

``--pin none`` (default) lets the scheduler use both CPUs; ``--pin same``
puts master and workers on CPU 0.

``--cpu`` (needs ``perf``) also reports the master's own CPU time per call:
``perf stat -i -e task-clock`` of the master process alone, less its
start-up (the same master running ``/bin/true``). Unlike calls per second
it hardly moves when other work shares the machine, so it is the figure to
compare before/after an optimisation on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

#: (label, stat_loop mode, workers)
SHAPES = (
    ("1 process", "procs", 1),
    ("8 processes", "procs", 8),
    ("1 process x 8 threads", "threads", 8),
    ("64 processes", "procs", 64),
)
MASTERS = ("python", "floor")


#: --tree NAME=PATH: other checkouts whose Python master to measure too (as python[NAME]).
TREES: dict[str, str] = {}


def command(master: str, mode: str, workers: int, total: int, pinning: str, path: str) -> list[str]:
    program = [_common.build("stat_loop"), mode, str(workers), str(max(1, total // workers)), path]
    prefix = _common.pin_master(pinning)
    if master.startswith("python"):
        tree = TREES[master[7:-1]] if master.startswith("python[") else None
        env = ["env", f"BENCH_TREE={tree}"] if tree else []
        return prefix + env + [_common.PYTHON, str(_common.BENCH / "pymaster.py"), "answer", "--", *program]
    if master == "floor":
        return prefix + [_common.build("floor_master"), "-s", _common.shim(), "stat", "--", *program]
    raise ValueError(master)


def calls_per_second(master: str, mode: str, workers: int, total: int, pinning: str, path: str) -> float:
    return run_shape(master, mode, workers, total, pinning, path)[0]


def run_shape(
    master: str, mode: str, workers: int, total: int, pinning: str, path: str, cpu: bool = False
) -> tuple[float, float | None, float]:
    """(calls per second, master CPU ms or None, calls made)."""
    argv = command(master, mode, workers, total, pinning, path)
    with tempfile.NamedTemporaryFile("r", suffix=".perf") as perf:
        if cpu:
            argv = ["perf", "stat", "-i", "-x,", "-e", "task-clock", "-o", perf.name, *argv]
        parsed = _common.fields(_common.run(argv))
        cpu_ms = _task_clock(perf.read()) if cpu else None
    values = parsed[""]
    if values["failures"]:
        raise RuntimeError(f"{master} {mode} {workers}: {values['failures']:.0f} workers failed")
    return values["calls_per_s"], cpu_ms, values["calls"]


def _task_clock(text: str) -> float:
    for line in text.splitlines():
        if "task-clock" in line:
            return float(line.split(",")[0])
    raise RuntimeError(f"no task-clock in perf output: {text!r}")


def startup_cpu_ms(master: str, runs: int) -> float:
    """The master's CPU time to start, serve nothing and exit."""
    samples = []
    for _ in range(runs):
        argv = command(master, "procs", 1, 1, "none", "/")[:-5] + ["/bin/true"]
        with tempfile.NamedTemporaryFile("r", suffix=".perf") as perf:
            _common.run(["perf", "stat", "-i", "-x,", "-e", "task-clock", "-o", perf.name, *argv])
            samples.append(_task_clock(perf.read()))
    return _common.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="repeat a run (up to 5 tries) while other processes used more than SHARE "
        "(0..1) of the machine; the default never repeats",
    )
    parser.add_argument("--total", type=int, default=64000, help="stat calls per run, split over the workers")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pin", choices=("none", "same"), default="none")
    parser.add_argument("--path", default="/etc/hostname")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--cpu", action="store_true", help="also the master's CPU µs per call (perf stat)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run the Python master of checkout PATH (as python[NAME]); repeatable",
    )
    args = parser.parse_args()
    _common.MAX_FOREIGN = args.max_foreign
    if args.cpu and _common.need("perf") is None:
        parser.error("--cpu needs perf")
    for spec in args.tree:
        name, _, path = spec.partition("=")
        TREES[name] = path
    masters = [*MASTERS, *(f"python[{name}]" for name in TREES)]
    results: dict[str, dict[str, list[float]]] = {label: {m: [] for m in masters} for label, _, _ in SHAPES}
    cpu: dict[str, dict[str, list[float]]] = {label: {m: [] for m in masters} for label, _, _ in SHAPES}
    startup = {m: startup_cpu_ms(m, 3) for m in masters} if args.cpu else {}
    for _ in range(args.runs):
        for label, mode, workers in SHAPES:
            for master in masters:
                rate, cpu_ms, calls = run_shape(master, mode, workers, args.total, args.pin, args.path, args.cpu)
                results[label][master].append(rate)
                if cpu_ms is not None:
                    cpu[label][master].append((cpu_ms - startup[master]) * 1000 / calls)
    print(
        f"# throughput: {args.total} stat calls per run, {args.runs} interleaved runs, pin={args.pin}, "
        f"median calls/s (range)"
    )
    print(f"# {_common.machine()}")
    print(_common.noise())
    rows = []
    for label, per_master in results.items():
        floor = _common.median(per_master["floor"])
        row: list[object] = [label, f"{floor:,.0f}", _common.spread(per_master["floor"])]
        for master in masters[:1] + masters[2:]:
            py = _common.median(per_master[master])
            # Each run's python and floor figures were taken back to back: the
            # median of the per-run ratios drifts less with the machine's load.
            paired = _common.median([a / b for a, b in zip(per_master[master], per_master["floor"])])
            row += [f"{py:,.0f}", _common.spread(per_master[master]), f"{py / floor:.2f}", f"{paired:.2f}"]
        rows.append(row)
    header = ["workers", "floor calls/s", "range"]
    for master in masters[:1] + masters[2:]:
        header += [f"{master} calls/s", "range", "÷ floor", "per-run ÷"]
    print(_common.table(rows, header))
    if args.cpu:
        print(
            "\nmaster CPU per call, µs (task-clock less start-up: "
            + ", ".join(f"{m} {startup[m]:.1f} ms" for m in masters)
            + ")"
        )
        rows = [(label, *(f"{_common.median(v[m]):.2f}" for m in masters)) for label, v in cpu.items()]
        print(_common.table(rows, ("workers", *(f"{m} µs" for m in masters))))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"total": args.total, "runs": args.runs, "pin": args.pin, "results": results, "cpu_us_per_call": cpu},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
