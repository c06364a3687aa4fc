"""Redis HyperLogLog sketches computed in bulk with numpy, register for register what PFADD
builds, for rebuild and reconcile.

    hll_positions(uids)          -> each uid's register index and rank (MurmurHash64A with
                                    Redis's seed, then hllPatLen), for any UTF-8 strings
    max_registers(keys, idx, rk) -> per (group, register) the largest rank, sorted
    encode_groups(...)           -> the blob Redis holds for each group's registers: sparse
                                    (the opcodes PFADD and PFMERGE leave, byte for byte, in
                                    every case tests/test_sketches.py compares) below 3,000
                                    bytes and values <= 32, dense otherwise

A blob is returned as its first 5 bytes ("HYLL" and the encoding) followed by the body,
without the 11 header bytes after them (3 unused, 8 of cached cardinality), because those
are what two sketches with equal registers can disagree on; `full_blob` puts them back
(cardinality marked stale, so Redis recomputes it on the first PFCOUNT)."""

from __future__ import annotations

import binascii
import itertools

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from persist.hll import HEADER, REGISTERS

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

_M = np.uint64(0xC6A4A7935BD1E995)
_SEED = np.uint64(0xADC83B19)
_R = np.uint64(47)
_P = 14
SPARSE_MAX_BYTES = 3000
"""Redis's hll-sparse-max-bytes default: a sparse sketch larger than this is dense."""
SPARSE_MAX_VALUE = 32
"""The largest register value the sparse encoding can hold."""
_STALE_CARD = b"\x00\x00\x00" + b"\x00" * 7 + b"\x80"
"""Header bytes 5..15: unused, then the cached cardinality with its 'invalid' bit set."""
DENSE_BODY = REGISTERS * 6 // 8
"""Bytes of a dense sketch after its header."""
SPARSE_HEAD = b"HYLL\x01"
DENSE_HEAD = b"HYLL\x00"


def murmur64a(data: U8, offsets: npt.NDArray[np.int64]) -> U64:
    """MurmurHash64A (seed 0xadc83b19, as Redis's HLL) of each byte string data[o[i]:o[i+1]]."""
    lengths = np.diff(offsets)
    out = np.empty(lengths.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for length in np.unique(lengths).tolist():
            which = np.flatnonzero(lengths == length)
            starts = offsets[:-1][which]
            h: U64 = np.full(which.size, _SEED ^ (np.uint64(length) * _M), dtype=np.uint64)
            blocks = length // 8
            if (
                blocks
                and which.size == lengths.size
                and starts[-1] - starts[0] == (which.size - 1) * length
            ):  # every string this long and packed: view the bytes, no gather
                raw = data[starts[0] : starts[0] + which.size * length].reshape(-1, length)
                raw = raw[:, : blocks * 8]
            elif blocks:
                raw = data[starts[:, None] + np.arange(blocks * 8)]
            if blocks:
                words = np.ascontiguousarray(raw).view("<u8").reshape(which.size, blocks)
                for b in range(blocks):
                    k = words[:, b] * _M
                    k ^= k >> _R
                    k *= _M
                    h ^= k
                    h *= _M
            rest = length & 7
            if rest:
                tail = np.zeros(which.size, dtype=np.uint64)
                base = starts + blocks * 8
                for j in range(rest):
                    tail |= data[base + j].astype(np.uint64) << np.uint64(8 * j)
                h ^= tail
                h *= _M
            h ^= h >> _R
            h *= _M
            h ^= h >> _R
            out[which] = h
    return out


def positions(hashes: U64) -> tuple[I64, U8]:
    """Register index and rank (1..51) of each 64-bit hash, as Redis's hllPatLen."""
    index = (hashes & np.uint64(REGISTERS - 1)).astype(np.int64)
    rest = (hashes >> np.uint64(_P)) | (np.uint64(1) << np.uint64(64 - _P))
    lowest = rest & (~rest + np.uint64(1))
    rank = (np.log2(lowest.astype(np.float64)) + 1).astype(np.uint8)
    return index, rank


def hll_positions(uids: pa.Array) -> tuple[I64, U8]:
    """Register index and rank of each string of a (non-null) Arrow string array."""
    arr = pc.cast(uids, pa.large_string()) if not pa.types.is_large_string(uids.type) else uids
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return positions(murmur64a(data, offsets.astype(np.int64)))


def pack(keys: I64, index: I64, rank: U8) -> I64:
    """(key, register index, rank) triples as one int64 each, ordered by key, index, rank."""
    return (keys * REGISTERS + index) * 64 + rank.astype(np.int64)


_CELL_CHUNK = 1 << 20
"""Triples whose cells max_packed compares at once (bounds its temporary arrays)."""


def max_packed(packed: I64) -> I64:
    """Of packed triples, the one with the largest rank per (key, register index), sorted.
    Sorts `packed` in place; its temporaries are a bool per triple and one chunk."""
    packed.sort()
    last = np.empty(packed.size, dtype=bool)
    for a in range(0, packed.size, _CELL_CHUNK):
        b = min(a + _CELL_CHUNK, packed.size - 1)
        if b > a:
            cell = packed[a : b + 1] >> 6
            np.not_equal(cell[1:], cell[:-1], out=last[a:b])
    if packed.size:
        last[-1] = True
    return packed[last]


def unpack(packed: I64) -> tuple[I64, I64, U8]:
    """pack's inverse: (keys, indexes, ranks)."""
    cells = packed >> 6
    return cells // REGISTERS, cells % REGISTERS, (packed & 63).astype(np.uint8)


def max_registers(keys: I64, index: I64, rank: U8) -> tuple[I64, I64, U8]:
    """Per distinct (key, register index): the largest rank. Returned sorted by key then
    index, as (keys, indexes, ranks)."""
    return unpack(max_packed(pack(keys, index, rank)))


class Encoded:
    """The sketches of many groups in one buffer: group g's blob (encode_groups' form) is
    data[offsets[g]:offsets[g + 1]]."""

    __slots__ = ("data", "keys", "offsets")

    def __init__(self, keys: I64, offsets: I64, data: bytes) -> None:
        self.keys = keys
        self.offsets = offsets
        self.data = data

    def blob(self, g: int) -> bytes:
        """Group g's blob (encode_groups' form: see short_blob)."""
        return self.data[int(self.offsets[g]) : int(self.offsets[g + 1])]

    def hex(self) -> pa.Array:
        """Every group's blob as lowercase hex, one Arrow string per group (what
        persist.rebuild_sql.stored_rows gives of a stored sketch)."""
        text = binascii.hexlify(self.data)
        offsets = (self.offsets * 2).astype(np.int32)
        return pa.Array.from_buffers(
            pa.string(), self.keys.size, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
        )


ENCODE_CHUNK = 200_000
"""Registers encoded at once (whole groups): bounds the working arrays of encode_groups."""


def encode_groups(keys: I64, index: I64, rank: U8) -> Encoded:
    """The sketch of every group of max_registers output (sorted by key, then index): the
    blob Redis holds for each distinct key's registers, without header bytes 5..15 (see the
    module docstring). Works through ENCODE_CHUNK registers (whole groups) at a time."""
    if keys.size <= ENCODE_CHUNK:
        return _encode(keys, index, rank)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    cuts = [0]
    while cuts[-1] < keys.size:  # the first group start past each chunk's worth
        nxt = int(np.searchsorted(starts, cuts[-1] + ENCODE_CHUNK))
        cuts.append(int(starts[nxt]) if nxt < starts.size else int(keys.size))
    return _joined([_encode(keys[a:b], index[a:b], rank[a:b]) for a, b in itertools.pairwise(cuts)])


def encode_packed(packed: I64) -> Encoded:
    """encode_groups of max_packed output, unpacked ENCODE_CHUNK registers at a time (a day's
    registers are never all held unpacked)."""
    if packed.size <= ENCODE_CHUNK:
        return _encode(*unpack(packed))
    cells = packed >> 6
    starts = np.flatnonzero(np.r_[True, cells[1:] // REGISTERS != cells[:-1] // REGISTERS])
    del cells
    cuts = [0]
    while cuts[-1] < packed.size:
        nxt = int(np.searchsorted(starts, cuts[-1] + ENCODE_CHUNK))
        cuts.append(int(starts[nxt]) if nxt < starts.size else int(packed.size))
    return _joined([_encode(*unpack(packed[a:b])) for a, b in itertools.pairwise(cuts)])


def _joined(parts: list[Encoded]) -> Encoded:
    """One Encoded of consecutive parts."""
    base = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
    offsets = np.concatenate(
        [p.offsets[:-1] + o for p, o in zip(parts, base, strict=True)]
        + [[int(base[-1]) + len(parts[-1].data)]]
    ).astype(np.int64)
    return Encoded(
        np.concatenate([p.keys for p in parts]), offsets, b"".join(p.data for p in parts)
    )


def merged(parts: list[Encoded]) -> Encoded:
    """One Encoded of parts holding distinct keys, ordered by key (each part's keys need
    not be)."""
    keys = np.concatenate([p.keys for p in parts])
    order = np.argsort(keys, kind="stable")
    where = [(i, g) for i, p in enumerate(parts) for g in range(p.keys.size)]
    views = [memoryview(p.data) for p in parts]
    blobs = []
    for j in order.tolist():
        i, g = where[j]
        blobs.append(views[i][int(parts[i].offsets[g]) : int(parts[i].offsets[g + 1])])
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    return Encoded(keys[order], np.r_[0, np.cumsum(sizes)].astype(np.int64), b"".join(blobs))


def _encode(keys: I64, index: I64, rank: U8) -> Encoded:
    n = keys.size
    if n == 0:
        return Encoded(keys, np.zeros(1, dtype=np.int64), b"")
    first = np.empty(n, dtype=bool)  # a group's first register
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    reg = index.astype(np.int32)
    # VAL opcodes: runs of equal values in adjacent registers, at most 4 per opcode
    joins = np.zeros(n, dtype=bool)  # register i extends the run of register i - 1
    np.equal(reg[1:], reg[:-1] + 1, out=joins[1:])
    joins[1:] &= rank[1:] == rank[:-1]
    joins &= ~first
    if joins.any():
        ops = np.flatnonzero(~joins)  # run starts; a run longer than 4 takes more opcodes
        run_len = np.diff(np.r_[ops, n])
        long = np.flatnonzero(run_len > 4)
        if long.size:
            more = (run_len[long] - 1) // 4
            ops = np.sort(
                np.r_[
                    ops,
                    np.repeat(ops[long], more)
                    + 4 * (np.arange(more.sum()) - np.repeat(np.cumsum(more) - more, more) + 1),
                ]
            )
        op_len = np.diff(np.r_[ops, n]).astype(np.int32)
        op_reg, op_val, op_first = reg[ops], rank[ops], first[ops]
    else:  # every register is an opcode of its own (the usual case)
        op_len = np.ones(n, dtype=np.int32)
        op_reg, op_val, op_first = reg, rank, first
    # zeros before each opcode: from the end of the previous opcode of the same group
    end = op_reg + op_len
    gap = np.empty_like(op_reg)
    gap[0] = op_reg[0]
    np.subtract(op_reg[1:], end[:-1], out=gap[1:])
    gap[op_first] = op_reg[op_first]
    zeros = _zero_bytes(gap)
    group_first_op = np.flatnonzero(op_first)
    last_op = np.r_[group_first_op[1:] - 1, op_reg.size - 1]
    tail = REGISTERS - end[last_op]
    op_bytes = zeros + 1
    before = np.cumsum(op_bytes, dtype=np.int64)  # bytes up to each opcode, all groups
    sparse_body = before[last_op] + _zero_bytes(tail)
    before -= op_bytes  # now: bytes before each opcode
    sparse_body -= before[group_first_op]
    dense = (sparse_body + HEADER > SPARSE_MAX_BYTES) | (
        np.maximum.reduceat(rank, starts) > SPARSE_MAX_VALUE
    )
    # one buffer: per group its 5 head bytes, then each opcode's zeros and VAL, then the
    # tail's zeros (sparse), or the 12,288 bytes of registers (dense)
    offsets = np.zeros(starts.size + 1, dtype=np.int64)
    np.cumsum(np.where(dense, DENSE_BODY, sparse_body) + 5, out=offsets[1:])
    buf = np.zeros(int(offsets[-1]), dtype=np.uint8)
    head = offsets[:-1]
    for j, byte in enumerate(SPARSE_HEAD[:4]):
        buf[head + j] = byte
    buf[head + 4] = np.where(dense, DENSE_HEAD[4], SPARSE_HEAD[4])
    # each opcode's position: its group's body start plus the bytes of the opcodes before
    base = head + 5 - before[group_first_op]
    op_group = np.repeat(np.arange(starts.size), np.diff(np.r_[group_first_op, op_reg.size]))
    if dense.any():  # the opcodes of sparse groups only
        keep = ~dense[op_group]
        gap, zeros, op_val, op_len, before, op_group = (
            gap[keep],
            zeros[keep],
            op_val[keep],
            op_len[keep],
            before[keep],
            op_group[keep],
        )
    at = base[op_group] + before
    _put_zeros(buf, at, gap, zeros)
    buf[at + zeros] = (0x80 | ((op_val - 1) << 2) | (op_len - 1)).astype(np.uint8)
    sparse = ~dense
    tail_zeros = _zero_bytes(tail[sparse])
    _put_zeros(buf, offsets[1:][sparse] - tail_zeros, tail[sparse], tail_zeros)
    bounds = np.r_[starts, n]
    for g in np.flatnonzero(dense).tolist():
        a, b = int(bounds[g]), int(bounds[g + 1])
        regs = np.zeros(REGISTERS, dtype=np.uint8)
        regs[index[a:b]] = rank[a:b]
        at0 = int(offsets[g]) + 5
        buf[at0 : at0 + DENSE_BODY] = np.frombuffer(dense_body(regs), dtype=np.uint8)
    return Encoded(keys[starts], offsets, buf.tobytes())


def _zero_bytes(gap: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Bytes the sparse encoding spends on a run of `gap` zero registers (ZERO for 1..64,
    XZERO for 65..16,384)."""
    out = (gap > 0).astype(np.int32)
    out += gap > 64
    return out


def _put_zeros(buf: U8, at: I64, gap: npt.NDArray[np.int32], zeros: npt.NDArray[np.int32]) -> None:
    """Writes at buf[at] the ZERO or XZERO opcode of each run of `gap` zero registers that
    takes `zeros` bytes (none when 0)."""
    one = zeros == 1
    buf[at[one]] = (gap[one] - 1).astype(np.uint8)
    two = np.flatnonzero(zeros == 2)
    run = gap[two] - 1
    buf[at[two]] = (0x40 | (run >> 8)).astype(np.uint8)
    buf[at[two] + 1] = (run & 0xFF).astype(np.uint8)


def dense_body(regs: U8) -> bytes:
    """The dense encoding's 12,288 bytes for 16,384 registers (6 bits each, LSB first)."""
    r = regs.astype(np.uint32).reshape(-1, 4)
    packed = r[:, 0] | (r[:, 1] << 6) | (r[:, 2] << 12) | (r[:, 3] << 18)
    body = np.stack([packed & 0xFF, (packed >> 8) & 0xFF, (packed >> 16) & 0xFF], axis=1)
    return body.astype(np.uint8).tobytes()


def full_blob(short: bytes) -> bytes:
    """A blob as Redis stores it, from encode_groups' form (cached cardinality stale)."""
    return short[:5] + _STALE_CARD + short[5:]


def full_hex(short_hex: pa.Array) -> pa.Array:
    """full_blob over hex strings (nulls stay null): what Postgres decodes into the blob."""
    return pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(short_hex, 0, 10),
        _STALE_CARD.hex(),
        pc.utf8_slice_codeunits(short_hex, 10, 1 << 30),
        "",
    )


def short_blob(blob: bytes) -> bytes:
    """encode_groups' form of a stored blob: its first 5 bytes and its body."""
    return blob[:5] + blob[HEADER:]
