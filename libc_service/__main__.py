"""``python -m libc_service`` is the ``libc-service`` command."""

from libc_service.tools.console import main

main()
