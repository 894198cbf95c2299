"""Shared test configuration: hypothesis profiles and a descriptor counter.

``HYPOTHESIS_PROFILE=ci`` selects a derandomized, bounded profile so a
failure in CI reproduces exactly; the default ``dev`` profile explores with
fresh randomness and fewer examples.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from libc_service import Master, Slave

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class FdCount:
    """The descriptors open in this process, read from ``/proc/self/fd``.

    ``fd_count()`` is the number open now; ``fd_count.snapshot()`` maps each
    open descriptor to what it refers to, so a leak names its culprit::

        before = fd_count.snapshot()
        ...
        fd_count.assert_unchanged(before)
    """

    def __call__(self) -> int:
        return len(self._numbers())

    @staticmethod
    def _numbers() -> list[int]:
        # The directory descriptor listdir holds is among the entries, every time.
        return [int(name) for name in os.listdir("/proc/self/fd")]

    def snapshot(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for fd in self._numbers():
            try:
                found[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # listdir's own descriptor, gone by now
        return found

    def assert_unchanged(self, before: dict[int, str]) -> None:
        after = self.snapshot()
        leaked = {fd: what for fd, what in after.items() if before.get(fd) != what}
        lost = {fd: what for fd, what in before.items() if after.get(fd) != what}
        assert not leaked and not lost, f"descriptors leaked {leaked}, closed behind our back {lost}"


@pytest.fixture
def fd_count() -> Iterator[FdCount]:
    """Count (and name) this process's open descriptors via ``/proc/self/fd``."""
    yield FdCount()


@pytest.fixture
async def channel() -> AsyncIterator[tuple[Master, Slave]]:
    """A master end and a Python slave on one fresh channel, both closed after."""
    master, sock = Master.pair()
    slave = Slave(sock)
    try:
        yield master, slave
    finally:
        slave.close()
        master.close()
