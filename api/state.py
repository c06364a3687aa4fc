"""The typed state the lifespan builds and every handler receives."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg
import msgspec

from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.keys import KeyInfo
from counters.core.models import EventLimits
from counters.engines.read.seen_dims import SeenDims
from counters.engines.shards import ShardedIngestor
from counters.metrics import Metrics
from counters.services import Services
from lua import Scripts
from lua.client import REDIS_ERRORS, RedisClient
from lua.keys import KeyRegistryKeys
from persist.keys import find_key, mark_used

log = logging.getLogger("counters.keys")


KEY_POLL_SECONDS = 0.5
"""How often (at most) a worker asks Redis whether any key was revoked or rotated; with the
request that notices it, a revocation is honoured everywhere within a second."""
LAST_USED_FLUSH_SECONDS = 10.0
"""last_used_at is written for all keys used in this window in one UPDATE, not per request."""
CHANGES_OVERLAP_MS = 10_000
"""Each re-read of the change log starts this far before the previous one (clock skew
between writers; re-applying a change is harmless)."""


@dataclass
class KeyCache:
    """Remembers looked-up API keys for `ttl` seconds so requests do not need Postgres every
    time (and keep working through a short Postgres outage), while honouring revocations
    and rotations within a second: at most every KEY_POLL_SECONDS, on a request, one GET of
    the `{keys}` epoch in Redis, and on a change one ZRANGEBYSCORE of the change log. A key
    revoked there is refused from the cache, also while Postgres is down; an unknown key
    while Postgres is down raises Unavailable (never accepted). Keys used are collected and
    their last_used_at written in one batch per LAST_USED_FLUSH_SECONDS."""

    ttl: float
    entries: dict[str, tuple[float, KeyInfo | None]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    """Ids of keys the change log says are revoked."""
    expiry: dict[str, int] = field(default_factory=dict)
    """New expiry (epoch ms) of rotated keys, by id."""
    used: set[str] = field(default_factory=set)
    _epoch: int | None = None
    _scanned_ms: int | None = None
    _next_poll: float = 0.0
    _next_flush: float = 0.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def lookup(
        self, pool: asyncpg.Pool, key: str, redis: RedisClient | None = None, prefix: str = ""
    ) -> KeyInfo | None:
        """The key (with any newer expiry applied), or None when it is unknown or revoked.
        Raises Unavailable("postgres") for a key this worker does not know while Postgres
        is down."""
        if redis is not None:
            await self.refresh(redis, prefix)
        now = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None and hit[0] > now:
            found = hit[1]
        else:
            try:
                found = await find_key(pool, key)
            except Unavailable:
                if hit is None:
                    raise
                found = hit[1]  # a short Postgres outage: keep answering from the cache
            else:
                if len(self.entries) > 100_000:
                    self.entries.clear()
                self.entries[key] = (now + self.ttl, found)
        if found is None or found.id in self.revoked:
            return None
        override = self.expiry.get(found.id)
        if override is not None and (found.expires_at is None or override < found.expires_at):
            found = msgspec.structs.replace(found, expires_at=override)
        self._used(pool, found.id, now)
        return found

    async def refresh(self, redis: RedisClient, prefix: str) -> None:
        """Applies key changes from Redis if KEY_POLL_SECONDS passed since the last look (a
        Redis failure leaves the cache as it is: its TTL still bounds stale entries)."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + KEY_POLL_SECONDS
        keys = KeyRegistryKeys(prefix)
        try:
            raw = await redis.get(keys.epoch)
            epoch = int(raw) if raw is not None else 0
            if epoch == self._epoch:
                return
            full = self._scanned_ms is None or self._epoch is None or epoch < self._epoch
            start = "-inf" if full else str((self._scanned_ms or 0) - CHANGES_OVERLAP_MS)
            scanned = int(time.time() * 1000)
            members = await redis.zrangebyscore(keys.changes, start, "+inf")
        except REDIS_ERRORS as exc:
            log.debug("key changes not read: %s", exc)
            return
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            key_id, _, expires = text.partition("@")
            if not expires:
                self.revoked.add(key_id)
            elif expires.isdigit():
                self.expiry[key_id] = int(expires)
        self._epoch, self._scanned_ms = epoch, scanned

    def revoke(self, key_id: str) -> None:
        """Refuses the key in this worker at once (the others learn it from Redis)."""
        self.revoked.add(key_id)

    def _used(self, pool: asyncpg.Pool, key_id: str, now: float) -> None:
        """Notes a use; starts one batched last_used_at write when the window is over."""
        self.used.add(key_id)
        if now < self._next_flush:
            return
        self._next_flush = now + LAST_USED_FLUSH_SECONDS
        batch, self.used = self.used, set()
        task = asyncio.create_task(self._flush(pool, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, pool: asyncpg.Pool, batch: set[str]) -> None:
        try:
            await mark_used(pool, sorted(batch))
        except Unavailable:
            self.used |= batch  # Postgres down: try again with the next window


@dataclass(frozen=True)
class AppState:
    """Everything a request handler may use: the services the lifespan opened (read through
    the properties below, so nothing is held twice) and the key cache."""

    services: Services
    keys: KeyCache
    seen_dims: SeenDims = field(default_factory=SeenDims)
    """The dims each project has seen, for strict read parameters."""

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def clock(self) -> Clock:
        return self.services.clock

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
    def ingestor(self) -> ShardedIngestor:
        """The ingest front: routes a split project's batches over its shards."""
        return self.services.router

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
