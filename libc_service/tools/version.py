"""The installed distribution's version, read from its metadata when first asked for."""

from __future__ import annotations

__all__ = ["package_version"]


def package_version() -> str:
    """``libc-service``'s version; ``0+unknown`` for a source tree that was never installed.

    Read from the metadata on demand, not at import: ``importlib.metadata``
    costs milliseconds that a plain ``libc-service run`` does not need.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libc-service")
    except PackageNotFoundError:
        return "0+unknown"
