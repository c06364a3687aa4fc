"""`counters rebuild` and `counters reconcile` as an operator runs them, against a service."""

from __future__ import annotations

import json
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
    rng = ["--project", project, "--from", frm, "--to", to]
    niced = run_cli(service.env, "rebuild", *rng, "--dry-run", "--nice", "5")
    assert niced.returncode == 0 and niced.stdout.strip().endswith("discrepancies: 0")
    bad = run_cli(service.env, "reconcile", "--days", "1", "--nice", "20")
    assert bad.returncode == 2 and "--nice" in bad.stderr


async def test_a_split_project_is_rebuilt_and_reconciled_as_one(
    service: Service, pool: asyncpg.Pool
) -> None:
    """`counters projects shards P 3`, then rebuild and reconcile of P cover every shard:
    the events of all of them, a difference in any of them found and fixed."""
    project = "opsh" + uuid.uuid4().hex[:8]
    ingest = create_key(service.env, project, "ingest")
    split = run_cli(service.env, "projects", "shards", project, "3", "--json")
    assert split.returncode == 0, split.stderr
    plan = json.loads(split.stdout)
    assert (plan["shards"], plan["span"]) == (3, 3)
    assert plan["keyspaces"][2].endswith(f"{{p:{project}:2}}:")
    shown = run_cli(service.env, "projects", "shards", project)
    assert "3 shard(s)" in shown.stdout, shown.stdout
    names = [project, f"{project}:1", f"{project}:2"]
    now = time.time_ns() // 1_000_000
    sent = 0
    async with httpx.AsyncClient(base_url=service.url) as c:
        deadline = time.monotonic() + 20
        while True:  # batches without ids go round robin once the service sees the plan
            batch = [
                {"name": "click", "ts": now - (i % 90) * 60_000, "dims": {"source": f"s{i % 3}"}}
                for i in range(100)
            ]
            r = await c.post(
                "/v1/events", json=batch, headers={"Authorization": f"Bearer {ingest}"}
            )
            assert r.json()["accepted"] == 100
            sent += 100

            async with pool.acquire() as conn:
                shards_hit = await conn.fetchval(
                    "SELECT count(DISTINCT project) FROM raw_events WHERE project = ANY($1)",
                    names,
                )
            if shards_hit == 3 and sent >= 600:
                break
            assert time.monotonic() < deadline, "batches never reached every shard"

    async def copied() -> int:
        async with pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM raw_events WHERE project = ANY($1)", names
            )
        return n

    await wait_for(copied, lambda n: n == sent, timeout=20, what="raw log copied")
    frm, to = str(now - 2 * HOUR_MS), str(now + 1)
    dry = run_cli(
        service.env,
        "rebuild",
        "--project",
        project,
        "--from",
        frm,
        "--to",
        to,
        "--dry-run",
        "--json",
    )
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["project"], report["events"], report["discrepancies"]) == (project, sent, 0)
    async with pool.acquire() as conn:  # one shard's rows go wrong
        await conn.execute(
            "UPDATE rollups_minute SET count = count + 2 WHERE project = $1 AND rollup = ''",
            names[2],
        )
    found = run_cli(service.env, "reconcile", "--days", "1", "--project", project, "--dry-run")
    n = int(found.stdout.strip().splitlines()[-1].split(": ")[1])
    assert n > 0 and "(-2)" in found.stdout, found.stdout
    fixed = run_cli(service.env, "reconcile", "--days", "1", "--project", project)
    assert fixed.stdout.strip().endswith(f"discrepancies: {n}"), fixed.stdout
    clean = run_cli(service.env, "reconcile", "--days", "1", "--project", project, "--dry-run")
    assert clean.stdout.strip().endswith("discrepancies: 0"), clean.stdout
