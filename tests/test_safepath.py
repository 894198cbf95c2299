"""safepath: a handler decides on the object the kernel resolved beneath a root.

Every scenario runs twice: with ``openat2(RESOLVE_BENEATH)`` and with the
fallback walker (forced by setting ``safepath_beneath._have_openat2 = False``),
which must refuse and allow exactly the same things.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from conftest import FdCount

from libc_service.acting import safepath

from libc_service.acting import beneath as safepath_beneath
from libc_service.protocol.requests import (
    LstatRequest,
    MkdirRequest,
    OpenatRequest,
    OpenRequest,
    RenameRequest,
    StatRequest,
    UnlinkRequest,
)
from libc_service.acting.safepath import (
    EscapeError,
    open_beneath,
    open_flags,
    parent_beneath,
    relative_to_root,
    resolve,
    stat_beneath,
)

ME = {"pid": os.getpid(), "tid": threading.get_native_id()}


@pytest.fixture(params=["openat2", "walker"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which resolver safepath uses: the kernel's openat2 or the fallback walker."""
    if request.param == "walker":
        monkeypatch.setattr(safepath_beneath, "_have_openat2", False)

        def no_openat2(*args: object) -> int:
            raise AssertionError("openat2 used although the walker was forced")

        monkeypatch.setattr(safepath_beneath, "raw_openat2", no_openat2)
    else:
        monkeypatch.setattr(safepath_beneath, "_have_openat2", None)
        probe = os.open("/", os.O_PATH)
        try:
            if safepath_beneath._OPENAT2 is None or not safepath_beneath._probe_openat2(probe):
                pytest.skip("this kernel has no openat2 (Linux < 5.6 or refused by seccomp)")
        finally:
            os.close(probe)
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (the policy's tree) next to outside/ (what must stay unreachable)::

    root/inside.txt          "inside"
    root/sub/deep.txt        "deep"
    root/sub/up_link      -> ../inside.txt         (in the root, through ..)
    root/good_link        -> inside.txt
    root/abs_link         -> <tmp>/outside/secret.txt
    root/rel_link         -> ../outside/secret.txt
    root/dir_link         -> ../outside
    root/dangling_out     -> ../outside/created.txt
    root/loop             -> loop
    outside/secret.txt       "secret"
    """
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "inside.txt").write_text("inside")
    (root / "sub" / "deep.txt").write_text("deep")
    (outside / "secret.txt").write_text("secret")
    (root / "sub" / "up_link").symlink_to("../inside.txt")
    (root / "good_link").symlink_to("inside.txt")
    (root / "abs_link").symlink_to(outside / "secret.txt")
    (root / "rel_link").symlink_to("../outside/secret.txt")
    (root / "dir_link").symlink_to("../outside")
    (root / "dangling_out").symlink_to("../outside/created.txt")
    (root / "loop").symlink_to("loop")
    return tmp_path


def opening(path: str | Path, *flags: str, dirfd: int | None = None, mode: int | None = None) -> OpenatRequest:
    # The exact text, as the wire gives it (PurePosixPath(text) would normalise it).
    return OpenatRequest(path=os.fspath(path), flags=flags or ("read_only",), dirfd=dirfd, mode=mode, **ME)


def read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode()
    finally:
        os.close(fd)


# ---------------------------------------------------------------- opening


def test_a_file_beneath_the_root_opens(tree: Path, resolver: str) -> None:
    root = tree / "root"
    assert read_fd(open_beneath(root, opening(root / "inside.txt"))) == "inside"
    assert read_fd(open_beneath(root, opening(root / "sub" / "deep.txt"))) == "deep"


def test_the_descriptor_is_close_on_exec_in_the_master(tree: Path, resolver: str) -> None:
    root = tree / "root"
    fd = open_beneath(root, opening(root / "inside.txt"))
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["abs_link", "rel_link", "dir_link/secret.txt"])
def test_a_symlink_out_of_the_root_is_an_escape(tree: Path, resolver: str, name: str, fd_count: FdCount) -> None:
    root = tree / "root"
    before = fd_count.snapshot()
    with pytest.raises(EscapeError) as caught:
        open_beneath(root, opening(root / name))
    assert caught.value.errno == errno.EACCES
    fd_count.assert_unchanged(before)


def test_dotdot_out_of_the_root_is_an_escape(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(EscapeError):
        open_beneath(root, opening(f"{root}/sub/../../outside/secret.txt"))


def test_dotdot_from_the_slaves_directory_is_an_escape(tree: Path, resolver: str) -> None:
    root = tree / "root"
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(EscapeError):
            open_beneath(root, opening("../outside/secret.txt", dirfd=dirfd))
    finally:
        os.close(dirfd)


def test_dotdot_that_stays_inside_is_fine(tree: Path, resolver: str) -> None:
    root = tree / "root"
    sub = os.open(root / "sub", os.O_PATH | os.O_DIRECTORY)
    try:
        assert read_fd(open_beneath(root, opening("../inside.txt", dirfd=sub))) == "inside"
    finally:
        os.close(sub)


@pytest.mark.parametrize("name", ["good_link", "sub/up_link"])
def test_symlinks_that_stay_inside_are_followed(tree: Path, resolver: str, name: str) -> None:
    root = tree / "root"
    assert read_fd(open_beneath(root, opening(root / name))) == "inside"


def test_no_follow_refuses_a_final_symlink(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(OSError) as caught:
        open_beneath(root, opening(root / "good_link", "read_only", "no_follow"))
    assert caught.value.errno == errno.ELOOP


def test_the_slaves_resolve_no_symlinks_is_kept(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(OSError) as caught:
        open_beneath(root, opening(root / "sub" / "up_link", "read_only", "resolve_no_symlinks"))
    assert caught.value.errno == errno.ELOOP


def test_a_symlink_loop_is_eloop(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(OSError) as caught:
        open_beneath(root, opening(root / "loop"))
    assert caught.value.errno == errno.ELOOP


def test_create_makes_the_file_inside_with_the_mode(tree: Path, resolver: str) -> None:
    root = tree / "root"
    request = opening(root / "sub" / "new.txt", "write_only", "create", "exclusive", mode=0o600)
    fd = open_beneath(root, request)
    os.write(fd, b"made")
    os.close(fd)
    made = root / "sub" / "new.txt"
    assert made.read_text() == "made" and stat.S_IMODE(made.stat().st_mode) == 0o600


def test_create_through_a_dangling_symlink_out_of_the_root_is_refused(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(EscapeError):
        open_beneath(root, opening(root / "dangling_out", "write_only", "create", mode=0o644))
    assert not (tree / "outside" / "created.txt").exists()


def test_flags_and_mode_can_be_given_for_other_requests(tree: Path, resolver: str) -> None:
    root = tree / "root"
    # An open request that asked to create, opened read-only by the handler: the mode is dropped.
    request = opening(root / "inside.txt", "read_write", "create", mode=0o644)
    assert read_fd(open_beneath(root, request, flags=os.O_RDONLY)) == "inside"


def test_a_path_outside_the_root_string_is_an_escape(tree: Path, resolver: str) -> None:
    with pytest.raises(EscapeError):
        open_beneath(tree / "root", opening("/etc/hostname"))


def test_a_relative_path_without_a_directory_is_refused(tree: Path, resolver: str) -> None:
    with pytest.raises(EscapeError):
        open_beneath(tree / "root", opening("inside.txt"))


def test_a_root_reached_through_a_symlink_matches_canonical_paths(tree: Path, resolver: str) -> None:
    (tree / "root_alias").symlink_to("root")
    sub = os.open(tree / "root" / "sub", os.O_PATH | os.O_DIRECTORY)
    try:
        # The master names the slave's directory canonically (…/root/sub), the policy wrote …/root_alias.
        assert read_fd(open_beneath(tree / "root_alias", opening("deep.txt", dirfd=sub))) == "deep"
    finally:
        os.close(sub)


# ------------------------------------------------------- /proc magic links


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A slave stand-in: a process that is not the master."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 60  # a hang's bound, not a speed
        while Path(f"/proc/{process.pid}/comm").read_text() != "sleep\n":  # until it has exec'd
            assert time.monotonic() < deadline, "sleep did not start"
            time.sleep(0.005)
        yield process
    finally:
        process.kill()
        process.wait()


def test_proc_self_means_the_slave(other_process: subprocess.Popen[bytes], resolver: str) -> None:
    request = OpenRequest(path="/proc/self/comm", flags=["read_only"], pid=other_process.pid, tid=other_process.pid)
    assert resolve(request) == f"/proc/{other_process.pid}/comm"
    assert read_fd(open_beneath("/proc", request)) == "sleep\n"


@pytest.mark.parametrize(
    "path", ["/proc/self/root/etc/hostname", "/proc/self/cwd", "/proc/self/fd/0", "/proc/self/exe"]
)
def test_proc_magic_links_are_refused(other_process: subprocess.Popen[bytes], resolver: str, path: str) -> None:
    request = OpenRequest(path=path, flags=["read_only"], pid=other_process.pid, tid=other_process.pid)
    with pytest.raises(OSError) as caught:
        open_beneath("/", request)
    assert caught.value.errno in (errno.ELOOP, errno.EACCES)


def test_a_symlink_into_proc_self_is_an_escape(tree: Path, resolver: str) -> None:
    root = tree / "root"
    (root / "to_proc").symlink_to("/proc/self/root/etc/hostname")
    with pytest.raises(EscapeError):
        open_beneath(root, opening(root / "to_proc"))


# ------------------------------------------------------------------- races


def test_the_opened_descriptor_stays_inside_whatever_is_swapped_in_later(tree: Path, resolver: str) -> None:
    root = tree / "root"
    fd = open_beneath(root, opening(root / "good_link"))
    try:
        (root / "good_link").unlink()
        (root / "good_link").symlink_to(tree / "outside" / "secret.txt")
        assert os.fstat(fd).st_ino == (root / "inside.txt").stat().st_ino
        assert os.pread(fd, 100, 0) == b"inside"
    finally:
        os.close(fd)


def test_a_directory_swapped_for_a_symlink_never_opens_the_outside(tree: Path, resolver: str) -> None:
    """A slave flips root/swap between a real directory and a symlink to outside/
    while the master opens root/swap/x: every open that succeeds is inside."""
    root, outside = tree / "root", tree / "outside"
    (root / "parked_dir").mkdir()
    (root / "parked_dir" / "x").write_text("inside")
    (outside / "x").write_text("secret")
    (root / "parked_link").symlink_to(outside)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(root / "parked_dir", root / "swap")
            os.rename(root / "swap", root / "parked_dir")
            os.rename(root / "parked_link", root / "swap")
            os.rename(root / "swap", root / "parked_link")

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen: dict[str, int] = {}
    try:
        # A few thousand opens, and on until one met the directory (the race ran against
        # both states); the deadline is a hang's bound only.
        deadline = time.monotonic() + 120
        while (sum(seen.values()) < 3000 or "inside" not in seen) and time.monotonic() < deadline:
            try:
                what = read_fd(open_beneath(root, opening(root / "swap" / "x")))
            except EscapeError:
                what = "escape refused"
            except OSError as exc:
                what = errno.errorcode[exc.errno or 0]
            seen[what] = seen.get(what, 0) + 1
    finally:
        stop.set()
        flipper.join()
    assert "secret" not in seen, seen
    assert seen.get("inside", 0) > 0, seen  # the race was really run against both states
    assert set(seen) <= {"inside", "escape refused", "ENOENT", "ENOTDIR", "ELOOP", "EAGAIN"}, seen


# -------------------------------------------------------------- stat/lstat


def test_stat_follows_a_symlink_inside_and_lstat_describes_the_link(tree: Path, resolver: str) -> None:
    root = tree / "root"
    followed = stat_beneath(root, StatRequest(path=root / "good_link", **ME))
    assert followed.type == "regular" and followed.ino == (root / "inside.txt").stat().st_ino
    assert followed.size == len("inside")
    link = stat_beneath(root, LstatRequest(path=root / "good_link", **ME))
    assert link.type == "symlink" and link.ino == os.lstat(root / "good_link").st_ino


def test_stat_through_a_symlink_out_of_the_root_is_an_escape_but_lstat_is_not(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(EscapeError):
        stat_beneath(root, StatRequest(path=root / "abs_link", **ME))
    assert stat_beneath(root, LstatRequest(path=root / "abs_link", **ME)).type == "symlink"


def test_stat_of_the_root_itself(tree: Path, resolver: str) -> None:
    root = tree / "root"
    assert stat_beneath(root, StatRequest(path=root, **ME)).type == "directory"


# ------------------------------------------------------ mutations with *at


def test_mkdir_in_the_parent_descriptor(tree: Path, resolver: str) -> None:
    root = tree / "root"
    request = MkdirRequest(path=root / "sub" / "made", mode=0o755, **ME)
    parent, name = parent_beneath(root, request)
    try:
        os.mkdir(name, request.mode, dir_fd=parent)
    finally:
        os.close(parent)
    assert (root / "sub" / "made").is_dir()


def test_a_parent_through_a_symlink_out_of_the_root_is_an_escape(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(EscapeError):
        parent_beneath(root, MkdirRequest(path=root / "dir_link" / "made", mode=0o755, **ME))
    assert not (tree / "outside" / "made").exists()


def test_unlink_removes_the_link_not_its_target(tree: Path, resolver: str) -> None:
    root = tree / "root"
    parent, name = parent_beneath(root, UnlinkRequest(path=root / "abs_link", **ME))
    try:
        os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
    assert not os.path.lexists(root / "abs_link")
    assert (tree / "outside" / "secret.txt").read_text() == "secret"


def test_rename_with_a_parent_per_side(tree: Path, resolver: str) -> None:
    root = tree / "root"
    sub = os.open(root / "sub", os.O_PATH | os.O_DIRECTORY)
    try:
        request = RenameRequest(path1="deep.txt", dirfd1=sub, path2=root / "moved.txt", **ME)
        old_dir, old_name = parent_beneath(root, request, path=request.path1, dirfd=request.dirfd1)
        new_dir, new_name = parent_beneath(root, request, path=request.path2, dirfd=request.dirfd2)
        try:
            os.rename(old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir)
        finally:
            os.close(old_dir)
            os.close(new_dir)
    finally:
        os.close(sub)
    assert (root / "moved.txt").read_text() == "deep"


def test_rename_needs_the_side_named(tree: Path) -> None:
    root = tree / "root"
    with pytest.raises(TypeError, match="path1"):
        parent_beneath(root, RenameRequest(path1=root / "a", path2=root / "b", **ME))


@pytest.mark.parametrize("path", ["", "/sub/..", "/sub/../.."])
def test_the_root_itself_and_above_have_no_parent_beneath(tree: Path, resolver: str, path: str) -> None:
    root = tree / "root"
    with pytest.raises(EscapeError):
        parent_beneath(root, UnlinkRequest(path=f"{root}{path}", **ME))


# ------------------------------------------------------------ resolve, flags


def test_resolve_joins_a_relative_path_to_the_slaves_directory_keeping_the_text(tmp_path: Path) -> None:
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        # No lexical folding: after a symlink, ".." is the kernel's to resolve.
        assert resolve(opening("a/./b/../c.txt", dirfd=dirfd)) == f"{tmp_path}/a/./b/../c.txt"
        assert resolve(opening("made/", dirfd=dirfd)) == f"{tmp_path}/made/"  # the trailing slash stays
    finally:
        os.close(dirfd)
    assert resolve(opening("c.txt")) is None


def test_resolve_of_a_removed_directory_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    dirfd = os.open(tmp_path / "gone", os.O_PATH | os.O_DIRECTORY)
    try:
        (tmp_path / "gone").rmdir()
        assert resolve(opening("x", dirfd=dirfd)) is None
    finally:
        os.close(dirfd)


def test_resolve_rewrites_proc_self_and_thread_self_only() -> None:
    request = StatRequest(path="/proc/self", pid=4242, tid=4343)
    assert resolve(request) == "/proc/4242"
    assert resolve(request, path=PurePosixPath("/proc/self/fd/3")) == "/proc/4242/fd/3"
    assert resolve(request, path=PurePosixPath("/proc/thread-self/comm")) == "/proc/4242/task/4343/comm"
    assert resolve(request, path=PurePosixPath("/proc/selfish")) == "/proc/selfish"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dev/stdin", "/proc/4242/fd/0"),
        ("/dev/stdout", "/proc/4242/fd/1"),
        ("/dev/stderr", "/proc/4242/fd/2"),
        ("/dev/fd/5", "/proc/4242/fd/5"),
        ("//dev/./fd/5/", "/proc/4242/fd/5/"),
        ("/dev/fdx", "/dev/fdx"),
    ],
)
def test_resolve_makes_the_callers_descriptors_the_slaves(path: str, expected: str) -> None:
    assert resolve(StatRequest(path=path, pid=4242, tid=4343)) == expected


def test_a_name_for_the_caller_without_a_pid_is_refused() -> None:
    with pytest.raises(OSError) as caught:
        resolve(StatRequest(path="/dev/stdin"))
    assert caught.value.errno == errno.EACCES


def test_a_relative_path_in_proc_is_the_slaves_proc_self(other_process: subprocess.Popen[bytes]) -> None:
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        request = StatRequest(path="self/comm", dirfd=proc, pid=other_process.pid, tid=other_process.pid)
        assert resolve(request) == f"/proc/{other_process.pid}/comm"
    finally:
        os.close(proc)


def test_relative_to_root_splits_strings_only() -> None:
    assert relative_to_root("/srv/", "/srv") == "."
    assert relative_to_root("/srv", "/srv/a/b") == "a/b"
    assert relative_to_root("/", "/etc/hostname") == "etc/hostname"
    with pytest.raises(EscapeError):
        relative_to_root("/srv", "/srvx/a")
    # Components, not characters: "." and doubled slashes are no obstacle, the rest stays exact.
    assert relative_to_root("/srv/data", "//srv/./data/x/") == "x/"
    assert relative_to_root("/srv", "/srv/a/../b") == "a/../b"


def test_open_flags_maps_names_and_refuses_unknown_ones() -> None:
    value, bits = open_flags({"write_only", "create", "resolve_beneath"})
    assert value & os.O_WRONLY and value & os.O_CREAT and value & os.O_CLOEXEC
    assert bits == safepath.RESOLVE_BENEATH
    with pytest.raises(ValueError):
        open_flags({"sideways"})


def test_open_flags_never_add_noctty_to_o_path() -> None:
    """openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC."""
    value, _ = open_flags({"path", "read_only", "directory", "non_blocking"})
    assert value == os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    assert open_flags({"read_only"})[0] & os.O_NOCTTY
    assert open_flags({"read_only", "non_blocking"})[0] & os.O_NONBLOCK


def test_an_o_path_open_beneath_the_root_works(tree: Path, resolver: str) -> None:
    root = tree / "root"
    fd = open_beneath(root, opening(root / "sub", "read_only", "path", "directory"))
    try:
        assert os.fstat(fd).st_ino == (root / "sub").stat().st_ino
    finally:
        os.close(fd)


def test_a_trailing_slash_is_kept_beneath_the_root(tree: Path, resolver: str) -> None:
    root = tree / "root"
    with pytest.raises(OSError) as caught:
        open_beneath(root, opening(f"{root}/made/", "write_only", "create", mode=0o644))
    assert caught.value.errno == errno.EISDIR
    with pytest.raises(OSError) as caught:
        open_beneath(root, opening(f"{root}/inside.txt/"))
    assert caught.value.errno == errno.ENOTDIR


def test_dotdot_after_a_symlink_is_the_kernels(tree: Path, resolver: str) -> None:
    """link -> sub/deeper: link/../x is sub/x, not x (a string fold would say root/x)."""
    root = tree / "root"
    (root / "sub" / "deeper").mkdir()
    (root / "link").symlink_to("sub/deeper")
    (root / "sub" / "x").write_text("sub x")
    assert read_fd(open_beneath(root, opening(f"{root}/link/../x"))) == "sub x"
