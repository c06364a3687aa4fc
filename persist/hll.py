"""Reading Redis HyperLogLog blobs (as GET returns them) into their 16,384 registers, so two
sketches can be compared register by register whatever their encoding (sparse or dense) or
cached cardinality."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

REGISTERS = 16_384
HEADER = 16
DENSE_SIZE = HEADER + REGISTERS * 6 // 8


# Dense registers are 6 bits each, least significant bit first: every 3 bytes b0 b1 b2 hold
# 4 registers, r0 = b0 & 63, r1 = b0 >> 6 | (b1 & 15) << 2, r2 = b1 >> 4 | (b2 & 3) << 4,
# r3 = b2 >> 2. Byte tables do each part for all groups at once (C speed, not a loop).
_LOW6 = bytes(b & 63 for b in range(256))
_HIGH2 = bytes(b >> 6 for b in range(256))
_LOW4_UP2 = bytes((b & 15) << 2 for b in range(256))
_HIGH4 = bytes(b >> 4 for b in range(256))
_LOW2_UP4 = bytes((b & 3) << 4 for b in range(256))
_HIGH6 = bytes(b >> 2 for b in range(256))


def _or(a: bytes, b: bytes) -> bytes:
    """Byte-wise OR of two equal-length strings whose set bits never overlap."""
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _dense(body: bytes) -> bytes:
    b0, b1, b2 = body[0::3], body[1::3], body[2::3]
    out = bytearray(REGISTERS)
    out[0::4] = b0.translate(_LOW6)
    out[1::4] = _or(b0.translate(_HIGH2), b1.translate(_LOW4_UP2))
    out[2::4] = _or(b1.translate(_HIGH4), b2.translate(_LOW2_UP4))
    out[3::4] = b2.translate(_HIGH6)
    return bytes(out)


def registers(blob: bytes | None) -> bytes:
    """The registers of a Redis HLL (one byte each); all zero for None. Raises ValueError
    for something that is not a Redis HLL."""
    out = bytearray(REGISTERS)
    if blob is None:
        return bytes(out)
    if blob[:4] != b"HYLL":
        raise ValueError("not a Redis HyperLogLog")
    encoding = blob[4]
    if encoding == 0:
        if len(blob) != DENSE_SIZE:
            raise ValueError("dense HLL of the wrong size")
        return _dense(blob[HEADER:])
    if encoding != 1:
        raise ValueError("unknown HLL encoding")
    for pos, run, value in _sparse_values(blob):
        out[pos : pos + run] = bytes([value]) * run
    return bytes(out)


def _sparse_values(blob: bytes) -> Iterator[tuple[int, int, int]]:
    """(first register, run length, value) of every VAL opcode of a sparse blob; raises
    ValueError when the opcodes do not cover every register."""
    pos = 0
    i = HEADER
    while i < len(blob):
        op = blob[i]
        if op & 0xC0 == 0:  # ZERO: 00xxxxxx
            pos += (op & 0x3F) + 1
            i += 1
        elif op & 0xC0 == 0x40:  # XZERO: 01xxxxxx yyyyyyyy
            pos += (((op & 0x3F) << 8) | blob[i + 1]) + 1
            i += 2
        else:  # VAL: 1vvvvvxx
            run = (op & 0x03) + 1
            yield pos, run, ((op >> 2) & 0x1F) + 1
            pos += run
            i += 1
    if pos != REGISTERS:
        raise ValueError("sparse HLL does not cover every register")


def union_registers(blobs: Iterable[bytes | None]) -> bytes:
    """The registers of the union of sketches (each register the largest of the sketches'),
    as registers() returns them: what a PFMERGE of them holds. Sparse sketches cost only
    their non-zero registers."""
    out = bytearray(REGISTERS)
    for blob in blobs:
        if blob is None:
            continue
        if blob[:5] == b"HYLL\x01":
            for pos, run, value in _sparse_values(blob):
                for p in range(pos, pos + run):
                    if out[p] < value:
                        out[p] = value
        else:
            out = bytearray(map(max, out, registers(blob)))
    return bytes(out)


def same_registers(a: bytes | None, b: bytes | None) -> bool:
    """Whether two sketches hold the same registers (None = empty)."""
    return registers(a) == registers(b)
