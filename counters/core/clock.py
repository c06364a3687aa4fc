"""The one source of "now" in counters; tests swap in a ManualClock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time in epoch milliseconds (UTC)."""

    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock time."""

    def now_ms(self) -> int:
        """Current UTC time in epoch milliseconds."""
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to (for bucket-boundary tests)."""

    def __init__(self, start_ms: int) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        """The time last set."""
        return self._now

    def set(self, ms: int) -> None:
        """Jump to an absolute time."""
        self._now = ms

    def advance(self, ms: int) -> None:
        """Move forward by ms milliseconds."""
        self._now += ms
