"""The shim's C files form a layered whole: no cycle of calls between files, one way to the real libc,
one definition of each mechanism.

Each ``libc_service/shim/*.c`` is compiled on its own (as ``setup.py`` compiles it) and its
defined and undefined symbols are read with ``nm``.  File A depends on file B when A
references a symbol B defines.  That graph must be acyclic (``init.c``, the constructor,
may depend on everything; nothing depends on it), and only ``real.c`` — the one way to
reach the real libc (``lcs_real`` behind ``LCS_REAL``, and the raw system calls the shim
must make) — may call ``dlsym`` or ``syscall``.

A mechanism written twice drifts apart: every function (static ones too) is defined in one
file only, the little-endian fields are read and written by ``le.h`` alone, and every
interposed function that asks the master ends in the one answered-or-real step
(``LCS_ANSWERED_OR_REAL`` in ``shim.h``), which alone calls the real function and reports
its result.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import libc_service

SHIM_DIR = Path(libc_service.__file__).with_name("shim")
SOURCES = sorted(SHIM_DIR.glob("*.c"))
HEADERS = sorted(SHIM_DIR.glob("*.h"))

#: The designated real-libc file, the only one that may resolve or bypass libc functions.
REAL_FILE = "real"
#: The constructor: may depend on every module, nothing may depend on it.
INIT_FILE = "init"

_DYNAMIC_LOOKUP = {"dlsym", "dlvsym", "syscall"}

#: The one header of little-endian field access.
LE_HEADER = "le.h"
#: The answered-or-real step (shim.h), in its two spellings.
ANSWERED_OR_REAL = re.compile(r"\bLCS_ANSWERED_OR_REAL(?:_AFTER)?\(")
#: The reports of the real call's result the step makes, and its real call.
_AFTER_ONLY = re.compile(r"\b(?:LCS_AFTER|lcs_report_result|lcs_report_later)\b")
_REAL_CALL = re.compile(r"\bLCS_REAL\(")
#: A byte shifted into or out of a multi-byte field: le.h's work.
_BYTE_SHIFT = re.compile(r"\]\s*<<\s*\(?\s*(?:8|16|24|32|40|48|56)\b|>>\s*\(?\s*(?:8|16|24|32|40|48|56)\b")


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
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each shim file compiled on its own: file stem -> object."""
    cc = _compiler()
    out_dir = tmp_path_factory.mktemp("shim-objects")
    result: dict[str, Path] = {}
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
        result[source.stem] = obj
    return result


@pytest.fixture(scope="module")
def symbols(objects: dict[str, Path]) -> dict[str, tuple[set[str], set[str]]]:
    nm = _nm()
    return {name: _symbols(nm, obj) for name, obj in objects.items()}


def _functions(nm: str, obj: Path) -> set[str]:
    """Every function obj defines, static ones included (unoptimised, the compiler keeps them)."""
    out = subprocess.run([nm, "-P", str(obj)], check=True, capture_output=True, text=True).stdout
    return {parts[0] for parts in map(str.split, out.splitlines()) if len(parts) >= 2 and parts[1] in ("t", "T")}


def _without_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.DOTALL)


def header_inline_functions() -> dict[str, str]:
    """The static inline functions the shim's headers define: name -> header."""
    found: dict[str, str] = {}
    for header in HEADERS:
        for name in re.findall(r"^static\s+inline\b[^;{(]*?\b(\w+)\s*\(", _without_comments(header.read_text()), re.M):
            found.setdefault(name, header.name)
    return found


def exported_bodies(text: str) -> Iterator[tuple[str, str]]:
    """(name, body) of each function a shim file defines with LCS_EXPORT (in macro templates too)."""
    text = _without_comments(text)
    for match in re.finditer(r"\bLCS_EXPORT\b[^;{]*?\b(\w+)\s*\([^;{]*\{", text):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        yield match.group(1), text[match.end() : end - 1]


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


def test_each_function_is_defined_in_one_file(objects: dict[str, Path]) -> None:
    """A static helper copied into a second file (a second ``finish``) is a second mechanism."""
    nm = _nm()
    inline = header_inline_functions()
    where: dict[str, list[str]] = {}
    for name, obj in objects.items():
        for function in _functions(nm, obj) - inline.keys():
            where.setdefault(function, []).append(f"{name}.c")
    twice = {function: files for function, files in where.items() if len(files) > 1}
    assert not twice, f"defined in more than one shim file: {twice}"


def test_the_headers_inline_functions_are_defined_once() -> None:
    inline = header_inline_functions()
    assert {"lcs_get16", "lcs_get32", "lcs_get64", "lcs_put16", "lcs_put32", "lcs_put64"} <= inline.keys()
    assert {inline[name] for name in inline if name.startswith(("lcs_get", "lcs_put"))} == {LE_HEADER}


def test_only_le_h_packs_little_endian_fields() -> None:
    """No file but le.h shifts bytes into or out of a field (as a hand-written put32 or a decoder would)."""
    offenders = {
        path.name: [
            line.strip() for line in _without_comments(path.read_text()).splitlines() if _BYTE_SHIFT.search(line)
        ]
        for path in SOURCES + HEADERS
        if path.name != LE_HEADER
    }
    assert not {name: lines for name, lines in offenders.items() if lines}
    assert _BYTE_SHIFT.search((SHIM_DIR / LE_HEADER).read_text()), "the lint no longer recognises le.h's own shifts"


def entry_files(symbols: dict[str, tuple[set[str], set[str]]]) -> set[str]:
    """The files whose interposed functions may answer a call or report its real result."""
    return {
        name
        for name, (defined, undefined) in symbols.items()
        if "lcs_report_result" in undefined and any(not symbol.startswith("lcs_") for symbol in defined)
    }


def test_every_entry_point_ends_in_the_one_answered_or_real_step(
    symbols: dict[str, tuple[set[str], set[str]]],
) -> None:
    files = entry_files(symbols)
    assert {"fs", "meta", "net", "dns", "stdio"} <= files
    checked, offenders = 0, {}
    for name in sorted(files):
        for function, body in exported_bodies((SHIM_DIR / f"{name}.c").read_text()):
            checked += 1
            steps, reals = ANSWERED_OR_REAL.findall(body), list(_REAL_CALL.finditer(body))
            step = ANSWERED_OR_REAL.search(body)
            if (
                len(steps) != 1
                or len(reals) != 1
                or step is None
                or reals[0].start() < step.start()
                or _AFTER_ONLY.search(body)
            ):
                offenders[f"{name}.c:{function}"] = body.strip()
    assert checked >= 40, checked
    assert not offenders, "entry points that do not end in LCS_ANSWERED_OR_REAL:\n" + "\n".join(offenders)


def test_only_the_step_reports_a_real_calls_result() -> None:
    """LCS_AFTER is the step's own part: no file reaches for it beside the step."""
    users = [path.name for path in SOURCES if "LCS_AFTER" in _without_comments(path.read_text())]
    assert not users
