"""``python -m libc_service`` is the ``libc-service`` command."""

from .console import main

main()
