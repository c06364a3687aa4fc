"""uids as keyed hashes: what is stored and counted instead of the uid a client sends.

HMAC-SHA-256 with the project's secret, truncated to 16 bytes, as 32 hex characters. The
same uid in the same project always gives the same hash, so uniques count exactly as they
would on the plain uids (a collision needs ~2^64 distinct uids); without the secret a
stored hash does not give back the uid, and hashes of two projects cannot be joined."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from counters.core.models import RawEvent

UID_HASH_BYTES = 16
"""Bytes of the HMAC kept (hex: twice as many characters)."""

_BLOCK = 64
"""SHA-256's block size: the HMAC key pad length (RFC 2104)."""


def hash_uid(key: bytes, uid: str) -> str:
    """The stored form of a uid: hex of the first 16 bytes of HMAC-SHA-256(key, uid UTF-8)."""
    digest = hmac.digest(key, uid.encode("utf-8", "surrogatepass"), "sha256")
    return digest[:UID_HASH_BYTES].hex()


class UidHasher:
    """hash_uid for one key, with the HMAC's inner and outer pad states computed once (half
    the hashing work per uid of hmac.digest)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __call__(self, uid: str) -> str:
        """Exactly hash_uid(key, uid)."""
        inner = self._inner.copy()
        inner.update(uid.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:UID_HASH_BYTES].hex()

    def events(self, events: Sequence[RawEvent]) -> list[RawEvent]:
        """The events with every uid replaced by its hash (one HMAC per distinct uid of the
        batch); events without a uid are returned as they are, in the same order."""
        memo: dict[str, str] = {}
        replace = msgspec.structs.replace
        out: list[RawEvent] = []
        append = out.append
        for ev in events:
            uid = ev.uid
            if uid is None:
                append(ev)
                continue
            hashed = memo.get(uid)
            if hashed is None:
                hashed = memo[uid] = self(uid)
            append(replace(ev, uid=hashed))
        return out


def has_uids(events: Sequence[RawEvent]) -> bool:
    """Whether any event carries a uid (only then is the project's secret needed)."""
    return any(ev.uid is not None for ev in events)
