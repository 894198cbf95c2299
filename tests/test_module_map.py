"""The layer map in docs/concepts.md is the package's folders, and imports only go down.

The table is the layering's source: each row is one folder of the package,
top layer first, with every module of that folder. A module may import
modules of its own folder or of the folders below it (imports inside
functions and under ``TYPE_CHECKING`` count too), and the modules' import
graph has no cycle. The package's own face (``__init__.py`` and the
documented re-export modules beside it) is the top row: it may import any
layer, and no layer imports it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import libc_service

ROOT = Path(__file__).resolve().parent.parent
#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
FACE = "(package)"


def map_layers(text: str) -> list[tuple[str, list[str]]]:
    """The map's rows, top first: (folder, module file names)."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            folder = cells[0].strip("`").rstrip("/") if cells[0].startswith("`") else cells[0]
            layers.append((folder, re.findall(r"`([a-z_]+\.py)`", cells[1])))
    return layers


def module_name(path: Path) -> str:
    """``libc_service.policy.router`` for ``libc_service/policy/router.py``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``source`` (module ``name``) imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    found.discard(name)
    return found


def layer_of(name: str) -> str:
    """The folder a module lives in, or the package's face for the top-level modules."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else FACE


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path.read_text(), name, path.name == "__init__.py", known) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of ``edges`` as a list of nodes (first repeated last), or ``[]``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def _layers() -> list[tuple[str, list[str]]]:
    return map_layers((ROOT / "docs" / "concepts.md").read_text())


def test_the_parsers_see_what_they_look_for() -> None:
    text = "## Module map\n\n| Layer | Modules | What |\n|---|---|---|\n| `top/` | `a.py` `b.py` | x |\n| `low/` | `c.py` | y |\n"
    assert map_layers(text) == [("top", ["a.py", "b.py"]), ("low", ["c.py"])]
    source = "from . import a, b\nfrom .c import d\ndef f():\n    from ..e import g\n"
    known = {"p.q.a", "p.q.b", "p.q.c", "p.e"}
    assert imports(source, "p.q.m", False, known) == {"p.q.a", "p.q.b", "p.q.c", "p.e"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_map_is_the_package_folders_each_with_every_module_once() -> None:
    mapped = {folder: sorted(files) for folder, files in _layers()}
    assert len(mapped) == len(_layers()), "a folder is named twice in the map"
    actual: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        folder = path.parent.relative_to(PACKAGE).as_posix()
        if folder == ".":
            actual.setdefault(FACE, []).append(path.name)
        elif path.name != "__init__.py":
            actual.setdefault(folder, []).append(path.name)
    assert mapped == {folder: sorted(files) for folder, files in actual.items()}
    assert _layers()[0][0] == FACE, "the package's face is the top row"


def test_every_folder_says_what_its_layer_is_for() -> None:
    for folder, _ in _layers()[1:]:
        init = PACKAGE / folder / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{folder}/__init__.py has no docstring"


def test_no_module_imports_a_layer_above_its_own() -> None:
    rank = {folder: -index for index, (folder, _) in enumerate(_layers())}
    upward = [
        f"{module} imports {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if rank[layer_of(target)] > rank[layer_of(module)]
    ]
    assert upward == []


#: Import edges still closing a cycle, each to be cut (none may be added).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    for module, target in KNOWN_CYCLE_EDGES:
        edges[module].discard(target)
    assert find_cycle(edges) == []
