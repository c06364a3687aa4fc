"""Terminal output of long CLI operations (progress lines when stderr is not a terminal)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Ticker:
    """Progress as plain lines (not a terminal): at most one line every `every` seconds."""

    def __init__(self, label: str, total: int, echo: Callable[[str], None], every: float = 2.0):
        self.label = label
        self.total = total
        self.done = 0
        self.echo = echo
        self.every = every
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        """Counts n more events done; echoes a line when `every` seconds passed or all done."""
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            left = max(self.total - self.done, 0) / rate if rate else 0.0
            pct = 100.0 * self.done / self.total if self.total else 100.0
            self.echo(
                f"{self.label}: {self.done}/{self.total} events ({pct:.0f}%),"
                f" {rate:,.0f} events/s, ETA {left:.0f}s"
            )
