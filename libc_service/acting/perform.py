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
  :mod:`libc_service.acting.slavewalk` name by name, never joined or rewritten as
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
  see :func:`perform`), a :class:`~libc_service.policy.rendezvous.Rendezvous`: the
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
  records the answers for ``resolved()`` (:mod:`libc_service.policy.names`).

With ``beneath=ROOT`` every path is resolved beneath ``ROOT`` by the kernel
(``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``; the component walker of
:mod:`libc_service.acting.safepath` where ``openat2`` is missing): opens and stats
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

import os
from collections.abc import Callable
from typing import Any, Final

from libc_service.acting import slavewalk
from libc_service.acting.files import (
    perform_access,
    perform_fd_metadata,
    perform_metadata,
    perform_mkdir,
    perform_open,
    perform_rename,
    perform_rmdir,
    perform_stat,
    perform_unlink,
)
from libc_service.acting.files import open_descriptor as open_descriptor
from libc_service.acting.net import perform_bind_inet, perform_bind_unix, perform_connect, perform_getaddrinfo
from libc_service.acting.target import same_root_and_mounts

__all__ = ["perform"]


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
    "open": perform_open,
    "openat": perform_open,
    "stat": perform_stat,
    "lstat": perform_stat,
    "access": perform_access,
    "eaccess": perform_access,
    "mkdir": perform_mkdir,
    "rmdir": perform_rmdir,
    "unlink": perform_unlink,
    "rename": perform_rename,
    "connect_unix": perform_connect,
    "connect_inet": perform_connect,
    "connect_inet6": perform_connect,
    "bind_unix": perform_bind_unix,
    "bind_inet": perform_bind_inet,
    "bind_inet6": perform_bind_inet,
    "getaddrinfo": perform_getaddrinfo,
    "chmod": perform_metadata,
    "chown": perform_metadata,
    "utimens": perform_metadata,
    "fchmod": perform_fd_metadata,
    "fchown": perform_fd_metadata,
    "futimens": perform_fd_metadata,
}
