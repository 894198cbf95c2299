"""The module map in docs/concepts.md names every module once, and no module imports upward.

The table is the layering's source: a module may import modules of its own
layer or of the layers below it (imports inside functions count too). A new
module must be placed in the map; an import against the layering shows here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import libc_service

ROOT = Path(__file__).resolve().parent.parent
#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")


def map_layers(text: str) -> list[tuple[str, list[str]]]:
    """The map's layers, top first: (layer, module names)."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            layers.append((cells[0], re.findall(r"`([a-z_]+)\.py`", cells[1])))
    return layers


def package_imports(source: str) -> set[str]:
    """The package's modules that ``source`` imports relatively, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("libc_service."):
            found.add((node.module or "").split(".")[1])
    return found


def _rank() -> dict[str, int]:
    layers = map_layers((ROOT / "docs" / "concepts.md").read_text())
    return {module: -index for index, (_, modules) in enumerate(layers) for module in modules}


def test_the_parsers_see_what_they_look_for() -> None:
    text = "## Module map\n\n| Layer | Modules | What |\n|---|---|---|\n| top | `a.py` `b.py` | x |\n| low | `c.py` | y |\n"
    assert map_layers(text) == [("top", ["a", "b"]), ("low", ["c"])]
    assert package_imports("from . import a, b\nfrom .c import d\ndef f():\n    from .e import g\n") == {
        "a",
        "b",
        "c",
        "e",
    }


def test_the_map_names_every_module_once() -> None:
    named = [module for _, modules in map_layers((ROOT / "docs" / "concepts.md").read_text()) for module in modules]
    assert sorted(named) == MODULES


def test_no_module_imports_a_module_of_a_layer_above_its_own() -> None:
    rank = _rank()
    upward = [
        f"{module} imports {target}"
        for module in MODULES
        for target in sorted(package_imports((PACKAGE / f"{module}.py").read_text()))
        if target in rank and rank[target] > rank[module]
    ]
    assert upward == []


#: Layers whose row lists its modules in the order data flows: each imports only modules listed after it.
ORDERED_LAYERS = ("seccomp transport",)


def test_an_ordered_layer_imports_only_down_its_own_row() -> None:
    layers = dict(map_layers((ROOT / "docs" / "concepts.md").read_text()))
    backward = []
    for layer in ORDERED_LAYERS:
        position = {module: index for index, module in enumerate(layers[layer])}
        backward += [
            f"{module} imports {target}"
            for module in layers[layer]
            for target in sorted(package_imports((PACKAGE / f"{module}.py").read_text()))
            if position.get(target, len(position)) < position[module]
        ]
    assert backward == []
