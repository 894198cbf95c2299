"""The shim's C files form a layered whole: no cycle of calls between files, one way to the real libc.

Each ``libc_service/shim/*.c`` is compiled on its own (as ``setup.py`` compiles it) and its
defined and undefined symbols are read with ``nm``.  File A depends on file B when A
references a symbol B defines.  That graph must be acyclic (``init.c``, the constructor,
may depend on everything; nothing depends on it), and only ``real.c`` — the one way to
reach the real libc (``lcs_real`` behind ``LCS_REAL``, and the raw system calls the shim
must make) — may call ``dlsym`` or ``syscall``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import libc_service

SHIM_DIR = Path(libc_service.__file__).with_name("shim")
SOURCES = sorted(SHIM_DIR.glob("*.c"))

#: The designated real-libc file, the only one that may resolve or bypass libc functions.
REAL_FILE = "real"
#: The constructor: may depend on every module, nothing may depend on it.
INIT_FILE = "init"

_DYNAMIC_LOOKUP = {"dlsym", "dlvsym", "syscall"}


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no C compiler (cc) to compile the shim's files")


def _nm() -> str:
    found = shutil.which("nm")
    if not found:
        pytest.skip("no nm to read the shim's symbols")
    return found


def _symbols(nm: str, obj: Path) -> tuple[set[str], set[str]]:
    """The global symbols obj defines and those it leaves undefined."""
    out = subprocess.run([nm, "-P", "-g", str(obj)], check=True, capture_output=True, text=True).stdout
    defined: set[str] = set()
    undefined: set[str] = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        name = name.split("@", 1)[0]
        (undefined if kind in ("U", "w", "v") else defined).add(name)
    return defined, undefined


@pytest.fixture(scope="module")
def symbols(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[set[str], set[str]]]:
    cc, nm = _compiler(), _nm()
    out_dir = tmp_path_factory.mktemp("shim-objects")
    result: dict[str, tuple[set[str], set[str]]] = {}
    for source in SOURCES:
        obj = out_dir / (source.stem + ".o")
        compiled = subprocess.run(
            [
                cc,
                "-c",
                "-fPIC",
                "-fvisibility=hidden",
                "-std=gnu11",
                "-pthread",
                "-D_GNU_SOURCE=1",
                f"-I{SHIM_DIR}",
                str(source),
                "-o",
                str(obj),
            ],
            capture_output=True,
            text=True,
        )
        assert compiled.returncode == 0, f"{source.name} does not compile on its own:\n{compiled.stderr}"
        result[source.stem] = _symbols(nm, obj)
    return result


def dependency_graph(symbols: dict[str, tuple[set[str], set[str]]]) -> dict[str, dict[str, set[str]]]:
    """file -> {file it depends on -> the symbols it uses from there}."""
    owner: dict[str, str] = {}
    for name, (defined, _) in symbols.items():
        for symbol in defined:
            owner.setdefault(symbol, name)
    graph: dict[str, dict[str, set[str]]] = {name: {} for name in symbols}
    for name, (_, undefined) in symbols.items():
        for symbol in undefined:
            target = owner.get(symbol)
            if target is not None and target != name:
                graph[name].setdefault(target, set()).add(symbol)
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, set[str]]]) -> Iterator[str]:
    for a, b in zip(cycle, cycle[1:]):
        yield f"{a}.c -> {b}.c ({', '.join(sorted(graph[a][b]))})"


def test_the_shim_files_are_there() -> None:
    assert len(SOURCES) >= 5, SOURCES


def test_no_cycle_of_calls_between_the_shim_files(symbols: dict[str, tuple[set[str], set[str]]]) -> None:
    graph = dependency_graph(symbols)
    cycle = find_cycle(graph)
    assert cycle is None, "the shim's files call each other in a cycle:\n  " + "\n  ".join(_describe(cycle, graph))


def test_the_constructor_file_is_depended_on_by_nothing(symbols: dict[str, tuple[set[str], set[str]]]) -> None:
    assert INIT_FILE in symbols, "the constructor lives in init.c"
    graph = dependency_graph(symbols)
    users = {name: sorted(uses[INIT_FILE]) for name, uses in graph.items() if INIT_FILE in uses}
    assert not users


def test_the_real_libc_file_depends_on_no_other_shim_file(symbols: dict[str, tuple[set[str], set[str]]]) -> None:
    assert REAL_FILE in symbols, "the one way to the real libc lives in real.c"
    assert dependency_graph(symbols)[REAL_FILE] == {}


def test_only_the_real_libc_file_resolves_or_bypasses_libc(symbols: dict[str, tuple[set[str], set[str]]]) -> None:
    offenders = {
        name: sorted(undefined & _DYNAMIC_LOOKUP)
        for name, (_, undefined) in symbols.items()
        if name != REAL_FILE and undefined & _DYNAMIC_LOOKUP
    }
    assert not offenders, f"only {REAL_FILE}.c may call dlsym or syscall: {offenders}"
    assert "dlsym" in symbols.get(REAL_FILE, (set(), set()))[1]


def test_no_file_calls_another_files_interposed_function(symbols: dict[str, tuple[set[str], set[str]]]) -> None:
    """A call to an interposed name (close, open, ...) from inside the shim would come back
    into the shim: the real function is reached through LCS_REAL only."""
    graph = dependency_graph(symbols)
    interposed = {symbol for _, (defined, _) in symbols.items() for symbol in defined if not symbol.startswith("lcs_")}
    calls = {
        f"{name}.c -> {target}.c": sorted(used & interposed)
        for name, uses in graph.items()
        for target, used in uses.items()
        if used & interposed
    }
    assert not calls
