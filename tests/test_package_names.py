"""The package's names: one table says where each lives, and every documented name imports.

``__all__``, the lazy imports and what type checkers see must agree; the
first two are built from one table in ``libc_service/__init__.py``, the
third (a ``TYPE_CHECKING`` block, which a checker reads without running
anything) is compared with it here.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import libc_service

INIT = Path(libc_service.__file__)

#: The public names the design fixes, imported from the package itself.
DOCUMENTED = (
    "Master",
    "Slave",
    "Reply",
    "Router",
    "FORWARD",
    "deny",
    "WithFds",
    "Errno",
    "Stat",
    "AddrInfo",
    "Sandbox",
    "spawn",
)
#: Names documented in their own modules.
DOCUMENTED_IN_MODULES = (
    ("libc_service.protocol.requests", "OpenRequest"),
    ("libc_service.protocol.requests", "OpenatRequest"),
    ("libc_service.protocol.requests", "StatRequest"),
    ("libc_service.protocol.requests", "Request"),
    ("libc_service.policy.conditions", "named"),
    ("libc_service.policy.conditions", "resolved"),
)


def _type_checking_names() -> dict[str, str]:
    """Name → module of each ``from .module import name as name`` under ``if TYPE_CHECKING:``."""
    names: dict[str, str] = {}
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                module = statement.module or "" if isinstance(statement, ast.ImportFrom) else ""
                if isinstance(statement, ast.ImportFrom) and module.startswith("libc_service."):
                    for alias in statement.names:
                        assert alias.asname == alias.name, f"{alias.name}: not marked re-exported"
                        names[alias.name] = module.removeprefix("libc_service.")
    return names


@pytest.mark.parametrize("name", DOCUMENTED)
def test_a_documented_name_imports_from_the_package(name: str) -> None:
    assert getattr(libc_service, name) is not None
    assert name in libc_service.__all__


@pytest.mark.parametrize(("module", "name"), DOCUMENTED_IN_MODULES)
def test_a_documented_name_imports_from_its_module(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_every_name_in_all_resolves_to_its_modules_object() -> None:
    for name in libc_service.__all__:
        value = getattr(libc_service, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = importlib.import_module(f"libc_service.{_type_checking_names()[name]}")
        assert value is getattr(module, name), name


def test_what_type_checkers_see_is_what_the_package_exports() -> None:
    # In a fresh interpreter, the names dir() lists but the module does not
    # hold yet are exactly those it imports on first use.
    code = "import libc_service as m\nprint(' '.join(sorted(set(dir(m)) - set(vars(m)) - {'__version__'})))\n"
    lazy = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    table = _type_checking_names()
    assert sorted(table) == lazy
    assert {name for name in libc_service.__all__ if name != "__version__"} <= set(table)
    for name, module in table.items():
        assert getattr(importlib.import_module(f"libc_service.{module}"), name) is getattr(libc_service, name)


def test_the_functions_named_like_their_modules_stay_functions() -> None:
    code = (
        "import libc_service.acting.perform, libc_service.processes.spawn\n"
        "from libc_service import perform, spawn\n"
        "assert callable(perform) and callable(spawn), (perform, spawn)\n"
        "import types; assert not isinstance(perform, types.ModuleType)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
