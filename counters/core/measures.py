"""What a read reports for a measure of stored counters: written once for every read path.

Sums are stored as integer millionths (micros) and reported as exact decimals built from
them, never through a float: 12 × 999999999.999999 is 11999999999.999988, not ...989."""

from __future__ import annotations

from decimal import Decimal

from counters.core.models import VALUE_SCALE

MEASURES = ("count", "sum", "uniques")

Measured = int | Decimal
"""A reported value: a count or uniques (int), or a sum (exact Decimal)."""

_SCALE = Decimal(VALUE_SCALE)
_ZERO = Decimal(0)


def micros_to_decimal(micros: int) -> Decimal:
    """The exact value of `micros` millionths in its shortest plain form (no exponent):
    10_000_000 -> 10, 12_500_000 -> 12.5, 5 -> 0.000005, -1 -> -0.000001, 0 -> 0.

    Exact below 10**28 micros (the default context's 28 digits; a bucket's sum is a 64-bit
    integer, 19 digits, and a series adds at most 10,000 of them)."""
    if not micros:
        return _ZERO
    # An exact quotient takes the ideal exponent 0 and drops trailing zeros down to it.
    # The `/` operator, not Context.divide: three times faster (a 720-point series).
    return Decimal(micros) / _SCALE


def micros_text(micros: int) -> str:
    """micros_to_decimal as text, for command-line output (`4406.789044`, `10`)."""
    return str(micros_to_decimal(micros))


def measure_value(measure: str, count: int, sum_micros: int) -> Measured:
    """The count for measure=count, else the exact sum in the event's units (a zero sum as
    the int 0: the same JSON, and encoded faster)."""
    if measure == "count":
        return count
    return Decimal(sum_micros) / _SCALE if sum_micros else 0


def measure_values(measure: str, stored: list[int]) -> list[Measured]:
    """measure_value of each stored count (measure=count) or sum (else)."""
    if measure == "count":
        return list(stored)
    scale = _SCALE
    return [Decimal(v) / scale if v else 0 for v in stored]
