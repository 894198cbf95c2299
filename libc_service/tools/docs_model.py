"""A policy's documentation as data: what the renderers show, gathered once.

The records are plain and frozen, so the Markdown page and the JSON
document are two views of the same facts and cannot disagree.
"""

from __future__ import annotations

import errno as errno_module
import os
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DefaultDoc",
    "FunctionDoc",
    "HandlerDoc",
    "ObserverDoc",
    "PolicyDoc",
    "SandboxDoc",
    "code_span",
    "errno_name",
    "strerror_text",
]


@dataclass(frozen=True)
class HandlerDoc:
    """One handler as documented: what a reviewer needs to know about a route."""

    #: Position in registration order (the order handlers are tried in).
    index: int
    #: The handler's qualified name.
    name: str
    #: The first paragraph of the docstring, on one line (``None``: no docstring).
    summary: str | None
    #: The whole docstring, cleaned (``None``: no docstring).
    doc: str | None
    #: The functions the handler was registered for, in the protocol's order.
    functions: tuple[str, ...]
    #: Each condition of ``when=``, in words; all must hold.
    conditions: tuple[str, ...]
    #: All the conditions together, in words (``None``: no conditions).
    when: str | None
    #: Each condition of ``when=`` as data (:func:`condition_data`), for tools.
    condition_data: tuple[dict[str, Any], ...]
    #: The source file, relative to the policy file's directory (or a module path).
    source_file: str | None
    #: The line of the handler's first decorator (or its ``def``).
    source_line: int | None

    @property
    def source(self) -> str | None:
        """``file:line``, or ``None`` when the source is unknown."""
        if self.source_file is None:
            return None
        return f"{self.source_file}:{self.source_line}" if self.source_line is not None else self.source_file

    @property
    def always(self) -> bool:
        """Whether the handler sees every call of its functions (no conditions)."""
        return not self.conditions


@dataclass(frozen=True)
class DefaultDoc:
    """What happens to a call no handler decides."""

    action: Literal["forward", "deny", "handler"]
    #: For ``deny``: the errno and its name.
    errno: int | None
    errno_name: str | None
    #: For ``handler``: the default handler.
    handler: HandlerDoc | None

    def text(self) -> str:
        """The default in words (Markdown)."""
        if self.action == "forward":
            return "forwarded — the slave does it itself, with its own authority"
        if self.action == "deny":
            return f"refused with `{self.errno_name}` ({strerror_text(self.errno)})"
        assert self.handler is not None
        return f"decided by the default handler {code_span(self.handler.name)}"

    def short(self) -> str:
        """The default in a table cell."""
        if self.action == "forward":
            return "forwarded"
        if self.action == "deny":
            return f"`{self.errno_name}`"
        assert self.handler is not None
        return f"{code_span(self.handler.name)} (default handler)"


@dataclass(frozen=True)
class FunctionDoc:
    """How one arbitrated function is decided."""

    function: str
    #: The handlers that may decide it, in the order they are tried.
    handlers: tuple[HandlerDoc, ...]

    @property
    def default_reachable(self) -> Literal["yes", "only_by_pass"]:
        """Whether the default decides calls no handler matched, or only ones passed on."""
        return "only_by_pass" if any(handler.always for handler in self.handlers) else "yes"


@dataclass(frozen=True)
class ObserverDoc:
    """An observer (``router.observe(fn)``): called with every decision after its reply."""

    #: The observer's qualified name (its class's, for an instance).
    name: str
    summary: str | None
    doc: str | None
    source_file: str | None
    source_line: int | None

    @property
    def source(self) -> str | None:
        """``file:line``, or ``None`` when the source is unknown."""
        if self.source_file is None:
            return None
        return f"{self.source_file}:{self.source_line}" if self.source_line is not None else self.source_file


@dataclass(frozen=True)
class SandboxDoc:
    """The module's ``sandbox``: what the slave may still do by itself."""

    #: ``(path, access)`` with access a tuple of ``read``/``write``/``execute``.
    rules: tuple[tuple[str, tuple[str, ...]], ...]
    network: bool
    #: Whether the slave may change mode, owner, times and xattrs by itself.
    metadata: bool
    #: Whether the system's shared-library directories are readable and executable.
    system_libraries: bool = True


@dataclass(frozen=True)
class PolicyDoc:
    """Everything the renderers show, gathered once from a loaded policy."""

    name: str
    description: str | None
    handlers: tuple[HandlerDoc, ...]
    functions: tuple[FunctionDoc, ...]
    default: DefaultDoc
    error_errno: int
    timeout: float | None
    timeout_errno: int
    concurrent: bool
    sandbox: SandboxDoc | None
    observers: tuple[ObserverDoc, ...] = ()

    @property
    def unhandled(self) -> tuple[str, ...]:
        """The functions no handler is registered for, in the protocol's order."""
        return tuple(doc.function for doc in self.functions if not doc.handlers)


# ----------------------------------------------------- words both renderers use


def strerror_text(code: int | None) -> str:
    """An errno's message (``No such file or directory``); nothing for no errno."""
    return os.strerror(code) if code else ""


def errno_name(code: int) -> str:
    """An errno's symbolic name (``ENOENT``), or its number when it has none here."""
    return errno_module.errorcode.get(code, str(code))


def code_span(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    fence = "`"
    while fence in text:
        fence += "`"
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"
