"""Acting on the slave's behalf: a call done in the master exactly as the kernel would have done it for the slave."""
