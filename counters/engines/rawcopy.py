"""Raw-log copy: stream entries after persist_state.raw_stream_id go to raw_events with the
new position in one transaction, then the stream is trimmed up to it (lua/trim_raw.lua).
A chunk whose position moved meanwhile (another copier) is read again, never copied twice."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from counters.core.buckets import Grain, bucket_start
from counters.core.models import decode_raw_batch
from counters.metrics import Metrics
from lua import Scripts
from lua.client import redis_unavailable
from lua.keys import ProjectKeys
from persist.db import Conn, postgres_unavailable
from persist.rawlog import Record, copy_raw_rows, create_partitions, raw_record
from persist.state import load_state, set_raw_stream_id

RAW_CHUNK_ENTRIES = 10
"""Raw-log stream entries (each a whole batch, up to 10,000 events) copied per transaction:
small enough that one XRANGE reply stays a few MB while ingest scripts run in between."""


class RawCopier:
    """Copies a project's raw-log stream into raw_events, creating day partitions as needed."""

    def __init__(self, redis: Redis, scripts: Scripts, metrics: Metrics):
        self.redis = redis
        self.scripts = scripts
        self.metrics = metrics
        self._partitions: set[int] = set()

    def forget_partitions(self) -> None:
        """Forgets which partitions exist (retention may have dropped some)."""
        self._partitions.clear()

    async def _ensure_partitions(self, conn: Conn, days: set[int]) -> None:
        missing = sorted(days - self._partitions)
        if not missing:
            return
        with postgres_unavailable():
            await create_partitions(conn, missing)
        self._partitions.update(missing)

    async def copy(self, conn: Conn, keys: ProjectKeys) -> int:
        """Copies the stream until it is drained; returns the number of events copied."""
        copied = 0
        while True:
            with postgres_unavailable():
                state = await load_state(conn, keys.project)
            with redis_unavailable():
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await self.redis.xrange(
                        keys.raw, min=f"({state.raw_stream_id}", max="+", count=RAW_CHUNK_ENTRIES
                    ),
                )
            if not entries:
                return copied
            records: list[Record] = []
            days: set[int] = set()
            for sid_raw, fields in entries:
                sid = sid_raw.decode()
                for seq, ev in enumerate(decode_raw_batch(fields[b"e"])):
                    days.add(bucket_start(ev.ts, Grain.day))
                    records.append(raw_record(keys.project, ev, sid, seq))
            last = entries[-1][0].decode()
            await self._ensure_partitions(conn, days)
            with postgres_unavailable():
                async with conn.transaction():
                    current = await load_state(conn, keys.project, for_update=True)
                    if current.raw_stream_id != state.raw_stream_id:
                        continue
                    await copy_raw_rows(conn, records)
                    await set_raw_stream_id(conn, keys.project, last)
            with redis_unavailable():
                await self.scripts.trim_raw(keys=[keys.raw, keys.watermarks], args=[last])
            copied += len(records)
            self.metrics.raw_copied.inc(len(records))
            if len(entries) < RAW_CHUNK_ENTRIES:
                return copied
