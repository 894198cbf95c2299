"""The seccomp user-notification transport: the same router, below libc."""
