"""The ``libc-service`` executable: :func:`libc_service.tools.cli.main`, started and ended for speed.

A run is dominated by the interpreter's own start and end, so this entry
point (the console script and ``python -m libc_service``) does two things
:func:`~libc_service.tools.cli.main` itself cannot, since tests and embedders call
it inside a longer-lived interpreter:

- the collector is off while the command's modules are imported (they
  allocate thousands of objects and no garbage cycles: each collection
  pass is wasted), and what they built is then frozen
  (:func:`gc.freeze`), so the master's collections never rescan it;
- the process ends with :func:`os._exit` once the command returned: the
  program has been waited for and every descriptor closed, and the
  interpreter's finalization (tearing down every module) would only add
  to what the user waits for. What an ordinary exit does that matters is
  still done: the ``atexit`` functions run (a policy's, logging's
  shutdown) and the output is flushed. When a thread that is not a daemon
  is still running (a policy's own), the exit is the ordinary one, which
  waits for it; the command's own threads are daemons
  (:mod:`libc_service.acting.perform`'s blocked calls, the audit reader).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

__all__ = ["main"]


def main() -> None:
    """Run the command line in ``sys.argv`` and exit with its status."""
    gc.disable()
    try:
        from libc_service.tools.cli import main as command
    finally:
        gc.freeze()
        gc.enable()
    try:
        status = command()
    except SystemExit as exc:  # argparse's --help and usage errors
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:  # sys.exit("message"), as the interpreter would show it
            print(exc.code, file=sys.stderr)
            status = 1
    current = threading.current_thread()
    if any(thread is not current and not thread.daemon and thread.is_alive() for thread in threading.enumerate()):
        sys.exit(status)  # the interpreter waits for them, as it always does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)
