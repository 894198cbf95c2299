"""What a command writes: to stdout, or to a file that holds the old text or the new, never a part."""

from __future__ import annotations

import os
import sys

from libc_service.tools.policy_file import PolicyError

__all__ = ["write_output"]


def write_output(path: str | None, text: str, *, source: bool = False) -> None:
    """``text`` to ``path``, or to stdout without one; a path that cannot be written is a usage error.

    ``source``: ``text`` is Python source, UTF-8 whatever the terminal's
    encoding, written to a new file beside ``path`` and renamed over it, so
    ``path`` holds the old policy or the new, never a part (a policy ``run``
    may load at any moment, or a ``learn --append`` that failed half-way).
    """
    if path is None:
        if source:
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode("utf-8"))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(text)
        return
    if not source:
        try:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise PolicyError(f"cannot write {path}: {exc.strerror}") from exc
        return
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        # O_EXCL: never write through a name someone else put there.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with open(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise PolicyError(f"cannot write {path}: {exc.strerror}") from exc
