"""The package's names: the public modules' ``__all__`` is what the package exports.

``libc_service/__init__.py`` names its public modules with their
``__all__`` written out (so that importing the package imports none of
them), and type checkers read the same modules' ``__all__`` through star
imports under ``TYPE_CHECKING``. These tests keep the three equal, keep
the import cheap, and check that every documented name imports from where
it is documented and every type a user meets in the API is exported.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import libc_service
from libc_service import _EXPORTS, _MODULE_OF

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
    "perform",
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


def _type_checking_modules() -> list[str]:
    """The modules star-imported under ``if TYPE_CHECKING:``, in order."""
    modules: list[str] = []
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    module = statement.module or ""
                    assert module.startswith("libc_service.") and [alias.name for alias in statement.names] == ["*"], (
                        f"only star imports of public modules under TYPE_CHECKING, not {ast.unparse(statement)}"
                    )
                    modules.append(module.removeprefix("libc_service."))
    return modules


@pytest.mark.parametrize("name", DOCUMENTED)
def test_a_documented_name_imports_from_the_package(name: str) -> None:
    assert getattr(libc_service, name) is not None
    assert name in libc_service.__all__


@pytest.mark.parametrize(("module", "name"), DOCUMENTED_IN_MODULES)
def test_a_documented_name_imports_from_its_module(module: str, name: str) -> None:
    assert name in importlib.import_module(module).__all__


@pytest.mark.parametrize("module", sorted(_EXPORTS))
def test_the_package_exports_each_public_modules_all(module: str) -> None:
    names = tuple(importlib.import_module(f"libc_service.{module}").__all__)
    assert _EXPORTS[module] == names, f'write "{module}": {names!r} in libc_service/__init__.py'


def test_all_is_the_public_modules_names_each_once() -> None:
    exported = [name for names in _EXPORTS.values() for name in names]
    assert len(exported) == len(set(exported)), "a name exported by two public modules"
    assert libc_service.__all__ == ["__version__", *exported]


def test_every_name_in_all_resolves_to_its_modules_object() -> None:
    for name in libc_service.__all__:
        value = getattr(libc_service, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = importlib.import_module(f"libc_service.{_MODULE_OF[name]}")
        assert value is getattr(module, name), name


def test_what_type_checkers_see_is_what_the_package_exports() -> None:
    # Type checkers read each star-imported module's __all__, which the test
    # above keeps equal to _EXPORTS; here the modules must be the same ones.
    assert _type_checking_modules() == list(_EXPORTS)
    # In a fresh interpreter, the names dir() lists but the module does not
    # hold yet are exactly those it imports on first use.
    code = "import libc_service as m\nprint(' '.join(sorted(set(dir(m)) - set(vars(m)) - {'__version__'})))\n"
    lazy = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert lazy == sorted(_MODULE_OF)


def test_importing_the_package_runs_none_of_its_modules() -> None:
    # What keeps `import libc_service` cheap: the names are imported on first use;
    # requests and replies (pydantic) are registered to run on their first attribute access.
    # Their layer's package (a docstring, no code) is imported to find them.
    code = (
        "import sys, importlib.util, libc_service\n"
        "ran = [name for name, module in sys.modules.items() if name.startswith('libc_service.')\n"
        "       and not isinstance(module, importlib.util._LazyModule) and name != 'libc_service.protocol']\n"
        "print(' '.join(ran))\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert ran == []


def test_the_types_a_user_meets_are_exported() -> None:
    from libc_service import Call, Decision, Outcome, RouteTable, Router, SeccompUnavailable, Transport
    from libc_service.seccomp import availability
    from libc_service.policy import router

    assert isinstance(Router().routes(), RouteTable)
    for method in (Router.decide_now, Router.handle):
        assert inspect.signature(method).parameters["call"].annotation == "Call"
        assert router.Call is Call
    fields = {field.name: field.type for field in Decision.__dataclass_fields__.values()}
    assert (fields["transport"], fields["outcome"]) == ("Transport", "Outcome")
    assert (router.Transport, router.Outcome) == (Transport, Outcome)
    assert availability.SeccompUnavailable is SeccompUnavailable
    assert "SeccompUnavailable" in (inspect.getdoc(libc_service.processes.spawn) or "")


def test_the_api_reference_documents_every_public_module_and_imports_what_it_shows() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    blocks = re.findall(r"^::: libc_service\.([\w.]+)$", page, flags=re.MULTILINE)
    assert set(_EXPORTS) <= set(blocks)
    listed = re.search(r"public modules — (.*?) — and", page, flags=re.DOTALL)
    assert listed is not None and re.findall(r"`([\w.]+)`", listed.group(1)) == list(_EXPORTS)
    shown = re.search(r"^from libc_service import \((.*?)^\)", page, flags=re.MULTILINE | re.DOTALL)
    assert shown is not None
    names = re.findall(r"^    (\w+),", shown.group(1), flags=re.MULTILINE)
    assert names and set(names) <= set(libc_service.__all__)


def test_the_functions_named_like_their_modules_stay_functions() -> None:
    code = (
        "import libc_service.acting.perform, libc_service.processes.spawn\n"
        "from libc_service import perform, spawn\n"
        "assert callable(perform) and callable(spawn), (perform, spawn)\n"
        "import types; assert not isinstance(perform, types.ModuleType)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
