"""The HyperLogLog registers of one day's fields, gathered window by window, in memory that
is bounded by the fields, not by the day's events.

A field with few registers set is held as packed (field, register, rank) triples
(sketches.pack, 8 bytes a register); once it has PROMOTED registers it moves to a row of
16,384 bytes, one per register, which later windows update in place. So a field costs at
most min(8 bytes per register, 16 KiB), and the triples waiting to be reduced never pile up
for the busy fields (at 1M events a day, the day's 418 busiest fields held 6.8M triples,
110 MB at a compaction; as rows they take 6.8 MB).

    regs = DayRegisters()
    for each window: regs.add(field_ids, register_indexes, ranks)
    encoded = regs.encoded()      # sketches.Encoded, one blob per field, fields ascending
"""

from __future__ import annotations

import numpy as np

from counters.engines.sketches import (
    I64,
    U8,
    Encoded,
    encode_groups,
    encode_packed,
    max_packed,
    merged,
    pack,
    unpack,
)
from persist.hll import REGISTERS

PAIRS_COMPACTED = 500_000
"""The packed triples are reduced once at least this many are held and they are twice as
many as after the last reduction."""
PROMOTED = 2048
"""Registers at which a field moves from packed triples (8 bytes each) to a row of
REGISTERS bytes."""
ROWS_ENCODED = 32
"""Rows whose registers are unpacked and encoded at once."""


class DayRegisters:
    """The largest rank per (field, register) of everything added (see the module
    docstring)."""

    def __init__(self) -> None:
        self._pairs: list[I64] = []
        self._pending = 0
        self._reduced = 0
        self._row_of = np.full(0, -1, dtype=np.int64)
        """Per field id: its row in _rows, or -1 while it is held as triples."""
        self._rows = np.zeros((0, REGISTERS), dtype=np.uint8)
        self._row_fields: list[int] = []

    @property
    def nbytes(self) -> int:
        """Bytes the registers take now (triples and rows)."""
        return sum(p.nbytes for p in self._pairs) + self._rows.nbytes + self._row_of.nbytes

    def add(self, fields: I64, index: I64, rank: U8) -> None:
        """Takes (field id >= 0, register index, rank) triples, in any order."""
        if fields.size == 0:
            return
        if self._row_fields:
            known = fields < self._row_of.size
            row = np.full(fields.size, -1, dtype=np.int64)
            row[known] = self._row_of[fields[known]]
            in_row = row >= 0
            if in_row.any():
                np.maximum.at(
                    self._rows.reshape(-1), row[in_row] * REGISTERS + index[in_row], rank[in_row]
                )
                held = ~in_row
                fields, index, rank = fields[held], index[held], rank[held]
        self._pairs.append(pack(fields, index, rank))
        self._pending += fields.size
        # _pending counts every triple held (the reduced ones too): reduce once they have
        # doubled, so each triple is sorted a bounded number of times
        if self._pending > max(2 * self._reduced, PAIRS_COMPACTED):
            self._compact()

    def _compact(self) -> None:
        merged = np.concatenate(self._pairs) if self._pairs else np.zeros(0, dtype=np.int64)
        self._pairs = []  # the pieces go before the sort, not after
        kept = max_packed(merged)
        del merged
        if kept.size:
            fields = (kept >> 6) // REGISTERS
            starts = np.flatnonzero(np.r_[True, fields[1:] != fields[:-1]])
            del fields
            sizes = np.diff(np.r_[starts, kept.size])
            big = sizes >= PROMOTED
            if big.any():
                moving = np.repeat(big, sizes)
                self._promote(kept[moving])
                kept = kept[~moving]
        self._pairs = [kept]
        self._reduced = self._pending = int(kept.size)

    def _promote(self, packed: I64) -> None:
        """Moves the fields of these reduced triples (none of them in a row yet) to rows."""
        fields, index, rank = unpack(packed)
        new = np.unique(fields)
        if int(new[-1]) >= self._row_of.size:
            grow = int(new[-1]) + 1 - self._row_of.size
            self._row_of = np.r_[self._row_of, np.full(grow, -1, dtype=np.int64)]
        first = len(self._row_fields)
        self._row_of[new] = np.arange(first, first + new.size)
        self._row_fields.extend(new.tolist())
        rows = np.zeros((first + new.size, REGISTERS), dtype=np.uint8)
        rows[:first] = self._rows
        self._rows = rows
        self._rows.reshape(-1)[self._row_of[fields] * REGISTERS + index] = rank

    def encoded(self) -> Encoded:
        """Every field's blob (sketches.encode_groups' form), fields ascending; the triples
        are given up (call once, at the end)."""
        self._compact()
        parts = [encode_packed(self._pairs.pop())]
        self._reduced = self._pending = 0
        ids = np.asarray(self._row_fields, dtype=np.int64)
        for a in range(0, ids.size, ROWS_ENCODED):
            row, index = np.nonzero(self._rows[a : a + ROWS_ENCODED])
            parts.append(encode_groups(ids[a + row], index, self._rows[a + row, index]))
        return merged(parts)
