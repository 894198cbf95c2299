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

The seccomp transport speaks to its listener (receive, ``ID_VALID``, a
response, ``ADDFD``) only through ``libc_service.seccomp.abi``, where the
kernel's structures are packed: a second ``ioctl`` elsewhere would pack
them a second time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import libc_service

import pytest

#: The package as imported: the source tree's, or the installed one where the tests run beside an install.
PACKAGE = Path(libc_service.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    """A module's path inside the package (``kernel/libc.py``)."""
    return path.relative_to(PACKAGE).as_posix()


#: The modules whose per-architecture tables are BPF filter data.
FILTER_TABLES = {"confinement/syscall_filter.py", "confinement/socket_filter.py", "seccomp/filter.py"}
#: The modules that may register descriptors with a loop or make a poll object.
READINESS = {"kernel/readiness.py"}
PERSISTENT_REGISTRATIONS = {"endpoints/master.py"}
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


def test_the_detectors_see_what_they_look_for() -> None:
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


@pytest.mark.parametrize(
    "module", [path for path in MODULES if path.name.startswith("notify_")], ids=lambda path: path.name
)
def test_one_seccomp_listener_interface(module: Path) -> None:
    calls = _calls_named(ast.parse(module.read_text()), "ioctl")
    if module.name == "notify_abi.py":
        assert calls, "notify_abi.py no longer makes the listener's ioctls"
        return
    assert calls == [], f"{module.name} makes an ioctl itself (lines {calls}): use libc_service.seccomp.abi"


def errno_wrappers(source: str) -> list[int]:
    """Lines of functions in ``source`` that read ctypes' errno and build an ``OSError`` themselves."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _calls_named(node, "get_errno") and _calls_named(node, "OSError"):
                found.append(node.lineno)
    return found


def test_the_errno_detector_sees_a_wrapper() -> None:
    wrapper = "def f():\n    code = ctypes.get_errno()\n    raise OSError(code, os.strerror(code))\n"
    assert errno_wrappers(wrapper) == [1]
    assert errno_wrappers("def f():\n    raise kernel.last_error()\n") == []


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_one_errno_to_oserror(module: Path) -> None:
    """A failed ctypes call becomes an ``OSError`` through ``kernel.libc.last_error`` only."""
    if _name(module) == "kernel/libc.py":
        assert errno_wrappers(module.read_text()), "kernel/libc.py no longer turns errno into OSError"
        return
    assert errno_wrappers(module.read_text()) == [], (
        f"{_name(module)} turns errno into OSError itself: use libc_service.kernel.libc.last_error"
    )
