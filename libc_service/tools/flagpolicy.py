"""A policy from the command line's flags: ``run --sandbox --read PATH --write PATH ... -- CMD``.

The common cases need no Python file, as bwrap's ``--ro-bind``/``--bind``
and sandlock's ``fs_readable`` need none:

- ``--read PATH``: the program may read (and list) ``PATH`` itself;
- ``--write PATH``: it may also create, change and remove files there;
- ``--exec PATH``: it may also execute programs from there;
- ``--bind [ADDRESS:]PORT``: it may listen on ``PORT`` (any address when
  none is given): the master binds a socket of its own and passes it back,
  since the sandboxed program has no network of its own;
- ``--connect HOST:PORT``: it may connect there, the same way; ``HOST`` is an
  address, a network, or a name pattern (``*.python.org``): then the master
  resolves matching names, and only those, and connects only to the
  addresses it returned (egress by name).

Each flag is two things at once, and needs both: a Landlock grant in the
:class:`~libc_service.Sandbox` (what the program may do by itself) and a
route of the :class:`~libc_service.Router` (so that a policy whose default
refuses does not refuse what the flag allows). With a POLICY file the
flags *add* to it: its sandbox gets the flags' paths, and the flags' routes
are tried before its own. Without one, the flags' routes come with a
router that forwards everything else — the sandbox limits it — and refuses
a ``connect`` or ``bind`` nobody allowed, so the refusal names the address.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from libc_service.policy.conditions import Condition, to, under, writing
from libc_service.protocol.outcomes import FORWARD, Errno
from libc_service.tools.policy_file import LoadedPolicy, PolicyError
from libc_service.policy.router import Route, Router

if TYPE_CHECKING:
    from libc_service.confinement.sandbox import Sandbox

__all__ = ["PolicyFlags", "add_connect_rules", "bind_endpoints", "connect_routes", "policy_from_flags"]

#: What the flags' policy is called, in ``docs`` and error messages, without a POLICY file.
FLAGS_POLICY_NAME = "command-line flags"
_READING = ("stat", "lstat", "access", "eaccess")
_OPENING = ("open", "openat")
#: Functions that change the file system by path (unix sockets are not files the flags grant).
_WRITING = ("open", "openat", "unlink", "rmdir", "mkdir", "rename", "stat", "lstat", "access", "eaccess")
_INET_CONNECT = ("connect_inet", "connect_inet6")
_INET_BIND = ("bind_inet", "bind_inet6")


@dataclass(frozen=True)
class PolicyFlags:
    """The policy flags as given (repeatable, in order)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    exec: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        """Whether any flag was given."""
        return bool(self.read or self.write or self.exec or self.connect or self.bind)


def _absolute(flag: str, path: str) -> str:
    """``path`` made absolute against the working directory, as the user's shell would see it."""
    if not path:
        raise PolicyError(f"{flag} takes a path, not an empty string")
    return os.path.normpath(os.path.abspath(path))


def _port(flag: str, value: str, text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise PolicyError(f"{flag} {value}: the port must be a number from 0 to 65535")
    return int(text)


def bind_endpoints(value: str) -> list[tuple[str, int]]:
    """``--bind [ADDRESS:]PORT`` as ``(network, port)`` endpoints for :func:`~libc_service.policy.conditions.to`.

    ``8080`` is any address (IPv4 and IPv6) on port 8080; ``127.0.0.1:8080``
    and ``[::1]:8080`` one address. Raises :class:`PolicyError` for anything else.
    """
    if ":" not in value:
        port = _port("--bind", value, value)
        return [("0.0.0.0/0", port), ("::/0", port)]
    host, _, port_text = value.rpartition(":")
    port = _port("--bind", value, port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise PolicyError(f"--bind {value}: write an IPv6 address in brackets, as in [::1]:{port}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise PolicyError(f"--bind {value}: {host!r} is not an IP address") from None
    return [(str(address), port)]


def connect_routes(values: Sequence[str]) -> list[tuple[tuple[str, ...], Any, tuple[Condition, ...]]]:
    """The routes ``--connect HOST:PORT`` stands for: (functions, handler, conditions), in order.

    ``HOST`` is an address or network (``127.0.0.1``, ``[::1]``,
    ``10.0.0.0/8``: :func:`~libc_service.policy.conditions.to`) or a name pattern
    (``pypi.org``, ``*.python.org``): then the master resolves names that
    match (:func:`~libc_service.policy.conditions.named`) and connects only to the
    addresses it returned for them, while the answer holds
    (:func:`~libc_service.policy.conditions.resolved`). ``PORT`` is a number or
    ``*`` for any. Raises :class:`PolicyError` for a value that is neither.
    """
    from libc_service.policy.conditions import named, resolved

    endpoints: list[str] = []
    names: dict[int | None, list[str]] = {}
    for value in values:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or not (port_text == "*" or port_text.isdigit()):
            raise PolicyError(f"--connect {value!r}: write HOST:PORT (PORT a number or *)")
        port = None if port_text == "*" else _port("--connect", value, port_text)
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_network(bare, strict=False)
        except ValueError:
            if ":" in host or "/" in host:
                raise PolicyError(f"--connect {value!r}: {host!r} is neither an address nor a name") from None
            try:
                named(host)
            except ValueError as exc:
                raise PolicyError(f"--connect {value!r}: {exc}") from None
            names.setdefault(port, []).append(host)
        else:
            shown = f"[{bare}]" if ":" in bare else bare
            endpoints.append(f"{shown}:{port_text}")
    routes: list[tuple[tuple[str, ...], Any, tuple[Condition, ...]]] = []
    shown_values = ", ".join(f"`{value}`" for value in values)
    if endpoints:
        doc = (
            f"Connecting to {shown_values} (`--connect`): the master connects a socket of its own and "
            "passes it back, in place of the program's."
        )
        routes.append((_INET_CONNECT, _handler("connect_flag", doc, _PERFORM), (to(*endpoints),)))
    if names:
        patterns = [pattern for group in names.values() for pattern in group]
        doc = (
            f"Looking up {', '.join(f'`{p}`' for p in patterns)} (`--connect`): the master resolves the name "
            "(no other name reaches a nameserver through this route)."
        )
        routes.append((("getaddrinfo",), _handler("lookup_flag", doc, _PERFORM), (named(*patterns),)))
        doc = (
            f"Connecting to {shown_values} (`--connect`): only to an address the master returned for one of "
            "these names, while the answer is valid; the master connects a socket of its own and passes it back."
        )
        for port, group in names.items():
            condition = resolved(*group, ports=None if port is None else [port])
            routes.append((_INET_CONNECT, _handler("connect_by_name_flag", doc, _PERFORM), (condition,)))
    return routes


def add_connect_rules(router: Router, values: Sequence[str]) -> None:
    """Add the routes of ``--connect`` ``values`` (:func:`connect_routes`) to ``router``, after its own."""
    for functions, handler, conditions in connect_routes(values):
        router.add_route(functions, handler, when=conditions)


def _handler(name: str, doc: str, outcome: Any) -> Any:
    """A handler named ``name`` (as routes, observers and ``docs`` show it) that answers ``outcome``."""
    if outcome is _PERFORM:

        def handler(request: Any) -> Any:
            from libc_service.acting.perform import perform

            return perform(request)

    elif isinstance(outcome, Errno):
        code = outcome.errno or errno.EPERM

        def handler(request: Any) -> Any:
            raise Errno(code)  # a fresh exception per call: a raised one keeps its traceback

    else:

        def handler(request: Any) -> Any:
            return outcome

    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = doc
    return handler


#: The outcome of a route whose call the master performs (``perform(request)``).
_PERFORM = object()


def _names(paths: Sequence[str]) -> str:
    return ", ".join(f"`{path}`" for path in paths)


def _flag_routes(flags: PolicyFlags) -> list[tuple[tuple[str, ...], Any, tuple[Condition, ...]]]:
    """The routes the flags stand for: (functions, handler, conditions), in the order they are tried."""
    routes: list[tuple[tuple[str, ...], Any, tuple[Condition, ...]]] = []
    writes = [_absolute("--write", path) for path in flags.write]
    reads = [_absolute("--read", path) for path in flags.read] + [_absolute("--exec", path) for path in flags.exec]
    if writes:
        doc = (
            f"Files beneath {_names(writes)} (`--write`): forwarded, the program reads, creates, changes "
            "and removes them itself, as the sandbox allows."
        )
        routes.append((_WRITING, _handler("write_flag", doc, FORWARD), (under(*writes),)))
    if reads:
        doc = (
            f"Files beneath {_names(reads)} (`--read`, `--exec`): reading them is forwarded, the "
            "program does it itself, as the sandbox allows."
        )
        routes.append((_OPENING, _handler("read_flag", doc, FORWARD), (under(*reads), ~writing())))
        routes.append((_READING, _handler("read_flag_stat", doc, FORWARD), (under(*reads),)))
    binds = [endpoint for value in flags.bind for endpoint in bind_endpoints(value)]
    if binds:
        doc = (
            f"Listening on {', '.join(f'`{value}`' for value in flags.bind)} (`--bind`): the master binds "
            "a socket of its own and passes it back, in place of the program's."
        )
        routes.append((_INET_BIND, _handler("bind_flag", doc, _PERFORM), (to(*binds),)))
    routes += connect_routes(flags.connect)
    return routes


def _flag_sandbox(flags: PolicyFlags, base: Sandbox | None) -> Sandbox:
    from libc_service.confinement.sandbox import Sandbox

    sandbox = base if base is not None else Sandbox()
    return dataclasses.replace(
        sandbox,
        allow_read=(*sandbox.allow_read, *(_absolute("--read", path) for path in flags.read)),
        allow_write=(*sandbox.allow_write, *(_absolute("--write", path) for path in flags.write)),
        allow_exec=(*sandbox.allow_exec, *(_absolute("--exec", path) for path in flags.exec)),
    )


def _copy_route(router: Router, route: Route) -> None:
    router.add_route(route.functions, route.handler, when=route.conditions)


def policy_from_flags(flags: PolicyFlags, base: LoadedPolicy | None = None) -> LoadedPolicy:
    """The policy ``flags`` stand for, added to ``base`` (a loaded POLICY file) when there is one.

    The result is a new router — the flags' routes first, then ``base``'s
    routes, default, settings and observers — and ``base``'s sandbox (or a
    minimal one) with the flags' paths added; ``base`` itself is not
    changed. Raises :class:`PolicyError` for a flag value that cannot be
    used, naming the flag.
    """
    routes = _flag_routes(flags)
    if base is None:
        router = Router(default=FORWARD)
        for functions, handler, conditions in routes:
            router.add_route(functions, handler, when=conditions)
        doc = (
            "Refused: a `connect` or `bind` no flag allowed (`EACCES`); the sandbox gives the "
            "program no network of its own."
        )
        router.add_route(_INET_CONNECT + _INET_BIND, _handler("unlisted_network", doc, Errno(errno.EACCES)))
        module = types.ModuleType("libc_service_flags", f"The policy of the command line's flags: {_summary(flags)}.")
        return LoadedPolicy(FLAGS_POLICY_NAME, module, router, _flag_sandbox(flags, None))
    table = base.router.routes()
    default = table.default
    router = Router(
        default=default.handler if isinstance(default, Route) else default,
        concurrent=base.router.concurrent,
        error_errno=base.router.error_errno,
        timeout=base.router.timeout,
        timeout_errno=base.router.timeout_errno,
        resolver=base.router.resolver,
    )
    router.max_in_flight = base.router.max_in_flight
    for functions, handler, conditions in routes:
        router.add_route(functions, handler, when=conditions)
    for route in table.routes:
        _copy_route(router, route)
    for observer in base.router.observers():
        router.observe(observer)
    return LoadedPolicy(base.name, base.module, router, _flag_sandbox(flags, base.sandbox))


def _summary(flags: PolicyFlags) -> str:
    parts = [f"{flag} {value}" for flag, values in dataclasses.asdict(flags).items() for value in values]
    return " ".join(f"--{part}" for part in parts) or "no flags"
