"""Decisions the shim can make itself: a router's constant answers as a rule table.

Every arbitrated call used to be a round trip to the master, even when the
policy's answer was a constant: a router whose default is ``FORWARD`` and
whose handlers cover ``under("/srv")`` answers every call outside ``/srv``
without running any Python. :func:`compile_rules` proves, from the router's
public introspection (:meth:`Router.routes <libc_service.policy.router.Router.routes>`)
and the conditions' data, which calls a constant decides, and writes that as
a small table the shim applies with no round trip (``shim/rules.c``). Only
calls that may reach a Python handler still go to the master.

The table is conservative: for a call it either says what the router would
certainly say (forward, or fail with an errno) or *ask*. What it cannot
prove is asked:

- a function with a route whose conditions are not all ``under``,
  ``flags``, ``writing`` and their ``&``, ``|``, ``~`` (``to``, ``named``,
  a condition of the policy's own);
- a handler as the default;
- for a function whose rule looks at paths: a relative path whose
  directory the shim cannot name as the master does
  (the master reads its copy of the directory descriptor through
  ``/proc/self/fd``; the shim reads the same link through its own
  ``/proc``, and asks when there is none, as in a sandbox, or the
  directory was removed);
- an ``under`` root that is not valid UTF-8;
- only file-system functions (``open``, ``openat``, ``stat``, ``lstat``,
  ``access``, ``eaccess``, ``mkdir``, ``rmdir``, ``unlink``, ``rename``)
  and metadata changes (``chmod``, ``chown``, ``utimens`` and their
  descriptor forms); network and name calls are asked as before;
- for a descriptor form (``fchmod``, ``fchown``, ``futimens``): an
  ``under`` or ``relative`` condition (the router names the file behind
  the descriptor, which the table does not), and any call at all while the
  router is observed (a report carries no descriptor, and the observers'
  request needs one).

Paths are compared as the router compares them: lexically, made absolute
against their directory, empty and ``.`` components dropped and ``..``
folded (``posixpath.normpath``). Symlinks are not followed on either side:
a condition is routing, not the security check (see
:mod:`libc_service.policy.conditions`), and the shim reproduces the router's
decision, not the kernel's resolution.

The format (``docs/shim.md``), hex-encoded in ``LIBC_SERVICE_RULES``::

    "LCSR" version:u8 count:u8
    count x { function:u8 default:u8 errno:u16 length:u16 program[length] }

``default`` is 0 (ask), 1 (forward) or 2 (fail with ``errno``). The program
is postfix over a boolean stack: true means a handler may decide (ask the
master); false means the default decides. Operations: ``TRUE`` (1),
``FALSE`` (2), ``UNDER`` (3, ``length:u16 root``: every path of the call is
the root or beneath it), ``FLAGS`` (4, ``mask:u32``: the open flags on the
wire meet the mask), ``NOT`` (5), ``AND`` (6), ``OR`` (7), ``RELATIVE`` (8:
a path of the call is relative, :func:`relative`), ``UNDER_SET`` (9,
``size:u16 count:u16 offset:u16[count] roots``: every path of the call is
one of the roots or beneath one; the roots are concatenated, root *k*
starting at ``offset[k]`` of the concatenation, in strictly ascending byte
order, so the shim looks each ancestor of a path up by binary search: a
policy of ten thousand trees costs a call a few dozen comparisons, not ten
thousand). An empty program is false. All integers little-endian. A table
the shim finds malformed is ignored whole (every call is asked).

Size is bounded (:data:`MAX_RULES_BYTES`: the table travels in the
environment, where one string may not exceed 128 KiB). A policy whose
table would be larger is not given up: the roots of ``under`` conditions
that only ever lead to *ask* (not under a ``~``) are shortened to their
ancestors, fewer components at a time, until the table fits. A shortened
root covers more paths, so the table asks about more calls, never fewer,
and what it still decides is exactly what the router decides.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from libc_service.protocol.catalogue import (
    METADATA_FD_FUNCTIONS,
    METADATA_FUNCTIONS,
    MUTATING_FUNCTIONS,
    OPEN_FUNCTIONS,
)
from libc_service.policy.conditions import (
    Condition,
    AllOf,
    AnyOf,
    FlagsCondition,
    Negation,
    UnderCondition,
    WritingCondition,
)
from libc_service.protocol.outcomes import FORWARD, Errno
from libc_service.protocol.catalogue import FUNCTIONS
from libc_service.protocol.openflags import OPEN_FLAG_BITS

if TYPE_CHECKING:
    from libc_service.policy.router import Router

__all__ = [
    "ENV_REPORTS",
    "ENV_RULES",
    "MAX_RULES_BYTES",
    "RULED_FUNCTIONS",
    "Verdict",
    "compile_rules",
    "evaluate",
    "relative",
    "rules_value",
]

#: The environment variable that carries the table to the shim (hex).
ENV_RULES: Final = "LIBC_SERVICE_RULES"
#: Set to ``1`` when the shim reports the calls it decided (the router has observers), dropping a
#: report the socket has no room for; ``2``: waiting for room instead (``spawn(reports="wait")``).
ENV_REPORTS: Final = "LIBC_SERVICE_REPORTS"
#: The largest table the shim takes (shim/rules.c's RULES_BYTES): hex-encoded, it stays under the
#: kernel's 128 KiB bound on one environment string.
MAX_RULES_BYTES: Final = 49152
#: The functions the shim applies rules to (shim/fs.c, shim/meta.c).
RULED_FUNCTIONS: Final = (
    frozenset({"open", "openat", "stat", "lstat", "access", "eaccess", "mkdir", "rmdir", "unlink", "rename"})
    | METADATA_FUNCTIONS
)

MAGIC: Final = b"LCSR"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sBB")
ENTRY: Final = struct.Struct("<BBHH")

ASK, FORWARD_ACTION, DENY_ACTION = 0, 1, 2
OP_TRUE, OP_FALSE, OP_UNDER, OP_FLAGS, OP_NOT, OP_AND, OP_OR, OP_RELATIVE, OP_UNDER_SET = 1, 2, 3, 4, 5, 6, 7, 8, 9
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
#: The deepest stack a program may need (shim/rules.c's STACK_MAX).
STACK_MAX: Final = 32
#: How many components a root keeps as the compiler shortens roots to fit the table (None: all).
_CAPS: Final[tuple[int | None, ...]] = (None, 16, 12, 10, 8, 7, 6, 5, 4, 3, 2, 1)

_CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(FUNCTIONS, 1)}
_WRITE_MASK: Final = sum(
    OPEN_FLAG_BITS[name] for name in ("write_only", "read_write", "append", "create", "truncate", "temporary")
)

#: What a rule says about one call: ask the master, forward, or fail with an errno.
Verdict: TypeAlias = Literal["ask", "forward"] | int


@dataclass(frozen=True, repr=False)
class _Relative(Condition):
    functions = RULED_FUNCTIONS - METADATA_FD_FUNCTIONS

    def __call__(self, request: object) -> bool:
        names = ("path1", "path2") if getattr(request, "function", None) == "rename" else ("path",)
        return any(not str(getattr(request, name)).startswith("/") for name in names)

    def describe(self) -> str:
        return "a path of the call is relative"


def relative() -> Condition:
    """A file-system call with a relative path (either path, for rename).

    The shim evaluates it itself: a route on relative paths leaves the
    absolute ones to the rule table.
    """
    return _Relative()


class _Unprovable(Exception):
    """A condition the shim cannot evaluate exactly as the router does."""


class _TooLarge(_Unprovable):
    """A program that does not fit the table as it stands (shorter roots may make it fit)."""


@dataclass
class _Program:
    code: bytearray
    depth: int = 0
    peak: int = 0

    def push(self, op: bytes) -> None:
        self.code += op
        self.depth += 1
        self.peak = max(self.peak, self.depth)

    def combine(self, op: int) -> None:
        self.code.append(op)
        self.depth -= 1


def _compile_condition(
    condition: Condition, function: str, program: _Program, *, positive: bool = True, cap: int | None = None
) -> None:
    """Append ``condition``'s postfix code; ``positive``: true makes the program's answer *ask*."""
    if condition.functions is not None and function not in condition.functions:
        raise _Unprovable(f"{condition!r} does not apply to {function}")
    if function in METADATA_FD_FUNCTIONS and isinstance(condition, UnderCondition | _Relative):
        raise _Unprovable(f"{condition!r} names the file behind {function}'s descriptor")
    if isinstance(condition, UnderCondition):
        roots = _covering([root.encode("utf-8", "strict") for root in _checked_roots(condition.roots)])
        if positive and cap is not None:
            # A shorter root holds for more paths: where holding means "ask", that only asks more.
            roots = _covering([b"/" + b"/".join(root.split(b"/")[1 : cap + 1]) for root in roots])
        program.push(_under_op(roots))
    elif isinstance(condition, _Relative):
        program.push(bytes([OP_RELATIVE]))
    elif isinstance(condition, FlagsCondition):
        program.push(bytes([OP_FLAGS]) + _U32.pack(sum(OPEN_FLAG_BITS[name] for name in condition.names)))
    elif isinstance(condition, WritingCondition):
        if function in OPEN_FUNCTIONS:
            program.push(bytes([OP_FLAGS]) + _U32.pack(_WRITE_MASK))
        elif function in MUTATING_FUNCTIONS:
            program.push(bytes([OP_TRUE]))
        else:
            raise _Unprovable(f"writing() on {function}")
    elif isinstance(condition, Negation):
        _compile_condition(condition.part, function, program, positive=not positive, cap=cap)
        program.code.append(OP_NOT)
    elif isinstance(condition, AllOf | AnyOf):
        if not condition.parts:
            program.push(bytes([OP_TRUE if isinstance(condition, AllOf) else OP_FALSE]))
            return
        for index, part in enumerate(condition.parts):
            _compile_condition(part, function, program, positive=positive, cap=cap)
            if index:
                program.combine(OP_AND if isinstance(condition, AllOf) else OP_OR)
    else:
        raise _Unprovable(f"{condition!r} is not a condition the shim evaluates")


def _covering(roots: list[bytes]) -> list[bytes]:
    """The roots in ascending byte order, without those beneath another: the same set of paths."""
    if b"/" in roots:
        return [b"/"]
    kept: list[bytes] = []
    for root in sorted(set(roots)):
        # Sorted, a root's ancestors in the list come before it, and the last kept root is the only
        # candidate: anything kept between it and an ancestor would itself be beneath that ancestor.
        if kept and root.startswith(kept[-1] + b"/"):
            continue
        kept.append(root)
    return kept


def _under_op(roots: list[bytes]) -> bytes:
    """UNDER for one root; UNDER_SET (sorted, offsets first) for several."""
    if len(roots) == 1:
        return bytes([OP_UNDER]) + _U16.pack(len(roots[0])) + roots[0]
    offsets, at = [], 0
    for root in roots:
        offsets.append(at)
        at += len(root)
    if 2 + 2 * len(roots) + at > min(0xFFFF, MAX_RULES_BYTES):
        raise _TooLarge(f"{len(roots)} roots do not fit one operation")
    operand = _U16.pack(len(roots)) + struct.pack(f"<{len(roots)}H", *offsets) + b"".join(roots)
    return bytes([OP_UNDER_SET]) + _U16.pack(len(operand)) + operand


def _checked_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    for root in roots:
        if not root.startswith("/") or "\0" in root or root != "/" + posixpath.normpath(root).lstrip("/"):
            raise _Unprovable(f"root {root!r} is not absolute and normal")
        try:
            root.encode("utf-8", "strict")
        except UnicodeEncodeError:
            raise _Unprovable(f"root {root!r} is not UTF-8") from None
    return roots


def _function_program(router: Router, function: str, cap: int | None = None) -> bytes | None:
    """The program that says "a handler may decide" for ``function``, or None (always ask).

    ``cap``: positive ``under`` roots keep at most that many components.
    """
    program = _Program(bytearray())
    routes = router.routes().for_function(function)
    for index, route in enumerate(routes):
        if not route.conditions:
            return None  # a handler decides every call of the function: nothing to gain
        for number, condition in enumerate(route.conditions):
            _compile_condition(condition, function, program, cap=cap)
            if number:
                program.combine(OP_AND)
        if index:
            program.combine(OP_OR)
    if program.peak > STACK_MAX:
        raise _Unprovable(f"{function}: conditions nest deeper than {STACK_MAX}")
    if len(program.code) > min(0xFFFF, MAX_RULES_BYTES):
        raise _TooLarge(f"{function}: a program of {len(program.code)} bytes")
    return bytes(program.code)


def compile_rules(router: Router, *, reports: bool = False) -> bytes | None:
    """The router's provable constant decisions as the shim's rule table, or None (nothing to compile).

    None when the router has observers and ``reports`` is false (observers
    must see every call: only with reports does the shim tell the master
    about the calls it decided), when the default is a handler, or when
    no function can be decided without the master.
    """
    if _observed(router) and not reports:
        return None
    default = router.routes().default
    if default is FORWARD:
        action, code = FORWARD_ACTION, 0
    elif isinstance(default, Errno):
        action, code = DENY_ACTION, default.errno
    else:
        return None
    observed = _observed(router)
    functions = [
        function
        for function in sorted(RULED_FUNCTIONS, key=_CODE.__getitem__)
        # A descriptor form's report could not carry the descriptor the observers' request holds.
        if not (observed and function in METADATA_FD_FUNCTIONS)
    ]
    for cap in _CAPS:
        entries: dict[str, bytes] = {}
        too_large = False
        for function in functions:
            try:
                program = _function_program(router, function, cap)
            except _TooLarge:
                too_large = True
                continue
            except (_Unprovable, UnicodeEncodeError):
                continue
            if program is not None:
                entries[function] = ENTRY.pack(_CODE[function], action, code, len(program)) + program
        if not too_large and HEADER.size + sum(map(len, entries.values())) <= MAX_RULES_BYTES:
            break
    # Still too large with every positive root at one component: the largest programs are asked.
    while entries and HEADER.size + sum(map(len, entries.values())) > MAX_RULES_BYTES:
        del entries[max(entries, key=lambda function: len(entries[function]))]
    if not entries:
        return None
    return HEADER.pack(MAGIC, VERSION, len(entries)) + b"".join(entries.values())


def rules_value(router: Router, *, reports: bool = False) -> str | None:
    """``LIBC_SERVICE_RULES`` for ``router``, or None when there is nothing the shim can decide."""
    table = compile_rules(router, reports=reports)
    return table.hex() if table is not None else None


def _observed(router: Router) -> bool:
    return router.observed


# ------------------------------------------------------------------ reference


def evaluate(
    table: bytes,
    function: str,
    flags: int,
    path1: bytes | None,
    path2: bytes | None = None,
    *,
    directory1: bytes | None = None,
    directory2: bytes | None = None,
) -> Verdict:
    """What the shim does with a call under ``table``: the specification shim/rules.c implements.

    ``flags`` are the open flags as the wire carries them (0 for other
    functions); ``path1`` is None for a descriptor call (``fchmod``),
    ``path2`` is rename's second path. ``directory1`` and
    ``directory2`` are the directories relative paths are relative to, as
    the shim names them (None: it cannot).
    """
    magic, version, count = HEADER.unpack_from(table)
    if magic != MAGIC or version != VERSION:
        return "ask"
    offset = HEADER.size
    for _ in range(count):
        code, action, errno, length = ENTRY.unpack_from(table, offset)
        offset += ENTRY.size
        program = table[offset : offset + length]
        offset += length
        if code != _CODE[function]:
            continue
        if path1 is None:  # a descriptor: nothing the table can name
            if not {OP_UNDER, OP_UNDER_SET, OP_RELATIVE}.isdisjoint(_ops(program)):
                return "ask"
            paths: list[bytes] = []
        else:
            paths = [path1] if path2 is None else [path1, path2]
        directories = [directory1, directory2]
        normal = [_normal(path, directories[n]) for n, path in enumerate(paths)]
        if not {OP_UNDER, OP_UNDER_SET}.isdisjoint(_ops(program)) and any(path is None for path in normal):
            return "ask"
        if _run(program, flags, [path for path in normal if path is not None], paths):
            return "ask"
        return "forward" if action == FORWARD_ACTION else errno if action == DENY_ACTION else "ask"
    return "ask"


def _normal(path: bytes, directory: bytes | None) -> bytes | None:
    """The path as the router compares it, or None when the shim asks instead."""
    if not path.startswith(b"/"):
        if directory is None or not directory.startswith(b"/") or directory.endswith(b" (deleted)"):
            return None
        path = directory + b"/" + path
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part == b"..":
            del parts[-1:]
        elif part and part != b".":
            parts.append(part)
    return b"/" + b"/".join(parts)


def _ops(program: bytes) -> list[int]:
    ops, offset = [], 0
    while offset < len(program):
        op = program[offset]
        ops.append(op)
        offset += 1
        if op in (OP_UNDER, OP_UNDER_SET):
            offset += 2 + _U16.unpack_from(program, offset)[0]
        elif op == OP_FLAGS:
            offset += 4
    return ops


def _inside(path: bytes, root: bytes) -> bool:
    return root == b"/" or path == root or path.startswith(root + b"/")


def _ancestors(path: bytes) -> list[bytes]:
    """The path and every prefix of it that ends before a "/" (so "/" too): the roots it lies in."""
    return [b"/"] + [path[:end] for end in range(1, len(path) + 1) if end == len(path) or path[end] == 47]


def _run(program: bytes, flags: int, paths: list[bytes], raw: list[bytes]) -> bool:
    stack: list[bool] = []
    offset = 0
    binary: dict[int, Callable[[bool, bool], bool]] = {
        OP_AND: lambda a, b: a and b,
        OP_OR: lambda a, b: a or b,
    }
    while offset < len(program):
        op = program[offset]
        offset += 1
        if op == OP_TRUE:
            stack.append(True)
        elif op == OP_FALSE:
            stack.append(False)
        elif op == OP_UNDER:
            length = _U16.unpack_from(program, offset)[0]
            root = program[offset + 2 : offset + 2 + length]
            offset += 2 + length
            stack.append(all(_inside(path, root) for path in paths))
        elif op == OP_UNDER_SET:
            size, count = _U16.unpack_from(program, offset)[0], _U16.unpack_from(program, offset + 2)[0]
            offsets = struct.unpack_from(f"<{count}H", program, offset + 4)
            blob = program[offset + 4 + 2 * count : offset + 2 + size]
            roots = {blob[start:end] for start, end in zip(offsets, (*offsets[1:], len(blob)))}
            offset += 2 + size
            stack.append(all(any(prefix in roots for prefix in _ancestors(path)) for path in paths))
        elif op == OP_FLAGS:
            stack.append(bool(flags & _U32.unpack_from(program, offset)[0]))
            offset += 4
        elif op == OP_RELATIVE:
            stack.append(any(not path.startswith(b"/") for path in raw))
        elif op == OP_NOT:
            stack.append(not stack.pop())
        else:
            right, left = stack.pop(), stack.pop()
            stack.append(binary[op](left, right))
    return bool(stack) and stack[-1]
