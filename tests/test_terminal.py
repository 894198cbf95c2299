"""The user's terminal: a program that changes its modes does not leave them changed.

The command runs on a real pseudo-terminal as a person's shell would run
it (its controlling terminal, its stdio); the program turns echo off with
``stty -echo`` (``tcsetattr``) and exits, or is killed. After the command
the terminal echoes again.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from libc_service.confinement.sandbox import Sandbox
from libc_service.processes.terminal import SavedModes
from shimtools import needs_shim

POLICY = "from libc_service import FORWARD, Router, Sandbox\nrouter = Router(default=FORWARD)\n"


def _echoes(fd: int) -> bool:
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, bool]:
    """Run ``args`` with a fresh pseudo-terminal as controlling terminal and stdio; status, and whether it echoes after."""
    controller, terminal = os.openpty()
    try:
        assert _echoes(terminal)

        def controlling() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = subprocess.Popen(
            args,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=controlling,
        )
        while process.poll() is None:  # keep reading: a full terminal would block the program
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    os.read(controller, 65536)
                except OSError:
                    break
        status = process.wait(timeout=60)
        return status, _echoes(terminal)
    finally:
        os.close(controller)
        os.close(terminal)


def test_stty_turns_echo_off_natively(tmp_path: Path) -> None:
    """What the program does has its effect without libc-service: the attack is real."""
    status, echoes = _on_a_terminal(["stty", "-echo"], tmp_path)
    assert status == 0 and not echoes


@needs_shim
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandbox"])
@pytest.mark.parametrize(
    ("script", "expected"),
    [("stty -echo", 0), ("stty -echo; kill -KILL $$", 128 + 9)],
    ids=["exits", "killed"],
)
def test_the_terminal_echoes_again_after_run(tmp_path: Path, sandbox: bool, script: str, expected: int) -> None:
    if sandbox and Sandbox.available() is not None:
        pytest.skip(f"no sandbox here: {Sandbox.available()}")
    stty = shutil.which("stty")
    assert stty is not None
    # The sandbox lets the shell run stty (the policy's own sandbox; without --sandbox it is unused).
    tree = os.path.dirname(os.path.realpath(stty))
    (tmp_path / "policy.py").write_text(f"{POLICY}sandbox = Sandbox(allow_exec=[{tree!r}])\n")
    command = [sys.executable, "-m", "libc_service", "run", *(["--sandbox"] if sandbox else []), "policy.py"]
    status, echoes = _on_a_terminal([*command, "--", "sh", "-c", script], tmp_path)
    assert status == expected
    assert echoes


def test_saved_modes_restore_only_what_changed_and_skip_what_is_no_terminal() -> None:
    controller, terminal = os.openpty()
    read_end, write_end = os.pipe()
    try:
        saved = SavedModes((read_end, terminal, terminal))
        assert list(saved.saved) == [terminal]  # the pipe is no terminal; one terminal saved once
        assert saved.restore() == []
        modes = termios.tcgetattr(terminal)
        modes[3] &= ~termios.ECHO
        termios.tcsetattr(terminal, termios.TCSANOW, modes)
        assert saved.restore() == [terminal] and _echoes(terminal)
    finally:
        for fd in (controller, terminal, read_end, write_end):
            os.close(fd)
