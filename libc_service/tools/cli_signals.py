"""The command's signals, passed on to the program it runs: job control and an end that always comes.

A supervisor's ``kill`` or ``timeout`` must end the program (and so the
command, with the program's status), never leave it running without its
master; a program that traps the signals must not keep the command from
ending; and a sandboxed program, in a session of its own, must still stop
and continue with the terminal's Ctrl-Z and ``fg``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from libc_service.processes.spawn import SlaveProcess

__all__ = [
    "ENDING_SIGNALS",
    "FORWARDED_SIGNALS",
    "INSISTENT_INTERRUPTS",
    "INSISTENT_WINDOW",
    "TERMINAL_SIGNALS",
    "SignalRelay",
]

#: The command's own logger, as its messages have always been named.
logger = logging.getLogger("libc_service.tools.cli")

#: Signals passed on to the program: a supervisor's ``kill``/``timeout`` ends
#: the program (and so the command, with the program's status) instead of
#: leaving it running without its master.
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
#: Signals that end the command: the first is passed on; a second one kills
#: the program (its process group when it has one), so the command always
#: exits, even when the program ignores or traps SIGTERM. (SIGINT is not one:
#: interactive programs — shells, REPLs — take Ctrl-C as ordinary input.)
ENDING_SIGNALS: frozenset[int] = frozenset({signal.SIGTERM})
#: Ctrl-C this many times within this many seconds kills the program: one
#: that ignores or traps SIGINT cannot keep the command from ending, while a
#: REPL's ordinary Ctrl-C (once, or twice) stays the program's to handle.
INSISTENT_INTERRUPTS = 3
INSISTENT_WINDOW = 2.0
#: Signals a terminal sends to its foreground process group, which reach
#: only the master when the program has a session of its own (sandboxed).
TERMINAL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGQUIT, signal.SIGWINCH)


class SignalRelay:
    """Passes the command's signals on to the program, and keeps job control working.

    Without a sandbox the program is in our process group: the terminal's
    Ctrl-C reaches it directly, and only what a supervisor sends to us
    alone is passed on. Under a sandbox the program runs in a session of
    its own (so it cannot type into the user's terminal); the terminal's
    signals then reach only us, and are passed on to the program's whole
    process group — Ctrl-Z stops the program and then us, ``fg``
    (SIGCONT) continues both.
    """

    def __init__(self, process: SlaveProcess) -> None:
        self.process = process
        self.ending = False
        self._interrupts: list[float] = []

    def _insisted(self) -> bool:
        """Whether this SIGINT is the last of INSISTENT_INTERRUPTS within INSISTENT_WINDOW seconds."""
        now = time.monotonic()
        self._interrupts = [when for when in self._interrupts if now - when < INSISTENT_WINDOW] + [now]
        return len(self._interrupts) >= INSISTENT_INTERRUPTS

    def install(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, self.relay, signum)
            installed.append(signum)
        if self.process.own_session:
            for signum in TERMINAL_SIGNALS:
                loop.add_signal_handler(signum, self.process.signal_group, signum)
                installed.append(signum)
            loop.add_signal_handler(signal.SIGTSTP, self.stop)
            loop.add_signal_handler(signal.SIGCONT, self.process.signal_group, signal.SIGCONT)
            installed += [signal.SIGTSTP, signal.SIGCONT]
        return installed

    def install_plain(self) -> dict[int, Any]:
        """The same relays as :meth:`install`, as plain signal handlers: before a loop runs.

        Returns the handlers they replaced (for :meth:`restore_plain`). A
        loop's own handlers, installed later, replace these in one step:
        there is no moment when a signal would find the default action
        (which would end the command and leave the program without its master).
        """
        previous: dict[int, Any] = {}

        def on(signum: int, callback: Callable[..., None], *args: int) -> None:
            previous[signum] = signal.signal(signum, lambda _signum, _frame: callback(*args))

        for signum in FORWARDED_SIGNALS:
            on(signum, self.relay, signum)
        if self.process.own_session:
            for signum in TERMINAL_SIGNALS:
                on(signum, self.process.signal_group, signum)
            on(signal.SIGTSTP, self.stop)
            on(signal.SIGCONT, self.process.signal_group, signal.SIGCONT)
        return previous

    @staticmethod
    def restore_plain(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def relay(self, signum: int) -> None:
        if signum in ENDING_SIGNALS:
            if self.ending:
                self.process.kill()
                return
            self.ending = True
        if signum == signal.SIGINT and self._insisted():
            logger.warning(
                "interrupted %d times in %.0f s: killing the program", INSISTENT_INTERRUPTS, INSISTENT_WINDOW
            )
            self.process.kill()
            return
        if self.process.own_session:
            if signum in (signal.SIGINT, signal.SIGHUP):
                self.process.signal_group(signum)  # as the terminal would have
            else:
                self.process.send_signal(signum)
            return
        if signum == signal.SIGINT and _terminal_delivered_to(self.process.pid):
            return  # the terminal gave it to the program too; a second would interrupt its clean-up
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Ctrl-Z: stop the program's group (a TSTP would be discarded there), then ourselves."""
        self.process.signal_group(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)


def _terminal_delivered_to(pid: int) -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgid(pid)
    except OSError:
        return False
    finally:
        os.close(fd)
