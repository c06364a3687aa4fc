"""`counters rebuild` and `counters reconcile` as an operator runs them, against a service."""

from __future__ import annotations

import time
import uuid

import asyncpg
import httpx

from counters.core.buckets import HOUR_MS
from counters.harness.service import run_cli
from tests.service import Service, create_key
from tests.support import wait_for


async def test_rebuild_and_reconcile_commands(service: Service, pool: asyncpg.Pool) -> None:
    project = "ops" + uuid.uuid4().hex[:8]
    ingest = create_key(service.env, project, "ingest")
    now = time.time_ns() // 1_000_000
    events = [
        {
            "name": "click",
            "ts": now - (i % 90) * 60_000,
            "dims": {"source": f"s{i % 3}"},
            "uid": f"u{i}",
            "value": 1,
        }
        for i in range(300)
    ]
    async with httpx.AsyncClient(base_url=service.url) as c:
        r = await c.post("/v1/events", json=events, headers={"Authorization": f"Bearer {ingest}"})
        assert r.json()["accepted"] == 300

    async def copied() -> int:
        async with pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM raw_events WHERE project = $1", project
            )
        return n

    await wait_for(copied, lambda n: n == 300, timeout=20, what="raw log copied")
    frm, to = str(now - 2 * HOUR_MS), str(now + 1)

    dry = run_cli(
        service.env, "rebuild", "--project", project, "--from", frm, "--to", to, "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().endswith("discrepancies: 0")
    assert "events/s" in dry.stderr and "ETA" in dry.stderr  # plain progress lines, no TTY

    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_minute SET count = count + 2 WHERE project = $1 AND rollup = ''",
            project,
        )
    found = run_cli(service.env, "reconcile", "--days", "1", "--project", project, "--dry-run")
    assert found.returncode == 0, found.stderr
    n = int(found.stdout.strip().splitlines()[-1].split(": ")[1])
    assert n > 0 and "(-2)" in found.stdout
    fixed = run_cli(service.env, "reconcile", "--days", "1", "--project", project)
    assert fixed.stdout.strip().endswith(f"discrepancies: {n}") and "(fixed)" in fixed.stdout
    clean = run_cli(service.env, "reconcile", "--days", "1", "--project", project, "--dry-run")
    assert clean.stdout.strip().endswith("discrepancies: 0")

    bad = run_cli(service.env, "rebuild", "--project", "nosuch", "--from", frm, "--to", to)
    assert bad.returncode != 0 and "unknown project" in bad.stderr
    bad = run_cli(service.env, "rebuild", "--project", project, "--from", "x", "--to", to)
    assert bad.returncode != 0 and "--from" in bad.stderr
