"""Issue 11, found 1 (persistence side): one raw-log entry Postgres refuses (a NUL in a text
column) stalled the persister for every project sorting after it, and the lag and backlog
gauges never moved. Now each project is on its own, the failure is counted per project,
the gauges show the stall, and after `deadletter_after_attempts` tries the entry moves,
bytes intact, to raw_dead_letters, where `counters deadletter` lists, retries or drops it.

The entry is written through the ingest script (Ingestor.apply), not over HTTP: the API
refuses NUL now, but an entry written before that (or by a future bug) must not stall."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from counters.core.buckets import MINUTE_MS
from counters.core.config import Settings
from counters.core.models import RawEvent
from counters.harness.servers import Backends
from counters.harness.service import run_cli, service_env
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient
from persist.projects import ensure_project
from tests.support import T0, Harness, wait_for


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    for m in metrics.registry.collect():
        for s in m.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def raw_count(pool: asyncpg.Pool, project: str) -> int:
    async with pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM raw_events WHERE project = $1", project)
    return n


async def dead_letters(pool: asyncpg.Pool, project: str) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT id, stream_id, events, payload, attempts, error FROM raw_dead_letters"
                " WHERE project = $1 ORDER BY id",
                project,
            )
        )


def event(ts: int, **kw: Any) -> RawEvent:
    fields: dict[str, Any] = {"id": None, "dims": {}, "value": 0, "uid": None}
    fields.update(kw)
    return RawEvent("click", ts, fields["id"], fields["dims"], fields["value"], fields["uid"], ts)


@pytest.fixture
def two_projects() -> tuple[str, str]:
    base = "pz" + uuid.uuid4().hex[:10]
    return base + "a", base + "b"  # a sorts before b


async def test_poisoned_entry_stalls_nobody_and_moves_to_dead_letters(
    settings: Settings,
    redis: RedisClient,
    pool: asyncpg.Pool,
    scripts: Scripts,
    backends: Backends,
    tmp_path: Path,
    two_projects: tuple[str, str],
) -> None:
    a, b = two_projects
    async with pool.acquire() as conn:
        await ensure_project(conn, a)
        await ensure_project(conn, b)
    h = Harness.build(settings, redis, pool, scripts, a)
    h.clock.set(T0 + MINUTE_MS)
    metrics = h.services.metrics
    limit = h.settings.deadletter_after_attempts

    # A's entry holds a NUL in the uid and in the id: Postgres text refuses both
    await h.ingestor.apply(a, [event(T0, uid="u\x00v", id="order\x001")])
    await h.ingestor.apply(b, [event(T0 + 1, uid="fine")])
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(h.keys.raw))
    (poison_id, poison_fields), *_ = entries
    assert b"\x00" in poison_fields[b"e"], "the entry must reach the stream with its NUL"

    # one pass: B (sorting after A) is persisted, A's failure is counted, not raised
    await h.persister.tick()
    assert await raw_count(pool, b) == 1
    assert sample(metrics, "counters_persister_project_errors_total", project=metrics.project(a))
    assert sample(metrics, "counters_raw_backlog_events") >= 1  # A's event, not 0
    assert sample(metrics, "counters_persister_lag_seconds") > 0
    assert await redis.xlen(h.keys.raw) == 1  # still waiting

    # further passes (A sits some out): after `limit` failed copies the entry moves
    async def tick_then_letters() -> list[asyncpg.Record]:
        await h.persister.tick()
        return await dead_letters(pool, a)

    (letter,) = await wait_for(tick_then_letters, bool, timeout=30, what="the dead letter")
    assert letter["stream_id"] == poison_id.decode()
    assert bytes(letter["payload"]) == poison_fields[b"e"]  # bytes intact, NUL included
    assert (letter["events"], letter["attempts"]) == (1, limit)
    assert "0x00" in letter["error"]
    assert sample(metrics, "counters_deadletter_moved_total") == 1
    assert sample(metrics, "counters_deadletter_entries") >= 1
    assert await redis.xlen(h.keys.raw) == 0
    assert int(await redis.hget(h.keys.watermarks, "rawn") or 0) == 0

    # A goes on: a later event is persisted by the next pass
    await h.ingestor.apply(a, [event(T0 + 2, uid="later")])
    await wait_for(
        lambda: _tick_count(h, a), lambda n: n == 1, timeout=30, what="A's later event copied"
    )

    # the operator's view: list, retry with --sanitize, drop another
    env = service_env(backends, tmp_path)
    listed = run_cli(env, "deadletter", "list", "--project", a, "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["id"], row["stream_id"], row["events"]) == (
        letter["id"],
        poison_id.decode(),
        1,
    )
    assert row["attempts"] == limit and row["error"]

    plain = run_cli(env, "deadletter", "retry", str(letter["id"]))
    assert plain.returncode == 1 and "still failing" in plain.stdout  # NUL still refused
    fixed = run_cli(env, "deadletter", "retry", str(letter["id"]), "--sanitize")
    assert fixed.returncode == 0, fixed.stderr
    assert "1 events copied" in fixed.stdout
    assert await raw_count(pool, a) == 2
    async with pool.acquire() as conn:
        uid = await conn.fetchval(
            "SELECT uid FROM raw_events WHERE project = $1 AND stream_id = $2",
            a,
            poison_id.decode(),
        )
    assert uid == "u\ufffdv"
    assert await dead_letters(pool, a) == []

    # a second poisoned entry, moved and then dropped
    await h.ingestor.apply(a, [event(T0 + 3, uid="x\x00y"), event(T0 + 4, uid="ok")])
    (second,) = await wait_for(tick_then_letters, bool, timeout=30, what="second dead letter")
    assert second["events"] == 2
    dropped = run_cli(env, "deadletter", "drop", "--all", "--project", a)
    assert dropped.returncode == 0, dropped.stderr
    assert "2 events are now missing from the raw log" in dropped.stdout
    assert await dead_letters(pool, a) == []


async def _tick_count(h: Harness, project: str) -> int:
    await h.persister.tick()
    async with h.pool.acquire() as conn:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM raw_events WHERE project = $1 AND uid = 'later'", project
        )
    return n


async def test_a_backend_outage_still_backs_off_the_whole_pass(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts, project: str
) -> None:
    """A real outage is not blamed on a project: the pass ends with Unavailable (the loop
    backs off as before) and no project error is counted."""
    from counters.core.errors import Unavailable
    from counters.engines.isolation import is_outage

    h = Harness.build(settings, redis, pool, scripts, project)
    assert is_outage(Unavailable("postgres", "connection refused"))
    try:
        raise Unavailable("postgres", "refused") from ConnectionRefusedError()
    except Unavailable as exc:
        assert is_outage(exc)
    data = asyncpg.CharacterNotInRepertoireError("invalid byte sequence")
    try:
        raise Unavailable("postgres", "data") from data
    except Unavailable as exc:
        assert not is_outage(exc)
    assert not h.persister.backoff.failing()
