"""The numpy HyperLogLog (counters/engines/sketches.py) against Redis itself: the same
registers as PFADD for any strings, the same blob bytes as PFADD and PFMERGE leave, and
blobs Redis reads back as its own."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from counters.engines import sketches
from counters.engines.sketches import (
    encode_groups,
    full_blob,
    hll_positions,
    max_packed,
    max_registers,
    pack,
    short_blob,
)
from persist.hll import REGISTERS, registers
from tests.support import Harness


def _strings(rng: random.Random, n: int) -> list[str]:
    alphabet = "abcXYZ019-_é€😀"
    out = []
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            out.append(f"{rng.getrandbits(128):032x}")  # what uid hashing stores
        elif kind == 1:
            out.append(f"u{rng.randrange(10**7)}")
        else:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 41))))
    return out


async def _redis_sketch(h: Harness, key: str, members: list[str]) -> bytes:
    await h.redis.delete(key)
    for i in range(0, len(members), 1000):
        await h.redis.pfadd(key, *members[i : i + 1000])
    blob = await h.redis.get(key)
    assert blob is not None
    return bytes(blob)


def _sketches(groups: list[list[str]]) -> list[bytes]:
    flat = [s for g in groups for s in g]
    keys = np.repeat(np.arange(len(groups)), [len(g) for g in groups]).astype(np.int64)
    index, rank = hll_positions(pa.array(flat, pa.string()))
    encoded = encode_groups(*max_registers(keys, index, rank))
    assert encoded.keys.tolist() == list(range(len(groups)))
    return [encoded.blob(g) for g in range(len(groups))]


async def test_same_bytes_as_pfadd_for_any_strings_sparse_and_dense(harness: Harness) -> None:
    rng = random.Random(7)
    sizes = [1, 2, 3, 5, 20, 100, 700, 1400, 1700, 2500, 20_000]
    groups = [_strings(rng, n) for n in sizes]
    groups.append([""])  # the empty string is a member too
    groups.append([f"{i:032x}" for i in range(3000)])  # one length, packed: the fast path
    mine = _sketches(groups)
    key = harness.keys.tmp("sk")
    for members, blob in zip(groups, mine, strict=True):
        theirs = await _redis_sketch(harness, key, members)
        assert short_blob(theirs) == blob, (len(members), theirs[4])
        await harness.redis.set(key, full_blob(blob))
        assert await harness.redis.pfcount(key) == await _pfcount_of(harness, members)
    assert {b[4] for b in mine} == {0, 1}  # both encodings were exercised


async def _pfcount_of(h: Harness, members: list[str]) -> int:
    key = h.keys.tmp("sk-ref")
    await _redis_sketch(h, key, members)
    n: int = await h.redis.pfcount(key)
    return n


async def test_same_bytes_as_pfmerge_of_minutes(harness: Harness) -> None:
    """An hour's sketch is PFMERGE of its minutes' live; the union computed here matches."""
    rng = random.Random(11)
    r = harness.redis
    hour = harness.keys.tmp("hour")
    await r.delete(hour)
    everything: list[str] = []
    for m in range(40):
        members = _strings(rng, rng.randrange(1, 30))
        everything += members
        minute = harness.keys.tmp(f"minute{m}")
        await _redis_sketch(harness, minute, members)
        await r.pfmerge(hour, minute)
    theirs = await r.get(hour)
    assert theirs is not None
    assert short_blob(theirs) == _sketches([everything])[0]


def test_values_past_32_and_full_sketches_are_dense() -> None:
    keys = np.array([0, 0, 1], dtype=np.int64)
    index = np.array([5, 9, 3], dtype=np.int64)
    rank = np.array([40, 2, 3], dtype=np.uint8)
    encoded = encode_groups(*max_registers(keys, index, rank))
    big = encoded.blob(0)
    assert big[4] == 0 and len(big) == 5 + REGISTERS * 6 // 8
    regs = registers(full_blob(big))
    assert regs[5] == 40 and regs[9] == 2 and sum(1 for v in regs if v) == 2
    assert encoded.blob(1)[4] == 1
    assert registers(full_blob(encoded.blob(1)))[3] == 3


def test_max_registers_keeps_the_largest_rank_per_register() -> None:
    keys = np.array([2, 2, 2, 1], dtype=np.int64)
    index = np.array([7, 7, 8, 7], dtype=np.int64)
    rank = np.array([3, 9, 1, 4], dtype=np.uint8)
    k, i, v = max_registers(keys, index, rank)
    assert list(zip(k.tolist(), i.tolist(), v.tolist(), strict=True)) == [
        (1, 7, 4),
        (2, 7, 9),
        (2, 8, 1),
    ]


def test_max_packed_is_the_same_whatever_its_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 5, 2_000)
    index = rng.integers(0, 40, 2_000)
    rank = rng.integers(1, 20, 2_000).astype(np.uint8)
    whole = max_packed(pack(keys, index, rank))
    for chunk in (1, 2, 3, 7, 1_999, 2_000):
        monkeypatch.setattr(sketches, "_CELL_CHUNK", chunk)
        assert np.array_equal(max_packed(pack(keys, index, rank)), whole)
    cells = {(int(k), int(i)) for k, i in zip(keys, index, strict=True)}
    assert whole.size == len(cells)
