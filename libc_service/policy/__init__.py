"""The policy: the router, its conditions and outcomes, what the shim decides alone, names the master resolves."""
