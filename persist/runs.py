"""SQL of reconcile_runs: the record of every rebuild and reconcile."""

from __future__ import annotations

from datetime import datetime

from counters.core.buckets import to_datetime
from persist.db import Conn
from persist.schema import RECONCILE_RUNS_TABLE


async def record_run(
    conn: Conn,
    *,
    project: str,
    kind: str,
    started: datetime,
    start: int,
    end: int,
    events: int,
    discrepancies: int,
    fixed: bool,
    details: str,
) -> None:
    """Appends one run (details: a JSON array of differing rows)."""
    await conn.execute(
        f"INSERT INTO {RECONCILE_RUNS_TABLE} (project, kind, started_at, range_from, range_to,"
        " events, discrepancies, fixed, details) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        project,
        kind,
        started,
        to_datetime(start),
        to_datetime(end),
        events,
        discrepancies,
        fixed,
        details,
    )


async def latest_discrepancies(conn: Conn) -> int:
    """Sum over projects of what each project's latest reconcile found."""
    n: int = await conn.fetchval(
        "SELECT coalesce(sum(discrepancies), 0) FROM (SELECT DISTINCT ON (project)"
        f" discrepancies FROM {RECONCILE_RUNS_TABLE} WHERE kind = 'reconcile'"
        " ORDER BY project, id DESC) latest"
    )
    return n


async def reconciled_since(conn: Conn, project: str, *, since: datetime, covering: int) -> bool:
    """Whether a reconcile of the project finished at or after `since` whose range started
    at or before `covering` (epoch ms) and that left nothing differing (it fixed what it
    found, or found nothing): a dry run that found differences does not count."""
    done: bool = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {RECONCILE_RUNS_TABLE} WHERE project = $1"
        " AND kind = 'reconcile' AND finished_at >= $2 AND range_from <= $3"
        " AND (fixed OR discrepancies = 0))",
        project,
        since,
        to_datetime(covering),
    )
    return done
