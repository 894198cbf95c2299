"""Act as the slave: a thread takes on its credentials, capabilities, umask and working directory.

What :func:`libc_service.acting.perform` runs a call under, so that the kernel
checks the slave's authority and not the master's. The raw ``setresuid``,
``setresgid``, ``setgroups`` and ``capset`` system calls change the calling
thread only (glibc's wrappers would change every thread of the master),
so the call runs on a thread of its own — or, for an identity without a
umask or working directory of its own, on a thread kept for exactly that
identity (:class:`_IdentityWorker`), which saves starting and switching a
thread for every call. A call that may block runs on a daemon thread the
event loop awaits (:func:`on_thread`).
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from libc_service.kernel import libc as kernel
from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["Switch", "as_slave", "on_thread", "run_switched", "running_loop", "switch_for"]

#: Named as the module that documents these calls, where a policy's logging looks for them.
logger = logging.getLogger("libc_service.acting.perform")

T = TypeVar("T")

_CLONE_FS: Final = 0x00000200
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


@dataclass(frozen=True)
class Switch:
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


def switch_for(
    request: Any, *, creates: bool = False, chdir: int | None = None, real_ids: bool = False
) -> Switch | None:
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
    return Switch(ids, mask, chdir, caps)


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


def run_switched(switch: Switch | None, call: Callable[[], T]) -> T:
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

    def __init__(self, switch: Switch) -> None:
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
_workers: dict[Switch, _IdentityWorker] = {}


def _drop_worker(switch: Switch, worker: _IdentityWorker) -> None:
    with _workers_lock:
        if _workers.get(switch) is worker:
            del _workers[switch]


def _on_identity_worker(switch: Switch, call: Callable[[], T]) -> tuple[bool, Any] | None:
    """Run ``call`` on the worker for ``switch`` (started when there is none); ``None``: it is busy."""
    with _workers_lock:
        worker = _workers.get(switch)
        if worker is None or worker.retired:
            worker = _workers[switch] = _IdentityWorker(switch)
    return worker.try_run(call)


def as_slave(switch: Switch | None, call: Callable[[], T]) -> T:
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
            outcome.append((True, run_switched(switch, call)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name="libc-service perform", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def on_thread(
    switch: Switch | None,
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
            ok, value = True, run_switched(switch, call)
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
