"""No module of the package reaches into another module's underscore names.

A leading underscore says "this module's own": another module that imports
such a name, reads it as ``module._name``, or fetches it with
``getattr(obj, "_name")`` depends on an internal that may change without
notice. What another module needs is given a public name instead. Dunder
names (``__version__``) are public by convention and allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import libc_service

import pytest

#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_module(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == "libc_service"


def violations(source: str) -> list[str]:
    """Each place ``source`` uses another package module's underscore name."""
    tree = ast.parse(source)
    found: list[str] = []
    imported_modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _package_module(node):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: imports {alias.name} from {node.module or '.'}")
                if node.module is None or (PACKAGE.parent / node.module.replace(".", "/")).is_dir():
                    imported_modules.add(alias.asname or alias.name)  # from libc_service.protocol import wire
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "libc_service":
                    imported_modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported_modules
        ):
            found.append(f"line {node.lineno}: reads {node.value.id}.{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_no_module_uses_another_modules_underscore_names(module: Path) -> None:
    assert violations(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "from .conditions import _All",
        "from libc_service.acting.safepath import _openat2",
        "from . import safepath\nsafepath._openat2(1)",
        "import libc_service.policy.rules as rules\nrules._CODE",
        "getattr(router, '_observers', ())",
    ],
)
def test_the_check_sees_each_kind_of_reach(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "from .conditions import Condition",
        "from . import __version__",
        "from os import _exit",
        "getattr(self, '_cache', None)",
        "import libc_service\nlibc_service.__version__",
    ],
)
def test_the_check_allows_public_and_foreign_names(source: str) -> None:
    assert violations(source) == []
