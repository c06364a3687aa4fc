"""Test helpers: the shared server helpers (counters.harness) re-exported, an in-process
harness on the production wiring and a manual clock, waiting on conditions with a deadline
(never sleeping as synchronisation)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import httpx
import msgspec

from counters.core.buckets import Grain, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.models import VALUE_SCALE, EventIn, IngestReply
from counters.engines.ingest import Ingestor
from counters.engines.persister import Persister, ProjectReport
from counters.engines.read.context import ReadContext
from counters.engines.read.plan import decompose
from counters.engines.read.query import count_uniques, read_buckets
from counters.engines.retention import minute_edge
from counters.harness.servers import Backends, create_database, drop_database, drop_prefix
from counters.services import Services, build_services
from lua import Scripts
from lua.client import RedisClient
from lua.keys import ProjectKeys
from persist.projects import create_key

__all__ = [
    "T0",
    "Backends",
    "Harness",
    "ApiClient",
    "InProcessApp",
    "create_database",
    "drop_database",
    "drop_prefix",
    "wait_for",
]

T = TypeVar("T")
T0 = parse_ts("2026-03-01T10:00:00Z")


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
    """One project driven in-process: ingest, persist and read on a manual clock, on
    Services wired by the production build_services."""

    services: Services
    project: str
    clock: ManualClock
    keys: ProjectKeys

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: RedisClient,
        pool: asyncpg.Pool,
        scripts: Scripts,
        project: str,
        **overrides: Any,
    ) -> Harness:
        settings = msgspec.structs.replace(settings, **overrides)
        clock = ManualClock(T0)
        services = build_services(settings, clock, redis, pool, scripts=scripts)
        return cls(services, project, clock, ProjectKeys(settings.key_prefix, project))

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def redis(self) -> RedisClient:
        return self.services.redis

    @property
    def pool(self) -> asyncpg.Pool:
        return self.services.pool

    @property
    def scripts(self) -> Scripts:
        return self.services.scripts

    @property
    def ingestor(self) -> Ingestor:
        return self.services.ingestor

    @property
    def persister(self) -> Persister:
        return self.services.persister

    async def ingest(self, *events: dict[str, Any]) -> IngestReply:
        """Validates (against the manual clock) and applies one batch."""
        decoded = [msgspec.convert(e, EventIn) for e in events]
        raw = self.services.validate(decoded, now_ms=self.clock.now_ms())
        return await self.ingestor.apply(self.project, raw)

    async def persist(self) -> ProjectReport:
        """One persister pass over this project."""
        report = await self.persister.persist_project(self.project)
        assert report is not None, "another persister held the project lock"
        return report

    def read_context(self) -> ReadContext:
        """The read engine's context for this project, on the manual clock."""
        oldest = minute_edge(self.clock.now_ms(), self.settings.minute_retention_days)
        return ReadContext(
            self.pool, self.redis, self.scripts, self.keys, oldest, self.services.restore
        )

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
        """One pass of the app's own persister (on the app's clock)."""
        await self.state["services"].persister.persist_project(project)


class ApiClient:
    """A project's ingest and read keys over an InProcessApp's HTTP client."""

    def __init__(self, app: InProcessApp, project: str, ingest: str, read: str) -> None:
        self.app = app
        self.project = project
        self.ingest_h = {"Authorization": f"Bearer {ingest}"}
        self.read_h = {"Authorization": f"Bearer {read}"}

    async def post(self, events: list[dict[str, Any]]) -> None:
        """Posts events in batches of 5,000, or of the size a 413 batch_too_complex
        suggests (then kept for the rest), as a client should; every one must be accepted."""
        assert self.app.client is not None
        size, i = 5000, 0
        while i < len(events):
            chunk = events[i : i + size]
            r = await self.app.client.post(
                "/v1/events", content=msgspec.json.encode(chunk), headers=self.ingest_h
            )
            if r.status_code == 413 and r.json()["error"]["code"] == "batch_too_complex":
                message = r.json()["error"]["message"]
                suggested = int(message.split("Send at most ~")[1].split(" ")[0])
                size = max(1, min(suggested * 9 // 10, len(chunk) // 2))
                continue
            assert r.status_code == 200 and r.json()["accepted"] == len(chunk), r.text
            i += len(chunk)

    async def get(self, path: str, **params: Any) -> Any:
        """JSON of GET /v1/projects/<project>/<path>."""
        assert self.app.client is not None
        r = await self.app.client.get(
            f"/v1/projects/{self.project}/{path}", params=params, headers=self.read_h
        )
        assert r.status_code == 200, r.text
        return r.json()

    async def text(self, path: str, **params: Any) -> str:
        """Body text of GET <path> (an absolute path) with the read key."""
        assert self.app.client is not None
        r = await self.app.client.get(path, params=params, headers=self.read_h)
        assert r.status_code == 200, r.text
        return r.text


@contextlib.asynccontextmanager
async def project_api(
    settings: Settings,
    pool: asyncpg.Pool,
    prefix: str,
    now_ms: int,
    *,
    name: str | None = None,
    **overrides: Any,
) -> AsyncIterator[ApiClient]:
    """A new project (named name, else `prefix` + random) with an ingest and a read key,
    served by the in-process app on a manual clock at now_ms, with the settings changed by
    overrides."""
    project = name or prefix + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, **overrides) if overrides else settings
    async with InProcessApp(s, ManualClock(now_ms)) as app:
        yield ApiClient(app, project, ingest, read)
