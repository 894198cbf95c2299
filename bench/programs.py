"""Whole programs under libc-service vs native, fakeroot and strace, in one run.

    python bench/programs.py [--runs 5] [--json bench/out/programs.json] [--only tar,find]
                             [--configs native,trace,strace,fakeroot] [--command PATH]

Workloads (their output read from a pipe and discarded; tar would skip
reading the files if it saw /dev/null):

- ``true``:   ``true`` (start-up; with ``python -c pass`` as the reference)
- ``tar``:    ``tar cf - /usr/include``
- ``find``:   ``find /usr/include /usr/lib/python3.X``
- ``python``: ``/usr/bin/python3 -c "import asyncio, email, json, http.client, unittest, decimal"``
- ``git``:    ``git status`` and ``git log`` in a small repository (made in bench/out)
- ``make``:   ``make -B`` of 8 small C files and a link (made in bench/out)

Configurations, each the real command line, alternated within each round
(round 0 warms the caches and is not counted), wall time, median:

- ``native``
- ``run``       ``libc-service run`` of a policy whose default is FORWARD and
                whose Python handler covers ``under("/srv")`` (nothing of
                these workloads is there: the shim's rule table decides)
- ``run-asked`` the same policy with the rule table off
                (``LIBC_SERVICE_BENCH_NO_RULES=1``, read by the policy file:
                a route that cannot be compiled): every call a round trip
- ``handler``   a Python handler that sees every ``open``/``openat``
- ``trace``     ``libc-service trace -o /dev/null``
- ``fakeroot``  ``fakeroot --``
- ``strace``    ``strace -f -o /dev/null``
- ``sandlock``  when installed (``pip install sandlock``; not a dependency):
                ``bench/sandlock_run.py`` (its Python API: the file system
                readable, the working directory and /tmp writable)

Every libc-service row includes the master's own start-up (interpreter,
imports, spawn): that is what a user waits for. The ``start-up`` table puts
``run -- true`` and ``trace -- true`` beside the interpreter's own
``python -c pass``, measured in the same rounds, with the difference.
``--command PATH`` measures an installed ``libc-service`` console script
(e.g. a fresh ``pip install .`` in another venv) instead of ``python -m
libc_service`` of this tree; ``python -c pass`` is then that script's
interpreter (its ``#!`` line).
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PYLIB = sysconfig.get_paths(vars={"installed_base": "/usr", "base": "/usr"})["stdlib"]
SYSTEM_PYLIB = next(iter(sorted(Path("/usr/lib").glob("python3.[0-9]*"))), Path(PYLIB))

WORKLOADS: dict[str, list[str]] = {
    "true": ["true"],
    "tar": ["tar", "cf", "-", "/usr/include"],
    "find": ["find", "/usr/include", str(SYSTEM_PYLIB)],
    "python": ["/usr/bin/python3", "-c", "import asyncio, email, json, http.client, unittest, decimal"],
    "git": ["sh", "-c", "git status && git log"],
    "make": ["make", "-s", "-B"],
}
WRAPPERS = ("native", "run", "run-asked", "handler", "trace", "fakeroot", "strace", "sandlock")

FORWARD_POLICY = '''\
import os
from libc_service import FORWARD, Router
from libc_service.policy.conditions import under

router = Router(default=FORWARD)


@router.on("open", "openat", "stat", "lstat", "access", "mkdir", "unlink", "rename",
           when=under("/srv"))
def srv(request):
    """Everything under /srv is the handler's (nothing the workloads touch)."""
    return FORWARD


if os.environ.get("LIBC_SERVICE_BENCH_NO_RULES"):
    # A route whose condition the rule compiler cannot prove: every call is asked.
    from libc_service.policy.conditions import Condition

    class Never(Condition):
        def __call__(self, request):
            return False

        def describe(self):
            return "never"

    @router.on("open", "openat", "stat", "lstat", "access", "eaccess", "mkdir", "rmdir", "unlink", "rename",
               when=Never())
    def never(request):
        return FORWARD
'''

HANDLER_POLICY = '''\
from libc_service import FORWARD, Router

router = Router(default=FORWARD)


@router.on("open", "openat")
def every_open(request):
    """Python sees every open."""
    return FORWARD
'''


def prepare() -> dict[str, Path]:
    """Policies, the git repository and the C project, in bench/out; the package's bytecode.

    The package is measured as installed: ``pip install`` compiles its
    bytecode, which an editable install (or ``PYTHONDONTWRITEBYTECODE``)
    leaves to every run, where compiling it costs more than importing it.
    """
    spec = importlib.util.find_spec("libc_service")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)
    out = _common.OUT / "programs"
    out.mkdir(parents=True, exist_ok=True)
    forward = out / "forward_policy.py"
    forward.write_text(FORWARD_POLICY)
    handler = out / "handler_policy.py"
    handler.write_text(HANDLER_POLICY)
    repo = out / "repo"
    if not (repo / ".git").is_dir():
        repo.mkdir(exist_ok=True)
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
        subprocess.run(git + ["init", "-q", str(repo)], check=True)
        for commit in range(5):
            for n in range(20):
                (repo / f"file{n}.txt").write_text(f"line {commit} of file {n}\n" * (commit + 1))
            subprocess.run(git + ["-C", str(repo), "add", "."], check=True)
            subprocess.run(git + ["-C", str(repo), "commit", "-q", "-m", f"commit {commit}"], check=True)
    project = out / "cproject"
    project.mkdir(exist_ok=True)
    names = [f"unit{n}" for n in range(8)]
    for n, name in enumerate(names):
        (project / f"{name}.c").write_text(
            "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
            f'int {name}(int x) {{ char b[32]; snprintf(b, sizeof b, "%d", x); return (int)strlen(b) + {n}; }}\n'
        )
    (project / "main.c").write_text(
        "#include <stdio.h>\n"
        + "".join(f"int {name}(int);\n" for name in names)
        + "int main(void) { int s = 0;\n"
        + "".join(f"  s += {name}(s);\n" for name in names)
        + '  printf("%d\\n", s); return 0; }\n'
    )
    objects = " ".join(f"{name}.o" for name in [*names, "main"])
    (project / "Makefile").write_text(f"prog: {objects}\n\tcc -o prog {objects}\n%.o: %.c\n\tcc -O1 -c $<\n")
    return {"forward": forward, "handler": handler, "git": repo, "make": project}


#: The libc-service command measured (``--command``), and the interpreter it runs on.
CLI: list[str] = [_common.PYTHON, "-m", "libc_service"]
INTERPRETER: str = _common.PYTHON


def wrap(wrapper: str, argv: list[str], files: dict[str, Path]) -> tuple[list[str], dict[str, str]] | None:
    env = dict(os.environ)
    cli = CLI
    if wrapper == "native":
        return argv, env
    if wrapper == "run":
        return cli + ["run", str(files["forward"]), "--", *argv], env
    if wrapper == "run-asked":
        return cli + ["run", str(files["forward"]), "--", *argv], {**env, "LIBC_SERVICE_BENCH_NO_RULES": "1"}
    if wrapper == "handler":
        return cli + ["run", str(files["handler"]), "--", *argv], env
    if wrapper == "trace":
        return cli + ["trace", "-o", "/dev/null", "--", *argv], env
    if wrapper == "sandlock":
        if importlib.util.find_spec("sandlock") is None:
            return None
        return [_common.PYTHON, str(Path(__file__).with_name("sandlock_run.py")), *argv], env
    tool = _common.need(wrapper)
    if tool is None:
        return None
    if wrapper == "fakeroot":
        return [tool, "--", *argv], env
    if wrapper == "strace":
        return [tool, "-f", "-o", "/dev/null", *argv], env
    raise ValueError(wrapper)


def timed(argv: list[str], env: dict[str, str], cwd: Path | None) -> float:
    """Wall seconds of one run, its stdout read from a pipe and discarded."""
    before = _common._cpu_now()
    start = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd) as process:
        assert process.stdout is not None
        while process.stdout.read(1 << 16):
            pass
        status = process.wait()
    elapsed = time.perf_counter() - start
    after = _common._cpu_now()
    if status != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {status}")
    foreign = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / (elapsed * (os.cpu_count() or 1))
    _common.FOREIGN.append(min(foreign, 1.0))
    return elapsed


def start_up(times: dict[str, dict[str, list[float]]]) -> str:
    """The start-up table: the interpreter's own start beside ``run -- true`` and ``trace -- true``."""
    reference = _common.median(times["pass"]["native"])
    rows = []
    for label, values in (
        ("python -c pass", times["pass"]["native"]),
        ("true (native)", times["true"]["native"]),
        ("run -- true", times["true"]["run"]),
        ("trace -- true", times["true"]["trace"]),
    ):
        if not values:
            continue
        m = _common.median(values)
        rows.append(
            (label, f"{m * 1000:.1f}", _common.spread([v * 1000 for v in values]), f"{(m - reference) * 1000:+.1f}")
        )
    return "\n## start-up\n" + _common.table(rows, ("command", "ms", "range", "− python -c pass (ms)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    parser.add_argument("--json", type=Path, default=_common.OUT / "programs.json")
    parser.add_argument(
        "--configs", default="", help=f"comma-separated configurations (default: all of {', '.join(WRAPPERS)})"
    )
    parser.add_argument(
        "--command",
        type=Path,
        help="an installed libc-service console script to measure instead of `python -m libc_service` of this tree",
    )
    args = parser.parse_args()
    global INTERPRETER
    if args.command is not None:
        CLI[:] = [str(args.command)]
        shebang = args.command.read_bytes().split(b"\n", 1)[0]
        if shebang.startswith(b"#!"):
            INTERPRETER = shebang[2:].decode().split()[0]
    configs = ["native", *args.configs.split(",")] if args.configs else list(WRAPPERS)  # ratios need native
    unknown = sorted(set(configs) - set(WRAPPERS))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(WRAPPERS)}")
    files = prepare()
    workloads = {name: argv for name, argv in WORKLOADS.items() if not args.only or name in args.only.split(",")}
    times: dict[str, dict[str, list[float]]] = {w: {x: [] for x in WRAPPERS} for w in workloads}
    times["pass"] = {"native": []}
    load_before = os.getloadavg()
    for round_ in range(args.runs + 1):
        reference = timed([INTERPRETER, "-c", "pass"], dict(os.environ), None)
        if round_:
            times["pass"]["native"].append(reference)
        for workload, argv in workloads.items():
            for wrapper in (w for w in WRAPPERS if w in configs):
                command = wrap(wrapper, argv, files)
                if command is None:
                    continue
                elapsed = timed(*command, files.get(workload))
                if round_:  # round 0 warms the caches
                    times[workload][wrapper].append(elapsed)
    print(f"# programs: {args.runs} alternated rounds after a warm-up, median wall ms (min..max)")
    print(f"# {_common.machine()} (load before: {load_before[0]:.2f})")
    print(_common.noise())
    print(f"# python -c pass: {_common.median(times['pass']['native']) * 1000:.1f} ms ({INTERPRETER})")
    print(f"# libc-service: {' '.join(CLI)}")
    if "true" in workloads:
        print(start_up(times))
    summary: dict[str, dict[str, float]] = {}
    for workload, argv in workloads.items():
        native = _common.median(times[workload]["native"])
        fakeroot = times[workload]["fakeroot"]
        print(f"\n## {workload}: {' '.join(argv)}")
        rows = []
        summary[workload] = {}
        for wrapper, values in times[workload].items():
            if not values:
                continue
            m = _common.median(values)
            summary[workload][wrapper] = m
            rows.append(
                (
                    wrapper,
                    f"{m * 1000:.1f}",
                    _common.spread([v * 1000 for v in values]),
                    f"{m / native:.2f}",
                    f"{m / _common.median(fakeroot):.2f}" if fakeroot else "",
                )
            )
        print(_common.table(rows, ("configuration", "ms", "range", "÷native", "÷fakeroot")))
    summary["pass"] = {"native": _common.median(times["pass"]["native"])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"median_s": summary, "runs": times}, indent=1))
    if importlib.util.find_spec("sandlock") is None:
        print("\n# sandlock: not installed (pip install sandlock into the venv to add its row)")


if __name__ == "__main__":
    main()
