"""Count events by what they named, within a fixed memory budget.

A refusal summary must say *which* file or address was refused — the
most frequent first, then how many others — but the names come from the
program, which can send as many distinct ones as it likes. A
:class:`NameBudget` caps the names kept (their number and their total
length) across every :class:`NamedTally` that shares it; an event whose
name no longer fits is still counted, among the "others". So the summary
stays exact in its totals and bounded in its memory whatever the program
sends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from libc_service.policy.slavepath import printable

__all__ = ["NameBudget", "NamedTally"]

#: Names kept per budget, and their total length in characters.
MAX_NAMES: Final = 4096
MAX_NAME_CHARS: Final = 1 << 20
#: Names shown in one summary line; the rest are counted.
SHOWN: Final = 5


@dataclass
class NameBudget:
    """How many more names (and characters of names) may be kept."""

    names: int = MAX_NAMES
    chars: int = MAX_NAME_CHARS

    def take(self, name: str) -> bool:
        """Spend room for ``name``; ``False`` when it does not fit."""
        if self.names <= 0 or len(name) > self.chars:
            return False
        self.names -= 1
        self.chars -= len(name)
        return True


@dataclass
class NamedTally:
    """Events of one kind: their count, and how often each kept name occurred."""

    budget: NameBudget
    count: int = 0
    names: Counter[str] = field(default_factory=Counter)
    #: Events with a name that did not fit the budget.
    unkept: int = 0

    def add(self, name: str | None, times: int = 1) -> None:
        """Count ``times`` events naming ``name`` (``None``: an event that names nothing)."""
        self.count += times
        if name is None:
            return
        if name in self.names or self.budget.take(name):
            self.names[name] += times
        else:
            self.unkept += times

    def named(self, shown: int = SHOWN) -> str:
        """The names, most frequent first (ties in name order), then a count of the rest.

        ``"/a (3×), /b, and 2 others"``, ``"/a and /b"``; ``""`` when no event named anything.
        Names are shown escaped when they hold control characters.
        """
        ranked = sorted(self.names.items(), key=lambda item: (-item[1], item[0]))
        parts = [printable(name) + (f" ({times}×)" if times > 1 else "") for name, times in ranked[:shown]]
        rest = len(ranked) - len(parts)
        if rest:
            parts.append(f"{rest} other{'s' if rest != 1 else ''}")
        if self.unkept:
            parts.append(f"{self.unkept} more whose names were not kept")
        if len(parts) < 2:
            return "".join(parts)
        return ", ".join(parts[:-1]) + (", and " if len(parts) > 2 else " and ") + parts[-1]
