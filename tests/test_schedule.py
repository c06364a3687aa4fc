"""The nightly reconcile shared by several processes (engines/schedule.py): each project is
reconciled exactly once a night, under its own claim, and every runner takes work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest_asyncio

from counters.core.buckets import HOUR_MS
from counters.core.config import Settings
from counters.engines.reconcile import reconcile_projects
from counters.engines.schedule import NightShare, reconcile_share
from lua import Scripts
from lua.client import RedisClient
from persist.db import create_pool
from persist.locks import project_lock, reconcile_claim
from persist.projects import ensure_project
from tests.support import T0, Backends, Harness, wait_for

NOW = T0 + 2 * HOUR_MS


@pytest_asyncio.fixture(loop_scope="session")
async def own_pools(backends: Backends) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two pools of their own, as two persister processes would have."""
    pools = [await create_pool(backends.database_url, max_size=4) for _ in range(2)]
    yield pools
    for p in pools:
        await p.close()


async def fill_projects(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts, n: int
) -> list[str]:
    """n fresh projects with a few persisted events each (ingest, then persist at NOW)."""
    projects = sorted("n" + uuid.uuid4().hex[:12] for _ in range(n))
    for i, project in enumerate(projects):
        async with pool.acquire() as conn:
            await ensure_project(conn, project)
        h = Harness.build(settings, redis, pool, scripts, project)
        await h.ingest(
            *[
                {"name": "click", "ts": T0 - j * 60_000, "dims": {"s": f"s{j % 3}"}, "uid": f"u{j}"}
                for j in range(20 + i)
            ]
        )
        h.clock.set(NOW)
        await h.persist()
    return projects


async def reconcile_runs(pool: asyncpg.Pool, projects: list[str], since: datetime) -> list[str]:
    """The projects of each reconcile run finished since `since` (one entry per run)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT project FROM reconcile_runs WHERE kind = 'reconcile'"
            " AND project = ANY($1) AND finished_at >= $2 ORDER BY project",
            projects,
            since,
        )
    return [r["project"] for r in rows]


def runner(settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts) -> Harness:
    """Services of one process (its own pool, persister and rebuilder) at NOW."""
    h = Harness.build(settings, redis, pool, scripts, "runner")
    h.clock.set(NOW)
    return h


async def test_two_runners_share_the_night_and_reconcile_each_project_once(
    settings: Settings,
    redis: RedisClient,
    pool: asyncpg.Pool,
    scripts: Scripts,
    own_pools: list[asyncpg.Pool],
) -> None:
    projects = await fill_projects(settings, redis, pool, scripts, 6)
    async with pool.acquire() as conn:  # one wrong row, for one runner to find and fix
        await conn.execute(
            "UPDATE rollups_minute SET count = count + 3 WHERE project = $1 AND rollup = ''"
            " AND bucket = (SELECT min(bucket) FROM rollups_minute WHERE project = $1)",
            projects[2],
        )
    since = datetime.now(UTC)
    runners = [runner(settings, redis, p, scripts) for p in own_pools]
    shares: list[NightShare] = await asyncio.gather(
        *[
            reconcile_share(r.services.rebuilder, r.pool, projects, now_ms=NOW, days=1, since=since)
            for r in runners
        ]
    )
    assert await reconcile_runs(pool, projects, since) == projects  # each exactly once
    done = [p for s in shares for p in s.reconciled]
    assert sorted(done) == projects
    assert all(s.reconciled for s in shares), shares  # neither runner idle
    for s in shares:  # what one skipped (busy, then found done) the other did
        assert set(s.done_elsewhere) == set(projects) - set(s.reconciled)
    assert sum(s.discrepancies for s in shares) > 0
    fixer = next(s for s in shares if projects[2] in s.reconciled)
    assert fixer.discrepancies > 0  # per process: what it found

    again = await reconcile_share(
        runners[0].services.rebuilder, pool, projects, now_ms=NOW, days=1, since=since
    )
    assert again.reconciled == [] and again.done_elsewhere == projects
    assert await reconcile_runs(pool, projects, since) == projects


async def test_a_dry_run_that_found_differences_does_not_count_as_done(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts
) -> None:
    [project] = await fill_projects(settings, redis, pool, scripts, 1)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_hour SET count = count + 1 WHERE project = $1 AND rollup = ''",
            project,
        )
    since = datetime.now(UTC)
    r = runner(settings, redis, pool, scripts)
    found = await reconcile_projects(
        r.services.rebuilder, [project], now_ms=NOW, days=1, write=False, echo=lambda _: None
    )
    assert found > 0
    share = await reconcile_share(
        r.services.rebuilder, pool, [project], now_ms=NOW, days=1, since=since
    )
    assert share.reconciled == [project] and share.discrepancies == found


async def test_a_project_held_elsewhere_is_waited_for_after_the_rest(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts
) -> None:
    """The other process holds the first project's claim: this one does the second, then
    waits for the first and finds it done (or would do it, had the holder failed)."""
    held, free = await fill_projects(settings, redis, pool, scripts, 2)
    since = datetime.now(UTC)
    r = runner(settings, redis, pool, scripts)
    async with pool.acquire() as other, reconcile_claim(other, held, wait=False) as got:
        assert got
        async with project_lock(other, held, wait=False) as persister_free:
            assert persister_free  # the claim is not the persister's lock
        task = asyncio.create_task(
            reconcile_share(
                r.services.rebuilder, pool, [held, free], now_ms=NOW, days=1, since=since
            )
        )
        await wait_for(
            lambda: reconcile_runs(pool, [free], since),
            lambda runs: runs == [free],
            what="the free project reconciled",
        )
        assert not task.done()  # waiting for the held one
        await reconcile_projects(  # the holder does it
            r.services.rebuilder, [held], now_ms=NOW, days=1, write=True, echo=lambda _: None
        )
    share = await asyncio.wait_for(task, timeout=30)
    assert share.reconciled == [free] and share.done_elsewhere == [held]
    assert await reconcile_runs(pool, [held, free], since) == sorted([held, free])
