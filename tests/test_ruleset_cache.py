"""A ruleset kept across spawns grants what its paths lead to now, never what they led to before.

Each test spawns a program that reads with a raw ``openat`` (no shim, so
Landlock alone answers) under the same :class:`Sandbox` before and after a
granted path is made to lead elsewhere; the second spawn must see the new
object granted and the old one refused, as a ruleset built afresh would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from shimtools import c_program, needs_shim  # noqa: F401 - c_program is a fixture

from libc_service import FORWARD, Router, Sandbox, spawn
from libc_service.confinement.sandbox import network_namespaces_available

_MISSING = Sandbox.available() or network_namespaces_available()
pytestmark = [
    pytest.mark.slow,
    needs_shim,
    pytest.mark.skipif(_MISSING is not None, reason=f"no sandbox here: {_MISSING}"),
]


async def raw_read(program: Path, path: Path, sandbox: Sandbox) -> str:
    """What tests/c/raw_read prints for ``path`` under ``sandbox``: the file, or the errno's name."""
    async with spawn(
        [str(program), str(path)],
        Router(default=FORWARD),
        sandbox=sandbox,
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode in (0, 1), err
    return out.decode()


@pytest.fixture
def reader(c_program: Callable[[str], Path]) -> Path:
    return c_program("raw_read")


async def test_a_granted_tree_replaced_between_spawns_is_granted_anew(reader: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("old\n")
    sandbox = Sandbox(allow_read=[tree])
    assert await raw_read(reader, tree / "a", sandbox) == "old\n"
    assert await raw_read(reader, tree / "a", sandbox) == "old\n"  # the kept ruleset, unchanged tree
    tree.rename(tmp_path / "moved")
    tree.mkdir()
    (tree / "b").write_text("new\n")
    assert await raw_read(reader, tree / "b", sandbox) == "new\n"
    assert await raw_read(reader, tmp_path / "moved" / "a", sandbox) == "EACCES\n"


async def test_a_granted_symlink_retargeted_between_spawns_grants_its_new_target(reader: Path, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(f"{name}\n")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "one")
    sandbox = Sandbox(allow_read=[link])
    assert await raw_read(reader, link / "f", sandbox) == "one\n"
    assert await raw_read(reader, tmp_path / "two" / "f", sandbox) == "EACCES\n"
    link.unlink()
    link.symlink_to(tmp_path / "two")
    assert await raw_read(reader, link / "f", sandbox) == "two\n"
    assert await raw_read(reader, tmp_path / "one" / "f", sandbox) == "EACCES\n"


async def test_a_granted_file_replaced_by_rename_is_granted_anew(reader: Path, tmp_path: Path) -> None:
    """A file rule (not a tree): replaced atomically, as editors and package managers do."""
    target = tmp_path / "granted.txt"
    target.write_text("first\n")
    sandbox = Sandbox(allow_read=[target])
    assert await raw_read(reader, target, sandbox) == "first\n"
    old = tmp_path / "old.txt"
    os.link(target, old)  # the first file stays reachable under another name
    replacement = tmp_path / "replacement.txt"
    replacement.write_text("second\n")
    replacement.rename(target)
    assert await raw_read(reader, target, sandbox) == "second\n"
    assert await raw_read(reader, old, sandbox) == "EACCES\n"
