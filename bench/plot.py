"""Plot latency and throughput against the number of slaves (matplotlib PNGs).

    python bench/plot.py [--slaves 1,2,4,8,16,32,64] [--total 64000] [--runs 3]
                         [--json bench/out/plot.json] [--from-json FILE]

For each N, ``bench/stat_loop.c procs N`` (N slave processes, each its own
session, each calling stat back to back) runs under the Python master
(``pymaster.py answer``) and the C floor (``floor_master stat``), unpinned,
interleaved, ``--runs`` times; medians. Throughput is calls per second over
all slaves; latency is the mean time one slave waits per call
(N / throughput: each slave has one call in flight).

Writes ``docs/performance-latency.png`` and ``docs/performance-throughput.png``
(and the figures as JSON, so ``--from-json`` re-plots without measuring).

    python bench/plot.py --programs bench/out/programs.json

plots what ``bench/programs.py`` measured instead: each workload's median
wall time per configuration, relative to native (``docs/performance-programs.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import throughput  # noqa: E402

LABELS = {"python": "Python master (Router, uvloop)", "floor": "C floor master"}


def measure(slaves: list[int], total: int, runs: int) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[int, list[float]]] = {m: {n: [] for n in slaves} for m in throughput.MASTERS}
    for _ in range(runs):
        for n in slaves:
            for master in throughput.MASTERS:
                samples[master][n].append(
                    throughput.calls_per_second(master, "procs", n, total, "none", "/etc/hostname")
                )
    return {m: {str(n): _common.median(v) for n, v in per_n.items()} for m, per_n in samples.items()}


def plot(figures: dict[str, dict[str, float]], machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = _common.ROOT / "docs"
    for kind in ("throughput", "latency"):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for master, per_n in figures.items():
            ns = sorted(int(n) for n in per_n)
            cps = [per_n[str(n)] for n in ns]
            ys = [c / 1000 for c in cps] if kind == "throughput" else [n / c * 1e6 for n, c in zip(ns, cps)]
            ax.plot(ns, ys, marker="o", label=LABELS.get(master, master))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("slave processes (one session each)")
        if kind == "throughput":
            ax.set_ylabel("stat calls per second (thousands)")
            ax.set_ylim(bottom=0)
            ax.set_title("Throughput through the shim")
        else:
            ax.set_ylabel("µs per call, as one slave sees it")
            ax.set_yscale("log")
            ax.set_title("Latency through the shim")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.text(0.01, 0.01, machine, fontsize=6, alpha=0.7)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = docs / f"performance-{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        print(f"wrote {path}")


def plot_programs(path: Path) -> None:
    """Bars per workload: each configuration's median over native (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians: dict[str, dict[str, float]] = json.loads(path.read_text())["median_s"]
    workloads = [w for w in medians if w != "pass"]
    configurations = [c for c in medians[workloads[0]] if c != "native"]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    width = 0.8 / len(configurations)
    for index, configuration in enumerate(configurations):
        xs = [n + (index - len(configurations) / 2 + 0.5) * width for n in range(len(workloads))]
        ys = [medians[w].get(configuration, float("nan")) / medians[w]["native"] for w in workloads]
        ax.bar(xs, ys, width, label=configuration)
    ax.axhline(1.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("median wall time ÷ native (log)")
    ax.set_title("Whole programs (bench/programs.py); dashed: 1.5× native")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    target = _common.ROOT / "docs" / "performance-programs.png"
    fig.savefig(target)
    plt.close(fig)
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--programs",
        metavar="FILE",
        type=Path,
        help="plot bench/programs.py's JSON instead of measuring latency and throughput",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="repeat a run (up to 5 tries) while other processes used more than SHARE "
        "(0..1) of the machine; the default never repeats",
    )
    parser.add_argument("--slaves", default="1,2,4,8,16,32,64")
    parser.add_argument("--total", type=int, default=64000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=str(_common.OUT / "plot.json"))
    parser.add_argument("--from-json", metavar="FILE")
    args = parser.parse_args()
    if args.programs:
        plot_programs(args.programs)
        return
    _common.MAX_FOREIGN = args.max_foreign
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        slaves = [int(n) for n in args.slaves.split(",")]
        figures = measure(slaves, args.total, args.runs)
        data = {
            "machine": _common.machine(),
            "noise": _common.noise(),
            "total": args.total,
            "runs": args.runs,
            "figures": figures,
        }
        _common.OUT.mkdir(exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
    print(f"# {data['machine']}\n{data.get('noise', '')}")
    print(
        _common.table(
            [
                (
                    n,
                    *(f"{data['figures'][m][n]:,.0f}" for m in data["figures"]),
                    *(f"{int(n) / data['figures'][m][n] * 1e6:.1f}" for m in data["figures"]),
                )
                for n in data["figures"]["python"]
            ],
            ("slaves", *(f"{m} calls/s" for m in data["figures"]), *(f"{m} µs/call" for m in data["figures"])),
        )
    )
    plot(data["figures"], data["machine"])


if __name__ == "__main__":
    main()
