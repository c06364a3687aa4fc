"""Sharing the event loop during a long computation: a task that has held the loop for a
time slice gives it up for one turn, so no read blocks other requests for long."""

from __future__ import annotations

import asyncio
import time

SLICE_SECONDS = 0.005
"""Longest stretch a read computes before it lets the loop run other tasks."""


class Pacer:
    """Call `await pacer.tick()` often inside a long loop: it yields to the event loop
    (asyncio.sleep(0)) once at least `slice_seconds` have passed since the last yield."""

    __slots__ = ("_since", "_slice")

    def __init__(self, slice_seconds: float = SLICE_SECONDS) -> None:
        self._slice = slice_seconds
        self._since = time.perf_counter()

    async def tick(self) -> None:
        """Yields when the slice is used up; otherwise returns at once (no await)."""
        if time.perf_counter() - self._since >= self._slice:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
