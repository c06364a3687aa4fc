"""What an operator does with the raw log's dead letters (`counters deadletter`): list them,
retry their copy into raw_events (optionally sanitized), drop them, and see which of them a
rebuild of a range would leave out.

A dead letter's events are counted in the rollups (ingest counted them in Redis, and the
buckets were copied as usual) but have no raw row: a retry only adds the raw rows, it never
counts anything again. A rebuild or reconcile of a day holding dead-lettered events would
recompute the day without them (see warn_range)."""

from __future__ import annotations

import re

import asyncpg
import msgspec

from counters.core.buckets import Grain, bucket_start
from counters.core.models import RawEvent, decode_raw_batch
from persist.db import postgres_unavailable
from persist.deadletter import (
    ROWS_REFUSED,
    DeadLetter,
    dead_letters_overlapping,
    delete_dead_letters,
    error_text,
    list_dead_letters,
    lock_dead_letter,
    note_retry_failure,
)
from persist.rawlog import copy_raw_rows, create_partitions, raw_record, record_dims

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What Postgres text and jsonb cannot hold: NUL (0x00) and lone surrogates."""


def sanitize(text: str) -> str:
    """text with every character Postgres cannot store (NUL, lone surrogates) replaced by
    U+FFFD; other characters are kept as they are."""
    return _UNSTORABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def sanitize_event(ev: RawEvent) -> RawEvent:
    """The event with sanitize() applied to its name, id, dim names and values and uid;
    time, value and arrival are unchanged (so it keeps its place in every count)."""
    return RawEvent(
        sanitize(ev.name),
        ev.ts,
        None if ev.id is None else sanitize(ev.id),
        {sanitize(k): sanitize(v) for k, v in ev.dims.items()},
        ev.value,
        None if ev.uid is None else sanitize(ev.uid),
        ev.received,
    )


class RetryResult(msgspec.Struct):
    """What a retry did: entries and events copied into raw_events, and per dead letter
    that is still there, why."""

    entries: int = 0
    events: int = 0
    failed: dict[int, str] = msgspec.field(default_factory=dict)


class DropResult(msgspec.Struct):
    """What a drop did: entries deleted and the events thereby missing from the raw log."""

    entries: int = 0
    events: int = 0


class DeadLetters:
    """The dead-letter operations, on one Postgres pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def entries(
        self, *, ids: list[int] | None = None, project: str | None = None
    ) -> list[DeadLetter]:
        """The dead letters (these ids, or all; of one project if given)."""
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                return await list_dead_letters(conn, ids=ids, project=project)

    async def retry(
        self, *, ids: list[int] | None = None, project: str | None = None, sanitize: bool = False
    ) -> RetryResult:
        """Copies each chosen dead letter's events into raw_events with their original
        stream id and position, and deletes the dead letter, in one transaction per entry
        (so a retry that fails changes nothing but the entry's error and attempts). With
        sanitize, characters Postgres cannot store are replaced by U+FFFD first. Nothing
        is counted again: the events are in the rollups already."""
        result = RetryResult()
        for letter in await self.entries(ids=ids, project=project):
            try:
                events = await self._retry_one(letter.id, sanitize=sanitize)
            except _NotStored as exc:
                result.failed[letter.id] = exc.error
                with postgres_unavailable():
                    async with self.pool.acquire() as conn:
                        await note_retry_failure(conn, letter.id, exc.error)
                continue
            if events is not None:
                result.entries += 1
                result.events += events
        return result

    async def _retry_one(self, letter_id: int, *, sanitize: bool) -> int | None:
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        found = await lock_dead_letter(conn, letter_id)
                        if found is None:
                            return None  # retried or dropped meanwhile
                        letter, payload = found
                        try:
                            events = decode_raw_batch(payload)
                        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                            raise _NotStored(
                                f"the entry cannot be decoded: {error_text(exc)}"
                            ) from exc
                        if sanitize:
                            events = [sanitize_event(ev) for ev in events]
                        days = {bucket_start(ev.ts, Grain.day) for ev in events}
                        await create_partitions(conn, sorted(days))
                        records = [
                            raw_record(letter.project, ev, letter.stream_id, seq)
                            for seq, ev in enumerate(events)
                        ]
                        await copy_raw_rows(conn, records)
                        await record_dims(
                            conn,
                            letter.project,
                            {(bucket_start(ev.ts, Grain.day), d) for ev in events for d in ev.dims},
                        )
                        await delete_dead_letters(conn, [letter_id])
                        return len(records)
                except ROWS_REFUSED as exc:
                    raise _NotStored(error_text(exc)) from exc

    async def drop(self, *, ids: list[int] | None = None, project: str | None = None) -> DropResult:
        """Deletes the chosen dead letters; their events stay counted in the rollups but
        are then missing from the raw log for good (a rebuild of their days drops them)."""
        letters = await self.entries(ids=ids, project=project)
        if not letters:
            return DropResult()
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                events = await delete_dead_letters(conn, [d.id for d in letters])
        return DropResult(entries=len(letters), events=events)

    async def overlapping(self, project: str, start: int, end: int) -> list[DeadLetter]:
        """The project's dead letters whose events may lie in [start, end)."""
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                return await dead_letters_overlapping(conn, project, start, end)


class _NotStored(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def range_warning(letters: list[DeadLetter], project: str, action: str) -> str | None:
    """The warning a rebuild or reconcile prints before touching a range that holds these
    dead letters (None when there are none): their events are counted in the rollups but
    not in the raw log, so recomputing those days from the raw log would drop them."""
    if not letters:
        return None
    events = sum(d.events for d in letters)
    ids = ", ".join(str(d.id) for d in letters[:10]) + (", ..." if len(letters) > 10 else "")
    return (
        f"warning: {project} has {len(letters)} dead-lettered raw-log entr"
        f"{'y' if len(letters) == 1 else 'ies'} ({events} events; ids {ids}) in this range:"
        f" they are counted in the rollups but missing from the raw log, so {action}"
        " without them; retry them first (counters deadletter retry --project"
        f" {project} --all [--sanitize]) or drop them knowingly"
    )
