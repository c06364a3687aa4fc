"""The persister's Postgres state per project: grain watermarks, the last late generation
applied and the raw-log position copied up to."""

from __future__ import annotations

import msgspec

from counters.core.buckets import Grain
from persist.db import Conn
from persist.schema import STATE_TABLE, UNTIL_COLUMN


class PersistState(msgspec.Struct, frozen=True):
    """One project's row of persist_state."""

    minute_until: int
    hour_until: int
    day_until: int
    late_applied: int
    raw_stream_id: str

    def until(self, grain: Grain) -> int:
        """Every bucket of this grain before the returned epoch ms is in Postgres."""
        if grain is Grain.minute:
            return self.minute_until
        if grain is Grain.hour:
            return self.hour_until
        return self.day_until


EMPTY_STATE = PersistState(0, 0, 0, 0, "0-0")

_SELECT = (
    "SELECT minute_until, hour_until, day_until, late_applied, raw_stream_id"
    f" FROM {STATE_TABLE} WHERE project = $1"
)


async def load_states(conn: Conn, projects: list[str]) -> dict[str, PersistState]:
    """The state rows of these projects in one query (EMPTY_STATE where a row is missing;
    nothing is created)."""
    rows = await conn.fetch(
        "SELECT project, minute_until, hour_until, day_until, late_applied, raw_stream_id"
        f" FROM {STATE_TABLE} WHERE project = ANY($1::text[])",
        projects,
    )
    found = {
        r["project"]: PersistState(**{k: v for k, v in r.items() if k != "project"}) for r in rows
    }
    return {p: found.get(p, EMPTY_STATE) for p in projects}


async def load_state(
    conn: Conn, project: str, *, for_update: bool = False, create: bool = True
) -> PersistState:
    """The project's state row (created empty when missing, unless create=False)."""
    sql = _SELECT + (" FOR UPDATE" if for_update else "")
    row = await conn.fetchrow(sql, project)
    if row is None and not create:
        return EMPTY_STATE
    if row is None:
        await conn.execute(
            f"INSERT INTO {STATE_TABLE} (project) VALUES ($1) ON CONFLICT DO NOTHING", project
        )
        row = await conn.fetchrow(sql, project)
        assert row is not None
    return PersistState(**dict(row))


async def set_until(
    conn: Conn, project: str, grain: Grain, until: int, *, forward_only: bool = False
) -> None:
    """Sets the grain's watermark (with forward_only, only if that moves it forward)."""
    column = UNTIL_COLUMN[grain]
    await conn.execute(
        f"UPDATE {STATE_TABLE} SET {column} = $2, updated_at = now() WHERE project = $1"
        + (f" AND {column} < $2" if forward_only else ""),
        project,
        until,
    )


async def set_late_applied(conn: Conn, project: str, gen: int) -> None:
    """Records that late generations up to gen are in the rollups."""
    await conn.execute(
        f"UPDATE {STATE_TABLE} SET late_applied = $2, updated_at = now() WHERE project = $1",
        project,
        gen,
    )


async def set_raw_stream_id(conn: Conn, project: str, stream_id: str) -> None:
    """Records that the raw log up to stream_id is in raw_events."""
    await conn.execute(
        f"UPDATE {STATE_TABLE} SET raw_stream_id = $2, updated_at = now() WHERE project = $1",
        project,
        stream_id,
    )
