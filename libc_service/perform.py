"""``perform(request)``: do an arbitrated call in the master as the slave would have.

A handler that grants a call usually wants the *kernel's* answer to it, as
if the slave had made the call itself — the same descriptor, the same
``Stat``, the same errno — while the master keeps the authority. Doing that
by hand is full of traps, each of which makes a program behave differently
under a policy than without one:

- **The exact path.** ``os.fspath(request.path)`` is the slave's text;
  ``"x/"`` must stay ``"x/"`` (``open("x/", O_CREAT)`` is ``EISDIR``) and
  ``link/../x`` must go through ``link`` (the kernel's ``..``, not a string
  fold). Relative paths are resolved from ``request.dirfd`` (the slave's
  dirfd or working directory, a descriptor in the master), which also works
  after that directory was removed.
- **Names that mean "the caller".** ``/proc/self`` and ``/proc/thread-self``
  (and ``/dev/fd/N``, ``/dev/stdin|stdout|stderr``, which lead there) name
  the requesting process and thread wherever resolution meets them — in
  the text, behind a symlink the slave planted (``x -> /proc/self/mem``),
  through a link to ``/proc`` — because the path is resolved by
  :mod:`libc_service.slavewalk` name by name, never joined or rewritten as
  text. Magic links are followed only in the caller's own ``/proc/<pid>``
  (others are ``ELOOP``), and the master's own ``/proc/<pid>`` is
  ``EACCES``.
- **Credentials and umask.** When the request carries the slave's
  ``fsuid``/``fsgid``/``groups`` and they differ from the master's, the
  call runs on a short-lived thread that takes them on (raw ``setresuid``,
  ``setresgid`` and ``setgroups`` system calls change one thread; glibc's
  wrappers would change every thread of the master) — so a root master does
  not open a root-only file for a slave that dropped to ``nobody``. The
  thread's capabilities become the calling thread's effective and permitted
  sets (read from the kernel with ``capget`` on the request's ``tid``), never
  more than the master's own (``capset`` changes one thread too): a root
  slave that dropped every capability gets the refusals it gets natively
  (``chown``, a port below 1024, ``W_OK`` on another user's file), and a
  non-root slave holding ``CAP_DAC_OVERRIDE`` keeps it. A
  creating call (``O_CREAT``, ``O_TMPFILE``, ``mkdir``, binding a unix
  socket) with the slave's ``umask`` runs on a thread that unshares its
  filesystem context and sets that umask, so the kernel applies it exactly
  as for the slave — including leaving it out when the parent directory has
  a default ACL, which computing ``mode & ~umask`` in Python would get wrong.
  ``None`` in a field means "unknown: the master's".
- **Objects that block.** Opens add ``O_NONBLOCK`` (cleared afterwards
  unless the slave asked for it), so a terminal or device never stalls the
  event loop. A FIFO opened for blocking reading or writing is opened on a
  daemon thread and ``perform`` returns an *awaitable* (the router awaits it;
  see :func:`perform`), a :class:`~libc_service.rendezvous.Rendezvous`: the
  transports go on serving the slave's other calls meanwhile, so its other
  end can be opened by another thread or process of the same master;
  cancelling it (session closed, master shutting
  down) opens the FIFO's other end through the master's ``O_PATH`` descriptor
  so the thread is released. ``getaddrinfo`` of a name and a ``connect``
  that is in progress are awaitables too, when an event loop runs in the
  calling thread.
- **Names are grants.** ``getaddrinfo`` of a name asks a nameserver only
  when a ``named()``/``resolved()`` pattern of the serving policy matches
  it (else ``noname``), through the policy's asynchronous
  :class:`~libc_service.Resolver` — never ``getaddrinfo`` on a thread — and
  records the answers for ``resolved()`` (:mod:`libc_service.names`).

With ``beneath=ROOT`` every path is resolved beneath ``ROOT`` by the kernel
(``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``; the component walker of
:mod:`libc_service.safepath` where ``openat2`` is missing): opens and stats
directly, and ``mkdir``/``rmdir``/``unlink``/``rename``/``access`` and unix
socket paths by opening the parent (or the object) beneath ``ROOT`` with
``O_PATH`` and doing the ``*at`` call on the last component, trailing slash
included. Escapes fail as ``openat2`` fails: ``EXDEV`` for ``..``, absolute
symlinks and absolute paths outside ``ROOT``, ``ELOOP`` for magic links.

Refused with an errno rather than guessed (documented in ``docs/policies.md``):
a slave-relative name (``/proc/self``, ``/dev/stdin``, a relative path with
no directory descriptor) when the request does not say which process asked
(``pid`` 0) is ``EACCES``; a slave whose credentials differ from the master's
when the master may not take them on (no ``CAP_SETUID``/``CAP_SETGID``) is
``EPERM`` — the master never falls back to its own authority; a path of a
process whose root directory or mount namespace is not the master's (after
``chroot``, under ``unshare -m``) is ``EXDEV``: the master's resolution
would name the master's files, not the slave's.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import fcntl
import functools
import logging
import os
import socket
import stat as stat_module
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import kernel, names, readiness, safepath, slavewalk
from .resolver import Resolver
from .slavepath import exact_name, join_to_directory
from .statx import stat_of
from . import (
    replies,
)  # loaded on first use (libc_service/__init__.py): a policy importing perform starts without pydantic
from .rendezvous import Rendezvous
from .router import WithFds
from .lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio

    from .replies import AddrInfo, Stat
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["perform"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLONE_FS: Final = 0x00000200
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_AT_FDCWD: Final = -100
_AT_EACCESS: Final = 0x200
_AT_EMPTY_PATH: Final = 0x1000
_RENAME_NOREPLACE: Final = 1
_O_PATH_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)
_NO_MAGIC: Final = safepath.RESOLVE_NO_MAGICLINKS
_BENEATH: Final = safepath.RESOLVE_BENEATH | safepath.RESOLVE_NO_MAGICLINKS
_RESOLVE_CACHED: Final = 0x20
#: How long a unix connect whose listener's backlog is full waits between tries.
_BACKLOG_RETRY: Final = 0.01


#: Names that mean "the caller", as (leading components, what they become).
_SELF_NAMES: Final[tuple[tuple[tuple[str, str], str], ...]] = (
    (("proc", "self"), "/proc/{pid}"),
    (("proc", "thread-self"), "/proc/{pid}/task/{tid}"),
    (("dev", "fd"), "/proc/{pid}/fd"),
    (("dev", "stdin"), "/proc/{pid}/fd/0"),
    (("dev", "stdout"), "/proc/{pid}/fd/1"),
    (("dev", "stderr"), "/proc/{pid}/fd/2"),
)


def perform(request: Any, *, beneath: str | os.PathLike[str] | None = None) -> Any:
    """Perform ``request`` in the master exactly as the slave would have.

    Returns what a handler returns — ``WithFds(fd, [fd])`` for
    ``open``/``openat``, a :class:`~libc_service.Stat` for ``stat``/``lstat``,
    ``0`` for ``access``, ``eaccess``, ``mkdir``, ``rmdir``, ``unlink``,
    ``rename`` and the metadata changes (``chmod``, ``chown``, ``utimens``
    with ``fchmodat``/``fchownat``/``utimensat``, ``AT_SYMLINK_NOFOLLOW`` for
    ``no_follow``; ``fchmod``, ``fchown``, ``futimens`` on the slave's
    descriptor, which beneath a root must be the file its name there leads to), ``WithFds(0, [sock])`` for ``connect_*``/``bind_*`` (the slave's
    own socket, bound or connected in the master, wherever the master can
    act on it — a unix socket named by a path, any socket of the master's
    network namespace — so its options, ``epoll`` registrations and
    ``getsockname`` stay the program's; otherwise a socket of the slave's
    family and type made in the master, carrying its options, which
    replaces the slave's; a non-blocking connect of the slave's own socket
    that is in progress raises ``EINPROGRESS``, as natively), a list of :class:`~libc_service.AddrInfo` for ``getaddrinfo`` — or
    raises the kernel's errno as ``OSError`` (``socket.gaierror`` for
    ``getaddrinfo``), which the router turns into the slave's errno.

    Where the call could block (a blocking FIFO open, a DNS lookup, a TCP
    connect in progress) and an event loop runs in this thread, the result
    is an *awaitable* of the same value, so the loop never waits on an
    object the slave chose: return it from a sync handler (the router awaits
    it), or in an async handler ``result = perform(request)`` followed by
    ``if inspect.isawaitable(result): result = await result``. Without a
    running loop the call simply blocks, like the slave's would.

    ``beneath=ROOT`` resolves every path beneath ``ROOT`` with the kernel's
    ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS``; an escape fails with
    ``EXDEV`` (``..``, absolute symlinks, absolute paths elsewhere) or
    ``ELOOP`` (``/proc`` magic links), as ``openat2`` does.
    """
    function = request.function
    performer = _PERFORMERS.get(function)
    if performer is None:
        raise TypeError(f"perform() does not know the function {function!r}")
    if function in _PATH_FUNCTIONS and not getattr(request, "abstract", False):
        same_root_and_mounts(request)
        slavewalk.prepare()
    root = None if beneath is None else os.fspath(beneath)
    return performer(request, root)


@functools.cache
def _master_root_and_mounts() -> tuple[tuple[int, int], str]:
    """The master's root directory and mount namespace, read once (a master moves to no other)."""
    root = os.stat("/")
    return (root.st_dev, root.st_ino), os.readlink("/proc/self/ns/mnt")


def same_root_and_mounts(request: Any) -> None:
    """Refuse (``EXDEV``) a path of a process whose root or mount namespace is not the master's.

    The master resolves the slave's paths from its own root and through
    its own mounts: for a slave that called ``chroot`` (possible inside a
    user namespace) or lives in another mount namespace (``unshare -m``) an
    absolute name, or an absolute symlink met on the way, would be the
    master's file, not the slave's. The kernel names both — the root behind
    ``/proc/<pid>/root`` and the namespace behind ``/proc/<pid>/ns/mnt`` —
    and a process that cannot be examined is refused too. Checked in the
    master's own thread: a slave that changed its uid is not dumpable, and
    only root may look at its ``/proc/<pid>``.
    """
    pid = int(getattr(request, "pid", 0))
    if pid <= 0:
        return  # names no process: its root is taken as the master's, as its other unknowns
    try:
        theirs = os.stat(f"/proc/{pid}/root")
        # "mnt:[inode]": readlink is the cheaper way to the namespace's inode.
        their_mounts = os.readlink(f"/proc/{pid}/ns/mnt")
        mine, my_mounts = _master_root_and_mounts()
    except OSError as exc:
        raise OSError(errno_module.EXDEV, f"cannot tell the root and mounts of process {pid}: {exc.strerror}") from None
    if (theirs.st_dev, theirs.st_ino) != mine or their_mounts != my_mounts:
        raise OSError(errno_module.EXDEV, f"process {pid} has another root or mount namespace than the master")


# ------------------------------------------------------------ credentials


@dataclass(frozen=True)
class _Switch:
    """What a thread takes on to act as the slave: ids, umask, working directory.

    The ids are put back after the call (:meth:`leave`); the thread is never
    reused for another identity all the same: a thread of its own ends after
    the call, so a failed restore cannot leak the slave's identity into
    later calls, and its private umask and working directory end with it;
    an :class:`_IdentityWorker` keeps one identity (no umask, no working
    directory) for good and serves only calls that need exactly it.
    """

    ids: tuple[int, int, tuple[int, ...]] | None = None
    umask: int | None = None
    chdir: int | None = None
    #: The (effective, permitted) capability sets to take on, after the ids.
    caps: tuple[int, int] | None = None

    def enter(self) -> None:
        if self.umask is not None or self.chdir is not None:
            # A private filesystem context (cwd, umask) for this thread only.
            kernel.call("unshare", ctypes.c_int(_CLONE_FS))
            if self.umask is not None:
                os.umask(self.umask)
            if self.chdir is not None:
                os.fchdir(self.chdir)
        if self.ids is not None:
            uid, gid, groups = self.ids
            # Groups first: changing the uid away from 0 drops CAP_SETGID.
            array = (ctypes.c_uint * max(len(groups), 1))(*groups)
            kernel.call("setgroups", ctypes.c_size_t(len(groups)), array)
            kernel.call("setresgid", ctypes.c_uint(gid), ctypes.c_uint(gid), ctypes.c_uint(0xFFFFFFFF))
            # The saved uid keeps the master's, so the thread can switch back.
            kernel.call("setresuid", ctypes.c_uint(uid), ctypes.c_uint(uid), ctypes.c_uint(0xFFFFFFFF))
        if self.caps is not None:
            # Last: changing the uid above clears the effective set, and
            # setgroups/setresgid needed the master's CAP_SETGID.
            effective, permitted = self.caps
            _, _, inheritable = _capabilities(0)
            _capset(effective, permitted, inheritable)

    def leave(self, saved: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, ...]]) -> None:
        """Put back the ids :meth:`enter` changed (``saved``: from :func:`_thread_ids`).

        Not after a change of capabilities: a permitted set once lowered
        cannot be raised again, and the thread ends after the call anyway.
        """
        if self.ids is None or self.caps is not None:
            return
        (ruid, euid, _), (rgid, egid, _), groups = saved
        kernel.call("setresuid", ctypes.c_uint(ruid), ctypes.c_uint(euid), ctypes.c_uint(0xFFFFFFFF))
        kernel.call("setresgid", ctypes.c_uint(rgid), ctypes.c_uint(egid), ctypes.c_uint(0xFFFFFFFF))
        array = (ctypes.c_uint * max(len(groups), 1))(*groups)
        kernel.call("setgroups", ctypes.c_size_t(len(groups)), array)


def _thread_ids() -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, ...]]:
    """This thread's (real, effective, saved) uids and gids and its groups."""
    return os.getresuid(), os.getresgid(), tuple(os.getgroups())


_CapHeader = ctypes.c_uint32 * 2
_CapData = ctypes.c_uint32 * 6


def _capabilities(tid: int) -> tuple[int, int, int]:
    """Thread ``tid``'s (effective, permitted, inheritable) capability sets (``0``: this thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, tid)
    data = _CapData()
    kernel.call("capget", ctypes.byref(header), data)
    return (
        data[0] | data[3] << 32,
        data[1] | data[4] << 32,
        data[2] | data[5] << 32,
    )


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (the raw call changes the calling thread only)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(
        effective & 0xFFFFFFFF,
        permitted & 0xFFFFFFFF,
        inheritable & 0xFFFFFFFF,
        effective >> 32,
        permitted >> 32,
        inheritable >> 32,
    )
    kernel.call("capset", header, data)


def _slave_capabilities(request: Any, mine: tuple[int, int]) -> tuple[int, int] | None:
    """The (effective, permitted) sets the master may act with for ``request``'s thread.

    The calling thread's own sets as the kernel holds them (``capget`` on
    the request's ``tid``), cut down to the master's ``mine``. ``None`` for
    a request that names no process: unknown, so left to the kernel's rules
    for the ids the thread takes on (changing the uid away from 0 clears
    the effective set); a thread that cannot be read (gone) gets none.
    """
    pid, tid = int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0))
    if pid <= 0:
        return None
    if not any(mine):
        return mine
    try:
        effective, permitted, _ = _capabilities(tid or pid)
    except OSError:
        return 0, 0
    return effective & mine[0], permitted & mine[1]


def _master_umask() -> int | None:
    """The master's umask, read without changing it (``os.umask`` would)."""
    try:
        with open("/proc/thread-self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


@functools.cache
def _overflow_gid() -> int:
    """What an unmapped group id reads as inside a user namespace (65534 by default)."""
    try:
        with open("/proc/sys/kernel/overflowgid", "rb") as overflow:
            return int(overflow.read())
    except (OSError, ValueError):
        return 65534


def _switch_for(
    request: Any, *, creates: bool = False, chdir: int | None = None, real_ids: bool = False
) -> _Switch | None:
    """How a thread must change to act as the slave; ``None``: the master's own will do.

    Fields the request does not carry (``None``) are the master's, except
    supplementary groups for a slave whose uid or gid differs: those are
    taken as none rather than as the master's, so unknown never means more.
    ``real_ids``: for ``access(2)``, which checks (and walks the path) with
    the real ids and, as the kernel does, with no capability unless the
    real uid is 0, and then the permitted set.
    """
    uid = getattr(request, "fsuid", None)
    gid = getattr(request, "fsgid", None)
    groups = getattr(request, "groups", None)
    umask = getattr(request, "umask", None)
    my_uid, my_gid = os.geteuid(), os.getegid()
    my_groups = tuple(os.getgroups())
    overflow = _overflow_gid()
    if groups is not None and overflow in groups and overflow not in my_groups:
        # Inside a user namespace (the sandbox makes one) groups with no
        # mapping read as the overflow gid, while the kernel still checks
        # with the real ones: the list says nothing, so it is unknown.
        groups = None
    want_uid = my_uid if uid is None else int(uid)
    want_gid = my_gid if gid is None else int(gid)
    if groups is None:
        want_groups = my_groups if (want_uid, want_gid) == (my_uid, my_gid) else ()
    else:
        want_groups = tuple(int(group) for group in groups)
    ids = None
    if (want_uid, want_gid, set(want_groups)) != (my_uid, my_gid, set(my_groups)):
        ids = (want_uid, want_gid, want_groups)
    mask = None
    if creates and umask is not None and int(umask) != _master_umask():
        mask = int(umask) & 0o777
    master_caps = _master_capabilities()
    slave_caps = _slave_capabilities(request, master_caps)
    if real_ids:
        permitted = master_caps[1] if slave_caps is None else slave_caps[1]
        slave_caps = (permitted if want_uid == 0 else 0, permitted)
    caps = None
    if slave_caps is not None and (slave_caps != master_caps or (ids is not None and any(slave_caps))):
        # Also when only the ids change and the slave holds capabilities:
        # leaving uid 0 clears the effective set the slave still has.
        caps = slave_caps
    if ids is None and mask is None and chdir is None and caps is None:
        return None
    return _Switch(ids, mask, chdir, caps)


@functools.cache
def _master_capabilities() -> tuple[int, int]:
    """The master's (effective, permitted) sets, read once; none where ``capget`` is unknown.

    Read once: a master that drops capabilities later only makes the
    per-call thread's ``capset`` fail (the call is refused with ``EPERM``)
    or act with less, never with more.
    """
    try:
        effective, permitted, _ = _capabilities(0)
    except OSError:
        return 0, 0
    return effective, permitted


def _run_switched(switch: _Switch | None, call: Callable[[], T]) -> T:
    """``call()`` under ``switch``, in the thread that runs this."""
    if switch is None:
        return call()
    saved = _thread_ids()
    try:
        try:
            switch.enter()
        except OSError as exc:
            logger.warning("cannot act as the slave (%s); failing the call with EPERM", exc)
            raise OSError(errno_module.EPERM, f"the master cannot take on the slave's identity: {exc}") from None
        return call()
    finally:
        try:
            switch.leave(saved)
        except OSError as exc:  # the thread ends now anyway
            logger.warning("could not restore the master's ids on a perform thread: %s", exc)


class _IdentityWorker:
    """A thread that took on one identity for good (ids and capabilities only) and runs calls needing exactly it.

    Starting a thread, switching it and joining it cost about a millisecond
    on a loaded machine — for every call a sandboxed slave's master makes as
    the slave (a sandboxed slave holds no capabilities, a root master all of
    them), several per program start under the seccomp transport. A worker
    never switches back: it serves only calls whose switch is equal to the
    one it entered, so no call ever runs with another's identity, and a
    failed or partial switch retires it. Calls with a umask or working
    directory of their own, and calls that find the worker busy, still get
    a thread of their own. An idle worker ends after a few seconds.
    """

    def __init__(self, switch: _Switch) -> None:
        self._switch = switch
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._call: Callable[[], Any] | None = None
        self._outcome: list[tuple[bool, Any]] = []
        self._done = threading.Event()
        self.busy = False
        self.retired = False
        self._thread = threading.Thread(target=self._serve, name="libc-service perform as slave", daemon=True)
        self._thread.start()

    def try_run(self, call: Callable[[], T]) -> tuple[bool, Any] | None:
        """``(ok, value)`` of ``call()`` on this worker; ``None`` when it is busy or retired."""
        with self._lock:
            if self.busy or self.retired:
                return None
            self.busy = True
            self._outcome = []
            self._done.clear()
            self._call = call
            self._wake.notify()
        self._done.wait()
        with self._lock:
            outcome = self._outcome[0]
            self.busy = False
        return outcome

    def _serve(self) -> None:
        try:
            self._switch.enter()
            entered = True
        except OSError as exc:
            entered = False
            failure = exc
        while True:
            with self._lock:
                if not self._wake.wait_for(lambda: self._call is not None, timeout=_WORKER_IDLE):
                    self.retired = True
                    _drop_worker(self._switch, self)
                    return
                call, self._call = self._call, None
            assert call is not None
            if entered:
                try:
                    self._outcome.append((True, call()))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._outcome.append((False, exc))
            else:
                logger.warning("cannot act as the slave (%s); failing the call with EPERM", failure)
                self._outcome.append(
                    (False, OSError(errno_module.EPERM, f"the master cannot take on the slave's identity: {failure}"))
                )
                with self._lock:
                    self.retired = True
                    _drop_worker(self._switch, self)
                self._done.set()
                return
            self._done.set()


#: Seconds an identity worker waits for its next call before it ends.
_WORKER_IDLE: Final = 5.0
_workers_lock = threading.Lock()
_workers: dict[_Switch, _IdentityWorker] = {}


def _drop_worker(switch: _Switch, worker: _IdentityWorker) -> None:
    with _workers_lock:
        if _workers.get(switch) is worker:
            del _workers[switch]


def _on_identity_worker(switch: _Switch, call: Callable[[], T]) -> tuple[bool, Any] | None:
    """Run ``call`` on the worker for ``switch`` (started when there is none); ``None``: it is busy."""
    with _workers_lock:
        worker = _workers.get(switch)
        if worker is None or worker.retired:
            worker = _workers[switch] = _IdentityWorker(switch)
    return worker.try_run(call)


def _as_slave(switch: _Switch | None, call: Callable[[], T]) -> T:
    """``call()`` as the slave: here, on the worker that holds its identity, or on a thread of its own."""
    if switch is None:
        return call()
    if switch.umask is None and switch.chdir is None:
        done = _on_identity_worker(switch, call)
        if done is not None:
            ok, result = done
            if not ok:
                raise result
            return result  # type: ignore[no-any-return]
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append((True, _run_switched(switch, call)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name="libc-service perform", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _on_thread(
    switch: _Switch | None,
    call: Callable[[], T],
    *,
    discard: Callable[[T], None] | None = None,
    cancel: Callable[[], None] | None = None,
) -> T:
    """Await ``call()`` run as the slave on a daemon thread.

    A result that arrives after the awaiting task gave up is passed to
    ``discard`` (it owns descriptors); ``cancel`` is called when the task is
    cancelled, to release the thread. The thread is a daemon, so a call
    that never returns cannot hold up the master's exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            if ok and discard is not None:
                discard(value)
        elif ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def body() -> None:
        value: Any
        try:
            ok, value = True, _run_switched(switch, call)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:  # the loop is closed: nobody will take it
            if ok and discard is not None:
                discard(value)

    threading.Thread(target=body, name="libc-service blocking call", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        raise


# ---------------------------------------------------------------- paths


def slave_self(text: str, pid: int, tid: int) -> str | None:
    """``text`` with a leading "the caller" name rewritten for process ``pid``.

    ``/proc/self/x`` becomes ``/proc/<pid>/x``, ``/proc/thread-self`` the
    thread's ``/proc/<pid>/task/<tid>``, ``/dev/fd/N`` and
    ``/dev/stdin|stdout|stderr`` the process's ``/proc/<pid>/fd/N``; the rest
    of the text is kept exactly (a trailing slash too). ``None`` when the text
    does not start with such a name. Raises ``EACCES`` when it does but the
    request did not say which process asked (``pid`` 0).
    """
    if not text.startswith("/"):
        return None
    names: list[str] = []
    ends: list[int] = []
    position = 0
    for part in text.split("/"):
        position += len(part) + 1
        if part in ("", "."):
            continue
        names.append(part)
        ends.append(position - 1)
        if len(names) == 2:
            break
    for prefix, replacement in _SELF_NAMES:
        if tuple(names) == prefix:
            if pid <= 0:
                raise OSError(errno_module.EACCES, f"{text}: names the calling process, which the request does not say")
            return replacement.format(pid=pid, tid=tid or pid) + text[ends[1] :]
    return None


@dataclass
class _Target:
    """Where the kernel resolves a path from: a directory descriptor, the exact
    text, the resolve bits the master adds, and whether ``dirfd`` is ours to close."""

    dirfd: int
    text: str
    resolve: int
    beneath: bool
    owned: tuple[int, ...] = ()
    #: Resolved by :func:`slavewalk.open_as_slave` for the requesting process and thread.
    walk: bool = False
    pid: int = 0
    tid: int = 0

    def close(self) -> None:
        for fd in self.owned:
            os.close(fd)
        self.owned = ()

    def __enter__(self) -> _Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _slave_cwd(request: Any) -> int:
    """The requesting thread's working directory, opened ``O_PATH``."""
    pid, tid = int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0))
    if pid <= 0:
        raise OSError(errno_module.EACCES, "a relative path, and the request names neither directory nor process")
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(f"/proc/{pid}/task/{tid or pid}/cwd", flags)
    except FileNotFoundError:
        return os.open(f"/proc/{pid}/cwd", flags)


def _target(request: Any, path: Any, dirfd: int | None, root: str | None) -> _Target:
    """Where and how the kernel must resolve the slave's ``path`` (see :class:`_Target`).

    Without a root the slave's text is resolved from its directory (or
    ``/``) by :mod:`libc_service.slavewalk`, which meets ``/proc/self`` and
    the caller's magic links wherever the walk reaches them; the text is
    never joined to a directory's name, so what it contains decides nothing.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    pid, tid = int(getattr(request, "pid", 0)), int(getattr(request, "tid", 0))
    owned: list[int] = []
    try:
        if not text.startswith("/"):
            if dirfd is None:
                dirfd = _slave_cwd(request)
                owned.append(dirfd)
            if root is None:
                return _Target(dirfd, text, 0, False, tuple(owned), walk=True, pid=pid, tid=tid)
            base = exact_name(dirfd)  # OSError when it cannot be named exactly: refused
            if base is None:
                # A removed directory (st_nlink == 0): nothing beneath it has
                # a name, and ".." from it is refused beneath a root, so
                # resolving from the descriptor itself is exact and cannot escape.
                return _Target(dirfd, text, _BENEATH if root is not None else _NO_MAGIC, root is not None, tuple(owned))
            text = join_to_directory(base, text)
        # An absolute text from here on.
        if root is None:
            return _Target(_AT_FDCWD, text, 0, False, tuple(owned), walk=True, pid=pid, tid=tid)
        own = slave_self(text, pid, tid)
        if own is not None:
            text = own
        try:
            relative = safepath.relative_to_root(root, text)
        except safepath.EscapeError:
            raise OSError(errno_module.EXDEV, f"{text} is not beneath {root}") from None
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        owned.append(root_fd)
        return _Target(root_fd, relative, _BENEATH, True, tuple(owned))
    except BaseException:
        for fd in owned:
            os.close(fd)
        raise


def _open_at(where: _Target, flags: int, mode: int = 0, extra: int = 0) -> int:
    """Open ``where`` with the kernel's resolution rules (``extra``: the slave's own resolve bits)."""
    if not safepath.takes_mode(flags):
        mode = 0
    if where.walk:
        return slavewalk.open_as_slave(where.dirfd, where.text, flags, mode, extra, where.pid, where.tid)
    if where.beneath:
        return safepath.open_resolved(where.dirfd, where.text, flags, mode, where.resolve | extra)
    bits = where.resolve | extra
    if bits and safepath.openat2_available():
        retries = 1 if extra & _RESOLVE_CACHED else 16
        for _ in range(retries):
            try:
                return safepath.raw_openat2(where.dirfd, where.text, flags, mode, bits)
            except BlockingIOError:
                if extra & _RESOLVE_CACHED:
                    raise  # the slave asked for RESOLVE_CACHED: EAGAIN is its answer
        raise OSError(errno_module.EAGAIN, "openat2 kept racing with renames", where.text)
    # No openat2 (Linux < 5.6): the plain walk, without the magic-link guard.
    return os.open(where.text, flags, mode, dir_fd=None if where.dirfd == _AT_FDCWD else where.dirfd)


def _split(where: _Target) -> tuple[str, str]:
    """``(parent text, last component)`` of ``where.text``, the last with its trailing slashes."""
    text = where.text
    stripped = text.rstrip("/")
    if not stripped:
        return "/", text  # "/" itself: the *at call ignores the directory for it
    head, separator, last = stripped.rpartition("/")
    if not separator:
        head = "."
    elif not head:
        head = "/"
    return head, last + text[len(stripped) :]


def _parent(where: _Target) -> tuple[int, str]:
    """Open the parent of ``where`` (``O_PATH``, resolved as ``where`` says): ``(fd, last)``."""
    head, last = _split(where)
    parent = _Target(where.dirfd, head, where.resolve, where.beneath, walk=where.walk, pid=where.pid, tid=where.tid)
    return _open_at(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), last


# ----------------------------------------------------------------- open


@dataclass(frozen=True)
class _Fifo:
    """A FIFO the slave opens blocking: the ``O_PATH`` descriptor of the very object."""

    path_fd: int
    flags: int


def _open_flags(request: Any) -> tuple[int, int, bool]:
    """The master's flags for the slave's open, its resolve bits, whether it asked for O_NONBLOCK."""
    flags, resolve_bits = safepath.open_flags(request.flags)
    return flags, resolve_bits, bool(flags & os.O_NONBLOCK)


def _perform_open(request: Any, root: str | None) -> Any:
    flags, resolve_bits, nonblocking = _open_flags(request)
    mode = int(getattr(request, "mode", None) or 0)
    creates = safepath.takes_mode(flags)
    switch = _switch_for(request, creates=creates)
    opened = _as_slave(switch, lambda: _open_now(request, root, flags, mode, resolve_bits, nonblocking, fifo_wait=True))
    if isinstance(opened, int):
        return WithFds(opened, [opened])
    return _open_fifo(opened, switch)


def open_descriptor(
    request: Any,
    root: str | None,
    flags: int,
    mode: int,
    *,
    resolve_bits: int = 0,
) -> int:
    """Open the request's path with explicit ``flags``, never blocking (for :mod:`safepath`).

    A FIFO opened this way does not wait for its other end: a read open
    returns at once and a write open without a reader fails with ``ENXIO``.
    """
    nonblocking = bool(flags & os.O_NONBLOCK)
    same_root_and_mounts(request)
    slavewalk.prepare()
    switch = _switch_for(request, creates=safepath.takes_mode(flags))
    fd = _as_slave(switch, lambda: _open_now(request, root, flags, mode, resolve_bits, nonblocking, fifo_wait=False))
    assert isinstance(fd, int)
    return fd


def _open_now(
    request: Any,
    root: str | None,
    flags: int,
    mode: int,
    resolve_bits: int,
    nonblocking: bool,
    *,
    fifo_wait: bool,
) -> int | _Fifo:
    """The open itself, as the slave; a :class:`_Fifo` when it must wait for the other end."""
    with _target(request, request.path, getattr(request, "dirfd", None), root) as where:
        if flags & os.O_PATH:
            return _open_at(where, flags & _O_PATH_FLAGS, 0, resolve_bits)
        accmode = flags & os.O_ACCMODE
        may_wait = (
            fifo_wait
            and not nonblocking
            and accmode != os.O_RDWR
            and not flags & (os.O_DIRECTORY | os.O_EXCL)
            and flags & _O_TMPFILE != _O_TMPFILE
        )
        if may_wait:
            # Look before opening: even a non-blocking open of a FIFO is seen
            # by a process blocked at its other end.
            try:
                path_fd = _open_at(where, os.O_PATH | os.O_CLOEXEC | (flags & os.O_NOFOLLOW), 0, resolve_bits)
            except OSError:
                path_fd = -1  # not there (yet): the real open says why, or creates it
            if path_fd >= 0:
                try:
                    is_fifo = stat_module.S_ISFIFO(os.fstat(path_fd).st_mode)
                except BaseException:
                    os.close(path_fd)
                    raise
                if is_fifo:
                    return _Fifo(path_fd, flags & ~(os.O_CREAT | os.O_NOFOLLOW | os.O_TRUNC))
                os.close(path_fd)
        fd = _open_at(where, flags | os.O_NONBLOCK, mode, resolve_bits)
        if not nonblocking:
            try:
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
        return fd


def _open_fifo(fifo: _Fifo, switch: _Switch | None) -> Any:
    """Open a FIFO blocking, without blocking a running event loop."""
    reopen = f"/proc/self/fd/{fifo.path_fd}"

    def blocking_open() -> int:
        return os.open(reopen, fifo.flags & ~os.O_NONBLOCK)

    if _running_loop() is None:
        try:
            fd = _as_slave(switch, blocking_open)
        finally:
            os.close(fifo.path_fd)
        return WithFds(fd, [fd])
    return Rendezvous(_await_fifo(fifo, switch, blocking_open))


async def _await_fifo(fifo: _Fifo, switch: _Switch | None, blocking_open: Callable[[], int]) -> WithFds:
    lock = threading.Lock()
    state: dict[str, Any] = {"done": False, "peer": -1}

    def opener() -> int:
        try:
            return blocking_open()
        finally:
            with lock:
                state["done"] = True
                if state["peer"] >= 0:
                    os.close(state["peer"])
                os.close(fifo.path_fd)

    def release() -> None:
        # Open the other end without blocking, through the master's own O_PATH
        # descriptor of the same FIFO; keep it open until the thread is out.
        with lock:
            if state["done"]:
                return
            other = os.O_WRONLY if fifo.flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDONLY
            for mode in (os.O_RDWR, other):
                try:
                    state["peer"] = os.open(f"/proc/self/fd/{fifo.path_fd}", mode | os.O_NONBLOCK | os.O_CLOEXEC)
                    return
                except OSError as exc:
                    failure = exc
            logger.warning("cannot release a thread blocked opening a FIFO (%s); it waits for a peer", failure)

    fd = await _on_thread(switch, opener, discard=os.close, cancel=release)
    return WithFds(fd, [fd])


def installable(request: Any, fd: int) -> int:
    """A descriptor of ``fd``'s object that another process can be given: ``fd`` itself, or a new one.

    The seccomp transport installs descriptors with ``SECCOMP_IOCTL_NOTIF_ADDFD``,
    which refuses an ``O_PATH`` descriptor (``EBADF``). An ``O_PATH``
    descriptor of a directory or a regular file is reopened read-only from
    the very object (through the master's descriptor, so no name is walked
    again) with the slave's credentials: it then also lists or reads what
    the slave may list or read, which the policy's conditions count an
    ``O_PATH`` open as (it writes nothing). Of any other object — a
    symlink, a FIFO, a socket, a device, whose open is not free of effects
    or not possible — no such descriptor exists: ``EOPNOTSUPP`` (which is
    also what glibc's ``fchmodat(AT_SYMLINK_NOFOLLOW)`` says of a symlink
    after its ``O_PATH`` open). A new descriptor is the caller's to close;
    ``fd`` stays the caller's either way.
    """
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        return fd
    mode = os.fstat(fd).st_mode
    if stat_module.S_ISDIR(mode):
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    elif stat_module.S_ISREG(mode):
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    else:
        raise OSError(errno_module.EOPNOTSUPP, "an O_PATH descriptor of this kind of file cannot be installed")
    reopened = _as_slave(_switch_for(request), lambda: os.open(f"/proc/self/fd/{fd}", flags))
    if flags & os.O_NONBLOCK:
        os.set_blocking(reopened, True)
    return reopened


# ------------------------------------------------------------ stat, access


def _perform_stat(request: Any, root: str | None) -> Stat:
    no_follow = os.O_NOFOLLOW if request.function == "lstat" else 0
    return _as_slave(_switch_for(request), lambda: _stat_now(request, root, no_follow))


def _stat_now(request: Any, root: str | None, no_follow: int) -> Stat:
    with _target(request, request.path, request.dirfd, root) as where:
        fd = _open_at(where, os.O_PATH | os.O_CLOEXEC | no_follow)
    try:
        return stat_of(fd)
    finally:
        os.close(fd)


def _perform_access(request: Any, root: str | None) -> int:
    amode = 0
    if request.amode != "f":
        amode = sum({"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}[name] for name in request.amode)
    effective = request.function == "eaccess"
    switch = _switch_for(request, real_ids=not effective)
    return _as_slave(switch, lambda: _access_now(request, root, amode, effective))


def _access_now(request: Any, root: str | None, amode: int, effective: bool) -> int:
    with _target(request, request.path, request.dirfd, root) as where:
        fd = _open_at(where, os.O_PATH | os.O_CLOEXEC)
    try:
        if amode == 0:
            return 0  # F_OK: it exists, the open found it
        flags = _AT_EMPTY_PATH | (_AT_EACCESS if effective else 0)
        try:
            kernel.call("faccessat2", ctypes.c_int(fd), b"", ctypes.c_int(amode), ctypes.c_int(flags))
        except OSError as exc:
            if exc.errno not in (errno_module.ENOSYS, errno_module.EINVAL):
                raise OSError(exc.errno, os.strerror(exc.errno or 0), str(request.path)) from None
            # Linux < 5.8: the same object through the master's own descriptor.
            if not os.access(f"/proc/self/fd/{fd}", amode, effective_ids=effective):
                raise OSError(errno_module.EACCES, os.strerror(errno_module.EACCES), str(request.path)) from None
        return 0
    finally:
        os.close(fd)


# ------------------------------------------------------------ mutations


def _perform_mkdir(request: Any, root: str | None) -> int:
    def mkdir(parent: int, name: str) -> None:
        os.mkdir(name, request.mode, dir_fd=parent)

    return _as_slave(_switch_for(request, creates=True), lambda: _in_parent(request, root, mkdir))


def _perform_rmdir(request: Any, root: str | None) -> int:
    return _as_slave(_switch_for(request), lambda: _in_parent(request, root, lambda p, n: os.rmdir(n, dir_fd=p)))


def _perform_unlink(request: Any, root: str | None) -> int:
    return _as_slave(_switch_for(request), lambda: _in_parent(request, root, lambda p, n: os.unlink(n, dir_fd=p)))


def _in_parent(request: Any, root: str | None, change: Callable[[int, str], None]) -> int:
    with _target(request, request.path, request.dirfd, root) as where:
        parent, name = _parent(where)
    try:
        change(parent, name)
    finally:
        os.close(parent)
    return 0


def _perform_rename(request: Any, root: str | None) -> int:
    return _as_slave(_switch_for(request), lambda: _rename_now(request, root))


def _rename_now(request: Any, root: str | None) -> int:
    with _target(request, request.path1, request.dirfd1, root) as old:
        old_parent, old_name = _parent(old)
    try:
        with _target(request, request.path2, request.dirfd2, root) as new:
            new_parent, new_name = _parent(new)
        try:
            if getattr(request, "no_replace", False):
                kernel.call(
                    "renameat2",
                    ctypes.c_int(old_parent),
                    os.fsencode(old_name),
                    ctypes.c_int(new_parent),
                    os.fsencode(new_name),
                    ctypes.c_uint(_RENAME_NOREPLACE),
                )
            else:
                os.rename(old_name, new_name, src_dir_fd=old_parent, dst_dir_fd=new_parent)
        finally:
            os.close(new_parent)
    finally:
        os.close(old_parent)
    return 0


# -------------------------------------------------------------- sockets

#: Options a socket that replaces the slave's takes from it: those that
#: change what bind and connect do, and those a program sets before
#: connecting that the connection keeps. Compared and copied as raw bytes.
_CARRIED_OPTIONS: Final = (
    (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    (socket.SOL_SOCKET, getattr(socket, "SO_REUSEPORT", 15)),
    (socket.SOL_SOCKET, socket.SO_BROADCAST),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    (socket.SOL_SOCKET, socket.SO_OOBINLINE),
    (socket.SOL_SOCKET, socket.SO_LINGER),
    (socket.SOL_SOCKET, getattr(socket, "SO_PASSCRED", 16)),
    (socket.SOL_SOCKET, getattr(socket, "SO_PRIORITY", 12)),
    (socket.SOL_SOCKET, socket.SO_RCVLOWAT),
    (socket.SOL_SOCKET, socket.SO_RCVTIMEO),
    (socket.SOL_SOCKET, socket.SO_SNDTIMEO),
    (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
    (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TCLASS", 67)),
    (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 4)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 5)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 6)),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18)),
    (socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15)),
    (socket.IPPROTO_IP, socket.IP_TOS),
    (socket.IPPROTO_IP, socket.IP_TTL),
)
#: Buffer sizes: the kernel doubles what is set, so half of what is read is set.
_BUFFER_OPTIONS: Final = ((socket.SOL_SOCKET, socket.SO_SNDBUF), (socket.SOL_SOCKET, socket.SO_RCVBUF))
_SIOCGSKNS: Final = 0x894C
_FAMILY_OF: Final = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}


def _bound(probe: socket.socket) -> bool:
    try:
        name = probe.getsockname()
    except OSError:
        return False
    if probe.family in (socket.AF_INET, socket.AF_INET6):
        return bool(name[1])
    return bool(name)


def _network_namespace(fd: int, pid: int) -> tuple[int, int] | None:
    """The network namespace socket ``fd`` belongs to (``SIOCGSKNS``), else process ``pid``'s; ``None``: unknown."""
    try:
        namespace = fcntl.ioctl(fd, _SIOCGSKNS, 0)
    except OSError:  # EPERM without CAP_NET_ADMIN over it, ENOTTY before Linux 4.9
        namespace = -1
    try:
        found = os.fstat(namespace) if namespace >= 0 else os.stat(f"/proc/{pid}/ns/net") if pid > 0 else None
    except OSError:
        return None
    finally:
        if namespace >= 0:
            os.close(namespace)
    return None if found is None else (found.st_dev, found.st_ino)


@functools.cache
def _own_network_namespace() -> tuple[int, int]:
    found = os.stat("/proc/self/ns/net")
    return found.st_dev, found.st_ino


def _socket_for(request: Any) -> tuple[socket.socket, bool]:
    """The socket to bind or connect (the master's reference), and whether the slave's was non-blocking.

    The slave's own socket wherever the master can act on it: a unix
    socket named by a path (the filesystem does not depend on the network
    namespace), a socket of the master's network namespace, or one bound
    already. Binding or connecting *it* keeps everything the program did
    to it — options, ``epoll`` registrations, other threads' and other
    processes' view of it, its ``getsockname``. Otherwise (an inet or
    abstract unix socket made in the sandbox's own network namespace) a
    socket like it is made in the master's namespace, with the options of
    ``_CARRIED_OPTIONS`` and the buffer sizes copied; it replaces the slave's.
    """
    slave_fd = int(request.socket)
    nonblocking = not os.get_blocking(slave_fd)
    probe = socket.socket(fileno=slave_fd)
    try:
        by_path = request.function.endswith("_unix") and not request.abstract
        if by_path or _bound(probe):
            return socket.socket(fileno=os.dup(slave_fd)), nonblocking
        if _network_namespace(slave_fd, int(getattr(request, "pid", 0))) == _own_network_namespace():
            return socket.socket(fileno=os.dup(slave_fd)), nonblocking
        fresh = socket.socket(probe.family, probe.type, probe.proto)
        try:
            _carry_options(probe, fresh)
        except BaseException:
            fresh.close()
            raise
        return fresh, nonblocking
    finally:
        probe.detach()


def _carry_options(source: socket.socket, target: socket.socket) -> None:
    for level, name in _CARRIED_OPTIONS:
        try:
            value = source.getsockopt(level, name, 64)
            if value != target.getsockopt(level, name, 64):
                target.setsockopt(level, name, value)
        except OSError:
            continue  # not an option of this family, or not ours to set
    for level, name in _BUFFER_OPTIONS:
        try:
            size = source.getsockopt(level, name)
            if size != target.getsockopt(level, name):
                target.setsockopt(level, name, size // 2)
        except OSError:
            continue


def _handed_over(sock: socket.socket, nonblocking: bool) -> WithFds:
    sock.setblocking(not nonblocking)
    fd = sock.detach()
    return WithFds(0, [fd])


def _dropped(sock: socket.socket, nonblocking: bool) -> None:
    """Give up ``sock`` after a failure: the slave's own keeps its blocking mode."""
    try:
        sock.setblocking(not nonblocking)
    except OSError:
        pass
    sock.close()


def _address(request: Any) -> Any:
    function = request.function
    if function.endswith("_inet6"):
        address = request.address
        scope = int(address.scope_id or 0) if address.scope_id else 0
        return (str(address).split("%", 1)[0], request.port, 0, scope)
    return (str(request.address), request.port)


def _sockaddr(request: Any) -> bytes:
    """The request's inet address as the slave's ``struct sockaddr_in``/``sockaddr_in6``."""
    port = struct.pack("!H", request.port)
    packed: bytes = request.address.packed
    if request.function.endswith("_inet6"):
        scope = int(request.address.scope_id or 0) if request.address.scope_id else 0
        return struct.pack("=H", socket.AF_INET6) + port + bytes(4) + packed + struct.pack("=I", scope)
    return struct.pack("=H", socket.AF_INET) + port + packed + bytes(8)


def _inet_call(name: str, sock: socket.socket, request: Any) -> int:
    """``bind``/``connect`` of an inet request: 0 or the kernel's errno.

    A socket of the other family (an ``AF_INET6`` socket given an
    ``AF_INET`` address) gets the slave's address structure as it is, so
    the kernel answers as it would have the slave (``EINVAL`` for a TCP
    connect, a v4-mapped connection for UDP, ``EAFNOSUPPORT`` …).
    """
    if sock.family == _FAMILY_OF[request.function.rsplit("_", 1)[1]]:
        if name == "connect":
            return sock.connect_ex(_address(request))
        sock.bind(_address(request))
        return 0
    raw = _sockaddr(request)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    if getattr(kernel.libc, name)(ctypes.c_int(sock.fileno()), buffer, ctypes.c_uint(len(raw))) == 0:
        return 0
    code = ctypes.get_errno()
    if name == "bind":
        raise OSError(code, os.strerror(code))
    return code


def _perform_bind_inet(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        _as_slave(_switch_for(request), lambda: _inet_call("bind", sock, request))
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _handed_over(sock, nonblocking)


def _perform_bind_unix(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        if request.abstract:
            _as_slave(_switch_for(request), lambda: sock.bind(os.fsencode(str(request.path))))
            return _handed_over(sock, nonblocking)
        # Created in the parent opened as the slave resolves it: bind the last
        # component from a thread whose working directory is that parent
        # (and whose umask is the slave's: the socket file is created).
        with _target(request, request.path, getattr(request, "dirfd", None), root) as where:
            parent, name = _as_slave(_switch_for(request), lambda: _parent(where))
        try:
            if root is None and _bind_exact(request, sock, parent):
                return _handed_over(sock, nonblocking)
            switch = _switch_for(request, creates=True, chdir=parent)
            _as_slave(switch, lambda: sock.bind(os.fsencode(name)))
        finally:
            os.close(parent)
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _handed_over(sock, nonblocking)


class _Unconfined(Exception):
    """The bind thread could not confine itself (no Landlock)."""


def _bind_exact(request: Any, sock: socket.socket, parent: int) -> bool:
    """Bind the slave's exact text, so ``getsockname`` reports it; ``False``: bind the last name instead.

    The text is resolved from the slave's working directory (or dirfd) by
    a thread that may make socket files only beneath ``parent``, the
    directory the guarded walk found (:mod:`libc_service.bindguard`). A
    text that leads elsewhere (through ``/proc/self``, a magic link) is
    refused there with ``EACCES``, and so is one the slave may not bind
    at all: the bind of the last name in ``parent`` then gives the
    kernel's answer for the object the slave names.
    """
    from . import bindguard

    if not bindguard.available():
        return False
    text = os.fsencode(str(request.path))
    start = getattr(request, "dirfd", None)
    owned = -1
    if start is None:
        # An absolute text ignores the working directory: any will do.
        start = parent if text.startswith(b"/") else _slave_cwd(request)
        owned = -1 if start == parent else start

    def bind() -> None:
        try:
            bindguard.confine_socket_files(parent)
        except OSError as exc:
            raise _Unconfined(str(exc)) from None
        sock.bind(text)

    try:
        _as_slave(_switch_for(request, creates=True, chdir=int(start)), bind)
    except (_Unconfined, PermissionError):
        return False
    finally:
        if owned >= 0:
            os.close(owned)
    return True


def _perform_connect(request: Any, root: str | None) -> Any:
    sock, nonblocking = _socket_for(request)
    try:
        attempt: Callable[[], int]
        if request.function == "connect_unix" and not request.abstract:

            def open_socket_file() -> int:
                with _target(request, request.path, getattr(request, "dirfd", None), root) as where:
                    return _open_at(where, os.O_PATH | os.O_CLOEXEC)

            switch = _switch_for(request)
            path_fd = _as_slave(switch, open_socket_file)
            # The very socket file the kernel resolved, through the master's descriptor.
            address = f"/proc/self/fd/{path_fd}"

            def attempt() -> int:
                return sock.connect_ex(address)

        elif request.function == "connect_unix":
            switch, path_fd = _switch_for(request), -1
            name = os.fsencode(str(request.path))

            def attempt() -> int:
                return sock.connect_ex(name)

        else:
            switch, path_fd = _switch_for(request), -1

            def attempt() -> int:
                return _inet_call("connect", sock, request)

        # A non-blocking connect of the slave's own socket in progress is
        # the slave's to finish, as natively: EINPROGRESS, then its poll.
        in_progress_is_answer = nonblocking and os.fstat(sock.fileno()).st_ino == os.fstat(request.socket).st_ino
        sock.setblocking(False)
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    return _connect(sock, attempt, switch, nonblocking, path_fd, in_progress_is_answer)


def _connect(
    sock: socket.socket,
    attempt: Callable[[], int],
    switch: _Switch | None,
    nonblocking: bool,
    path_fd: int,
    in_progress_is_answer: bool,
) -> Any:
    """Start a non-blocking connect as the slave; finish it without blocking a running loop.

    Once the connection is made, ``connect`` is called once more, as a
    blocking ``connect`` does in the kernel before it returns: the socket
    is then "connected" to the kernel too (a later ``connect`` fails with
    ``EISCONN``, as natively, instead of returning 0).
    """

    def close_path() -> None:
        if path_fd >= 0:
            os.close(path_fd)

    try:
        code = _as_slave(switch, attempt)
    except BaseException:
        close_path()
        _dropped(sock, nonblocking)
        raise
    if code == 0:
        close_path()
        return _handed_over(sock, nonblocking)
    if (
        code not in (errno_module.EINPROGRESS, errno_module.EAGAIN)
        or (code == errno_module.EAGAIN and nonblocking)
        or (code == errno_module.EINPROGRESS and in_progress_is_answer)
    ):
        close_path()
        _dropped(sock, nonblocking)
        raise OSError(code, os.strerror(code))
    if _running_loop() is None:
        try:
            while code == errno_module.EAGAIN:  # a unix listener's backlog is full: try again
                time.sleep(_BACKLOG_RETRY)
                code = _as_slave(switch, attempt)
            if code == errno_module.EINPROGRESS:
                readiness.poll_events({sock.fileno(): readiness.WRITABLE})
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or _as_slave(switch, attempt)
        except BaseException:
            close_path()
            _dropped(sock, nonblocking)
            raise
        close_path()
        if code:
            _dropped(sock, nonblocking)
            raise OSError(code, os.strerror(code))
        return _handed_over(sock, nonblocking)
    return _await_connect(sock, code, attempt, switch, nonblocking, close_path)


async def _await_connect(
    sock: socket.socket,
    code: int,
    attempt: Callable[[], int],
    switch: _Switch | None,
    nonblocking: bool,
    close_path: Callable[[], None],
) -> WithFds:
    try:
        while code == errno_module.EAGAIN:
            await asyncio.sleep(_BACKLOG_RETRY)
            code = _as_slave(switch, attempt)
        if code == errno_module.EINPROGRESS:
            await readiness.writable(sock.fileno())
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or _as_slave(switch, attempt)
        if code:
            raise OSError(code, os.strerror(code))
    except BaseException:
        _dropped(sock, nonblocking)
        raise
    finally:
        close_path()
    return _handed_over(sock, nonblocking)


# ---------------------------------------------------------- getaddrinfo

#: The wire's protocol hint as the services database names it.
_SERVICE_PROTOCOLS: Final = {"tcp": ("tcp",), "udp": ("udp",), None: ("tcp", "udp")}
#: The most addresses one answer carries (the wire's bound).
_MAX_ANSWER: Final = 128


def _service_port(request: Any) -> int:
    """The port ``request.service`` names, as glibc reads it: decimal digits, else ``/etc/services``."""
    service = request.service
    if service is None:
        return 0
    if service.isascii() and service.isdigit():
        return min(int(service), 2**64 - 1) & 0xFFFF  # strtoul, then htons
    for protocol in _SERVICE_PROTOCOLS[request.protocol]:
        try:
            return socket.getservbyname(service, protocol)
        except OSError:
            continue
    raise socket.gaierror(socket.EAI_SERVICE, "Servname not supported for ai_socktype")


def _numeric_addresses(node: str) -> list[str] | None:
    """The address a numeric ``node`` is, read by libc itself (no lookup); ``None`` for a name."""
    try:
        found = socket.getaddrinfo(node, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return list(dict.fromkeys(_host_text(family, address) for family, _, _, _, address in found))


def _host_text(family: int, address: Any) -> str:
    host = str(address[0]).split("%", 1)[0]
    if family == socket.AF_INET6 and address[3]:
        host += f"%{int(address[3])}"
    return host


def _perform_getaddrinfo(request: Any, root: str | None) -> Any:
    """Numeric nodes and the loopback (no node) at once; a name only if the policy allows it, without blocking.

    A name is looked up by the serving policy's :class:`~libc_service.Resolver`
    (``/etc/hosts``, then DNS, asynchronously, with TTLs), and only when
    one of the policy's ``named()``/``resolved()`` patterns matches it:
    any other name is ``noname`` and no nameserver ever sees it. The
    answers are recorded for ``resolved()`` in the process tree's scope.
    """
    port = _service_port(request)
    node = request.node
    if node is None:  # the loopback addresses, IPv6 first (AI_PASSIVE never reaches the master)
        return [replies.AddrInfo("::1", port), replies.AddrInfo("127.0.0.1", port)]
    numeric = _numeric_addresses(node)
    if numeric is not None:
        return [replies.AddrInfo(host, port) for host in numeric]
    labels = names.host_labels(node)
    scope = names.current_scope()
    if labels is None or (scope is not None and not scope.may_resolve(labels)):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    lookup = _resolve_name(scope, labels, port)
    if _running_loop() is None:
        return asyncio.run(lookup)
    return lookup


async def _resolve_name(scope: names.NameScope | None, labels: tuple[str, ...], port: int) -> list[AddrInfo]:
    resolver = scope.resolver if scope is not None else Resolver.system()
    found = (await resolver.lookup(labels))[:_MAX_ANSWER]
    if scope is not None:
        scope.answers.record(".".join(labels), found)
    return [replies.AddrInfo(address, port) for address, _ in found]


# ------------------------------------------------------------ metadata changes

_AT_SYMLINK_NOFOLLOW: Final = 0x100
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2
_NS: Final = 1_000_000_000
_Change = Callable[[int, bytes, int], int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_call(name: str, *args: Any) -> int:
    """A libc function (a ``-1`` with errno becomes ``OSError``)."""
    result = int(getattr(kernel.libc, name)(*args))
    if result < 0:
        raise kernel.last_error()
    return result


def _times(request: Any) -> Any:
    """The request's atime and mtime as utimensat's ``struct timespec[2]``."""
    specs = (_Timespec * 2)()
    for spec, value in zip(specs, (request.atime, request.mtime)):
        if value == "now":
            spec.tv_nsec = _UTIME_NOW
        elif value == "omit":
            spec.tv_nsec = _UTIME_OMIT
        else:
            spec.tv_sec, spec.tv_nsec = divmod(int(value), _NS)
    return specs


def _metadata_change(request: Any) -> _Change:
    """``change(dirfd, name, at_flags)``: the request's ``*at`` call on one name."""
    function = request.function.removeprefix("f")
    if function == "chmod":
        mode = int(request.mode)
        return lambda fd, name, flags: _libc_call(
            "fchmodat", ctypes.c_int(fd), name, ctypes.c_uint(mode), ctypes.c_int(flags)
        )
    if function == "chown":
        owner = 0xFFFFFFFF if request.owner is None else int(request.owner)
        group = 0xFFFFFFFF if request.group is None else int(request.group)
        return lambda fd, name, flags: _libc_call(
            "fchownat", ctypes.c_int(fd), name, ctypes.c_uint(owner), ctypes.c_uint(group), ctypes.c_int(flags)
        )
    times = _times(request)
    return lambda fd, name, flags: _libc_call("utimensat", ctypes.c_int(fd), name, times, ctypes.c_int(flags))


def _perform_metadata(request: Any, root: str | None) -> int:
    change = _metadata_change(request)
    return _as_slave(_switch_for(request), lambda: _metadata_now(request, root, change))


def _metadata_now(request: Any, root: str | None, change: _Change) -> int:
    with _target(request, request.path, request.dirfd, root) as where:
        if request.no_follow and not where.text.endswith("/"):
            # The final name itself, never followed: an *at call on it in
            # its parent (opened as the slave's path is resolved).
            parent, name = _parent(where)
            try:
                change(parent, os.fsencode(name), _AT_SYMLINK_NOFOLLOW)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(request.path)) from None
            finally:
                os.close(parent)
            return 0
        # Followed: the object the slave's path leads to, found with the
        # kernel's rules (beneath a root, no magic links), then changed
        # through the master's own descriptor of it.
        fd = _open_at(where, os.O_PATH | os.O_CLOEXEC)
    try:
        change(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), 0)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(request.path)) from None
    finally:
        os.close(fd)
    return 0


def _perform_fd_metadata(request: Any, root: str | None) -> int:
    fd = int(request.fd)
    if root is not None:
        _check_beneath(fd, root)
    function = request.function
    arguments: tuple[Any, ...]
    if function == "fchmod":
        arguments = (ctypes.c_uint(request.mode),)
    elif function == "fchown":
        owner = 0xFFFFFFFF if request.owner is None else int(request.owner)
        group = 0xFFFFFFFF if request.group is None else int(request.group)
        arguments = (ctypes.c_uint(owner), ctypes.c_uint(group))
    else:
        arguments = (_times(request),)
    _as_slave(_switch_for(request), lambda: _libc_call(function, ctypes.c_int(fd), *arguments))
    return 0


def _check_beneath(fd: int, root: str) -> None:
    """Refuse (``EXDEV``) a descriptor whose file is not the one its name beneath ``root`` leads to."""
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
        relative = safepath.relative_to_root(root, name)
    except (OSError, safepath.EscapeError):
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}") from None
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        probe = safepath.open_resolved(root_fd, relative, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0, _BENEATH)
    except OSError:
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}") from None
    finally:
        os.close(root_fd)
    try:
        mine, theirs = os.fstat(probe), os.fstat(fd)
    finally:
        os.close(probe)
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        raise OSError(errno_module.EXDEV, f"descriptor {fd} is not beneath {root}")


_Performer = Callable[[Any, str | None], Any]

#: The functions whose requests name a file by path (resolved from the slave's root).
_PATH_FUNCTIONS: Final = frozenset(
    {
        "open",
        "openat",
        "stat",
        "lstat",
        "access",
        "eaccess",
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "connect_unix",
        "bind_unix",
        "chmod",
        "chown",
        "utimens",
    }
)

_PERFORMERS: Final[dict[str, _Performer]] = {
    "open": _perform_open,
    "openat": _perform_open,
    "stat": _perform_stat,
    "lstat": _perform_stat,
    "access": _perform_access,
    "eaccess": _perform_access,
    "mkdir": _perform_mkdir,
    "rmdir": _perform_rmdir,
    "unlink": _perform_unlink,
    "rename": _perform_rename,
    "connect_unix": _perform_connect,
    "connect_inet": _perform_connect,
    "connect_inet6": _perform_connect,
    "bind_unix": _perform_bind_unix,
    "bind_inet": _perform_bind_inet,
    "bind_inet6": _perform_bind_inet,
    "getaddrinfo": _perform_getaddrinfo,
    "chmod": _perform_metadata,
    "chown": _perform_metadata,
    "utimens": _perform_metadata,
    "fchmod": _perform_fd_metadata,
    "fchown": _perform_fd_metadata,
    "futimens": _perform_fd_metadata,
}
