"""A slave's path resolved in the master as the kernel resolves it for the slave.

The master opens files for the slave, but a few objects mean "the caller"
and the kernel answers them for whoever walks: ``/proc/self`` and
``/proc/thread-self`` are symlinks whose target is the *walker's* pid, and
``/proc/<pid>/fd/N``, ``cwd``, ``root``, ``exe`` … are magic links into that
process. A slave reaches them by any spelling — literally, through its own
symlink (``x -> /proc/self/mem``), through a link to ``/proc``, from a
working directory in ``/proc`` — so no rewrite of the text can catch them
all; only the walk itself can.

:func:`open_as_slave` does the walk:

- **Fast**: one ``openat2(RESOLVE_NO_SYMLINKS)``. With no symlink on the
  way the kernel's answer is the slave's (``/proc/self`` is a symlink, so
  it is never met here). An object on procfs is walked again below, so the
  master's own ``/proc/<pid>`` is never reached by a plain name either.
  After a symlink, one ``openat2(RESOLVE_NO_MAGICLINKS)``: a success off
  procfs is the slave's answer too (see :func:`_through_plain_links`).
- **Step by step** otherwise: each name opened ``O_PATH | O_NOFOLLOW`` from
  the directory before it, each symlink read and its target walked (an
  absolute one from ``/``, which is the slave's too:
  :func:`libc_service.acting.target.same_root_and_mounts` refused the others).
  The decisions are made on the objects the kernel names, never on text:
  the ``self`` and ``thread-self`` links *of procfs's root* become the
  requesting process and thread; a magic link (any other procfs symlink)
  is followed by the kernel only in a directory of the requesting process
  (``/proc/<pid>`` and below), else it is ``ELOOP``; a directory of the
  master's own process (``/proc/<master pid>`` and below) is refused with
  ``EACCES``.

In the caller's own ``/proc/<pid>`` the kernel lets the process itself
search ``fd/`` and follow its magic links whatever its credentials; the
thread acting as the slave is not the slave, so those steps (and only
those) are retried by a thread that keeps the master's credentials
(:class:`_MasterHand`), and what they reach is opened with the slave's.

The slave's own ``openat2`` resolve bits are honoured by the walk:
``RESOLVE_NO_SYMLINKS``, ``RESOLVE_NO_MAGICLINKS``, ``RESOLVE_BENEATH``
(``..`` above the start, absolute names and links are ``EXDEV``) and
``RESOLVE_NO_XDEV`` (a change of device is ``EXDEV``).
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import queue
import re
import stat as stat_module
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from libc_service.kernel import libc as kernel

from libc_service.acting import beneath as safepath_beneath

__all__ = ["open_as_slave", "prepare"]

_PROC_SUPER_MAGIC = 0x9FA0
_PROC_ROOT_INO = 1
_MAX_SYMLINKS = 40  # the kernel's own limit
_PATH_MAX = 4096
_RESOLVE_NO_XDEV = safepath_beneath.RESOLVE_NO_XDEV
_RESOLVE_NO_MAGICLINKS = safepath_beneath.RESOLVE_NO_MAGICLINKS
_RESOLVE_NO_SYMLINKS = safepath_beneath.RESOLVE_NO_SYMLINKS
_RESOLVE_BENEATH = safepath_beneath.RESOLVE_BENEATH
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100
_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: The kernel's names of the directories where "the process itself" may
#: search whatever its credentials (``fd/``, ``fdinfo/``, ``map_files/``) …
_SELF_SEARCH = re.compile(r"/proc/[0-9]+(/task/[0-9]+)?/(fd|fdinfo|map_files)")
#: … and where it may follow magic links (``fd/N``; ``cwd``, ``root``, ``exe``
#: of the process or a thread). ``map_files/N`` needs a capability even then.
_SELF_FOLLOW = re.compile(r"/proc/[0-9]+(/task/[0-9]+)?(/fd)?")


#: Devices with a major number (block devices: ext4, xfs …) found not to be
#: procfs. A procfs always has an anonymous device (major 0), so these can
#: never become one; anonymous devices are asked every time (their numbers
#: are reused after an unmount).
_NOT_PROCFS: set[int] = set()


def _is_procfs(fd: int) -> bool:
    """Whether ``fd``'s file is on a procfs (``fstatfs``'s ``f_type``)."""
    device = os.fstat(fd).st_dev
    if device in _NOT_PROCFS:
        return False
    buffer = ctypes.create_string_buffer(128)
    if kernel.libc.fstatfs(ctypes.c_int(fd), buffer) != 0:
        return False
    procfs = int.from_bytes(buffer.raw[:8], "little") == _PROC_SUPER_MAGIC
    if not procfs and os.major(device) != 0:
        _NOT_PROCFS.add(device)
    return procfs


class _MasterHand:
    """A thread that keeps the master's own credentials, for what only "the process itself" may do.

    In its own ``/proc/<pid>`` a process may search ``fd/`` and follow its
    magic links whatever its credentials (the kernel checks "same thread
    group" there); a process that changed its uid without ``exec`` is not
    dumpable, and those entries belong to root. The thread acting as the
    slave is not the slave, so those two steps alone are done here, with
    the master's credentials, and only in the requesting process's own
    ``/proc/<pid>``; the object reached is then opened with the slave's.
    Started by :func:`prepare` from a thread of the master (a thread made
    by one acting as the slave would inherit the slave's credentials).
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], int], list[object], threading.Event]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.serve, name="libc-service master hand", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            job, outcome, done = self.jobs.get()
            try:
                outcome.append(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the asking thread
                outcome.append(exc)
            done.set()

    def run(self, job: Callable[[], int]) -> int:
        outcome: list[object] = []
        done = threading.Event()
        self.jobs.put((job, outcome, done))
        done.wait()
        (value,) = outcome
        if isinstance(value, BaseException):
            raise value
        assert isinstance(value, int)
        return value


_hand: _MasterHand | None = None
_hand_lock = threading.Lock()


def prepare() -> None:
    """Make sure the master's hand (see :class:`_MasterHand`) runs; call from a master thread."""
    global _hand
    if _hand is not None:
        return
    with _hand_lock:
        if _hand is None:
            _hand = _MasterHand()


def _as_master(job: Callable[[], int]) -> int:
    if _hand is None:
        return job()  # never prepared: this thread's own credentials
    return _hand.run(job)


@dataclass
class _Place:
    """A directory of the walk: the master's descriptor of it and what it is on procfs.

    ``owner``: the pid (as named in procfs's root) of the process the
    directory belongs to, for ``/proc/<pid>`` and everything below it;
    ``None`` elsewhere. ``proc_root``: procfs's root directory itself.
    """

    fd: int
    dev: int
    proc_root: bool = False
    owner: str | None = None
    depth: int = 0


class _Walk:
    def __init__(self, pid: int, tid: int, resolve: int) -> None:
        self.pid = pid
        self.tid = tid
        self.resolve = resolve
        self.mine = {str(pid), str(tid)} if pid > 0 else set()
        self.links = 0
        self.opened: list[int] = []

    # ---------------------------------------------------------------- places

    def keep(self, fd: int) -> int:
        self.opened.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.opened:
            os.close(fd)
        self.opened = []

    def place_of(self, fd: int, depth: int) -> _Place:
        """What a directory reached other than by a step within one filesystem is.

        (A start, ``..``, a magic link's target, a mount point crossed.)
        """
        info = os.fstat(fd)
        if not _is_procfs(fd):
            return _Place(fd, info.st_dev, depth=depth)
        if info.st_ino == _PROC_ROOT_INO:
            return _Place(fd, info.st_dev, proc_root=True, depth=depth)
        return _Place(fd, info.st_dev, owner=self.owner_of(fd), depth=depth)

    def owner_of(self, fd: int) -> str:
        """The ``<pid>`` directory of procfs's root that ``fd`` (on procfs) lies in."""
        child = fd
        current = fd
        for _ in range(16):
            parent = self.keep(os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current))
            if os.fstat(parent).st_ino == _PROC_ROOT_INO and _is_procfs(parent):
                # The kernel's name of the child of procfs's root: its last component.
                return os.readlink(f"/proc/self/fd/{child}").rstrip("/").rsplit("/", 1)[-1]
            child, current = parent, parent
        return "?"  # deeper than procfs goes: an owner nobody matches

    def enter(self, here: _Place, name: str, fd: int, dev: int) -> _Place:
        """The place a plain step from ``here`` into directory ``name`` (opened as ``fd``) reaches."""
        if dev != here.dev:
            return self.place_of(fd, here.depth + 1)  # a mount point: whatever is mounted there
        if here.proc_root:
            owner: str | None = name if name.isdigit() else None
        else:
            owner = here.owner
        return _Place(fd, dev, owner=owner, depth=here.depth + 1)

    def guard(self, here: _Place) -> None:
        """Refuse to go on from a directory of the master's own process."""
        owner = here.owner
        if owner is None or owner in self.mine:
            return
        master = str(os.getpid())
        if owner == master or (owner.isdigit() and os.path.exists(f"/proc/{master}/task/{owner}")):
            raise OSError(errno_module.EACCES, "the master's own /proc directory is not the slave's")

    def in_own_proc(self, here: _Place, step: Callable[[], int], *, follow: bool) -> int:
        """``step()`` as the slave; in the caller's own ``/proc/<pid>``, retried as the master when refused.

        Only a search there or a magic link's follow (``follow``) can be
        refused (``EACCES``) for the slave's thread that the process itself
        may do (the kernel's "same thread group" rule): the step opens with
        ``O_PATH``, which reads nothing of the object.
        """
        try:
            return step()
        except PermissionError as exc:
            if exc.errno != errno_module.EACCES or not self.exempt(here, follow=follow):
                raise
        return _as_master(step)

    def exempt(self, here: _Place, *, follow: bool) -> bool:
        """Whether the kernel lets the process itself search ``here`` (or follow a magic link in it)."""
        if here.owner not in self.mine:
            return False
        try:
            name = os.readlink(f"/proc/self/fd/{here.fd}")
        except OSError:
            return False
        return (_SELF_FOLLOW if follow else _SELF_SEARCH).fullmatch(name) is not None

    def check_dev(self, before: int, after: int) -> None:
        if self.resolve & _RESOLVE_NO_XDEV and os.fstat(before).st_dev != os.fstat(after).st_dev:
            raise OSError(errno_module.EXDEV, "the path crosses a mount point")

    # ----------------------------------------------------------------- walk

    def root(self) -> _Place:
        if self.resolve & _RESOLVE_BENEATH:
            raise OSError(errno_module.EXDEV, "an absolute name is not beneath the start")
        return self.place_of(self.keep(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)), 0)

    def link_target(self, here: _Place, name: str, link: int) -> str | None:
        """What a symlink met in ``here`` leads to, as text to walk; ``None``: a magic link."""
        self.links += 1
        if self.links > _MAX_SYMLINKS or self.resolve & _RESOLVE_NO_SYMLINKS:
            raise OSError(errno_module.ELOOP, os.strerror(errno_module.ELOOP))
        if here.proc_root:
            # procfs's own "the caller" links: the requesting process and thread.
            if name in ("self", "thread-self"):
                if self.pid <= 0:
                    raise OSError(errno_module.EACCES, "names the calling process, which the request does not say")
                return str(self.pid) if name == "self" else f"{self.pid}/task/{self.tid or self.pid}"
            return os.readlink("", dir_fd=link)
        if _is_procfs(link):
            if self.resolve & _RESOLVE_BENEATH:
                raise OSError(errno_module.EXDEV, "a magic link leaves the start")
            if self.resolve & _RESOLVE_NO_MAGICLINKS or here.owner not in self.mine:
                raise OSError(errno_module.ELOOP, "a magic link of another process than the caller")
            return None
        return os.readlink("", dir_fd=link)

    def open(self, start: int, text: str, flags: int, mode: int) -> int:
        if len(os.fsencode(text)) >= _PATH_MAX:
            raise OSError(errno_module.ENAMETOOLONG, os.strerror(errno_module.ENAMETOOLONG), text)
        if not text:
            raise OSError(errno_module.ENOENT, os.strerror(errno_module.ENOENT), text)
        if text.startswith("/"):
            here = self.root()
        else:
            fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=None if start == _AT_FDCWD else start)
            here = self.place_of(self.keep(fd), 0)
        pending = deque(text.split("/"))
        must_dir = False
        while pending:
            part = pending.popleft()
            last = not any(rest not in ("", ".") for rest in pending)
            if last and pending:
                must_dir = True  # "name/" or "name/.": a directory, a final symlink followed
                pending.clear()
            if part in ("", "."):
                continue
            self.guard(here)
            if part == "..":
                if self.resolve & _RESOLVE_BENEATH and here.depth == 0:
                    raise OSError(errno_module.EXDEV, "'..' leads above the start")
                fd = self.keep(os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=here.fd))
                self.check_dev(here.fd, fd)
                here = self.place_of(fd, here.depth - 1)
                continue
            # O_CREAT|O_EXCL never follows a final symlink (EEXIST), as O_NOFOLLOW.
            exclusive = flags & (os.O_CREAT | os.O_EXCL) == os.O_CREAT | os.O_EXCL
            follow = not last or must_dir or not (flags & os.O_NOFOLLOW or exclusive)
            try:
                step = self.keep(self.in_own_proc(here, lambda: os.open(part, _STEP, dir_fd=here.fd), follow=False))
            except FileNotFoundError:
                if last:
                    return self.final(here, part, flags, mode, must_dir)
                raise
            info = os.fstat(step)
            kind = info.st_mode
            if stat_module.S_ISLNK(kind) and follow:
                target = self.link_target(here, part, step)
                if target is None:  # the caller's own magic link: the kernel follows it
                    if last:
                        return self.final(here, part, flags & ~os.O_NOFOLLOW, mode, must_dir, magic=True)
                    fd = self.keep(
                        self.in_own_proc(
                            here, lambda: os.open(part, os.O_PATH | os.O_CLOEXEC, dir_fd=here.fd), follow=True
                        )
                    )
                    here = self.place_of(fd, here.depth + 1)
                    continue
                names = target.split("/")
                if target.startswith("/"):
                    here = self.root()
                if last and not must_dir:
                    must_dir = target.endswith("/")
                pending.extendleft(reversed(names + ([""] if must_dir and last else [])))
                continue
            if last:
                return self.final(here, part, flags, mode, must_dir)
            if not stat_module.S_ISDIR(kind):
                raise OSError(errno_module.ENOTDIR, os.strerror(errno_module.ENOTDIR), text)
            self.check_dev(here.fd, step)
            here = self.enter(here, part, step, info.st_dev)
        # The text ended in "." or "..", or was "/": the directory we are in.
        self.guard(here)
        if flags & os.O_CREAT:
            raise OSError(errno_module.EISDIR, os.strerror(errno_module.EISDIR), text)
        return os.open(".", flags, mode, dir_fd=here.fd)

    def final(self, here: _Place, name: str, flags: int, mode: int, must_dir: bool, *, magic: bool = False) -> int:
        """Open the last name in ``here`` with the caller's flags (its symlinks already dealt with)."""
        if must_dir:
            if flags & os.O_CREAT:
                raise OSError(errno_module.EISDIR, os.strerror(errno_module.EISDIR), name)
            flags |= os.O_DIRECTORY
        if not magic:
            # Not a symlink when looked at: never follow one swapped in since.
            # (O_NOFOLLOW|O_PATH opens a symlink itself, as lstat wants.)
            flags |= os.O_NOFOLLOW
        try:
            return os.open(name, flags, mode, dir_fd=here.fd)
        except PermissionError as exc:
            if exc.errno != errno_module.EACCES or not (magic or flags & os.O_PATH):
                raise
            if not self.exempt(here, follow=magic):
                raise
        # The caller's own /proc/<pid>: what it may reach there, found with the
        # master's credentials, then opened with the slave's (as natively, the
        # object's own permissions decide).
        reached = _as_master(lambda: os.open(name, (flags & os.O_NOFOLLOW) | os.O_PATH | os.O_CLOEXEC, dir_fd=here.fd))
        if flags & os.O_PATH:
            return reached
        try:
            return os.open(f"/proc/self/fd/{reached}", flags, mode)
        finally:
            os.close(reached)


def _through_plain_links(dirfd: int, text: str, flags: int, mode: int, own: int) -> int:
    """The kernel's own walk, symlinks followed but no magic link: the descriptor, or -1.

    A success off procfs is the slave's answer: leaving procfs takes a magic
    link (refused here) or ``..`` back out of ``/proc``, which leads to the
    same place from any ``/proc/<pid>``, the master's or the slave's. A
    failure proves nothing (``/proc/self/fd/9`` may exist for the slave
    only), nor does an object on procfs: both are walked again (-1).
    """
    try:
        fd = safepath_beneath.raw_openat2(dirfd, text, flags, mode, own | _RESOLVE_NO_MAGICLINKS)
    except OSError:
        return -1
    if _is_procfs(fd):
        os.close(fd)
        return -1
    return fd


def open_as_slave(dirfd: int, text: str, flags: int, mode: int, resolve: int, pid: int, tid: int) -> int:
    """Open ``text`` from ``dirfd`` (``AT_FDCWD``: the master's, for absolute text) as the slave's walk would.

    ``resolve`` is the slave's own ``openat2`` bits (``RESOLVE_CACHED``
    only for the single fast try). Raises ``OSError`` with the kernel's
    errno; the returned descriptor is the caller's.
    """
    own = resolve & ~_RESOLVE_CACHED
    if safepath_beneath.openat2_available():
        try:
            fd = safepath_beneath.raw_openat2(dirfd, text, flags, mode, own | _RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            if exc.errno != errno_module.ELOOP or own & _RESOLVE_NO_SYMLINKS:
                raise  # no symlink was met: the kernel's answer is the slave's
            if resolve & _RESOLVE_CACHED:
                raise OSError(errno_module.EAGAIN, os.strerror(errno_module.EAGAIN), text) from None
            fd = _through_plain_links(dirfd, text, flags, mode, own)
            if fd >= 0:
                return fd
        else:
            if not _is_procfs(fd):
                return fd
            os.close(fd)  # on procfs: whose it is needs the walk
    walk = _Walk(pid, tid, own)
    try:
        return walk.open(dirfd, text, flags, mode)
    finally:
        walk.close()
