"""The ``sandlock`` row of ``bench/programs.py``: run a command under sandlock, stdio inherited.

    python bench/sandlock_run.py CMD [ARG...]

sandlock (``pip install sandlock``; not a dependency) confines with
Landlock and seccomp and supervises with seccomp user notifications, from
a Python API; this is the smallest command line over it: the whole file
system readable, the working directory, /tmp and /dev/null writable (what the
workloads write), the exit status passed on.
"""

from __future__ import annotations

import os
import sys

from sandlock import Sandbox


def main() -> int:
    sandbox = Sandbox(fs_readable=["/"], fs_writable=[os.getcwd(), "/tmp", "/dev/null"])
    result = sandbox.popen(sys.argv[1:]).wait()
    return 0 if result.success else (result.exit_code or 1)


if __name__ == "__main__":
    sys.exit(main())
