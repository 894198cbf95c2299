"""The source of a learnt policy, and reading one back for ``learn --append``.

The policy is Python that ``libc-service run`` imports and executes, and
most of what it holds was named by the program it was learnt from: a
program chooses its file names, the names it looks up, and (through
``/proc/self/fd/N/...``) what the master would see of them. So no such
string is ever written raw. Each one is a Python literal (``repr``), which
the parser reads back as exactly the same value — a newline, a quote, a
backslash, a byte that is not UTF-8 (held as ``os.fsdecode`` holds it, a
lone surrogate written ``'\\udcff'``) included — and the comments and the
docstring hold only fixed text and numbers. ``tests/test_learn.py`` proves
it over arbitrary bytes: the parsed module has the expected statements and
nothing else, and its literals equal the names.

Reading back (:func:`read`) parses the file and evaluates only literals
(:func:`ast.literal_eval`), never the module: merging a run into a policy
does not run it.
"""

from __future__ import annotations

import ast
import datetime
from collections.abc import Iterable, Sequence
from typing import Final

from libc_service.tools.learnt import Learned, broad_tree

__all__ = ["ENDPOINT_LISTS", "LearntPolicyError", "endpoint", "merge", "read", "render", "resolved_endpoint"]

#: The module-level lists of ``(address, port)`` endpoints, by Learned field.
ENDPOINT_LISTS: Final = {"CONNECTS": "connects", "BINDS": "binds"}

_IMPORTS: Final = (
    "import errno\n\n"
    "from libc_service import FORWARD, Errno, Resolver, Router, Sandbox, named, perform, resolved, to, under  # noqa: F401\n"
)

_EXAMPLE: Final = (
    "# Everything the sandbox allows, the program does itself. Add handlers for\n"
    "# what the master should decide instead, e.g. (uncomment to use):\n"
    '# @router.on("open", "openat", when=under("/srv/data"))\n'
    "# def serve(request):\n"
    '#     """Files beneath /srv/data, opened by the master beneath it."""\n'
    '#     return perform(request, beneath="/srv/data")\n'
)

_NETWORK_NOTE: Final = (
    "# The network. The sandbox gives the program none of its own: the master\n"
    "# makes the connections and binds the learnt runs made and looks up the\n"
    "# names they looked up; anything else fails in the sandbox's empty network.\n"
    "# A connection to an address the master returned for a name is granted by\n"
    "# that name (RESOLVED: to the addresses the master returns for it then);\n"
    "# CONNECTS holds the addresses no answer explained.\n"
)

_NAMESERVERS_NOTE: Final = "# The nameservers the master asked while learning (learn --nameserver).\n"

_ROUTER: Final = "router = Router(default=FORWARD)\n"

_ROUTER_RESOLVING: Final = "router = Router(default=FORWARD, resolver=Resolver(NAMESERVERS))\n"

_CONNECT_BY_NAME: Final = (
    "def any_resolved(endpoints):\n"
    '    """resolved(NAME, ports=[PORT]) for any of the NAME:PORT endpoints."""\n'
    "    condition = None\n"
    "    for endpoint in endpoints:\n"
    '        name, _, port = endpoint.rpartition(":")\n'
    "        one = resolved(name, ports=[int(port)])\n"
    "        condition = one if condition is None else condition | one\n"
    "    return condition\n"
    "\n\n"
    '@router.on("connect_inet", "connect_inet6", when=any_resolved(RESOLVED))\n'
    "def connect_by_name(request):\n"
    '    """Connections to an address the master returned for a learnt name, on its port, made by the master."""\n'
    "    return perform(request)\n"
)

_CONNECT: Final = (
    '@router.on("connect_inet", "connect_inet6", when=to(*CONNECTS))\n'
    "def connect(request):\n"
    '    """Connections to the addresses and ports the learnt runs connected to, made by the master."""\n'
    "    return perform(request)\n"
)

_BIND: Final = (
    '@router.on("bind_inet", "bind_inet6", when=to(*BINDS))\n'
    "def bind(request):\n"
    '    """Binds to the addresses and ports the learnt runs bound, made by the master."""\n'
    "    return perform(request)\n"
)

_LOOK_UP: Final = (
    '@router.on("getaddrinfo", when=named(*NAMES))\n'
    "def look_up(request):\n"
    '    """Look-ups of the names the learnt runs looked up, made by the master."""\n'
    "    return perform(request)\n"
)

_METADATA_NOTE: Final = (
    "# The runs changed modes, owners or times of files here (a linker making its\n"
    "# output executable, touch, tar -x). The sandbox refuses those changes to\n"
    "# the program itself (Landlock does not mediate them): the master does them,\n"
    "# resolving each path beneath one of these trees (a symlink out is refused).\n"
)

_CHANGE_METADATA: Final = (
    '@router.on("chmod", "fchmod", "chown", "fchown", "utimens", "futimens", when=under(*METADATA_TREES))\n'
    "def change_metadata(request):\n"
    '    """Mode, owner and time changes beneath the trees the learnt runs changed, done by the master."""\n'
    "    for tree in METADATA_TREES:\n"
    "        try:\n"
    "            return perform(request, beneath=tree)\n"
    "        except OSError as error:\n"
    "            if error.errno != errno.EXDEV:  # EXDEV: not beneath this tree\n"
    "                raise\n"
    "    raise Errno(errno.EPERM)\n"
)


class LearntPolicyError(ValueError):
    """A file ``learn --append`` cannot merge into: not one ``learn`` wrote, or edited past reading."""


def endpoint(address: str, port: int) -> str:
    """``address:port`` as :func:`~libc_service.policy.conditions.to` reads it (``[v6]:port``)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def resolved_endpoint(name: str, port: int) -> str:
    """``name:port``, as the policy's ``RESOLVED`` list holds it (read back at the last colon)."""
    return f"{name}:{port}"


def _strings(name: str, items: Iterable[str], indent: str = "", *, explain: bool = False) -> str:
    """``name = [...]``, one ``repr`` per line; ``explain`` adds the fixed reason of a broad tree."""
    lines = []
    for item in items:
        reason = broad_tree(item) if explain else None
        lines.append(f"{indent}    {item!r},{f'  # {reason}' if reason else ''}\n")
    if not lines:
        return f"{indent}{name}=[],\n" if indent else f"{name} = []\n"
    opening = f"{indent}{name}=[\n" if indent else f"{name} = [\n"
    return opening + "".join(lines) + (f"{indent}],\n" if indent else "]\n")


def render(learned: Learned) -> str:
    """The policy module's source: a ``Sandbox``, a router, and the network and metadata routes."""
    lists = learned.sandbox_arguments()
    metadata = learned.metadata_trees()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = len(learned.commands)
    broad = learned.broad()
    docstring = (
        f'"""Starting policy learnt by `libc-service learn` from {runs} run(s), {learned.calls} calls.\n\n'
        f"Written on {when}; the commands are in LEARNT_FROM. Every tree\n"
        "below was used by those runs: review them and narrow what you can"
        + (
            f"\n({len(broad)} granted whole hold far more than a program needs: see\nthe comments beside them)"
            if broad
            else ""
        )
        + ".\nRun it with `libc-service run --sandbox THIS_FILE -- COMMAND`;\n"
        "`libc-service learn --append -o THIS_FILE -- COMMAND` adds a run.\n"
        '"""\n'
    )
    commands = "".join(f"    {[str(word) for word in command]!r},\n" for command in learned.commands)
    parts = [
        docstring,
        "\n",
        _IMPORTS,
        "\n",
        "# The commands this policy was learnt from, and how many calls they made.\n",
        f"LEARNT_FROM = [\n{commands}]\n" if commands else "LEARNT_FROM = []\n",
        f"LEARNT_CALLS = {int(learned.calls)}\n",
        "\n",
        "# Not granted: per-process or terminal paths (/proc would name every process).\n",
    ]
    if learned.unnamed:
        parts.append(
            f"# Also not granted: {int(learned.unnamed)} call(s) used an object with no name to grant\n"
            "# (removed since, or outside the master's root).\n"
        )
    parts += [
        _strings("NOT_GRANTED", sorted(learned.skipped)),
        "\n",
        "sandbox = Sandbox(\n",
        _strings("allow_read", lists["allow_read"], "    ", explain=True),
        _strings("allow_write", lists["allow_write"], "    ", explain=True),
        _strings("allow_exec", lists["allow_exec"], "    "),
        f"    network={bool(learned.host_network)!r},\n",
        ")\n",
        "\n",
    ]
    if learned.nameservers:
        parts += [_NAMESERVERS_NOTE, _strings("NAMESERVERS", learned.nameservers), _ROUTER_RESOLVING]
    else:
        parts.append(_ROUTER)
    parts += ["\n", _EXAMPLE]
    network = [
        ("CONNECTS", sorted(endpoint(*item) for item in learned.connects), _CONNECT),
        ("BINDS", sorted(endpoint(*item) for item in learned.binds), _BIND),
        ("NAMES", sorted(learned.names), _LOOK_UP),
        ("RESOLVED", sorted(resolved_endpoint(*item) for item in learned.resolved), _CONNECT_BY_NAME),
    ]
    if any(items for _, items, _ in network):
        sections = [_strings(name, items) + "\n\n" + route for name, items, route in network if items]
        parts += ["\n", _NETWORK_NOTE, "\n\n".join(sections)]
    if metadata:
        parts += ["\n\n", _METADATA_NOTE, _strings("METADATA_TREES", metadata, explain=True), "\n\n", _CHANGE_METADATA]
    return "".join(parts)


# ------------------------------------------------------------------ reading back


def _string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise LearntPolicyError(f"{what} is not a list of strings")
    return value


def _endpoints(value: object, what: str) -> set[tuple[str, int]]:
    found = set()
    for text in _string_list(value, what):
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise LearntPolicyError(f"{what} holds {text!r}, not ADDRESS:PORT")
        found.add((host.removeprefix("[").removesuffix("]"), int(port)))
    return found


def _resolved(value: object) -> set[tuple[str, int]]:
    found = set()
    for text in _string_list(value, "RESOLVED"):
        name, _, port = text.rpartition(":")
        if not name or not (port.isascii() and port.isdigit()):
            raise LearntPolicyError(f"RESOLVED holds {text!r}, not NAME:PORT")
        found.add((name, int(port)))
    return found


def read(source: str) -> Learned:
    """What a policy ``learn`` wrote holds, as a :class:`Learned` a new run adds to.

    Only literals are evaluated. The lists of the ``sandbox`` are taken as
    they stand (a tree narrowed by hand stays narrowed); raises
    :class:`LearntPolicyError` for a file ``learn`` did not write, or one
    whose lists are no longer literals.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise LearntPolicyError(f"syntax error on line {exc.lineno}: {exc.msg}") from exc
    values: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        try:
            if name == "sandbox" and isinstance(node.value, ast.Call):
                for keyword in node.value.keywords:
                    if keyword.arg is not None:
                        values[f"sandbox.{keyword.arg}"] = ast.literal_eval(keyword.value)
            elif name.isupper():
                values[name] = ast.literal_eval(node.value)
        except ValueError as exc:
            raise LearntPolicyError(f"{name} (line {node.lineno}) is not a literal any more") from exc
    commands = values.get("LEARNT_FROM")
    if not isinstance(commands, list) or not all(
        isinstance(command, list) and all(isinstance(word, str) for word in command) for command in commands
    ):
        raise LearntPolicyError("it has no LEARNT_FROM list of commands: not a policy libc-service learn wrote")
    calls = values.get("LEARNT_CALLS", 0)
    learned = Learned(
        read=set(_string_list(values.get("sandbox.allow_read", []), "allow_read")),
        modified=set(_string_list(values.get("sandbox.allow_write", []), "allow_write")),
        executed=set(_string_list(values.get("sandbox.allow_exec", []), "allow_exec")),
        changed_trees=set(_string_list(values.get("METADATA_TREES", []), "METADATA_TREES")),
        skipped=set(_string_list(values.get("NOT_GRANTED", []), "NOT_GRANTED")),
        names=set(_string_list(values.get("NAMES", []), "NAMES")),
        resolved=_resolved(values.get("RESOLVED", [])),
        nameservers=_string_list(values.get("NAMESERVERS", []), "NAMESERVERS"),
        commands=[list(command) for command in commands],
        calls=calls if isinstance(calls, int) else 0,
        host_network=values.get("sandbox.network") is True,
    )
    for name, field_name in ENDPOINT_LISTS.items():
        setattr(learned, field_name, _endpoints(values.get(name, []), name))
    return learned


def merge(into: Learned, runs: Sequence[Learned]) -> Learned:
    """``into`` with everything ``runs`` used added (counts summed, commands in order)."""
    for run in runs:
        for name in (
            "read",
            "listed",
            "written",
            "modified",
            "executed",
            "changed",
            "changed_trees",
            "skipped",
            "connects",
            "binds",
            "names",
            "resolved",
        ):
            getattr(into, name).update(getattr(run, name))
        into.nameservers = list(dict.fromkeys([*into.nameservers, *run.nameservers]))
        into.commands.extend(run.commands)
        into.calls += run.calls
        into.failed += run.failed
        into.unnamed += run.unnamed
        into.host_network = into.host_network or run.host_network
    return into
