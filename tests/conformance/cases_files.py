"""Cases on files and paths: descriptor numbers, names that contain words, /proc/self behind links."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conformance.casebook import NOBODY, Probe, Setup, case


def _file(directory: Path, identity: str) -> None:
    (directory / "f").write_bytes(b"data\n")


@case(setup=_file)
def open_and_stat(p: Probe) -> None:
    fd = p.call("open", os.open, "f", os.O_RDONLY)
    if fd is not None:
        p.call("read", os.read, fd, 100)
        p.call("fstat", os.fstat, fd)
    p.call("stat", os.stat, "f")
    p.call("missing", os.open, "nothing/here", os.O_RDONLY)
    p.call("create", os.open, "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    p.call("trailing slash", os.open, "f/", os.O_RDONLY)
    p.call("mkdir", os.mkdir, "d", 0o750)
    p.call("rename", os.rename, "new", "d/moved")
    p.call("unlink", os.unlink, "f")


# ------------------------------------------------------------ descriptor numbers


@case()
def lowest_free_descriptor_after_closing_stdout(p: Probe) -> None:
    """``close(1); open("out.txt")`` gives 1, for a relative and an absolute name."""
    os.close(1)
    fd = p.call("relative", os.open, "out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd is not None:
        os.write(fd, b"through the lowest number\n")
        os.close(fd)
    os.close(0)
    p.call("absolute", os.open, os.path.abspath("out.txt"), os.O_RDONLY)
    p.call("next", os.open, ".", os.O_RDONLY | os.O_DIRECTORY)


@case(setup=_file)
def lowest_free_descriptor_in_a_gap(p: Probe) -> None:
    """A hole below open descriptors is filled first; fopen and opendir too."""
    first = os.open("f", os.O_RDONLY)
    second = os.open("f", os.O_RDONLY)
    os.close(first)
    p.call("fills the gap", os.open, "f", os.O_RDONLY)
    os.close(second)
    p.call("directory", os.open, ".", os.O_RDONLY | os.O_DIRECTORY)
    p.call("listdir", lambda: sorted(os.listdir(".")))
    with open("f", "rb") as stream:
        p.note("stream descriptor", stream.fileno())


# ------------------------------------------------------------ names with words in them


def _behind_a_locked_parent(directory: Path, identity: str) -> None:
    """``locked/inner``: the case starts in ``inner``, whose parent it may not search."""
    inner = directory / "locked" / "inner"
    inner.mkdir(parents=True)
    for name in ("stdout.log", "log.txt", "fd", "self", "selfish.txt"):
        (inner / name).write_text(name)
    uid, gid = (NOBODY, NOBODY) if identity.startswith("nobody") else (os.geteuid(), os.getegid())
    for entry in [inner, *inner.iterdir()]:
        os.chown(entry, uid, gid)
    (directory / "locked").chmod(0o700)


@case(setup=_behind_a_locked_parent, cwd="locked/inner")
def names_holding_fd_self_std(p: Probe) -> None:
    """A relative name that holds ``fd``, ``self`` or ``std`` is just a name (even where its directory has no reachable name)."""
    for name in ("stdout.log", "log.txt", "fd", "self", "selfish.txt"):
        fd = p.call(f"open {name}", os.open, name, os.O_RDONLY)
        if fd is not None:
            p.call(f"read {name}", os.read, fd, 100)
            os.close(fd)
        p.call(f"stat {name}", os.stat, name)
    p.call("create stdout.new", os.open, "stdout.new", os.O_WRONLY | os.O_CREAT, 0o600)


@case()
def names_holding_words_near_path_max(p: Probe) -> None:
    """A name with ``std`` in it, whose directory's absolute name is just under ``PATH_MAX``."""
    while len(os.getcwd()) < 4090 - 200:
        os.mkdir("d" * 199)
        os.chdir("d" * 199)
    last = "e" * (4090 - len(os.getcwd()) - 1)
    os.mkdir(last)
    os.chdir(last)
    p.note("depth reached", len(os.getcwd()) == 4090)
    for name in ("stdout.log", "plain.log"):
        fd = p.call(f"create {name}", os.open, name, os.O_WRONLY | os.O_CREAT, 0o644)
        if fd is not None:
            os.close(fd)
        p.call(f"stat {name}", os.stat, name)


# ------------------------------------------------------------ names for the caller


def _status_pid(text: bytes) -> int:
    for line in text.splitlines():
        if line.startswith(b"Pid:"):
            return int(line.split()[1])
    return -1


def _whose(p: Probe, label: str, path: str) -> None:
    """Record whether ``path`` (a status file) describes this process."""
    fd = p.call(label, os.open, path, os.O_RDONLY)
    if fd is None:
        return
    try:
        p.note(f"{label} is mine", _status_pid(os.read(fd, 4096)) == os.getpid())
    finally:
        os.close(fd)


def _links(**links: str) -> Setup:
    """A set-up making ``name -> target`` symlinks, owned by the identity as if the case had made them.

    The cases that follow links are not about making them: under
    ``--seccomp`` ``symlink(2)`` is refused (no request decides it), so the
    links are made natively before the case runs, in every configuration.
    """

    def make(directory: Path, identity: str) -> None:
        uid, gid = (NOBODY, NOBODY) if identity.startswith("nobody") else (os.geteuid(), os.getegid())
        for name, target in links.items():
            os.symlink(target, directory / name)
            os.lchown(directory / name, uid, gid)

    return make


@case(
    setup=_links(
        status="/proc/self/status", me="/proc/self", proc="/proc", thread="/proc/thread-self/status", again="status"
    ),
)
def proc_self_behind_a_symlink(p: Probe) -> None:
    """A link to ``/proc/self/...`` names the process that follows it."""
    _whose(p, "link to /proc/self/status", "status")
    _whose(p, "link to /proc/self", "me/status")
    _whose(p, "link to /proc", "proc/self/status")
    _whose(p, "link to /proc/thread-self/status", "thread")
    _whose(p, "link to a link", "again")
    _whose(p, "absolute through the link", os.path.abspath("me") + "/status")


@case(setup=_links(mem="/proc/self/mem"))
def proc_self_mem_behind_a_symlink(p: Probe) -> None:
    """``mem -> /proc/self/mem``: reading one's own memory at a known address."""
    import ctypes

    buffer = ctypes.create_string_buffer(b"this process's own memory", 32)
    fd = p.call("open", os.open, "mem", os.O_RDONLY)
    if fd is not None:
        try:
            data = os.pread(fd, 25, ctypes.addressof(buffer))
            p.note("reads its own memory", data == buffer.value)
        except OSError as exc:
            p.note("pread", exc.errno)
        os.close(fd)


@case()
def proc_self_from_proc(p: Probe) -> None:
    """Relative names from ``/proc`` and ``/dev``: ``self/status``, ``fd/0``."""
    os.chdir("/proc")
    _whose(p, "self/status", "self/status")
    _whose(p, "thread-self/status", "thread-self/status")
    _whose(p, "./self/status", "./self/status")
    os.chdir("/dev")
    p.call("fd/0", lambda: stat.S_IFMT(os.stat("fd/0").st_mode))
    p.call("stdin", lambda: stat.S_IFMT(os.stat("stdin").st_mode))


@case()
def links_that_name_the_caller_are_links(p: Probe) -> None:
    """``lstat`` of ``/proc/self``, ``/dev/stdin``, ``/dev/fd`` reports the link itself."""
    for path in ("/proc/self", "/proc/thread-self", "/dev/stdin", "/dev/fd", "/dev/stdout"):
        p.call(f"lstat {path}", lambda path=path: stat.S_ISLNK(os.lstat(path).st_mode))
    p.call("stat /proc/self is a directory", lambda: stat.S_ISDIR(os.stat("/proc/self").st_mode))
    p.call("stat /proc/self/ is mine", lambda: os.stat("/proc/self/").st_ino == os.stat(f"/proc/{os.getpid()}").st_ino)
    p.call("lstat /proc/self/exe", lambda: stat.S_ISLNK(os.lstat("/proc/self/exe").st_mode))


# ------------------------------------------------------------ symlinks the walk meets


def _links(directory: Path, identity: str) -> None:
    (directory / "dir").mkdir()
    (directory / "dir" / "file").write_text("file")
    for name, target in (
        ("to-dir", "dir"),
        ("to-dir-slash", "dir/"),
        ("to-file", "dir/file"),
        ("absolute", str(directory / "dir" / "file")),
        ("dangling", "made-through-a-link"),
        ("loop-a", "loop-b"),
        ("loop-b", "loop-a"),
        ("up", ".."),
        ("chain", "to-dir"),
    ):
        (directory / name).symlink_to(target)
    if identity.startswith("nobody"):
        for entry in directory.iterdir():
            os.lchown(entry, NOBODY, NOBODY)


_O_PATH_ADDFD = "the seccomp transport cannot install an O_PATH descriptor in the slave (ADDFD gives EBADF)"


@case(setup=_links, differs={"seccomp": _O_PATH_ADDFD})
def symlinks_as_the_kernel_follows_them(p: Probe) -> None:
    """Symlinks met anywhere in a name: followed, not followed, looping, dangling, with slashes."""

    def kind(path: str, follow: bool = True) -> int:
        return stat.S_IFMT((os.stat if follow else os.lstat)(path).st_mode)

    for path in (
        "to-dir/file",
        "to-dir/",
        "to-dir-slash",
        "to-file/",
        "absolute",
        "chain/file",
        "chain/../dir/file",
        "up/" + os.path.basename(os.getcwd()) + "/dir/file",
        "loop-a",
        "loop-a/x",
        "dangling",
        "dir/file/x",
        "dir/./file",
        "dir/..",
        "nothing/",
    ):
        p.call(f"stat {path}", kind, path)
        p.call(f"lstat {path}", kind, path, False)
    p.call("open O_NOFOLLOW to-file", os.open, "to-file", os.O_RDONLY | os.O_NOFOLLOW)
    p.call(
        "open O_PATH|O_NOFOLLOW to-file",
        lambda: stat.S_IFMT(os.fstat(os.open("to-file", os.O_PATH | os.O_NOFOLLOW)).st_mode),
    )
    p.call("create O_EXCL through a dangling link", os.open, "dangling", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    p.call("create through a dangling link", os.open, "dangling", os.O_WRONLY | os.O_CREAT, 0o644)
    p.call("create with a slash", os.open, "new/", os.O_WRONLY | os.O_CREAT, 0o644)
    p.call("create through a directory link", os.open, "to-dir/new", os.O_WRONLY | os.O_CREAT, 0o600)
    p.call("mkdir through a link", os.mkdir, "to-dir/sub")
    p.call("unlink a link", os.unlink, "chain")
    p.call("rmdir through a slash link", os.rmdir, "to-dir/sub/")
    p.call("rename through links", os.rename, "to-dir/new", "up/" + os.path.basename(os.getcwd()) + "/moved")
    p.call("access through a loop", os.access, "loop-b", os.F_OK)


@case(setup=_links)
def metadata_and_sockets_through_links(p: Probe) -> None:
    """chmod/chown/utime following or not following links, unix sockets named through a link."""
    import socket

    p.call("chmod through a link", os.chmod, "to-file", 0o600)
    p.call("chmod of a dangling link", os.chmod, "dangling", 0o600)
    p.call("lchown a link", os.lchown, "to-dir", os.getuid(), os.getgid())
    p.call("utime through a directory link", os.utime, "to-dir/file", (5, 6))
    p.call("utime a link itself", lambda: os.utime("to-file", (7, 8), follow_symlinks=False))
    p.call("times set", lambda: [os.stat("dir/file").st_mtime == 6, os.lstat("to-file").st_mtime == 8])
    p.call("access through a slash link", os.access, "to-dir-slash", os.W_OK)
    p.call("access of a dangling link", os.access, "dangling", os.F_OK)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p.call("bind through a link", server.bind, "to-dir/sock")
    p.call("listen", server.listen)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p.call("connect through another link", client.connect, "chain/sock")
    p.call("connect through a loop", socket.socket(socket.AF_UNIX).connect, "loop-a/sock")
    p.call("stat the socket", lambda: stat.S_IFMT(os.stat("dir/sock").st_mode))
    client.close()
    server.close()


@case()
def own_proc_entries(p: Probe) -> None:
    """The process's own /proc entries it may reach whatever its ids (fd/N, its magic links)."""
    for path in ("/proc/self/fd/0", "/dev/stdin", "/proc/self/cwd", "/proc/self/exe", "/proc/self/fdinfo/0"):
        p.call(f"stat {path}", lambda path=path: stat.S_IFMT(os.stat(path).st_mode))
    for path in ("/proc/self/fd/0", "/dev/stdin", "/proc/self/environ", "/proc/self/mem"):
        fd = p.call(f"open {path}", os.open, path, os.O_RDONLY)
        if fd is not None:
            os.close(fd)
    p.call("thread-self fd", lambda: stat.S_IFMT(os.stat("/proc/thread-self/fd/0").st_mode))


_FDINFO = (
    "a process that changed its uid is not dumpable: the master opens its fdinfo/N and lists its map_files/ "
    "with the slave's credentials, which the kernel exempts only for the process itself (EACCES)"
)


@case(differs={"nobody": _FDINFO})
def own_proc_fdinfo_and_map_files(p: Probe) -> None:
    """fdinfo/N and map_files/ of the process itself."""
    fd = p.call("open /proc/self/fdinfo/0", os.open, "/proc/self/fdinfo/0", os.O_RDONLY)
    if fd is not None:
        os.close(fd)
    p.call("listdir map_files", lambda: len(os.listdir("/proc/self/map_files")) > 0)
    p.call(
        "open a map_files entry",
        lambda: os.open("/proc/self/map_files/" + os.listdir("/proc/self/map_files")[0], os.O_RDONLY),
    )
