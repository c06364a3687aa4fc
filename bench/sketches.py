"""Redis HyperLogLog sketches computed with numpy, for loading history at volume.

Building the history's sketches with PFADD costs a Redis round trip per few thousand uids;
at 100M events that alone takes longer than the rest of the load. Here the same sketches
are computed in bulk: Redis's MurmurHash64A of each uid string, its register and rank (as
`hllPatLen` does), the per-bucket register maximum, and the blob Redis itself would hold:
sparse below 3,000 bytes (hll-sparse-max-bytes), dense above. `check_against_redis` proves
the registers equal PFADD's on a sample before any sketch is used.

Uids are the strings "u<decimal>" of non-negative integers below 10**7.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persist.hll import DENSE_SIZE, HEADER, REGISTERS, registers

M = np.uint64(0xC6A4A7935BD1E995)
SEED = np.uint64(0xADC83B19)
R47 = np.uint64(47)
P = 14
Q = 64 - P
SPARSE_MAX_BYTES = 3000
DENSE_HEADER = b"HYLL\x00\x00\x00\x00" + b"\x00" * 7 + b"\x80"  # cached card invalid
SPARSE_HEADER = b"HYLL\x01\x00\x00\x00" + b"\x00" * 7 + b"\x80"


def uid_hashes(uids: np.ndarray) -> np.ndarray:
    """MurmurHash64A (seed 0xadc83b19, as Redis's HLL uses) of "u<uid>" for each uid."""
    u = uids.astype(np.uint64)
    ndig = np.ones(u.size, dtype=np.uint64)
    for power in range(1, 8):
        ndig += (u >= np.uint64(10**power)).astype(np.uint64)
    word = np.full(u.size, ord("u"), dtype=np.uint64)
    for j in range(7):
        present = ndig > np.uint64(j)
        exp = np.where(present, ndig - np.uint64(j) - np.uint64(1), np.uint64(0))
        digit = (u // (np.uint64(10) ** exp)) % np.uint64(10)
        byte = np.where(present, digit + np.uint64(0x30), np.uint64(0))
        word |= byte << np.uint64(8 * (j + 1))
    length = ndig + np.uint64(1)
    with np.errstate(over="ignore"):
        h = SEED ^ (length * M)
        full = length == np.uint64(8)
        k = word * M
        k ^= k >> R47
        k *= M
        block = (h ^ k) * M
        tail = (h ^ word) * M
        h = np.where(full, block, tail)
        h ^= h >> R47
        h *= M
        h ^= h >> R47
    return h


def index_and_rank(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Register index and run length (1..51) of each hash, as Redis's hllPatLen."""
    index = (hashes & np.uint64(REGISTERS - 1)).astype(np.int64)
    rest = (hashes >> np.uint64(P)) | (np.uint64(1) << np.uint64(Q))
    lowest = rest & (~rest + np.uint64(1))
    rank = (np.log2(lowest.astype(np.float64)) + 1).astype(np.uint8)
    return index, rank


def bucket_registers(bucket_of: np.ndarray, uids: np.ndarray, buckets: int) -> np.ndarray:
    """(buckets, 16384) uint8 registers: the sketch of each bucket's uids (bucket_of holds
    each uid's bucket number, 0..buckets-1)."""
    index, rank = index_and_rank(uid_hashes(uids))
    regs = np.zeros(buckets * REGISTERS, dtype=np.uint8)
    np.maximum.at(regs, bucket_of.astype(np.int64) * REGISTERS + index, rank)
    return regs.reshape(buckets, REGISTERS)


def _dense(regs: np.ndarray) -> bytes:
    r = regs.astype(np.uint32).reshape(-1, 4)
    packed = r[:, 0] | (r[:, 1] << 6) | (r[:, 2] << 12) | (r[:, 3] << 18)
    body = np.stack([packed & 0xFF, (packed >> 8) & 0xFF, (packed >> 16) & 0xFF], axis=1)
    return DENSE_HEADER + body.astype(np.uint8).tobytes()


def _sparse(regs: np.ndarray) -> bytes | None:
    """The sparse encoding, or None when it cannot hold these registers."""
    if int(regs.max(initial=0)) > 32:
        return None
    out = bytearray(SPARSE_HEADER)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(regs)) + 1))
    ends = np.append(starts[1:], regs.size)
    for start, end, v in zip(starts.tolist(), ends.tolist(), regs[starts].tolist(), strict=True):
        run = end - start
        if v == 0:
            while run > 0:
                if run > 64:
                    step = min(run, 16384)
                    out += bytes([0x40 | ((step - 1) >> 8), (step - 1) & 0xFF])
                else:
                    step = run
                    out.append(step - 1)
                run -= step
        else:
            while run > 0:
                step = min(run, 4)
                out.append(0x80 | ((v - 1) << 2) | (step - 1))
                run -= step
        if len(out) > SPARSE_MAX_BYTES:
            return None
    return bytes(out)


def encode(regs: np.ndarray) -> bytes | None:
    """The blob Redis would hold for these registers (None when all are zero)."""
    nonzero = int(np.count_nonzero(regs))
    if nonzero == 0:
        return None
    if nonzero <= SPARSE_MAX_BYTES:
        sparse = _sparse(regs)
        if sparse is not None:
            return sparse
    blob = _dense(regs)
    assert len(blob) == DENSE_SIZE and len(DENSE_HEADER) == HEADER
    return blob


async def check_against_redis(redis: Any, key: str, seed: int = 5) -> None:
    """Raises AssertionError unless numpy's registers equal Redis's PFADD registers and
    Redis counts the numpy blob as it counts its own (small, sparse and dense sets)."""
    rng = np.random.default_rng(seed)
    for size in (1, 40, 2_000, 60_000):
        uids = rng.integers(0, 10**7, size=size)
        uids[0] = 0  # "u0", one digit
        await redis.delete(key)
        strings = [f"u{x}" for x in uids.tolist()]
        for i in range(0, len(strings), 5000):
            await redis.pfadd(key, *strings[i : i + 5000])
        theirs = await redis.get(key)
        mine = bucket_registers(np.zeros(size, dtype=np.int64), uids, 1)[0]
        assert registers(theirs) == mine.tobytes(), f"registers differ at {size} uids"
        blob = encode(mine)
        assert blob is not None
        assert registers(blob) == mine.tobytes()
        want = await redis.pfcount(key)
        await redis.set(key, blob)
        assert await redis.pfcount(key) == want, f"PFCOUNT differs at {size} uids"
    await redis.delete(key)
