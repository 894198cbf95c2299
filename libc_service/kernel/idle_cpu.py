"""Whether a CPU is free, sampled from ``/proc/stat``.

The master busy-polls for a lone program's next call only while a CPU is
otherwise idle (:attr:`~libc_service.Master.adaptive_busy_poll_ns`): polling
must cost nobody. Reading the machine's idle time is the kernel's business,
not the channel's, so the sampler lives here.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar, Final

__all__ = ["IDLE_CPU", "IdleCpu"]


class IdleCpu:
    """Whether a CPU is free for busy-polling, sampled at most every :attr:`PERIOD` seconds.

    Free means: since the previous sample, the machine's idle time plus
    this process's own CPU time (its polling must not count against it)
    add up to at least :attr:`SHARE` of one CPU. Read from ``/proc/stat``
    (no ``/proc``: never free). The first call only takes a sample.
    """

    PERIOD: ClassVar[float] = 0.05
    SHARE: ClassVar[float] = 0.9

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self.stat_path = stat_path
        self._sampled_at = -1.0
        self._free = False
        self._last: tuple[float, float, float] | None = None
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def free(self) -> bool:
        """Whether a CPU was free over the last period (cached between samples)."""
        now = time.monotonic()
        if now - self._sampled_at < self.PERIOD:
            return self._free
        self._sampled_at = now
        try:
            with open(self.stat_path, "rb") as stat:
                fields = stat.readline().split()
            idle = (int(fields[4]) + int(fields[5])) / self._ticks  # idle + iowait
        except (OSError, IndexError, ValueError):
            self._free, self._last = False, None
            return False
        times = os.times()
        own = times.user + times.system
        last, self._last = self._last, (now, idle, own)
        if last is None:
            self._free = False
        else:
            elapsed = now - last[0]
            self._free = elapsed > 0 and (idle - last[1] + own - last[2]) / elapsed >= self.SHARE
        return self._free


#: The one sampler every master's adaptive busy-poll asks.
IDLE_CPU: Final = IdleCpu()
