"""What a handler promises in its signature, checked once at registration.

A policy mistake found per request shows up late, and only for the calls
that reach it (a ``-> str`` handler for ``open`` that fails only when the
path is relative): FastAPI reads a handler's hints once, at registration,
and fails then. So does :meth:`Router.on <libc_service.policy.router.Router.on>`,
with a ``TypeError`` that names the handler and its line:

- it must be callable with exactly one argument, the request, and a hint on
  that argument must admit every request type it is registered for;
- a hint on its result must name only what the functions can result in
  (``int``, ``Stat`` for ``stat``/``lstat``, ``list[AddrInfo]`` or an error
  name for ``getaddrinfo``, ``WithFds``, ``FORWARD``/``PASS``, an awaitable
  of those from a plain function, ``NoReturn`` for one that always raises);
- it must give the router something it can await or use: a generator
  function never runs its body, and an ``async def`` whose result is itself
  an awaitable is awaited once, never twice.

Hints that cannot be judged (``Any``, ``object``, a type variable, a
protocol of the policy's own) are accepted: the check refuses only what is
certainly wrong.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Union

from libc_service.protocol.catalogue import GAI_ERRORS
from libc_service.protocol.outcomes import Sentinel, WithFds
from libc_service.protocol import replies  # loaded on first use (libc_service/__init__.py)
from libc_service.protocol import requests

__all__ = ["check_handler", "handler_name"]

#: The origins of the hints that mean "an awaitable of the first (or last) argument".
_AWAITABLES: Final = (collections.abc.Awaitable, collections.abc.Coroutine)
_NEVER: Final = tuple(hint for hint in (typing.NoReturn, getattr(typing, "Never", None)) if hint is not None)


def handler_name(handler: object) -> str:
    """The handler's qualified name, as messages and observers show it."""
    return getattr(handler, "__qualname__", None) or type(handler).__qualname__


def source_of(handler: object) -> tuple[str, int] | None:
    """The file and first line (its first decorator's) of the handler's definition, when it has one.

    A function's code object knows both: reading and tokenizing its source
    (``inspect.getsourcelines``) for them cost more than a small policy's
    whole import, at every start of the command. Other callables (instances,
    builtins) are left to ``inspect``.
    """
    try:
        target = inspect.unwrap(handler)  # type: ignore[arg-type]
        code = getattr(target, "__code__", None)
        filename = inspect.getsourcefile(target)
        if code is not None:
            return None if filename is None else (filename, code.co_firstlineno)
        return filename or inspect.getfile(target), inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return None


def _where(handler: object) -> str:
    """`` (file.py, line N)`` of the handler's definition, when it has one."""
    source = source_of(handler)
    if source is None:
        return ""
    return f" ({source[0].rsplit('/', 1)[-1]}, line {source[1]})"


def check_handler(handler: Callable[[Any], Any], functions: Sequence[str]) -> None:
    """Raise ``TypeError`` when ``handler`` certainly cannot serve ``functions``."""
    if not callable(handler):
        raise TypeError(f"a handler must be callable, not {handler!r}")
    name = f"handler {handler_name(handler)}{_where(handler)}"
    target = getattr(handler, "__call__", None) if not inspect.isroutine(handler) else handler
    if inspect.isgeneratorfunction(handler) or inspect.isgeneratorfunction(target):
        raise TypeError(f"{name} is a generator function: calling it runs none of its body; drop the yield")
    if inspect.isasyncgenfunction(handler) or inspect.isasyncgenfunction(target):
        raise TypeError(f"{name} is an async generator: the router awaits a handler, it cannot iterate one")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check
    parameters = list(signature.parameters.values())
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    required_kw = [p for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    optional = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
    if len(positional) > 1 or required_kw or (not positional and not variadic and not optional):
        raise TypeError(f"{name} must take exactly one argument, the request")
    hinted = (positional and positional[0].annotation is not inspect.Parameter.empty) or (
        signature.return_annotation is not inspect.Signature.empty
    )
    if not hinted:
        return
    try:
        # Resolves string hints in the handler's own module; follows
        # partials, bound methods, callable objects and functools.wraps.
        resolved = inspect.signature(handler, eval_str=True)
    except Exception as exc:  # noqa: BLE001 - unresolvable hints are the author's to fix
        raise TypeError(f"cannot resolve the type hints of {name}: {exc}") from exc
    if positional:
        _check_request_hint(name, resolved.parameters[positional[0].name].annotation, functions)
    if resolved.return_annotation is not inspect.Signature.empty:
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(target)
        _check_result_hint(name, resolved.return_annotation, functions, is_async)


def _check_request_hint(name: str, hint: Any, functions: Sequence[str]) -> None:
    if hint is inspect.Parameter.empty:
        return
    accepted = _accepted_types(hint)
    if accepted is None:
        return
    wrong = [
        function for function in functions if not any(issubclass(requests.REQUEST_TYPES[function], t) for t in accepted)
    ]
    if wrong:
        raise TypeError(
            f"{name} is annotated for {hint!r} but serves {', '.join(wrong)} "
            f"(requests {', '.join(requests.REQUEST_TYPES[n].__name__ for n in wrong)})"
        )


def _accepted_types(hint: Any) -> list[type] | None:
    """The classes a hint admits, or ``None`` when it admits anything."""
    if hint is Any or hint is object:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _accepted_types(typing.get_args(hint)[0])
    if origin is Union or origin is types.UnionType:
        accepted: list[type] = []
        for arg in typing.get_args(hint):
            sub = _accepted_types(arg)
            if sub is None:
                return None
            accepted.extend(sub)
        return accepted
    if isinstance(hint, type):
        return [hint]
    return None


# ------------------------------------------------------------------ results

#: What each kind of result is called in messages.
_RESULTS_OF: Final = {
    "stat": "a Stat",
    "lstat": "a Stat",
    "getaddrinfo": "a list of AddrInfo or an error name",
}


def _check_result_hint(name: str, hint: Any, functions: Sequence[str], is_async: bool) -> None:
    """Every result ``hint`` names must be one at least one of ``functions`` can have."""
    members = _members(hint)
    for member in members:
        if typing.get_origin(member) in _AWAITABLES:
            if is_async:
                raise TypeError(
                    f"{name}: its result is annotated {_shown(hint)}, an awaitable once awaited; the router "
                    "awaits what a handler gives back once, never twice: await it in the handler"
                )
            arguments = typing.get_args(member)
            if arguments:
                _check_result_hint(name, arguments[-1], functions, True)
            continue
        if not any(_fits(member, function) for function in functions):
            wanted = sorted({_RESULTS_OF.get(function, "an int") for function in functions})
            raise TypeError(
                f"{name} is annotated to return {_shown(member)}, which {', '.join(functions)} cannot result in: "
                f"a handler returns {' or '.join(wanted)}, WithFds(result, fds), FORWARD or PASS, or raises "
                "(annotate a handler that always raises -> NoReturn)"
            )


def _members(hint: Any) -> list[Any]:
    """The alternatives of a union hint (``Optional`` and ``Annotated`` unwrapped)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _members(typing.get_args(hint)[0])
    if origin is Union or origin is types.UnionType:
        return [member for argument in typing.get_args(hint) for member in _members(argument)]
    alias = getattr(typing, "TypeAliasType", None)  # a `type X = ...` statement (Python 3.12)
    if alias is not None and isinstance(hint, alias):
        return _members(hint.__value__)
    return [hint]


def _fits(member: Any, function: str) -> bool:
    """Whether a result of type ``member`` can answer ``function`` (``True`` when it cannot be judged)."""
    if member is Any or member is object or member in _NEVER or isinstance(member, typing.TypeVar):
        return True
    if member is None or member is type(None):
        return False  # None is no result: the call would fail closed every time
    origin = typing.get_origin(member)
    if origin is Literal:
        return all(_literal_fits(value, function) for value in typing.get_args(member))
    if origin is list:
        arguments = typing.get_args(member)
        return function == "getaddrinfo" and (not arguments or _is_addrinfo(arguments[0]))
    if origin is not None or not isinstance(member, type):
        return True  # a generic of the policy's own, a protocol: not ours to judge
    if issubclass(member, WithFds | Sentinel):
        return True
    if issubclass(member, bool):
        return False
    if function in ("stat", "lstat"):
        return issubclass(member, replies.Stat)
    if function == "getaddrinfo":
        return issubclass(member, str) or member is list
    return issubclass(member, int)


def _literal_fits(value: object, function: str) -> bool:
    if function == "getaddrinfo":
        return isinstance(value, str) and value in GAI_ERRORS
    if function in ("stat", "lstat"):
        return False
    return isinstance(value, int) and not isinstance(value, bool)


def _is_addrinfo(argument: Any) -> bool:
    return argument is Any or (isinstance(argument, type) and issubclass(argument, replies.AddrInfo))


def _shown(hint: Any) -> str:
    """A hint as the policy wrote it: ``str``, ``int | None``."""
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return repr(hint).replace("typing.", "")
