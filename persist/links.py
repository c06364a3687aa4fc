"""Click-tracking links in Postgres (table `links`, migration 013)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from counters.core.links import Link
from persist.db import Conn
from persist.schema import LINKS_TABLE

_COLUMNS = "id, project, target, name, dims::text AS dims, created_at, disabled_at"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _link(row: Any) -> Link:
    return Link(
        id=row["id"],
        project=row["project"],
        target=row["target"],
        name=row["name"],
        dims=msgspec.json.decode(row["dims"], type=dict[str, str]),
        created_at=_iso(row["created_at"]) or "",
        disabled_at=_iso(row["disabled_at"]),
    )


async def insert_link(
    conn: Conn, link_id: str, project: str, target: str, name: str, dims: dict[str, str]
) -> Link | None:
    """Stores a new link; None when the id is taken (the caller draws another)."""
    try:
        row = await conn.fetchrow(
            f"INSERT INTO {LINKS_TABLE} (id, project, target, name, dims)"
            f" VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING {_COLUMNS}",
            link_id,
            project,
            target,
            name,
            msgspec.json.encode(dims).decode(),
        )
    except asyncpg.UniqueViolationError:
        return None
    return _link(row)


async def list_links(
    conn: Conn, project: str | None = None, *, active_only: bool = False
) -> list[Link]:
    """Links (of one project, or all), oldest first; with active_only, not disabled ones."""
    where = ["($1::text IS NULL OR project = $1)"]
    if active_only:
        where.append("disabled_at IS NULL")
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {LINKS_TABLE} WHERE {' AND '.join(where)} ORDER BY created_at, id",
        project,
    )
    return [_link(r) for r in rows]


async def disable_link(conn: Conn, link_id: str) -> Link | None:
    """Marks the link disabled (kept, never reused; disabling twice keeps the first time);
    None when there is no such link."""
    row = await conn.fetchrow(
        f"UPDATE {LINKS_TABLE} SET disabled_at = coalesce(disabled_at, now())"
        f" WHERE id = $1 RETURNING {_COLUMNS}",
        link_id,
    )
    return None if row is None else _link(row)
