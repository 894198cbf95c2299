"""Exactness oracle: CPython's own tests, natively and as a slave of libc-service.

A forwarding or performing master must be invisible to the program. CPython's
``test`` package exercises the file-system and process calls the shim
arbitrates far more thoroughly than any test of ours, with the kernel's
behaviour as the expected result, so this script runs its modules in up to
three configurations and reports every test case whose outcome differs from
the native run:

- ``native``: ``python bench/oracle_runner.py ...``, no shim;
- ``trace``: the same under ``libc-service trace`` (every call logged, then
  forwarded: the slave performs it with its own credentials);
- ``perform``: under ``libc-service run bench/perform_all.py``, where the
  master performs every call with ``libc_service.acting.perform`` and sends the
  result back (unavailable, and reported so, until ``perform`` exists).

Outcomes (pass, fail, error, skip, xfail, xpass) come from unittest's result
callbacks, one JSON line per test case (``bench/oracle_runner.py``), never
from parsing text. Every run gets its own empty working and temporary
directory; the comparison is against native under the same user (tests that
behave differently as root do so in every configuration).

    python bench/oracle.py                                  # the default modules, every configuration
    python bench/oracle.py --modules test_os,test_glob --configs native,trace
    python bench/oracle.py --select test.test_os.FileTests test.test_glob.GlobTests
    python bench/oracle.py --confirm --json oracle.json     # re-run differing cases alone

Exit status: 0 when nothing differs (or when this Python has no ``test``
package), 1 when some test case differs, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RUNNER = BENCH / "oracle_runner.py"
PERFORM_POLICY = BENCH / "perform_all.py"
PYTHON = sys.executable

DEFAULT_MODULES = (
    "test_os",
    "test_posix",
    "test_shutil",
    "test_tempfile",
    "test_glob",
    "test_pathlib",
    "test_fileio",
    "test_tarfile",
    "test_zipfile",
    "test_subprocess",
    # Sockets: bind/connect performed by the master (getsockname, options,
    # unix servers), and the programs built on them.
    "test_socket",
    "test_socketserver",
    "test_logging",
    "test_asyncio.test_sock_lowlevel",
    "test_asyncio.test_unix_events",
)
#: Test classes left out by default: they hang natively on some machines,
#: which ends the whole module's run in every configuration alike.
DEFAULT_EXCLUDED = (
    # Connects to the host over AF_VSOCK: on a VM with /dev/vsock but no
    # listener on the host the connect never completes.
    "test.test_socket.ThreadedVSOCKSocketStreamTest",
)
CONFIGS = ("native", "trace", "perform")

#: What a test case that left no outcome line is called: the run ended first.
NOT_RUN = "not run"


@dataclasses.dataclass
class Run:
    """One process of the runner: which names, in which configuration, and what came out."""

    label: str
    config: str
    names: list[str]
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    details: dict[str, str] = dataclasses.field(default_factory=dict)
    started: list[str] = dataclasses.field(default_factory=list)
    done: bool = False
    status: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    stderr_tail: str = ""
    calls: int | None = None  # calls the master saw (trace: lines of its log; perform: the policy's count)

    @property
    def problem(self) -> str:
        """Why the run did not finish normally ("" when it did)."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s" + (f" in {self.started[-1]}" if self.hung else "")
        if self.calls == 0:
            return "the master saw no call: the shim was not in the program"
        if not self.done:
            where = f" in {self.started[-1]}" if self.hung else ""
            return f"ended with status {self.status} before finishing{where}"
        return ""

    @property
    def hung(self) -> bool:
        """A test was started and never reported: the one the run ended in."""
        return bool(self.started) and self.started[-1] not in self.outcomes


@dataclasses.dataclass
class Difference:
    """A test case whose outcome under ``config`` is not the native one."""

    test: str
    config: str
    native: str
    other: str
    detail: str
    confirmed: bool | None = None  # None: not re-checked (no --confirm)

    @property
    def module(self) -> str:
        return module_of(self.test)


def module_of(test_id: str) -> str:
    """``test_os`` for ``test.test_os.FileTests.test_x`` and ``setUpClass (test.test_os.T)``."""
    if test_id.endswith(")") and "(" in test_id:
        test_id = test_id[test_id.rindex("(") + 1 : -1]
    parts = test_id.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "test" else parts[0]


def has_test_package() -> bool:
    """CPython's ``test`` package (and its ``support``) is installed for this interpreter.

    Distributions often ship it separately (``python3-test``, ``libpython3.X-testsuite``)
    or not at all; the oracle then has nothing to run.
    """
    try:
        importlib.import_module("test.support")
    except ImportError:
        return False
    return True


def perform_available() -> str:
    """ "" when ``libc_service.acting.perform`` exists, else why the configuration cannot run."""
    try:
        import libc_service
    except ImportError as exc:
        return f"libc_service is not importable ({exc})"
    if not callable(getattr(libc_service, "perform", None)):
        return "libc_service.acting.perform does not exist yet"
    return ""


def trace_available() -> str:
    """ "" when libc_service (and so ``libc-service trace``) is importable here."""
    if importlib.util.find_spec("libc_service") is None:
        return "libc_service is not installed for this Python"
    return ""


def command(
    config: str, names: Sequence[str], work: Path, use: str, test_timeout: float, exclude: Sequence[str] = ()
) -> list[str]:
    """The argv of one runner process in ``config``, writing its outcomes (and trace) under ``work``."""
    out = work / "outcomes.jsonl"
    runner = [PYTHON, str(RUNNER), "--out", str(out), "--use", use, "--test-timeout", str(test_timeout)]
    runner += [f"--exclude={prefix}" for prefix in exclude]
    runner += names
    if config == "native":
        return runner
    if config == "trace":
        # The log is counted afterwards, so a run the shim never reached is not a vacuous "same".
        return [PYTHON, "-m", "libc_service", "trace", "-o", str(work / "trace.log"), "--", *runner]
    if config == "perform":
        return [PYTHON, "-m", "libc_service", "run", str(PERFORM_POLICY), "--", *runner]
    raise ValueError(f"unknown configuration {config!r}")


def execute(
    run: Run, *, timeout: float, use: str, test_timeout: float, keep: Path | None, exclude: Sequence[str] = ()
) -> Run:
    """Run one runner process in a fresh directory and read back its outcomes.

    The process gets its own session so that a timeout ends the whole tree
    (master, slave, and whatever the tests spawned), not only the top.
    """
    work = Path(tempfile.mkdtemp(prefix=f"oracle-{run.config}-"))
    (work / "tmp").mkdir()
    out = work / "outcomes.jsonl"
    # The perform policy writes how many calls it performed there (the slave's
    # environment is the master's: both see it, only the policy uses it).
    env = dict(os.environ, TMPDIR=str(work / "tmp"), LIBC_SERVICE_ORACLE_CALLS=str(work / "performed"))
    begin = time.monotonic()
    with open(work / "stderr", "w+b") as stderr:
        proc = subprocess.Popen(
            command(run.config, run.names, work, use, test_timeout, exclude),
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            run.status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            _kill_tree(proc)
            run.status = proc.wait()
        finally:
            _kill_tree(proc)  # whatever the tests left running in the session
        run.seconds = time.monotonic() - begin
        stderr.seek(0)
        run.stderr_tail = "\n".join(stderr.read().decode(errors="replace").rstrip().splitlines()[-8:])
    if out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                record: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "start" in record:
                run.started.append(record["start"])
            elif "id" in record:
                run.outcomes[record["id"]] = record["outcome"]
                if "detail" in record:
                    run.details[record["id"]] = record["detail"]
            elif record.get("done"):
                run.done = True
    log = work / "trace.log"
    if log.exists():
        with open(log, "rb") as lines:
            run.calls = sum(chunk.count(b"\n") for chunk in iter(lambda: lines.read(1 << 20), b""))
    elif (work / "performed").exists():
        run.calls = int((work / "performed").read_text() or 0)
    elif run.config == "perform" and run.done:
        run.calls = 0
    if keep is not None:
        target = keep / f"{run.label}-{run.config}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work, target, symlinks=True, ignore=shutil.ignore_patterns("tmp", "@test_*", "trace.log"))
    shutil.rmtree(work, ignore_errors=True)
    return run


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def compare(native: Run, other: Run) -> list[Difference]:
    """Every test case whose outcome under ``other`` is not native's."""
    differences = []
    for test in sorted(set(native.outcomes) | set(other.outcomes)):
        expected = native.outcomes.get(test, NOT_RUN)
        got = other.outcomes.get(test, NOT_RUN)
        if expected != got:
            detail = other.details.get(test, "") if got != NOT_RUN else other.problem
            if expected not in ("pass", "skip", NOT_RUN) and test in native.details:
                detail = (detail + "\nnative: " + native.details[test]).strip()
            differences.append(Difference(test, other.config, expected, got, detail))
    return differences


def loadable(test_id: str) -> bool:
    """Whether a test id can be run alone (class/module fixture records cannot)."""
    return "(" not in test_id and " " not in test_id


def confirm(differences: list[Difference], options: argparse.Namespace) -> None:
    """Re-run each differing test case alone, natively and in its configuration.

    A difference that does not come back is order- or timing-dependent (or a
    flaky test); it stays in the report, marked as not reproduced.
    """
    by_config: dict[str, list[Difference]] = collections.defaultdict(list)
    for difference in differences:
        if loadable(difference.test):
            by_config[difference.config].append(difference)
    for config, found in by_config.items():
        names = sorted({d.test for d in found})
        native = execute(
            Run("confirm", "native", names),
            timeout=options.timeout,
            use=options.use,
            test_timeout=options.test_timeout,
            keep=None,
        )
        other = execute(
            Run("confirm", config, names),
            timeout=options.timeout,
            use=options.use,
            test_timeout=options.test_timeout,
            keep=None,
        )
        again = {d.test for d in compare(native, other)}
        for difference in found:
            difference.confirmed = difference.test in again


def counts(outcomes: Iterable[str]) -> str:
    """``120 pass, 3 skip`` for a run's outcomes."""
    counter = collections.Counter(outcomes)
    order = ("pass", "fail", "error", "skip", "xfail", "xpass")
    return ", ".join(f"{counter[o]} {o}" for o in order if counter[o]) or "nothing ran"


def report(runs: list[Run], differences: list[Difference], unavailable: dict[str, str], configs: list[str]) -> str:
    """The summary per module, then every difference with its traceback's last lines."""
    lines = []
    for config, why in unavailable.items():
        lines.append(f"{config}: unavailable — {why}")
    natives = {r.label: r for r in runs if r.config == "native"}
    per_module: dict[tuple[str, str], int] = collections.Counter((d.module, d.config) for d in differences)
    modules = sorted({module_of(t) for r in natives.values() for t in r.outcomes} | {d.module for d in differences})
    lines.append("")
    lines.append(f"{'module':<18} {'native':<44} " + " ".join(f"{c:<24}" for c in configs if c != "native"))
    for module in modules:
        native_outcomes = [o for r in natives.values() for t, o in r.outcomes.items() if module_of(t) == module]
        cells = []
        for config in configs:
            if config == "native":
                continue
            if config in unavailable:
                cells.append("unavailable")
                continue
            n = per_module[(module, config)]
            cells.append("same" if n == 0 else f"{n} differ")
        lines.append(f"{module:<18} {counts(native_outcomes):<44} " + " ".join(f"{c:<24}" for c in cells))
    for run in runs:
        if run.problem:
            lines.append(f"\n{run.label} [{run.config}]: {run.problem}\n" + _indent(run.stderr_tail))
    lines.append("")
    lines.append(f"{len(differences)} test case(s) differ from native")
    for d in differences:
        mark = {None: "", True: "  (reproduced alone)", False: "  (not reproduced alone)"}[d.confirmed]
        lines.append(f"\n[{d.config}] {d.test}: native {d.native} -> {d.other}{mark}")
        if d.detail:
            lines.append(_indent(d.detail))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every run uses this script's Python: " + PYTHON,
    )
    parser.add_argument(
        "--modules",
        default=",".join(DEFAULT_MODULES),
        help="comma-separated modules of the test package, one runner process each (default: %(default)s)",
    )
    parser.add_argument(
        "--select",
        nargs="+",
        metavar="NAME",
        help="instead of --modules: unittest names (test.test_os.FileTests, ...) run together "
        "in one process per configuration",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from %(default)s")
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds one runner process may take (default %(default)s)"
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=300.0,
        help="seconds one test case may take before its run is ended (default %(default)s)",
    )
    parser.add_argument("--use", default="", help="test.support resources to enable, e.g. cpu,network (default none)")
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PREFIX",
        help="leave out test ids starting with PREFIX (repeatable; default: "
        + ", ".join(DEFAULT_EXCLUDED)
        + ", which hang natively on some machines)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, help="runner processes at a time (default 1)")
    parser.add_argument("--confirm", action="store_true", help="re-run each differing test case alone")
    parser.add_argument("--json", metavar="FILE", help="also write runs and differences as JSON")
    parser.add_argument("--keep", metavar="DIR", help="keep each run's outcome file and stderr under DIR")
    options = parser.parse_args(argv)
    options.configs = [c for c in options.configs.split(",") if c]
    options.exclude = list(DEFAULT_EXCLUDED if options.exclude is None else options.exclude)
    unknown = set(options.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    if "native" not in options.configs:
        options.configs.insert(0, "native")  # the reference every other run is compared with
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run, compare, print the report; exit 1 when a test case differs."""
    options = parse(argv)
    if not has_test_package():
        print(f"oracle: skipped: {PYTHON} has no `test` package (import test.support failed)")
        return 0
    unavailable: dict[str, str] = {}
    checks = {"trace": trace_available, "perform": perform_available}
    for config in options.configs:
        why = checks[config]() if config in checks else ""
        if why:
            unavailable[config] = why
    configs = [c for c in options.configs if c not in unavailable]
    if options.select:
        groups = [("selection", list(options.select))]
    else:
        groups = [(m, [m if m.startswith("test.") else f"test.{m}"]) for m in options.modules.split(",") if m]
    keep = Path(options.keep).resolve() if options.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)

    runs = [Run(label, config, names) for label, names in groups for config in configs]
    with concurrent.futures.ThreadPoolExecutor(max(1, options.jobs)) as pool:
        futures = [
            pool.submit(
                execute,
                run,
                timeout=options.timeout,
                use=options.use,
                test_timeout=options.test_timeout,
                keep=keep,
                exclude=options.exclude,
            )
            for run in runs
        ]
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            verb = "traced" if run.config == "trace" else "performed"
            seen = f" ({run.calls} calls {verb})" if run.calls is not None else ""
            print(
                f"oracle: {run.label} [{run.config}] {run.seconds:.1f}s: {counts(run.outcomes.values())}{seen}"
                + (f" — {run.problem}" if run.problem else ""),
                file=sys.stderr,
                flush=True,
            )

    natives = {r.label: r for r in runs if r.config == "native"}
    differences = [d for r in runs if r.config != "native" for d in compare(natives[r.label], r)]
    vacuous = [r for r in runs if r.calls == 0]
    if options.confirm and differences:
        confirm(differences, options)
    all_configs = [c for c in options.configs]
    print(report(runs, differences, unavailable, all_configs))
    if options.json:
        Path(options.json).write_text(
            json.dumps(
                {
                    "python": PYTHON,
                    "version": sys.version,
                    "unavailable": unavailable,
                    "runs": [dataclasses.asdict(r) | {"problem": r.problem} for r in runs],
                    "differences": [dataclasses.asdict(d) for d in differences],
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
    return 1 if differences or vacuous else 0


if __name__ == "__main__":
    sys.exit(main())
