"""Test helpers: backend set-up, an in-process harness on a manual clock, waiting on
conditions with a deadline (never sleeping as synchronisation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import redis as sync_redis
from redis.asyncio import Redis

from counters.core.buckets import Grain, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.models import VALUE_SCALE, EventIn, EventLimits, IngestReply, validate_events
from counters.engines.ingest import Ingestor
from counters.engines.persister import Persister, ProjectReport
from counters.engines.read.context import ReadContext
from counters.engines.read.plan import decompose
from counters.engines.read.query import count_uniques, read_buckets
from counters.engines.restore import restore_watermarks
from counters.engines.retention import minute_edge
from counters.metrics import Metrics
from lua import Scripts
from lua.keys import ProjectKeys

T = TypeVar("T")
T0 = parse_ts("2026-03-01T10:00:00Z")


@dataclass(frozen=True)
class Backends:
    redis_url: str
    database_url: str
    prefix: str
    data_dir: Path | None


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def create_database(server_url: str, database: str) -> str:
    """Creates an empty database on the server; returns its URL."""

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    asyncio.run(run())
    return _with_database(server_url, database)


def drop_database(server_url: str, database: str) -> None:
    """Drops the database (and any connection still open to it)."""

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Deletes every key under the prefix."""
    client = sync_redis.Redis.from_url(redis_url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    finally:
        client.close()


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Polls probe until accept(result) holds; fails with the last result after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(interval)


@dataclass
class Harness:
    """One project driven in-process: ingest, persist and read on a manual clock."""

    settings: Settings
    redis: Redis
    pool: asyncpg.Pool
    scripts: Scripts
    project: str
    clock: ManualClock
    ingestor: Ingestor
    persister: Persister
    keys: ProjectKeys

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        pool: asyncpg.Pool,
        scripts: Scripts,
        project: str,
        **overrides: Any,
    ) -> Harness:
        settings = msgspec.structs.replace(settings, **overrides)
        clock = ManualClock(T0)

        async def restore(p: str) -> None:
            await restore_watermarks(pool, redis, scripts, settings.key_prefix, p)

        ingestor = Ingestor.from_settings(redis, scripts, settings, restore)
        persister = Persister(pool, redis, scripts, settings, clock, Metrics())
        keys = ProjectKeys(settings.key_prefix, project)
        return cls(settings, redis, pool, scripts, project, clock, ingestor, persister, keys)

    async def ingest(self, *events: dict[str, Any]) -> IngestReply:
        """Validates (against the manual clock) and applies one batch."""
        decoded = [msgspec.convert(e, EventIn) for e in events]
        raw = validate_events(
            decoded, now_ms=self.clock.now_ms(), limits=EventLimits.from_settings(self.settings)
        )
        return await self.ingestor.apply(self.project, raw)

    async def persist(self) -> ProjectReport:
        """One persister pass over this project."""
        report = await self.persister.persist_project(self.project)
        assert report is not None, "another persister held the project lock"
        return report

    def read_context(self) -> ReadContext:
        """The read engine's context for this project, on the manual clock."""
        oldest = minute_edge(self.clock.now_ms(), self.settings.minute_retention_days)
        return ReadContext(self.pool, self.redis, self.scripts, self.keys, oldest)

    async def series(
        self, name: str, grain: Grain, start: int, end: int, measure: str = "count", **dims: str
    ) -> list[int | float]:
        """Per-bucket values, merged exactly as the API merges them."""
        rollup = tuple(sorted(dims))
        buckets = list(range(start, end, grain.value))
        values = await read_buckets(
            self.read_context(),
            name,
            rollup,
            [dims[d] for d in rollup],
            [(grain, buckets)],
            uniques=measure == "uniques",
        )
        if measure == "uniques":
            return list(await count_uniques(self.redis, values, values.hll_keys[0]))
        if measure == "sum":
            return [s / VALUE_SCALE for s in values.sums[0]]
        return list(values.counts[0])

    async def total(
        self, name: str, start: int, end: int, measure: str = "count", **dims: str
    ) -> int | float:
        """One value over [start, end) (minute-aligned), as the API's total computes it."""
        rollup = tuple(sorted(dims))
        values = await read_buckets(
            self.read_context(),
            name,
            rollup,
            [dims[d] for d in rollup],
            decompose(start, end),
            uniques=measure == "uniques",
        )
        if measure == "uniques":
            union = [k for piece in values.hll_keys for b in piece for k in b]
            return (await count_uniques(self.redis, values, [union]))[0]
        if measure == "sum":
            return sum(sum(p) for p in values.sums) / VALUE_SCALE
        return sum(sum(p) for p in values.counts)


class InProcessApp:
    """The real Starlette app (real Redis and Postgres) on a manual clock, served in-process
    through httpx's ASGI transport, with its lifespan run around the block."""

    def __init__(self, settings: Settings, clock: ManualClock) -> None:
        from api.app import create_app

        self.settings = msgspec.structs.replace(
            settings, persister_enabled=False, reconcile_enabled=False
        )
        self.clock = clock
        self.app = create_app(self.settings, clock)
        self._lifespan: Any = None
        self.client: httpx.AsyncClient | None = None
        self.state: Any = None

    async def __aenter__(self) -> InProcessApp:
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.state = await self._lifespan.__aenter__()

        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["state"] = dict(self.state)
            await self.app(scope, receive, send)

        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=wrapped), base_url="http://app"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)

    async def persist(self, project: str) -> None:
        """One persister pass on the app's clock."""
        s = self.state["counters"]
        persister = Persister(s.pool, s.redis, s.scripts, s.settings, self.clock, Metrics())
        await persister.persist_project(project)
