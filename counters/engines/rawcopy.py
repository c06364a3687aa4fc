"""Raw-log copy: stream entries after persist_state.raw_stream_id go to raw_events with the
new position in one transaction, then the stream is trimmed up to it (lua/trim_raw.lua).
A chunk whose position moved meanwhile (another copier) is read again, never copied twice.

A chunk whose rows Postgres refuses (e.g. a NUL in a text column) is copied again entry by
entry, which copies the good entries before the bad one and finds it. Each failed copy of
that entry is counted in raw_copy_failures; after `deadletter_after_attempts` failures the
entry moves, bytes intact, to raw_dead_letters and raw_stream_id passes it in the same
transaction, so the project's raw log goes on. Until then the copy raises RawEntryBlocked
(the pass of that project stops there; the other projects are not concerned). A backend
that is down is never blamed on an entry: it raises Unavailable as before."""

from __future__ import annotations

import logging
from typing import cast

import msgspec

from counters.core.buckets import DAY_MS
from counters.core.models import RawEvent, decode_raw_batch
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys
from persist.db import Conn, postgres_unavailable
from persist.deadletter import (
    ROWS_REFUSED,
    NewDeadLetter,
    clear_failure,
    error_text,
    insert_dead_letter,
    record_failure,
)
from persist.rawlog import Record, copy_raw_rows, create_partitions, raw_records, record_dims
from persist.state import load_state, set_raw_stream_id

log = logging.getLogger("counters.persister")

RAW_CHUNK_ENTRIES = 10
"""Raw-log stream entries (each a whole batch, up to 10,000 events) copied per transaction:
small enough that one XRANGE reply stays a few MB while ingest scripts run in between."""

Entry = tuple[bytes, dict[bytes, bytes]]
"""One raw-log stream entry as XRANGE returns it: id, fields (n, e)."""


class RawEntryBlocked(Exception):
    """A raw-log entry could not be copied (attempt `attempts` of `limit`); the project's
    raw log waits behind it until a later try copies it or moves it to the dead letters."""

    def __init__(self, project: str, stream_id: str, attempts: int, limit: int, error: str):
        self.project = project
        self.stream_id = stream_id
        self.attempts = attempts
        self.limit = limit
        self.error = error
        self.reason = f"raw-log entry {stream_id} cannot be copied: {error}"
        """What stays the same from one attempt to the next (logged once)."""
        super().__init__(
            f"{self.reason} (attempt {attempts} of {limit}; then it moves to the dead letters)"
        )


class _Refused(Exception):
    """The rows of these entries cannot be stored as they are (internal to this module)."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


def _events(fields: dict[bytes, bytes]) -> list[RawEvent]:
    try:
        return decode_raw_batch(fields[b"e"])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _Refused(f"the entry cannot be decoded: {error_text(exc)}") from exc


def _time_range(fields: dict[bytes, bytes]) -> tuple[int | None, int | None]:
    try:
        times = [ev.ts for ev in _events(fields)]
    except _Refused:
        return None, None
    return (min(times), max(times)) if times else (None, None)


class RawCopier:
    """Copies a project's raw-log stream into raw_events, creating day partitions as needed,
    and moves an entry that keeps failing to the dead-letter table."""

    def __init__(
        self, redis: RedisClient, scripts: Scripts, metrics: Metrics, *, deadletter_after: int = 3
    ):
        self.redis = redis
        self.scripts = scripts
        self.metrics = metrics
        self.deadletter_after = max(1, deadletter_after)
        self._partitions: set[int] = set()

    def forget_partitions(self) -> None:
        """Forgets which partitions exist (retention may have dropped some)."""
        self._partitions.clear()

    async def _ensure_partitions(self, conn: Conn, days: set[int]) -> None:
        missing = sorted(days - self._partitions)
        if not missing:
            return
        with postgres_unavailable():
            try:
                await create_partitions(conn, missing)
            except ROWS_REFUSED as exc:
                raise _Refused(error_text(exc)) from exc
        self._partitions.update(missing)

    async def copy(self, conn: Conn, keys: ProjectKeys) -> int:
        """Copies the stream until it is drained; returns the number of events copied.
        Raises RawEntryBlocked when an entry's rows are refused and it has not failed
        `deadletter_after` times yet (the entries before it are copied)."""
        copied = 0
        while True:
            with postgres_unavailable():
                state = await load_state(conn, keys.project)
            with redis_unavailable():
                entries = cast(
                    list[Entry],
                    await self.redis.xrange(
                        keys.raw, min=f"({state.raw_stream_id}", max="+", count=RAW_CHUNK_ENTRIES
                    ),
                )
            if not entries:
                return copied
            try:
                done = await self._commit(conn, keys, state.raw_stream_id, entries)
            except _Refused:
                done = await self._one_by_one(conn, keys, state.raw_stream_id, entries)
            if done is None:  # another copier moved the position: read again
                continue
            copied += done
            if len(entries) < RAW_CHUNK_ENTRIES:
                return copied

    async def _commit(
        self,
        conn: Conn,
        keys: ProjectKeys,
        after: str,
        entries: list[Entry],
        *,
        clear: bool = False,
    ) -> int | None:
        """Copies these entries (the ones right after stream id `after`) and moves the
        position past them in one transaction, then trims them; returns the events copied,
        or None when the position is no longer `after`. Raises _Refused if the rows are
        refused (nothing is then written). With clear, forgets the entry's failures."""
        records: list[Record] = []
        days: set[int] = set()
        dim_sets: set[tuple[int, tuple[str, ...]]] = set()  # (day, dim names): few per entry
        size = DAY_MS
        for sid_raw, fields in entries:
            events = _events(fields)
            records.extend(raw_records(keys.project, events, sid_raw.decode()))
            for ev in events:
                ts = ev.ts
                day = ts - ts % size
                days.add(day)
                if ev.dims:
                    dim_sets.add((day, tuple(ev.dims)))
        dims = {(day, d) for day, names in dim_sets for d in names}
        last = entries[-1][0].decode()
        await self._ensure_partitions(conn, days)
        with postgres_unavailable():
            try:
                async with conn.transaction():
                    current = await load_state(conn, keys.project, for_update=True)
                    if current.raw_stream_id != after:
                        return None
                    await copy_raw_rows(conn, records)
                    await record_dims(conn, keys.project, dims)
                    await set_raw_stream_id(conn, keys.project, last)
                    if clear:
                        await clear_failure(conn, keys.project, last)
            except ROWS_REFUSED as exc:
                raise _Refused(error_text(exc)) from exc
        await self._trim(keys, last)
        self.metrics.raw_copied.inc(len(records))
        return len(records)

    async def _one_by_one(
        self, conn: Conn, keys: ProjectKeys, after: str, entries: list[Entry]
    ) -> int | None:
        """Copies the entries one transaction each, up to the first one refused: that one
        is counted as failed (RawEntryBlocked) or, at the limit, moved to the dead letters
        and passed. Returns the events copied, or None if the position moved meanwhile."""
        copied = 0
        for entry in entries:
            try:
                done = await self._commit(conn, keys, after, [entry], clear=True)
            except _Refused as exc:
                if not await self._failed(conn, keys, after, entry, exc.error):
                    return None
                done = 0
            if done is None:
                return None
            copied += done
            after = entry[0].decode()
        return copied

    async def _failed(
        self, conn: Conn, keys: ProjectKeys, after: str, entry: Entry, error: str
    ) -> bool:
        """Counts a refused copy of the entry right after `after`; raises RawEntryBlocked
        below the limit, else moves the entry to raw_dead_letters and the position past it
        in one transaction (True; False if the position moved meanwhile)."""
        sid = entry[0].decode()
        with postgres_unavailable():
            failure = await record_failure(conn, keys.project, sid, error)
        if failure.attempts < self.deadletter_after:
            raise RawEntryBlocked(keys.project, sid, failure.attempts, self.deadletter_after, error)
        fields = entry[1]
        ts_from, ts_to = _time_range(fields)
        letter = NewDeadLetter(
            project=keys.project,
            stream_id=sid,
            events=int(fields.get(b"n", b"0") or 0),
            payload=fields.get(b"e", b""),
            ts_from=ts_from,
            ts_to=ts_to,
            error=error,
            failure=failure,
        )
        with postgres_unavailable():
            async with conn.transaction():
                current = await load_state(conn, keys.project, for_update=True)
                if current.raw_stream_id != after:
                    return False
                await insert_dead_letter(conn, letter)
                await set_raw_stream_id(conn, keys.project, sid)
        await self._trim(keys, sid)
        self.metrics.deadletter_moved.inc()
        log.warning(
            "persister: %s: raw-log entry %s (%d events) moved to the dead letters after %d"
            " failed copies: %s; its events are counted but not in the raw log"
            " (counters deadletter list)",
            keys.project,
            sid,
            letter.events,
            failure.attempts,
            error,
        )
        return True

    async def _trim(self, keys: ProjectKeys, last: str) -> None:
        with redis_unavailable():
            await self.scripts.trim_raw(keys=[keys.raw, keys.watermarks], args=[last])
