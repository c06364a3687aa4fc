"""The one object every read-engine function takes: the backends, the project's keys, and
the per-request facts read once (the oldest minute bucket still kept)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from redis.asyncio import RedisCluster

from counters.engines.read.history_cache import HistoryCache
from counters.engines.read.limits import ReadLimits
from lua import Scripts
from lua.client import RedisClient
from lua.keys import ProjectKeys

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class ReadContext:
    """Backends and the project one read is about, and the request's limits; built once
    per request."""

    pool: asyncpg.Pool
    redis: RedisClient
    scripts: Scripts
    keys: ProjectKeys
    oldest_minute: int
    """Start of the oldest minute bucket still stored (one clock read per request)."""
    restore: Callable[[str], Awaitable[bool]] | None = None
    """Restores a project into Redis from Postgres (engines.restore.restore_watermarks) when
    a read finds the watermarks missing, so answers do not move after a Redis loss."""
    limits: ReadLimits = ReadLimits()
    """The bounds every read of this request is checked against (engines.read.limits)."""
    history: HistoryCache | None = None
    """The process's cache of reads' Postgres parts (None: every read asks Postgres)."""
    now_ms: int | None = None
    """The request's one clock read: a series' point whose period ends after it is marked
    partial (None: no point is)."""
    shards: tuple[ProjectKeys, ...] = ()
    """The keys of the project's other shards (1 .. span-1; counters/core/shards.py), whose
    values every read adds to its own: empty for a project never split."""

    @property
    def project(self) -> str:
        return self.keys.project

    def for_project(self, keys: ProjectKeys, shards: tuple[ProjectKeys, ...] = ()) -> ReadContext:
        """The same request, about another project (with its other shards' keys)."""
        return dataclasses.replace(self, keys=keys, shards=shards)

    def for_shard(self, keys: ProjectKeys) -> ReadContext:
        """The same request, about one shard of the project alone."""
        return dataclasses.replace(self, keys=keys, shards=())

    @property
    def all_keys(self) -> tuple[ProjectKeys, ...]:
        """Every shard's keys, the project's own first."""
        return (self.keys, *self.shards)

    async def each_shard(self, read: Callable[[ReadContext], Awaitable[T]]) -> list[T]:
        """read of every shard alone (for_shard), all at once, the project's own first."""
        return list(await asyncio.gather(*(read(self.for_shard(k)) for k in self.all_keys)))

    @property
    def sketches_cross_slots(self) -> bool:
        """Whether another shard's sketches sit in another slot (a Redis Cluster): they
        must be moved into the project's own slot before one PFCOUNT unites them."""
        return isinstance(self.redis, RedisCluster)
