"""The in-process cache of reads' Postgres parts: for one query (project, name, rollup,
dims values, measure kind, planned buckets), the rows Postgres held below its watermarks
and the snapshot's state, so a polled read asks Redis only (the hot buckets, the late
generations after the snapshot's late_applied, and the history version in one round trip).

An entry is used only while (a) the project's history version in Redis still equals the
one read before its Postgres snapshot (engines/history_version.py: every rewrite of rows
below the watermarks replaces it), and (b) it is younger than max_age_seconds, which the
services set to half of keep_after_copy_seconds (at most 60 s): every Redis key a read
with that older snapshot needs (buckets copied and late generations applied after it) is
kept that long after the copy or apply, so the answer is the one an uncached read gives.
Bounded by entries and by estimated bytes, least recently used out first."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from counters.core.buckets import Grain
from persist.state import PersistState

Hot = tuple[int, int, Grain, int]
"""(piece index, bucket index, grain, bucket) of a bucket Redis is authoritative for."""
ENTRY_OVERHEAD_BYTES = 512
BUCKET_BYTES = 16
MAX_AGE_SECONDS = 60.0


class HistoryPart:
    """The Postgres part of one read: per piece and bucket, count and sum (0 where there
    is no row or Redis answers for the bucket), the stored sketches, and the buckets at or
    above the snapshot's watermarks (Redis answers for them). Never mutated once built."""

    __slots__ = ("counts", "hlls", "hot", "size", "state", "sums")

    def __init__(
        self,
        state: PersistState,
        counts: list[list[int]],
        sums: list[list[int]],
        hlls: list[tuple[int, int, bytes]],
        hot: list[Hot],
    ) -> None:
        self.state = state
        self.counts = counts
        self.sums = sums
        self.hlls = hlls
        """(piece index, bucket index, sketch) of every stored sketch."""
        self.hot = hot
        buckets = sum(len(c) for c in counts)
        sketches = sum(len(h) for _, _, h in hlls)
        self.size = ENTRY_OVERHEAD_BYTES + BUCKET_BYTES * (buckets + len(hot)) + sketches


class CachedHistory:
    """One cache entry: the part, the history version read before its snapshot, and when
    (time.monotonic(), taken before the snapshot began)."""

    __slots__ = ("part", "read_at", "token")

    def __init__(self, part: HistoryPart, token: bytes, read_at: float) -> None:
        self.part = part
        self.token = token
        self.read_at = read_at


class HistoryCache:
    """LRU of CachedHistory by query key, bounded by max_entries and max_bytes; entries
    older than max_age_seconds are never returned. One per process (the services open it);
    not shared across threads (the event loop's only)."""

    def __init__(
        self, max_entries: int, max_bytes: int, max_age_seconds: float = MAX_AGE_SECONDS
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.bytes = 0
        self.hits = 0
        """Reads answered from an entry (its version checked)."""
        self.misses = 0
        """Reads that asked Postgres (no entry, an old one, or a stale version)."""
        self.stale = 0
        """Entries found with a history version that had moved on."""
        self.evictions = 0
        self._entries: OrderedDict[Hashable, CachedHistory] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float | None = None) -> CachedHistory | None:
        """The entry if it is young enough (then most recently used), else None (an old
        one is dropped). The caller still checks its version (and counts the hit)."""
        entry = self._entries.get(key)
        if entry is not None:
            clock = time.monotonic() if now is None else now
            if clock - entry.read_at < self.max_age_seconds:
                self._entries.move_to_end(key)
                return entry
            self.drop(key)
        return None

    def put(self, key: Hashable, entry: CachedHistory) -> None:
        """Stores the entry (replacing one under the same key), then evicts the least
        recently used entries until both bounds hold; an entry bigger than max_bytes on its
        own is not stored."""
        if self.max_entries <= 0 or entry.part.size > self.max_bytes:
            return
        self.drop(key)
        self._entries[key] = entry
        self.bytes += entry.part.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.part.size
            self.evictions += 1

    def drop(self, key: Hashable) -> None:
        """Forgets the entry under key, if any (a stale version, an expired entry)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.part.size


def cache_key(
    base: str,
    name: str,
    rollup: str,
    values: Sequence[str],
    pieces: Sequence[tuple[Grain, Sequence[int]]],
    uniques: bool,
) -> Hashable:
    """What one read's Postgres part depends on besides the version and the snapshot:
    base names the key prefix and the project (tenants never share an entry), then the
    event name, rollup, dims values, whether sketches are read, and the planned buckets."""
    return (
        base,
        name,
        rollup,
        tuple(values),
        uniques,
        tuple((g, tuple(buckets)) for g, buckets in pieces),
    )
