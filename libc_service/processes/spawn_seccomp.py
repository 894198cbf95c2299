"""The seccomp wiring of a program's tree (``spawn(seccomp=True)``).

The child installs a seccomp filter whose notifications the same router
decides (:mod:`libc_service.seccomp`): the calls the shim cannot see
(static programs, raw system calls, libc's own opens). It hands the
listener over before ``exec``; the master serves it as one more session
of the tree, while the shim's own sessions only relay ``getaddrinfo`` to
the router. :mod:`libc_service.seccomp` is imported only here, and only
for a program started with ``seccomp=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextvars import Context
from pathlib import Path
from typing import TYPE_CHECKING

from libc_service.kernel.lazyimport import on_first_use

if TYPE_CHECKING:
    import asyncio
    from libc_service.seccomp.handoff import ListenerHandoff
    from libc_service.seccomp.session import SeccompSession
    from libc_service.policy.router import Router
    from libc_service.confinement.sandbox import PreparedSandbox, Sandbox
else:
    asyncio = on_first_use("asyncio", globals())

__all__ = ["SeccompWiring"]

#: The spawn family logs under one name: what a user configures, and what ``trace`` filters.
logger = logging.getLogger("libc_service.processes.spawn")


class SeccompWiring:
    """One tree's seccomp transport: the listener's hand-off, the shim's relay, the listener's session.

    :meth:`handoff` before the fork, :meth:`note_loading` once the sandbox
    is prepared, :meth:`serve` once the child has handed its listener over,
    :meth:`close` at the tree's end.
    """

    def __init__(self, router: Router, sandbox: Sandbox | None) -> None:
        self.router = router
        self._sandbox = sandbox
        #: What serves the shim's sessions (getaddrinfo only; see notify.shim_relay), once handed off.
        self.shim_router: Router | None = None
        #: The listener's session, once the program runs.
        self.session: SeccompSession | None = None
        self._task: asyncio.Task[None] | None = None
        #: Files and trees loading the program needs (see ``note_loading``).
        self._loading: tuple[list[str], list[str]] = ([], [])

    def handoff(self) -> ListenerHandoff:
        """A hand-off for the child's listener (the caller closes it); the shim's sessions relay from now on."""
        from libc_service.seccomp.handoff import ListenerHandoff
        from libc_service.seccomp.relay import shim_relay

        handoff = ListenerHandoff()
        self.shim_router = shim_relay(self.router)
        if self._sandbox is None:
            logger.warning(
                "seccomp without a sandbox: a call the policy forwards is continued by the "
                "kernel unconfined, with arguments the program may change meanwhile",
                extra={"confinement": True},  # of no concern to a caller that confines nothing (trace)
            )
        return handoff

    def note_loading(
        self,
        argv: Sequence[str],
        shim: Path,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None,
        prepared: PreparedSandbox | None,
    ) -> None:
        """Note what loading the program needs, which the seccomp transport continues unasked.

        Files: the shim, the loader's cache, the program's interpreter and
        libraries. Trees: the system's library directories (unless the sandbox
        leaves them out) and, under a sandbox, its static trees — what the shim
        transport never asks about either.
        """
        from libc_service.confinement.loader import program_files, resolve_program, system_library_dirs

        files = [os.fspath(shim), "/etc/ld.so.cache"]
        try:
            files += [os.fspath(file.path) for file in program_files(resolve_program(argv[0], env, cwd), env, cwd=cwd)]
        except OSError:
            pass  # the program cannot be found: starting it fails with the usual error
        trees: list[str] = []
        if self._sandbox is None or self._sandbox.system_libraries:
            trees += [os.fspath(path) for path in system_library_dirs()]
        if prepared is not None:
            trees += list(prepared.local_trees)
        self._loading = files, trees

    def serve(self, listener: int, killable: bool, pid: int, context: Context) -> None:
        """Serve the listener in a task of the running loop, in ``context`` (the tree's)."""
        from libc_service.seccomp.session import SeccompSession

        files, trees = self._loading
        self.session = SeccompSession(
            listener,
            self.router,
            killable=killable,
            name=f"seccomp pid {pid}",
            own_files=files,
            own_trees=trees,
            continue_connect=self._sandbox is None or self._sandbox.network,
        )
        self._task = asyncio.get_running_loop().create_task(self.session.serve(), context=context)

    async def close(self) -> None:
        """End the listener's session; returns when its task has ended."""
        if self.session is not None:
            self.session.close()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
