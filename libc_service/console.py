"""The ``libc-service`` executable: :func:`libc_service.cli.main`, started and ended for speed.

A run is dominated by the interpreter's own start and end, so this entry
point (the console script and ``python -m libc_service``) does two things
:func:`~libc_service.cli.main` itself cannot, since tests and embedders call
it inside a longer-lived interpreter:

- the collector is off while the command's modules are imported (they
  allocate thousands of objects and no garbage cycles: each collection
  pass is wasted), and what they built is then frozen
  (:func:`gc.freeze`), so the master's collections never rescan it;
- the process ends with :func:`os._exit` once the command returned, its
  output flushed and its logging shut down: the program has been waited
  for and every descriptor closed, and the interpreter's finalization
  (tearing down every module) would only add to what the user waits for.
  The threads the command may leave are daemons
  (:mod:`libc_service.perform`'s blocked calls, the audit reader), which
  an ordinary exit would not wait for either.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

__all__ = ["main"]


def main() -> None:
    """Run the command line in ``sys.argv`` and exit with its status."""
    gc.disable()
    try:
        from .cli import main as command
    finally:
        gc.freeze()
        gc.enable()
    status = 1
    try:
        status = command()
    except SystemExit as exc:  # argparse's --help and usage errors
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:  # sys.exit("message"), as the interpreter would show it
            print(exc.code, file=sys.stderr)
            status = 1
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
                pass
    os._exit(status)
