"""The typed state the lifespan builds and every handler receives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.models import EventLimits
from counters.engines.ingest import Ingestor
from counters.metrics import Metrics
from counters.services import Services
from lua import Scripts
from persist.keys import find_key, has_project


@dataclass
class KeyCache:
    """Remembers looked-up API keys for a few seconds so ingest does not need Postgres on
    every request (and keeps working through a short Postgres outage)."""

    ttl: float
    entries: dict[str, tuple[float, tuple[tuple[str, ...], str] | None]] = field(
        default_factory=dict
    )
    projects: dict[str, float] = field(default_factory=dict)

    async def lookup(self, pool: asyncpg.Pool, key: str) -> tuple[tuple[str, ...], str] | None:
        """(projects, scope) of the key, or None when it is unknown."""
        now = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found = await find_key(pool, key)
        except Unavailable:
            if hit is not None:
                return hit[1]  # a short Postgres outage: keep answering from the cache
            raise
        if len(self.entries) > 100_000:
            self.entries.clear()
        self.entries[key] = (now + self.ttl, found)
        return found

    async def exists(self, pool: asyncpg.Pool, project: str) -> bool:
        """Whether the project exists (positive answers cached)."""
        now = time.monotonic()
        if self.projects.get(project, 0.0) > now:
            return True
        found = await has_project(pool, project)
        if found:
            self.projects[project] = now + self.ttl
        return found


@dataclass(frozen=True)
class AppState:
    """Everything a request handler may use: the services the lifespan opened (read through
    the properties below, so nothing is held twice) and the key cache."""

    services: Services
    keys: KeyCache

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def clock(self) -> Clock:
        return self.services.clock

    @property
    def redis(self) -> Redis:
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
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def limits(self) -> EventLimits:
        """Age and future limits events are validated against."""
        return self.services.limits

    async def restore(self, project: str) -> bool:
        """Restores a project into Redis from Postgres after a loss (single-flight)."""
        return await self.services.restore(project)
