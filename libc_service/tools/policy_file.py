"""Load a policy: ``path/to/file.py`` or ``package.module:attr``.

A policy module defines ``router`` (a :class:`~libc_service.Router`) and may
define ``sandbox`` (a :class:`~libc_service.Sandbox`). Every way a policy can
be wrong becomes a :class:`PolicyError` with one line naming the policy and
the problem, so the command line can report it without a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from libc_service.policy.router import Router

__all__ = ["LoadedPolicy", "PolicyError", "load_policy"]


class PolicyError(Exception):
    """A policy that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class LoadedPolicy:
    """What a policy module provides."""

    name: str
    module: ModuleType
    router: Router
    sandbox: Any | None


_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _is_ours(filename: str) -> bool:
    """A frame of libc-service itself or of the import machinery, not the policy's."""
    if filename.startswith("<"):
        return True
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _where(exc: BaseException, source: Path | None = None) -> str:
    """The line that failed: the innermost frame in the policy file (say the
    ``@router.on(...)`` line of a typo), else the innermost frame that is not
    libc-service's own, else the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    mine = [frame for frame in frames if not _is_ours(frame.filename)]
    if source is not None:
        resolved = source.resolve()
        mine = [frame for frame in mine if Path(frame.filename).resolve() == resolved] or mine
    last = mine[-1] if mine else frames[-1]
    return f" (line {last.lineno} of {Path(last.filename).name})"


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise PolicyError(f"policy {path}: no such file")
    name = f"libc_service_policy_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PolicyError(f"policy {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # A policy file is the user's, in the user's directory (often a project
    # under version control): loading it leaves no __pycache__ beside it.
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise PolicyError(f"policy {path}: syntax error on line {exc.lineno}: {exc.msg}") from exc
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PolicyError(f"policy {path}: failed to import: {type(exc).__name__}: {exc}{_where(exc, path)}") from exc
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def _search_working_directory() -> None:
    """Let ``package.module:attr`` name a module of the working directory, as
    ``python -m`` does (a console script's ``sys.path`` does not hold it).
    Appended, so installed modules of the same name come first."""
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.append(cwd)


def load_policy(spec: str) -> LoadedPolicy:
    """Import the policy named by ``spec`` and check what it defines."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        module = _import_file(path)
        attr = "router"
        label = str(path)
    else:
        module_name, _, attr = spec.partition(":")
        attr = attr or "router"
        label = spec
        _search_working_directory()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise PolicyError(f"policy {spec}: no module named {exc.name!r}") from exc
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PolicyError(f"policy {spec}: failed to import: {type(exc).__name__}: {exc}{_where(exc)}") from exc
    router = getattr(module, attr, None)
    if router is None:
        raise PolicyError(f"policy {label}: defines no {attr!r} (a libc_service.Router)")
    if not isinstance(router, Router):
        raise PolicyError(f"policy {label}: {attr!r} is {_a(type(router).__name__)}, not a libc_service.Router")
    sandbox = getattr(module, "sandbox", None)
    if sandbox is not None:
        from libc_service.confinement.sandbox import Sandbox

        if not isinstance(sandbox, Sandbox):
            raise PolicyError(f"policy {label}: 'sandbox' is {_a(type(sandbox).__name__)}, not a libc_service.Sandbox")
    return LoadedPolicy(label, module, router, sandbox)


def _a(noun: str) -> str:
    """``noun`` with its indefinite article, for messages: "an int", "a str"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
