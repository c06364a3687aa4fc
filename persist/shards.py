"""Shard plans in Postgres (migration 014): read them, and change one project's N."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from counters.core.shards import ShardPlan, next_plan, shard_project
from persist.db import Conn
from persist.schema import PROJECTS_TABLE, STATE_TABLE
from persist.secrets import UID_SECRET_COLUMN

_PLAN = "shards, shard_span, id_shards, id_shards_until"


def _ms(t: datetime | None) -> int:
    return 0 if t is None else int(t.timestamp() * 1000)


def _plan(row: Any) -> ShardPlan:
    return ShardPlan(
        row["shards"], row["shard_span"], row["id_shards"], _ms(row["id_shards_until"])
    )


async def load_plans(conn: Conn) -> dict[str, ShardPlan]:
    """The plan of every project ever split (span > 1); every other project is one shard."""
    rows = await conn.fetch(
        f"SELECT project, {_PLAN} FROM {PROJECTS_TABLE} WHERE shard_span > 1 AND shard_of IS NULL"
    )
    return {r["project"]: _plan(r) for r in rows}


async def load_plan(conn: Conn, project: str) -> ShardPlan | None:
    """One project's plan, or None when the project does not exist."""
    row = await conn.fetchrow(
        f"SELECT {_PLAN} FROM {PROJECTS_TABLE} WHERE project = $1 AND shard_of IS NULL", project
    )
    return None if row is None else _plan(row)


async def set_shards(conn: Conn, project: str, n: int, now_ms: int, window_ms: int) -> ShardPlan:
    """Sets the project's N (next_plan's rules) and makes sure every shard of the span has
    its row and persister state, with the project's own uid secret (uids of every shard are
    hashed as the project's). ValueError for an unknown project or an N out of range."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_PLAN}, {UID_SECRET_COLUMN} FROM {PROJECTS_TABLE}"
            " WHERE project = $1 AND shard_of IS NULL FOR UPDATE",
            project,
        )
        if row is None:
            raise ValueError(f"unknown project {project!r}")
        plan = next_plan(_plan(row), n, now_ms, window_ms)
        for s in range(1, plan.span):
            name = shard_project(project, s)
            await conn.execute(
                f"INSERT INTO {PROJECTS_TABLE} (project, shard_of, {UID_SECRET_COLUMN})"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                name,
                project,
                row[UID_SECRET_COLUMN],
            )
            await conn.execute(
                f"INSERT INTO {STATE_TABLE} (project) VALUES ($1) ON CONFLICT DO NOTHING", name
            )
        until = (
            None if not plan.id_until_ms else datetime.fromtimestamp(plan.id_until_ms / 1000, UTC)
        )
        await conn.execute(
            f"UPDATE {PROJECTS_TABLE} SET shards = $2, shard_span = $3, id_shards = $4,"
            " id_shards_until = $5 WHERE project = $1",
            project,
            plan.shards,
            plan.span,
            plan.id_shards,
            until,
        )
    return plan
