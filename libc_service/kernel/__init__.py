"""The kernel's interfaces: the one libc handle and syscall numbers, descriptors, readiness, senders' credentials, bounded calls off the loop."""
