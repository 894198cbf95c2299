"""A policy's documentation, generated from the code that enforces it.

``libc-service docs POLICY`` and the mkdocs hook
(`libc_service.mkdocs_hook`) call [render_policy][libc_service.docs.render_policy]. It reads
only what the router itself dispatches on — [Router.routes][libc_service.router.Router.routes],
each route's handler name, docstring, conditions and source line, the
router's default and failure settings — plus the module's ``sandbox``, so the
document cannot drift from the policy.

Two formats:

- ``md``: a page for people reviewing the policy: a summary table, then,
  for every arbitrated function in the protocol's order, the handlers that
  may decide it (in the order they are tried), their conditions in words,
  and what happens when none decides.
- ``json``: the same facts for tools; the schema is described in
  ``docs/policy-json.md`` and named by the document's ``"schema"`` key.

The output is deterministic: no timestamps, no memory addresses, no
dictionary or set ordering, and source locations relative to the policy
file's directory, so a review diff shows exactly what a policy change did.
"""

from __future__ import annotations

import dataclasses
import errno as errno_module
import inspect
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

from .conditions import AllOf, Condition, NamedCondition, ResolvedCondition
from .policy import LoadedPolicy
from .requests import FUNCTIONS
from .router import FORWARD, Errno, Route, Router

__all__ = [
    "JSON_SCHEMA",
    "DefaultDoc",
    "FunctionDoc",
    "HandlerDoc",
    "ObserverDoc",
    "PolicyDoc",
    "SandboxDoc",
    "condition_data",
    "describe_policy",
    "policy_json",
    "render_json",
    "render_markdown",
    "render_policy",
]

#: The ``"schema"`` value of the JSON document (bumped on incompatible change).
JSON_SCHEMA: Final = "libc-service-policy/1"

Format = Literal["md", "json"]


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
            return f"refused with `{self.errno_name}` ({_strerror(self.errno)})"
        assert self.handler is not None
        return f"decided by the default handler {_code(self.handler.name)}"

    def short(self) -> str:
        """The default in a table cell."""
        if self.action == "forward":
            return "forwarded"
        if self.action == "deny":
            return f"`{self.errno_name}`"
        assert self.handler is not None
        return f"{_code(self.handler.name)} (default handler)"


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


# ------------------------------------------------------------------ gathering


def _strerror(code: int | None) -> str:
    return os.strerror(code) if code else ""


def _errno_name(code: int) -> str:
    return errno_module.errorcode.get(code, str(code))


def _policy_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(os.path.abspath(file)) if file else None


def _policy_name(policy: LoadedPolicy) -> str:
    """A name that does not depend on where the file lies: the file's name, or the module spec."""
    if policy.name.endswith(".py") or "/" in policy.name:
        return Path(policy.name).name
    return policy.name


def _source_file(route: Route, base: Path | None) -> str | None:
    return _file_name(route.source, route.handler, base)


def _file_name(source: tuple[str, int] | None, handler: object, base: Path | None) -> str | None:
    if source is None:
        return None
    filename = os.path.abspath(source[0])
    if base is not None:
        relative = os.path.relpath(filename, base)
        if not relative.startswith(".." + os.sep) and relative != "..":
            return Path(relative).as_posix()
    # Outside the policy's directory: name it by its module, not its location.
    module = sys.modules.get(getattr(handler, "__module__", "") or "")
    module_file = getattr(module, "__file__", None)
    if module is not None and module_file and os.path.abspath(module_file) == filename:
        dotted = module.__name__.replace(".", "/")
        return f"{dotted}/__init__.py" if filename.endswith("__init__.py") else f"{dotted}.py"
    return Path(filename).name


def _handler_doc(index: int, route: Route, base: Path | None) -> HandlerDoc:
    order: dict[str, int] = {name: position for position, name in enumerate(FUNCTIONS)}
    return HandlerDoc(
        index=index,
        name=route.name,
        summary=route.summary,
        doc=route.doc,
        functions=tuple(sorted(route.functions, key=lambda name: order.get(name, len(order)))),
        conditions=tuple(condition.describe() for condition in route.conditions),
        when=AllOf(route.conditions).describe() if route.conditions else None,
        condition_data=tuple(condition_data(condition) for condition in route.conditions),
        source_file=_source_file(route, base),
        source_line=route.source[1] if route.source is not None else None,
    )


def _default_doc(router: Router, base: Path | None) -> DefaultDoc:
    default = router.default
    if default is FORWARD:
        return DefaultDoc("forward", None, None, None)
    if isinstance(default, Errno):
        return DefaultDoc("deny", default.errno, default.errno_name, None)
    if isinstance(default, Route):
        return DefaultDoc("handler", None, None, _handler_doc(-1, default, base))
    raise TypeError(f"unexpected router default {default!r}")


_ACCESS_ORDER: Final = ("read", "write", "execute")


def _observer_doc(observer: Callable[..., Any], base: Path | None) -> ObserverDoc:
    target: Any = observer if inspect.isfunction(observer) or inspect.ismethod(observer) else type(observer)
    doc = inspect.getdoc(target)
    try:
        source: tuple[str, int] | None = (inspect.getsourcefile(target) or "?", inspect.getsourcelines(target)[1])
    except (OSError, TypeError):
        source = None
    return ObserverDoc(
        name=getattr(target, "__qualname__", None) or type(observer).__qualname__,
        summary=" ".join(doc.strip().split("\n\n")[0].split()) if doc else None,
        doc=doc,
        source_file=_file_name(source, target, base),
        source_line=source[1] if source is not None else None,
    )


def _sandbox_doc(sandbox: Any) -> SandboxDoc | None:
    if sandbox is None:
        return None
    # One row per path, with every access the rules give it (``/usr`` read and executed is one row).
    merged: dict[str, set[str]] = {}
    for path, access in sandbox.static_rules():
        merged.setdefault(os.path.normpath(str(path)), set()).update(part.strip() for part in access.split(","))
    rules = tuple((path, tuple(a for a in _ACCESS_ORDER if a in access)) for path, access in merged.items())
    metadata = bool(getattr(sandbox, "metadata", False))
    return SandboxDoc(
        rules=rules,
        network=bool(sandbox.network),
        metadata=metadata,
        system_libraries=bool(getattr(sandbox, "system_libraries", True)),
    )


def _kind(condition: Condition) -> str:
    """``UnderCondition`` → ``under``, ``AllOf`` → ``all_of``, ``Negation`` → ``not``."""
    name = type(condition).__name__
    if name == "Negation":
        return "not"
    name = name.removesuffix("Condition") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _plain(value: Any) -> Any:
    """A condition's field as JSON data: conditions nested, sets sorted, addresses as text."""
    if isinstance(value, Condition):
        return condition_data(value)
    if isinstance(value, frozenset | set):
        items = [_plain(item) for item in value]
        if all(isinstance(item, int) for item in items):
            return sorted(items)  # ports: 80 before 443
        return sorted(items, key=str)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value.network_address) if value.num_addresses == 1 else str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def condition_data(condition: Condition) -> dict[str, Any]:
    """A condition as structured data: ``{"kind": "under", "roots": ["/srv"], "text": "..."}``.

    ``kind`` names the condition (``under``, ``writing``, ``flags``, ``to``,
    ``named``, ``resolved``, ``all_of``, ``any_of``, ``not``, ...), ``text`` is its
    description in words, and the other keys are its fields as data
    (``parts``/``part`` for combinations, nested the same way).
    A condition of the policy's own that is not a dataclass has only
    ``kind`` (its class name) and ``text``.
    """
    data: dict[str, Any] = {"kind": _kind(condition)}
    if isinstance(condition, NamedCondition | ResolvedCondition):
        # The schema's one key for the names a condition allows, exact or ``*.`` patterns alike: the
        # patterns as the policy writes them (``"*.python.org"``), sorted, as ``named`` gave its names.
        data["names"] = sorted(map(str, condition.patterns))
        if isinstance(condition, ResolvedCondition):
            data["ports"] = _plain(condition.ports)
    elif dataclasses.is_dataclass(condition):
        for item in dataclasses.fields(condition):
            if item.name != "functions" and not item.name.startswith("_"):
                data[item.name] = _plain(getattr(condition, item.name))
    data["text"] = condition.describe()
    return data


def describe_policy(policy: LoadedPolicy) -> PolicyDoc:
    """Gather a loaded policy's documentation (what both renderers show)."""
    router = policy.router
    table = router.routes()
    policy_file = _policy_file(policy.module)
    base = policy_file.parent if policy_file is not None else None
    handlers = tuple(_handler_doc(index, route, base) for index, route in enumerate(table.routes))
    by_route = {id(route): doc for route, doc in zip(table.routes, handlers)}
    functions = tuple(
        FunctionDoc(name, tuple(by_route[id(route)] for route in table.for_function(name))) for name in FUNCTIONS
    )
    return PolicyDoc(
        name=_policy_name(policy),
        description=inspect.cleandoc(policy.module.__doc__) if policy.module.__doc__ else None,
        handlers=handlers,
        functions=functions,
        default=_default_doc(router, base),
        error_errno=table.error_errno,
        timeout=router.timeout,
        timeout_errno=router.timeout_errno,
        concurrent=router.concurrent,
        sandbox=_sandbox_doc(policy.sandbox),
        observers=tuple(_observer_doc(observer, base) for observer in router.observers()),
    )


# ------------------------------------------------------------------- Markdown


def _code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    fence = "`"
    while fence in text:
        fence += "`"
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _when(handler: HandlerDoc) -> str:
    return handler.when or "always (every call of these functions)"


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _handler_lines(handler: HandlerDoc, number: int | None = None) -> list[str]:
    head = f"{number}. " if number is not None else "- "
    indent = " " * len(head)
    lines = [f"{head}**{_code(handler.name)}** — {handler.summary or '*(no docstring)*'}"]
    lines.append(f"{indent}- when: {_when(handler)}")
    if handler.source is not None:
        lines.append(f"{indent}- source: {_code(handler.source)}")
    return lines


def _groups(doc: PolicyDoc) -> list[tuple[tuple[str, ...], FunctionDoc]]:
    """Handled functions grouped by identical handler chains, in order of first appearance."""
    groups: dict[tuple[int, ...], list[FunctionDoc]] = {}
    for function in doc.functions:
        if function.handlers:
            key = tuple(handler.index for handler in function.handlers)
            groups.setdefault(key, []).append(function)
    return [(tuple(f.function for f in members), members[0]) for members in groups.values()]


def _names(names: Sequence[str]) -> str:
    return ", ".join(_code(name) for name in names)


def _intro(doc: PolicyDoc) -> list[str]:
    lines = [f"# Policy {_code(doc.name)}"]
    if doc.description:
        lines += ["", doc.description]
    lines += [
        "",
        "*Generated by `libc-service docs` from the policy's router — its handlers, their "
        "conditions, docstrings and source lines, the default — and its sandbox.*",
    ]
    return lines


def _glance(doc: PolicyDoc) -> list[str]:
    default = doc.default.text()
    lines = [
        "## At a glance",
        "",
        f"- **Default** (a call no handler decides): {default}.",
        f"- **Handler failure** (an unexpected exception, or an answer the function cannot take): "
        f"{_code(_errno_name(doc.error_errno))} ({_strerror(doc.error_errno)}) — the policy fails closed.",
    ]
    if doc.timeout is not None:
        lines.append(
            f"- **Time limit** of an async handler: {doc.timeout:g} s, then "
            f"{_code(_errno_name(doc.timeout_errno))} ({_strerror(doc.timeout_errno)})."
        )
    lines.append(
        "- **Concurrency**: calls from different threads of a process are decided at once."
        if doc.concurrent
        else "- **Concurrency**: the calls of one process are decided one at a time."
    )
    if doc.sandbox is None:
        lines.append("- **Sandbox**: none defined (`--sandbox` uses the minimal one, see below).")
    else:
        count = len(doc.sandbox.rules)
        rules = "no static rules" if not count else f"{count} static rule{'s' if count != 1 else ''}"
        network = "the host's network" if doc.sandbox.network else "no network"
        metadata = "metadata changes allowed" if doc.sandbox.metadata else "no metadata changes"
        lines.append(f"- **Sandbox** (with `--sandbox`): {rules}, {network}, {metadata}.")
    lines += [
        "",
        "Handlers are tried in the order listed; the first whose conditions all hold decides "
        "(it may return `PASS` to hand the call to the next).",
        "",
        "| function | handlers, in order | if none decides |",
        "|---|---|---|",
    ]
    short = doc.default.short()
    for function in doc.functions:
        names = _names([handler.name for handler in function.handlers]) or "—"
        otherwise = short if function.default_reachable == "yes" else f"{short}, only after `PASS`"
        lines.append(f"| {_code(function.function)} | {_table_cell(names)} | {otherwise} |")
    return lines


def _decisions(doc: PolicyDoc) -> list[str]:
    default = doc.default.text()
    lines = ["## How each call is decided"]
    for functions, function in _groups(doc):
        lines += ["", f"### {_names(functions)}", ""]
        for number, handler in enumerate(function.handlers, start=1):
            lines += _handler_lines(handler, number)
        lines.append("")
        if function.default_reachable == "only_by_pass":
            lines.append(
                f"Otherwise: {default} — but one of these handlers sees every call, so only a "
                "call it hands on with `PASS` gets that far."
            )
        else:
            lines.append(f"Otherwise: {default}.")
    if doc.unhandled:
        lines += ["", "### Not handled", "", f"{_names(doc.unhandled)}: every call is {default}."]
    if doc.default.handler is not None:
        lines += ["", "### The default handler", ""] + _handler_lines(doc.default.handler)
    elif doc.default.action == "forward":
        lines += [
            "",
            "A forwarded call is performed by the slave with its own credentials: only the sandbox, if any, limits it.",
        ]
    return lines


def _sandbox(doc: PolicyDoc) -> list[str]:
    lines = ["## Sandbox", ""]
    if doc.sandbox is None:
        lines.append(
            "The policy defines no `sandbox`. With `libc-service run --sandbox` the program gets "
            "the minimal one: it may load itself (executable, ELF interpreter, libraries, the "
            "shim) and nothing else, and has no network. Without `--sandbox` the shim only "
            "*advises*: calls it does not see (static binaries, raw system calls, "
            "glibc-internal opens such as NSS's or the loader's) are not arbitrated."
        )
        return lines
    lines.append(
        "With `libc-service run --sandbox`, Landlock lets the program load itself (executable, "
        "ELF interpreter, libraries, the shim) and use the paths below by its own authority; "
        "anything else it gets only from the master."
    )
    lines.append("")
    if doc.sandbox.rules:
        lines += ["| path | the slave may |", "|---|---|"]
        for path, access in doc.sandbox.rules:
            lines.append(f"| {_table_cell(_code(path))} | {', '.join(access)} |")
        lines.append("")
        lines.append(
            "Read-only calls beneath these paths need no round trip: an `open`, `fopen` or `opendir` "
            "without write, create, truncate or append flags, a `stat`, or an `access` without `w`, on "
            "an absolute path with no `..` component, is done by the shim itself. The handlers, "
            "observers and `libc-service trace` never see such calls; the kernel still checks each "
            "on the file it resolves to (a symlink out of these trees is refused, not granted)."
        )
    else:
        lines.append("No static rules: by itself the slave may read, write or execute nothing else.")
    lines.append("")
    if doc.sandbox.system_libraries:
        lines.append(
            "Libraries: the system's shared-library directories (`/lib`, `/usr/lib`, their 64-bit and "
            "multiarch variants, `/usr/local/lib` and those `/etc/ld.so.conf` names) may be read and "
            "executed, for libraries loaded at run time (`dlopen`); calls beneath them still reach the "
            "master. `system_libraries=False` leaves only what the program links."
        )
        lines.append("")
    lines.append(
        "Network: the host's network is kept."
        if doc.sandbox.network
        else "Network: none. The slave runs in empty network and IPC namespaces (and Landlock refuses "
        "TCP bind/connect where the kernel supports it); only a socket the master connects "
        "and passes back reaches anything."
    )
    lines.append("")
    lines.append(
        "Metadata: the slave may change the mode, owner, times and extended attributes of files its "
        "user owns by itself (`metadata=True`; Landlock does not mediate these calls)."
        if doc.sandbox.metadata
        else "Metadata: `chmod`, `chown`, `utime` and extended-attribute calls are refused (`EPERM`, by a "
        "seccomp filter, since Landlock does not mediate them), and so is io_uring. So a `FORWARD` of "
        "`chmod`, `fchmod`, `chown`, `fchown`, `utimens` or `futimens` is refused by the kernel: only the "
        "changes a handler performs in the master (`perform(request)`) are made."
    )
    return lines


def _handlers(doc: PolicyDoc) -> list[str]:
    lines = ["## Handlers", ""]
    if not doc.handlers:
        lines.append(f"The router has no handlers: every call is {doc.default.text()}.")
        return lines
    lines.append("Every handler in registration order, with its whole docstring.")
    for handler in doc.handlers:
        lines += ["", f"### {_code(handler.name)}", ""]
        lines.append(f"Decides {_names(handler.functions)} when {_when(handler)}.")
        if handler.source is not None:
            lines.append(f"Source: {_code(handler.source)}.")
        lines += ["", handler.doc or "*(no docstring)*"]
    return lines


def _observers(doc: PolicyDoc) -> list[str]:
    lines = ["## Observers", ""]
    if not doc.observers:
        lines.append("None: no code sees the decisions (`router.observe(fn)` adds one).")
        return lines
    lines.append(
        "Each is called with every decision (a `libc_service.router.Decision`: the request, the deciding "
        "route, the outcome, result and errno) after its reply went out; it cannot change the decision."
    )
    for observer in doc.observers:
        lines += ["", f"### {_code(observer.name)}", ""]
        if observer.source is not None:
            lines.append(f"Source: {_code(observer.source)}.")
            lines.append("")
        lines.append(observer.doc or "*(no docstring)*")
    return lines


def _markdown_sections(doc: PolicyDoc) -> list[list[str]]:
    return [_intro(doc), _glance(doc), _decisions(doc), _sandbox(doc), _handlers(doc), _observers(doc)]


def render_markdown(doc: PolicyDoc) -> str:
    """The policy documentation as a Markdown page."""
    return "\n\n".join("\n".join(section).strip("\n") for section in _markdown_sections(doc)) + "\n"


# ----------------------------------------------------------------------- JSON


def _handler_json(handler: HandlerDoc) -> dict[str, Any]:
    return {
        "index": handler.index,
        "name": handler.name,
        "summary": handler.summary,
        "doc": handler.doc,
        "functions": list(handler.functions),
        "conditions": list(handler.conditions),
        "when": list(handler.condition_data),
        "source": None if handler.source_file is None else {"file": handler.source_file, "line": handler.source_line},
    }


def _observer_json(observer: ObserverDoc) -> dict[str, Any]:
    return {
        "name": observer.name,
        "summary": observer.summary,
        "doc": observer.doc,
        "source": None
        if observer.source_file is None
        else {"file": observer.source_file, "line": observer.source_line},
    }


def policy_json(doc: PolicyDoc) -> dict[str, Any]:
    """The JSON document as plain data (keys in a fixed order)."""
    default = doc.default
    return {
        "schema": JSON_SCHEMA,
        "policy": doc.name,
        "description": doc.description,
        "default": {
            "action": default.action,
            "errno": default.errno,
            "errno_name": default.errno_name,
            "handler": None if default.handler is None else _handler_json(default.handler),
        },
        "failure": {"errno": doc.error_errno, "errno_name": _errno_name(doc.error_errno)},
        "timeout": None
        if doc.timeout is None
        else {
            "seconds": doc.timeout,
            "errno": doc.timeout_errno,
            "errno_name": _errno_name(doc.timeout_errno),
        },
        "concurrent": doc.concurrent,
        "handlers": [_handler_json(handler) for handler in doc.handlers],
        "observers": [_observer_json(observer) for observer in doc.observers],
        "functions": [
            {
                "function": function.function,
                "handlers": [handler.index for handler in function.handlers],
                "default": "unhandled" if not function.handlers else function.default_reachable,
            }
            for function in doc.functions
        ],
        "unhandled": list(doc.unhandled),
        "sandbox": None
        if doc.sandbox is None
        else {
            "rules": [{"path": path, "access": list(access)} for path, access in doc.sandbox.rules],
            "network": doc.sandbox.network,
            "metadata": doc.sandbox.metadata,
            "system_libraries": doc.sandbox.system_libraries,
        },
    }


def render_json(doc: PolicyDoc) -> str:
    """The policy documentation as a JSON document (see ``docs/policy-json.md``)."""
    return json.dumps(policy_json(doc), indent=2, ensure_ascii=False) + "\n"


_RENDERERS: Final[dict[str, Callable[[PolicyDoc], str]]] = {"md": render_markdown, "json": render_json}


def render_policy(policy: LoadedPolicy, fmt: Format = "md") -> str:
    """Document ``policy`` as Markdown (``"md"``) or JSON (``"json"``)."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown documentation format {fmt!r}; valid: {', '.join(_RENDERERS)}")
    return renderer(describe_policy(policy))
