"""The conformance suite: each case natively and through a perform-everything master."""
