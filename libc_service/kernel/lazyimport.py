"""A standard module imported on its first use, for modules that need it only at run time.

``asyncio`` costs a third of the command's start-up (it imports ``ssl``,
``concurrent.futures``, ``subprocess`` and more), and a run whose every
call the shim decides never needs it: loading a policy and starting the
program must not import it (``libc-service run`` starts the master only
when the program first needs it, see :meth:`libc_service.processes.spawn.SlaveProcess.launch`).
The modules that use it at run time bind a placeholder instead::

    if TYPE_CHECKING:
        import asyncio
    else:
        asyncio = on_first_use("asyncio", globals())

The placeholder imports the module on its first attribute access and
replaces itself in that module's namespace with the real module, so the
placeholder costs one indirection, once. Unlike :class:`importlib.util.LazyLoader`
nothing is put in :data:`sys.modules`: other code importing the module gets
the real one, imported then.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["on_first_use"]


class FirstUse:
    """Stands for a module in one namespace until that module is first used there."""

    __slots__ = ("_name", "_namespace", "_binding")

    def __init__(self, name: str, namespace: dict[str, Any], binding: str) -> None:
        self._name = name
        self._namespace = namespace
        self._binding = binding

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._name)
        if self._namespace.get(self._binding) is self:
            self._namespace[self._binding] = module
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


def on_first_use(name: str, namespace: dict[str, Any], binding: str | None = None) -> Any:
    """A placeholder for module ``name``, bound in ``namespace`` as ``binding`` (default: the name)."""
    return FirstUse(name, namespace, binding or name)
