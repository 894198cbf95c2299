"""The user's terminal modes, put back when the program ends.

A program run by ``libc-service`` shares the user's terminal (its stdio).
It can change the terminal's modes with ``tcsetattr`` — turn echo off,
switch to raw mode — and a program that is killed, crashes, or simply does
not clean up leaves them so: the user's shell then reads a password-like
terminal that shows nothing. The sandbox cannot forbid ``tcsetattr`` (every
full-screen program needs it), so the command does what ``ssh`` and
``script`` do: it saves the modes of each terminal among its stdin, stdout
and stderr before the program starts, and restores those that changed when
the program has ended, however it ended.

Restoring from a background job would stop the command with ``SIGTTOU``
(the terminal belongs to the foreground job): the signal is ignored while
restoring, as shells do, and a terminal that went away is left alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import termios
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

__all__ = ["SavedModes", "keeps_terminal_modes", "terminal_modes_kept"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: What ``termios.tcgetattr`` returns: iflag, oflag, cflag, lflag, ispeed, ospeed, cc.
_Modes = list[Any]


class SavedModes:
    """The modes of the terminals among descriptors 0–2, as they were when saved.

    One entry per terminal (stdin, stdout and stderr are usually the same
    one, which is then saved and restored once), keyed by a descriptor
    that stays open for the command's life.
    """

    def __init__(self, fds: tuple[int, ...] = (0, 1, 2)) -> None:
        self.saved: dict[int, _Modes] = {}
        seen: set[int] = set()
        for fd in fds:
            try:
                if not os.isatty(fd):
                    continue
                device = os.fstat(fd).st_rdev
                if device in seen:
                    continue
                modes = termios.tcgetattr(fd)
            except (OSError, termios.error):
                continue
            seen.add(device)
            self.saved[fd] = modes

    def restore(self) -> list[int]:
        """Put back the modes that changed; the descriptors whose terminal was restored."""
        restored: list[int] = []
        for fd, modes in self.saved.items():
            try:
                if termios.tcgetattr(fd) == modes:
                    continue
            except termios.error:
                continue  # the terminal went away (hung up): nothing to restore
            with _no_stop_on_background_write():
                try:
                    termios.tcsetattr(fd, termios.TCSADRAIN, modes)
                except termios.error:
                    continue
            restored.append(fd)
        return restored


@contextlib.contextmanager
def _no_stop_on_background_write() -> Iterator[None]:
    """Ignore ``SIGTTOU`` meanwhile: a background job may still put its terminal's modes back."""
    try:
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be changed, restore as is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTTOU, previous)


@contextlib.contextmanager
def terminal_modes_kept() -> Iterator[SavedModes]:
    """Save the terminals' modes on entry, restore those that changed on exit (also on an exception)."""
    saved = SavedModes()
    try:
        yield saved
    finally:
        saved.restore()


def keeps_terminal_modes(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """``function`` run within :func:`terminal_modes_kept`."""

    @functools.wraps(function)
    def kept(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        with terminal_modes_kept():
            return function(*args, **kwargs)

    return kept
