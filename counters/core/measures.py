"""What a read reports for a measure of stored counters: written once for every read path."""

from __future__ import annotations

from counters.core.models import VALUE_SCALE

MEASURES = ("count", "sum", "uniques")


def measure_value(measure: str, count: int, sum_micros: int) -> int | float:
    """The count for measure=count, else the sum in the event's units (micros / 1e6)."""
    return count if measure == "count" else sum_micros / VALUE_SCALE


def measure_values(measure: str, stored: list[int]) -> list[int | float]:
    """measure_value of each stored count (measure=count) or sum (else)."""
    if measure == "count":
        return list(stored)
    return [v / VALUE_SCALE for v in stored]
