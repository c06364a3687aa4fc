"""Reading Redis HyperLogLog blobs (as GET returns them) into their 16,384 registers, so two
sketches can be compared register by register whatever their encoding (sparse or dense) or
cached cardinality."""

from __future__ import annotations

REGISTERS = 16_384
HEADER = 16
DENSE_SIZE = HEADER + REGISTERS * 6 // 8


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
        body = blob[HEADER:] + b"\x00"
        for i in range(REGISTERS):
            bit = i * 6
            b, shift = bit >> 3, bit & 7
            out[i] = ((body[b] >> shift) | (body[b + 1] << (8 - shift))) & 63
        return bytes(out)
    if encoding != 1:
        raise ValueError("unknown HLL encoding")
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
            value = ((op >> 2) & 0x1F) + 1
            run = (op & 0x03) + 1
            out[pos : pos + run] = bytes([value]) * run
            pos += run
            i += 1
    if pos != REGISTERS:
        raise ValueError("sparse HLL does not cover every register")
    return bytes(out)


def same_registers(a: bytes | None, b: bytes | None) -> bool:
    """Whether two sketches hold the same registers (None = empty)."""
    return registers(a) == registers(b)
