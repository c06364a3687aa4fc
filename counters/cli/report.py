"""Terminal output of long CLI operations: the Displays of engines/progress.py (a tqdm bar on
a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from counters.engines.progress import Snapshot


def progress_line(label: str, snap: Snapshot) -> str:
    """`label: done/total events (pct%), rate events/s, ETA Ns` (pct never above 100)."""
    eta = snap.eta_s
    return (
        f"{label}: {snap.done}/{snap.total} events ({snap.percent}%),"
        f" {snap.rate:,.0f} events/s, ETA {'?' if eta is None else f'{eta:.0f}s'}"
    )


class LineDisplay:
    """Progress as plain lines (not a terminal): a line when `every_ms` passed since the
    last one or a new tenth of the total is done, and always the final one."""

    def __init__(self, label: str, echo: Callable[[str], None], every_ms: int = 2_000) -> None:
        self.label = label
        self.echo = echo
        self.every_ms = every_ms
        self._last_ms = 0
        self._last_tenth = 0

    def show(self, snap: Snapshot) -> None:
        """Echoes a line when due (see the class)."""
        tenth = snap.percent // 10
        due = snap.elapsed_ms - self._last_ms >= self.every_ms or tenth > self._last_tenth
        if snap.finished or due:
            self._last_ms, self._last_tenth = snap.elapsed_ms, tenth
            self.echo(progress_line(self.label, snap))

    def close(self) -> None:
        """Nothing to release."""


class BarDisplay:
    """Progress as a tqdm bar on stderr whose total follows the tracker's, with events/s
    and ETA from the real rate; redrawn at most every `every_ms`."""

    def __init__(self, label: str, every_ms: int = 200, file: Any = None) -> None:
        from tqdm import tqdm

        self.every_ms = every_ms
        self._last_ms = -every_ms
        self.bar = tqdm(
            total=0,
            desc=label,
            unit="ev",
            unit_scale=True,
            file=file if file is not None else sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {postfix}",
        )

    def show(self, snap: Snapshot) -> None:
        """Redraws the bar when due (always for the final snapshot)."""
        if not snap.finished and snap.elapsed_ms - self._last_ms < self.every_ms:
            return
        self._last_ms = snap.elapsed_ms
        eta = snap.eta_s
        self.bar.total = snap.total
        self.bar.n = snap.done
        self.bar.set_postfix_str(
            f"{snap.rate:,.0f} events/s, ETA {'?' if eta is None else f'{eta:.0f}s'}",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        """Leaves the bar as last drawn and releases the terminal line."""
        self.bar.close()
