"""SQL of the raw-log dead letters (migration 008): copy failures counted per stream entry,
entries moved aside bytes intact, and the reads and deletes `counters deadletter` makes.
Also which Postgres errors blame the rows themselves rather than the server."""

from __future__ import annotations

import re
from datetime import datetime

import asyncpg
import msgspec
from asyncpg.exceptions._base import DataError as ClientDataError

from counters.core.buckets import from_datetime, to_datetime
from counters.core.shards import SHARD_SEPARATOR
from persist.db import Conn
from persist.schema import COPY_FAILURES_TABLE, DEAD_LETTERS_TABLE

ROWS_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # SQLSTATE class 22: a NUL in text, \u0000 in jsonb, a bad value...
    asyncpg.IntegrityConstraintViolationError,  # class 23: a row a constraint refuses
    ClientDataError,  # asyncpg could not encode a value
    UnicodeError,  # a str Postgres' UTF-8 cannot hold (lone surrogates)
)
"""What a COPY raises when Postgres (or the driver) refuses the rows it was given: the
same rows will fail again, so retrying is pointless and the server is not down."""

ERROR_CHARS = 1_000
"""Longest error text stored (the rest is cut)."""
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def error_text(exc: BaseException) -> str:
    """The text stored for a failure: its type and message, printable (no NUL or other
    control characters, which the error's own text may quote), at most ERROR_CHARS."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", text)[:ERROR_CHARS]


class Failure(msgspec.Struct, frozen=True):
    """The copy failures of one stream entry so far."""

    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


class DeadLetter(msgspec.Struct, frozen=True):
    """One row of raw_dead_letters without its payload; times in epoch ms."""

    id: int
    project: str
    stream_id: str
    events: int
    attempts: int
    error: str
    first_failed_at: int
    last_failed_at: int
    moved_at: int
    ts_from: int | None
    ts_to: int | None


class NewDeadLetter(msgspec.Struct, frozen=True):
    """What moving one stream entry aside stores."""

    project: str
    stream_id: str
    events: int
    payload: bytes
    ts_from: int | None
    ts_to: int | None
    error: str
    failure: Failure


_COLUMNS = (
    "id, project, stream_id, events, attempts, error, first_failed_at, last_failed_at,"
    " moved_at, ts_from, ts_to"
)


def _letter(row: asyncpg.Record) -> DeadLetter:
    def ms(value: datetime | None) -> int | None:
        return None if value is None else from_datetime(value)

    return DeadLetter(
        id=row["id"],
        project=row["project"],
        stream_id=row["stream_id"],
        events=row["events"],
        attempts=row["attempts"],
        error=row["error"],
        first_failed_at=from_datetime(row["first_failed_at"]),
        last_failed_at=from_datetime(row["last_failed_at"]),
        moved_at=from_datetime(row["moved_at"]),
        ts_from=ms(row["ts_from"]),
        ts_to=ms(row["ts_to"]),
    )


async def record_failure(conn: Conn, project: str, stream_id: str, error: str) -> Failure:
    """Counts one more failed copy of the entry (committed at once, outside any copy
    transaction) and returns its failures so far."""
    row = await conn.fetchrow(
        f"INSERT INTO {COPY_FAILURES_TABLE} AS f (project, stream_id, attempts, error)"
        " VALUES ($1, $2, 1, $3) ON CONFLICT (project, stream_id) DO UPDATE SET"
        " attempts = f.attempts + 1, error = EXCLUDED.error, last_failed_at = now()"
        " RETURNING attempts, first_failed_at, last_failed_at",
        project,
        stream_id,
        error,
    )
    assert row is not None
    return Failure(row["attempts"], row["first_failed_at"], row["last_failed_at"])


async def clear_failure(conn: Conn, project: str, stream_id: str) -> None:
    """Forgets the entry's failures (it was copied after all)."""
    await conn.execute(
        f"DELETE FROM {COPY_FAILURES_TABLE} WHERE project = $1 AND stream_id = $2",
        project,
        stream_id,
    )


async def insert_dead_letter(conn: Conn, letter: NewDeadLetter) -> None:
    """Stores the entry in raw_dead_letters and forgets its failures; the caller's
    transaction also moves raw_stream_id past it. Storing the same entry again keeps one
    row (the latest error)."""
    await conn.execute(
        f"INSERT INTO {DEAD_LETTERS_TABLE} (project, stream_id, events, payload, ts_from,"
        " ts_to, error, attempts, first_failed_at, last_failed_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (project, stream_id) DO UPDATE SET error = EXCLUDED.error,"
        " attempts = EXCLUDED.attempts, last_failed_at = EXCLUDED.last_failed_at",
        letter.project,
        letter.stream_id,
        letter.events,
        letter.payload,
        None if letter.ts_from is None else to_datetime(letter.ts_from),
        None if letter.ts_to is None else to_datetime(letter.ts_to),
        letter.error,
        letter.failure.attempts,
        letter.failure.first_failed_at,
        letter.failure.last_failed_at,
    )
    await clear_failure(conn, letter.project, letter.stream_id)


def _of_project(param: str) -> str:
    """SQL: the row is of this project or of one of its shards (stored as `P:s`,
    counters/core/shards.py), or of exactly this shard when a shard's name is given."""
    return f"(project = {param} OR split_part(project, '{SHARD_SEPARATOR}', 1) = {param})"


def _where(ids: list[int] | None, project: str | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if ids is not None:
        args.append(ids)
        clauses.append(f"id = ANY(${len(args)}::bigint[])")
    if project is not None:
        args.append(project)
        clauses.append(_of_project(f"${len(args)}"))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


async def list_dead_letters(
    conn: Conn, *, ids: list[int] | None = None, project: str | None = None
) -> list[DeadLetter]:
    """The dead letters (all, or these ids, of one project if given), by project and
    stream order."""
    where, args = _where(ids, project)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {DEAD_LETTERS_TABLE}{where} ORDER BY project, id", *args
    )
    return [_letter(r) for r in rows]


async def lock_dead_letter(conn: Conn, letter_id: int) -> tuple[DeadLetter, bytes] | None:
    """The dead letter and its payload, row-locked for the caller's transaction (None if
    it is gone, e.g. retried or dropped by someone else meanwhile)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, payload FROM {DEAD_LETTERS_TABLE} WHERE id = $1 FOR UPDATE",
        letter_id,
    )
    return None if row is None else (_letter(row), bytes(row["payload"]))


async def delete_dead_letters(conn: Conn, ids: list[int]) -> int:
    """Deletes these dead letters; returns the events they held."""
    events: int | None = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {DEAD_LETTERS_TABLE} WHERE id = ANY($1::bigint[])"
        " RETURNING events) SELECT sum(events) FROM gone",
        ids,
    )
    return int(events or 0)


async def note_retry_failure(conn: Conn, letter_id: int, error: str) -> None:
    """Records a failed retry of the dead letter (its error, one more attempt)."""
    await conn.execute(
        f"UPDATE {DEAD_LETTERS_TABLE} SET error = $2, attempts = attempts + 1,"
        " last_failed_at = now() WHERE id = $1",
        letter_id,
        error,
    )


async def count_dead_letters(conn: Conn) -> int:
    """Dead letters waiting, all projects (the counters_deadletter_entries gauge)."""
    n: int = await conn.fetchval(f"SELECT count(*) FROM {DEAD_LETTERS_TABLE}")
    return n


async def dead_letters_overlapping(
    conn: Conn, project: str, start: int, end: int
) -> list[DeadLetter]:
    """The project's dead letters whose events may lie in [start, end): their time range
    overlaps it, or is unknown (a payload that could not be decoded)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {DEAD_LETTERS_TABLE} WHERE {_of_project('$1')}"
        " AND (ts_from IS NULL OR (ts_from < $3 AND ts_to >= $2)) ORDER BY id",
        project,
        to_datetime(start),
        to_datetime(end),
    )
    return [_letter(r) for r in rows]
