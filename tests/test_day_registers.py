"""A day's registers held as packed triples and, for busy fields, as rows of registers
(counters/engines/day_registers.py): the same blobs as reducing every triple at once."""

from __future__ import annotations

import numpy as np
import pytest

from counters.engines import day_registers
from counters.engines.day_registers import DayRegisters
from counters.engines.sketches import encode_groups, max_registers
from persist.hll import REGISTERS


def _window(rng: np.random.Generator, fields: int, n: int) -> tuple[np.ndarray, ...]:
    # a few busy fields (thousands of registers: rows) and many quiet ones (triples)
    field = np.minimum(rng.zipf(1.3, size=n) - 1, fields - 1).astype(np.int64)
    index = rng.integers(0, REGISTERS, size=n).astype(np.int64)
    rank = np.minimum(rng.geometric(0.5, size=n), 51).astype(np.uint8)
    return field, index, rank


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_and_triples_encode_as_one_reduction(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(day_registers, "PAIRS_COMPACTED", 20_000)  # compact often
    monkeypatch.setattr(day_registers, "ROWS_ENCODED", 3)
    rng = np.random.default_rng(seed)
    regs = DayRegisters()
    pieces = [_window(rng, 400, int(rng.integers(1, 60_000))) for _ in range(12)]
    for piece in pieces:
        regs.add(*piece)
    got = regs.encoded()
    assert len(regs._row_fields) > 3  # some fields did move to rows
    assert len(regs._row_fields) < np.unique(np.concatenate([p[0] for p in pieces])).size
    whole = [np.concatenate([p[i] for p in pieces]) for i in range(3)]
    want = encode_groups(*max_registers(*whole))
    assert got.keys.tolist() == want.keys.tolist()
    assert got.offsets.tolist() == want.offsets.tolist()
    assert got.data == want.data


def test_nothing_added_encodes_nothing() -> None:
    got = DayRegisters().encoded()
    assert got.keys.size == 0 and got.offsets.tolist() == [0] and got.data == b""


def test_a_busy_field_costs_a_row_of_registers_whatever_its_triples() -> None:
    """Ten fields each seeing every register many times over: held as ten rows of 16 KiB
    (the day's triples, 8 bytes a register, took 1.3 MB here and twice that while reduced)."""
    rng = np.random.default_rng(4)
    regs = DayRegisters()
    for _ in range(30):
        n = 100_000
        regs.add(
            rng.integers(0, 10, size=n).astype(np.int64),
            rng.integers(0, REGISTERS, size=n).astype(np.int64),
            rng.integers(1, 20, size=n).astype(np.uint8),
        )
    assert regs.nbytes <= 10 * REGISTERS + 600_000  # the rows, and one window's triples
    assert regs.encoded().keys.tolist() == list(range(10))
