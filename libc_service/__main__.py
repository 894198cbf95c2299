"""``python -m libc_service`` is the ``libc-service`` command."""

import sys

from .cli import main

sys.exit(main())
