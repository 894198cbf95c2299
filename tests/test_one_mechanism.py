"""Each kernel mechanism the package uses has one source.

The libc handle, the syscall numbers the master calls, and the way from a
failed call's errno to ``OSError`` live in ``libc_service.kernel.libc``; a second
``CDLL`` or a second number table drifts from the first (a number fixed in
one copy and not in the other is a call to the wrong system call). The
seccomp filters keep their per-architecture tables: those are numbers a BPF
program compares for a chosen architecture, not numbers this process calls.

Waiting until a descriptor is readable or writable lives in
``libc_service.kernel.readiness``: a hand-rolled wait that forgets to unregister on
timeout or cancellation leaves the loop watching a number the next ``open``
may reuse. The master's channel keeps its own registrations: it arms one
reader and one writer per loop for the session's life (not one per wait),
which is what keeps a receive to no ``epoll_ctl`` at all.

The open flags — each name of the vocabulary, its bit on the wire, its
``O_*`` value — are tabled once, in ``libc_service.protocol.openflags``: a flag added
to one copy and not another is a flag a transport silently drops.

A handler's outcome becomes an answer in ``libc_service.protocol.outcomes``,
and a policy's mistake is logged there, with one "policy bug" line: a second
copy of the mapping drifts from the first (what one transport fails closed,
the other would send).
"""

from __future__ import annotations

import ast
from pathlib import Path

import libc_service
from libc_service.protocol.catalogue import OPENAT_FLAGS

import pytest

#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    """A module's path inside the package (``kernel/libc.py``)."""
    if PACKAGE in path.parents:
        return path.relative_to(PACKAGE).as_posix()
    return f"{path.parent.name}/{path.name}"


#: The modules whose per-architecture tables are BPF filter data.
FILTER_TABLES = {"confinement/syscall_filter.py", "confinement/socket_filter.py", "seccomp/filter.py"}
#: The modules that may register descriptors with a loop or make a poll object.
READINESS = {"kernel/readiness.py"}
PERSISTENT_REGISTRATIONS = {"endpoints/master.py"}
#: The module whose one log line says "policy bug".
POLICY_BUG_LOG = "protocol/outcomes.py"
ARCHITECTURES = {"x86_64", "aarch64", "i386", "i686", "armv7l", "riscv64"}
#: The module that tables the open flags.
OPEN_FLAG_TABLE = "protocol/openflags.py"
#: The benchmarks' masters open files as a policy would: they use the table too.
BENCH = sorted((Path(__file__).resolve().parent.parent / "bench").glob("*.py"))


def _calls_named(tree: ast.AST, name: str) -> list[int]:
    """Lines where ``name(...)`` or ``something.name(...)`` is called."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called == name:
                lines.append(node.lineno)
    return lines


def cdll_calls(source: str) -> list[int]:
    """Lines of ``source`` that open a C library with ctypes."""
    tree = ast.parse(source)
    return _calls_named(tree, "CDLL") + _calls_named(tree, "LoadLibrary")


def architecture_tables(source: str) -> list[int]:
    """Lines of ``source`` with a dict keyed by an architecture's name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict) and any(
            isinstance(key, ast.Constant) and key.value in ARCHITECTURES for key in node.keys
        ):
            lines.append(node.lineno)
    return lines


def select_polls(source: str) -> list[int]:
    """Lines of ``source`` that make a ``select.poll`` or ``select.epoll`` object."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("poll", "epoll")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "select"
    ]


def _numeric(node: ast.expr) -> bool:
    """Whether ``node`` may be a flag's value: a number, a name, ``os.O_*``, ``getattr(os, ...)``, arithmetic, a tuple of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool)
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "getattr"
    if isinstance(node, ast.Tuple):  # (wire bit, value)
        return bool(node.elts) and all(_numeric(item) for item in node.elts)
    return isinstance(node, ast.Name | ast.Attribute | ast.BinOp)


def _flag_pair(key: ast.expr | None, value: ast.expr) -> bool:
    """Whether ``key``/``value`` pair an open flag's name with a value, in either order."""
    for name, number in ((key, value), (value, key)):
        if isinstance(name, ast.Constant) and name.value in OPENAT_FLAGS and number is not None and _numeric(number):
            return True
    return False


def open_flag_tables(source: str) -> list[int]:
    """Lines of ``source`` with a table of open flags: a dict, or a sequence of pairs, naming flags with values."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            pairs = sum(_flag_pair(key, value) for key, value in zip(node.keys, node.values))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            pairs = sum(
                isinstance(item, ast.Tuple) and len(item.elts) == 2 and _flag_pair(*item.elts) for item in node.elts
            )
        else:
            continue
        if pairs >= 2:
            lines.append(node.lineno)
    return lines


def test_the_detectors_see_what_they_look_for() -> None:
    assert open_flag_tables("F = {'append': os.O_APPEND, 'create': os.O_CREAT}\n") == [1]
    assert open_flag_tables("F = {'temporary': getattr(os, 'O_TMPFILE', 0), 'path': 0o10000000}\n") == [1]
    assert open_flag_tables("F = ((0o200, 'exclusive'), (_O_CREAT, 'create'))\n") == [1]
    assert open_flag_tables("F = {'append': (1 << 3, os.O_APPEND), 'create': (1 << 4, os.O_CREAT)}\n") == [1]
    assert open_flag_tables("W = frozenset({'append', 'create'})\nA = {'r': 4, 'w': 2}\n") == []
    assert open_flag_tables("f = {'path': decode(raw), 'no_follow': bool(flags & 1)}\n") == []
    assert select_polls("import select\np = select.poll()\n") == [2]
    assert _calls_named(ast.parse("loop.add_reader(fd, wake)\nloop.add_writer(fd, wake)\n"), "add_reader") == [1]
    assert select_polls("process.poll()\n") == []
    assert cdll_calls("import ctypes\nlibc = ctypes.CDLL(None)\n") == [2]
    assert cdll_calls("from ctypes import CDLL\nlibc = CDLL('libc.so.6')\n") == [2]
    assert architecture_tables("N = {'x86_64': {'openat2': 437}}\n") == [1]
    assert architecture_tables("N = {'openat2': 437}\n") == []


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_libc_handle(module: Path) -> None:
    if _name(module) == "kernel/libc.py":
        assert cdll_calls(module.read_text()), "kernel/libc.py no longer opens libc"
        return
    assert cdll_calls(module.read_text()) == [], f"{_name(module)} opens libc itself: use libc_service.kernel.libc"


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_syscall_number_table(module: Path) -> None:
    if _name(module) == "kernel/libc.py" or _name(module) in FILTER_TABLES:
        return
    assert architecture_tables(module.read_text()) == [], (
        f"{_name(module)} keeps its own per-architecture table: use libc_service.kernel.libc.SYSCALLS"
    )


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_readiness_helper(module: Path) -> None:
    if _name(module) in READINESS:
        return
    source = module.read_text()
    tree = ast.parse(source)
    found = select_polls(source)
    if _name(module) not in PERSISTENT_REGISTRATIONS:
        found += _calls_named(tree, "add_reader") + _calls_named(tree, "add_writer")
    assert found == [], f"{module.name} waits on a descriptor itself (lines {found}): use libc_service.kernel.readiness"


@pytest.mark.parametrize("module", MODULES + BENCH, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_one_open_flag_table(module: Path) -> None:
    if _name(module) == OPEN_FLAG_TABLE:
        assert open_flag_tables(module.read_text()), "openflags.py no longer tables the open flags"
        return
    assert open_flag_tables(module.read_text()) == [], (
        f"{_name(module)} keeps its own open-flag table: use libc_service.protocol.openflags"
    )


def construct_bypasses(source: str) -> list[int]:
    """Lines of ``source`` that build a pydantic model without validation."""
    lines = _calls_named(ast.parse(source), "model_construct")
    lines += [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and node.value == "__pydantic_fields_set__"
    ]
    return sorted(lines)


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_way_to_build_a_model_without_validation(module: Path) -> None:
    """Requests from slave bytes skip pydantic's validation in ``protocol/construct.py`` only.

    Two copies drifted before (one checked root models, the other default
    factories): a model the bypass must not build would be built by one.
    """
    if _name(module) == "protocol/construct.py":
        assert construct_bypasses(module.read_text())
        return
    # Replies (Stat, AddrInfo) built from the kernel's or the master's own values, never a slave's bytes.
    allowed = {"protocol/wire_replies.py", "acting/statx.py"}
    if _name(module) in allowed:
        return
    assert construct_bypasses(module.read_text()) == [], f"{_name(module)} builds models itself: use protocol.construct"


def policy_bug_lines(source: str) -> list[int]:
    """Lines of ``source`` with a string that starts a "policy bug" log line."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("policy bug")
    ]


def test_the_policy_bug_detector_sees_a_log_line() -> None:
    assert policy_bug_lines('logger.error(\n    "policy bug: handler %s", route)\n') == [2]
    assert policy_bug_lines('"""A policy bug fails the call."""\n') == []


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_policy_bug_log_line(module: Path) -> None:
    found = policy_bug_lines(module.read_text())
    if _name(module) == POLICY_BUG_LOG:
        assert len(found) == 1, f"{_name(module)} logs a policy bug on lines {found}: once is the rule"
    else:
        assert found == [], f"{_name(module)} logs a policy bug itself (lines {found}): use Router.answer"
