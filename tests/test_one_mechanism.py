"""Each kernel mechanism the package uses has one source.

The libc handle, the syscall numbers the master calls, and the way from a
failed call's errno to ``OSError`` live in ``libc_service.kernel``; a second
``CDLL`` or a second number table drifts from the first (a number fixed in
one copy and not in the other is a call to the wrong system call). The
seccomp filters keep their per-architecture tables: those are numbers a BPF
program compares for a chosen architecture, not numbers this process calls.

Waiting until a descriptor is readable or writable lives in
``libc_service.readiness``: a hand-rolled wait that forgets to unregister on
timeout or cancellation leaves the loop watching a number the next ``open``
may reuse. The master's channel keeps its own registrations: it arms one
reader and one writer per loop for the session's life (not one per wait),
which is what keeps a receive to no ``epoll_ctl`` at all.

A handler's outcome becomes an answer in ``libc_service.outcomes``, and a
policy's mistake is logged there, with one "policy bug" line: a second copy
of the mapping drifts from the first (what one transport fails closed, the
other would send). The seccomp transport still maps its outcomes itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import libc_service

import pytest

#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
MODULES = sorted(PACKAGE.glob("*.py"))
#: The modules whose per-architecture tables are BPF filter data.
FILTER_TABLES = {"syscall_filter.py", "socket_filter.py", "notify_filter.py"}
#: The modules that may register descriptors with a loop or make a poll object.
READINESS = {"readiness.py"}
PERSISTENT_REGISTRATIONS = {"master.py"}
#: The module whose one log line says "policy bug", and the modules that still keep a mapping of their own.
POLICY_BUG_LOG = "outcomes.py"
OWN_OUTCOME_MAPPING = {"notify.py"}
ARCHITECTURES = {"x86_64", "aarch64", "i386", "i686", "armv7l", "riscv64"}


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


def policy_bug_lines(source: str) -> list[int]:
    """Lines of ``source`` with a string that starts a "policy bug" log line."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("policy bug")
    ]


def test_the_detectors_see_what_they_look_for() -> None:
    assert policy_bug_lines('logger.error(\n    "policy bug: handler %s", route)\n') == [2]
    assert policy_bug_lines('"""A policy bug fails the call."""\n') == []
    assert select_polls("import select\np = select.poll()\n") == [2]
    assert _calls_named(ast.parse("loop.add_reader(fd, wake)\nloop.add_writer(fd, wake)\n"), "add_reader") == [1]
    assert select_polls("process.poll()\n") == []
    assert cdll_calls("import ctypes\nlibc = ctypes.CDLL(None)\n") == [2]
    assert cdll_calls("from ctypes import CDLL\nlibc = CDLL('libc.so.6')\n") == [2]
    assert architecture_tables("N = {'x86_64': {'openat2': 437}}\n") == [1]
    assert architecture_tables("N = {'openat2': 437}\n") == []


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_one_libc_handle(module: Path) -> None:
    if module.name == "kernel.py":
        assert cdll_calls(module.read_text()), "kernel.py no longer opens libc"
        return
    assert cdll_calls(module.read_text()) == [], f"{module.name} opens libc itself: use libc_service.kernel.libc"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_one_syscall_number_table(module: Path) -> None:
    if module.name == "kernel.py" or module.name in FILTER_TABLES:
        return
    assert architecture_tables(module.read_text()) == [], (
        f"{module.name} keeps its own per-architecture table: use libc_service.kernel.SYSCALLS"
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_one_readiness_helper(module: Path) -> None:
    if module.name in READINESS:
        return
    source = module.read_text()
    tree = ast.parse(source)
    found = select_polls(source)
    if module.name not in PERSISTENT_REGISTRATIONS:
        found += _calls_named(tree, "add_reader") + _calls_named(tree, "add_writer")
    assert found == [], f"{module.name} waits on a descriptor itself (lines {found}): use libc_service.readiness"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_one_policy_bug_log_line(module: Path) -> None:
    if module.name in OWN_OUTCOME_MAPPING:
        return
    found = policy_bug_lines(module.read_text())
    if module.name == POLICY_BUG_LOG:
        assert len(found) == 1, f"{module.name} logs a policy bug on lines {found}: once is the rule"
    else:
        assert found == [], f"{module.name} logs a policy bug itself (lines {found}): use Router.answer"
