"""The typed state the lifespan builds and every handler receives."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.models import EventLimits
from counters.engines.ingest import Ingestor
from counters.metrics import Metrics
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


@dataclass
class AppState:
    """Everything a request handler may use."""

    settings: Settings
    clock: Clock
    redis: Redis
    pool: asyncpg.Pool
    scripts: Scripts
    ingestor: Ingestor
    metrics: Metrics
    keys: KeyCache
    limits: EventLimits
    """Age and future limits events are validated against."""
    restore: Callable[[str], Awaitable[bool]]
    """Restores a project into Redis from Postgres after a loss (single-flight)."""
