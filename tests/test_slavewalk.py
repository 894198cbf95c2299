"""The slave's walk resolves any path text as the kernel does.

A tree of directories, files and symlinks (relative, absolute, dangling,
looping, to ``..``, with trailing slashes) and path texts drawn from its
names: ``slavewalk``'s name-by-name walk and its ``openat2`` fast paths must
give exactly the object (device and inode) or the errno that the kernel's
own ``open`` gives this process for the same text and flags. Away from
``/proc`` the walking process is the slave, so native is the reference.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import libc_service.acting.slavewalk  # noqa: F401 - the module itself, for its walk

walk_module = sys.modules["libc_service.acting.slavewalk"]

NAMES = ["d", "f", "l-d", "l-f", "l-abs", "l-up", "l-dangling", "l-loop", "l-slash", "l-chain", "missing", ".", ".."]
FLAGS = [
    os.O_PATH,
    os.O_PATH | os.O_NOFOLLOW,
    os.O_RDONLY,
    os.O_RDONLY | os.O_DIRECTORY,
    os.O_RDONLY | os.O_NOFOLLOW,
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    top = tmp_path_factory.mktemp("walk")
    (top / "d" / "d").mkdir(parents=True)
    (top / "f").write_text("f")
    (top / "d" / "f").write_text("d/f")
    (top / "d" / "d" / "f").write_text("d/d/f")
    for where in (top, top / "d"):
        (where / "l-d").symlink_to("d")
        (where / "l-f").symlink_to("f")
        (where / "l-abs").symlink_to(top / "d")
        (where / "l-up").symlink_to("..")
        (where / "l-dangling").symlink_to("nowhere")
        (where / "l-loop").symlink_to("l-loop")
        (where / "l-slash").symlink_to("d/")
        (where / "l-chain").symlink_to("l-d/l-up/d")
    yield top


def _native(dirfd: int, text: str, flags: int) -> tuple[str, object]:
    try:
        fd = os.open(text, flags | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        return "errno", errno.errorcode[exc.errno or 0]
    try:
        info = os.fstat(fd)
        return "object", (info.st_dev, info.st_ino)
    finally:
        os.close(fd)


def _through(opener: object, dirfd: int, text: str, flags: int) -> tuple[str, object]:
    try:
        fd = opener(dirfd, text, flags | os.O_CLOEXEC)  # type: ignore[operator]
    except OSError as exc:
        return "errno", errno.errorcode[exc.errno or 0]
    try:
        info = os.fstat(fd)
        return "object", (info.st_dev, info.st_ino)
    finally:
        os.close(fd)


def _fast(dirfd: int, text: str, flags: int) -> int:
    pid, tid = os.getpid(), threading.get_native_id()
    return int(walk_module.open_as_slave(dirfd, text, flags, 0, 0, pid, tid))


def _walked(dirfd: int, text: str, flags: int) -> int:
    walk = walk_module._Walk(os.getpid(), threading.get_native_id(), 0)
    try:
        return int(walk.open(dirfd, text, flags, 0))
    finally:
        walk.close()


paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=5).flatmap(
    lambda parts: st.tuples(st.just(parts), st.booleans(), st.booleans())
)


@settings(max_examples=300)
@given(path=paths, flags=st.sampled_from(FLAGS))
def test_the_walk_is_the_kernels(tree: Path, path: tuple[list[str], bool, bool], flags: int) -> None:
    parts, absolute, trailing = path
    text = "/".join(parts) + ("/" if trailing else "")
    if absolute:
        text = f"{tree}/{text}"
    dirfd = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        native = _native(dirfd, text, flags)
        assert _through(_fast, dirfd, text, flags) == native, text
        assert _through(_walked, dirfd, text, flags) == native, text
    finally:
        os.close(dirfd)


@pytest.mark.parametrize("text", ["l-dangling", "d/l-dangling", "l-d/new", "l-slash/new", "new/", "l-f", "f"])
@pytest.mark.parametrize("exclusive", [False, True])
def test_creating_through_links_is_the_kernels(tmp_path: Path, text: str, exclusive: bool) -> None:
    """O_CREAT (and O_EXCL, which never follows a final link) made by the walk, as by the kernel."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
    results = []
    for name, opener in (("native", None), ("walked", _walked)):
        top = tmp_path / name
        (top / "d").mkdir(parents=True)
        (top / "f").write_text("f")
        (top / "l-dangling").symlink_to("made")
        (top / "d" / "l-dangling").symlink_to("../made-too")
        (top / "l-d").symlink_to("d")
        (top / "l-slash").symlink_to("d/")
        (top / "l-f").symlink_to("f")
        dirfd = os.open(top, os.O_PATH | os.O_DIRECTORY)
        try:
            if opener is None:
                outcome = _native(dirfd, text, flags)
            else:
                outcome = _through(opener, dirfd, text, flags)
        finally:
            os.close(dirfd)
        made = sorted(str(path.relative_to(top)) for path in top.rglob("*"))
        results.append((outcome[0], outcome[1] if outcome[0] == "errno" else None, made))
    assert results[0] == results[1]
