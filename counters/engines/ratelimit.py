"""Rate limits: a token bucket per API key and one per project's events, in Redis
(lua/ratelimit.lua), shared by every worker and host.

Each bucket refills at its rate per second and holds BURST_SECONDS worth; a rate of 0 turns
it off. The limiter fails open: when Redis cannot be reached it lets the request through
(ingest then answers 503 on its own; a read can still be answered from Postgres)."""

from __future__ import annotations

import logging
import time
from typing import Literal, NamedTuple

from counters.core.clock import Clock
from counters.core.config import Settings
from counters.metrics import Metrics
from lua import Scripts
from lua.client import REDIS_ERRORS, RedisClient
from lua.keys import ProjectKeys

log = logging.getLogger("counters.ratelimit")

BURST_SECONDS = 2
"""A bucket holds this many seconds of its rate: the burst a client may send at once."""

LimitName = Literal["ingest", "read", "project_events"]
KeyLimit = Literal["ingest", "read"]


class Decision(NamedTuple):
    """One charge of one bucket: whether it passed and the bucket's state afterwards."""

    allowed: bool
    limit: LimitName
    quota: int
    """The bucket's capacity in requests (events for project_events): rate x BURST_SECONDS."""
    window: int
    """Seconds the quota refills over (BURST_SECONDS)."""
    remaining: int
    """Tokens left after this request (0 when refused)."""
    reset_ms: int
    """Milliseconds until the bucket is full again."""
    retry_after_ms: int
    """Milliseconds to wait before this request would pass (0 when allowed)."""


class RateLimiter:
    """Charges requests against per-key and per-project token buckets."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        settings: Settings,
        metrics: Metrics,
        clock: Clock | None = None,
    ) -> None:
        """clock None: the buckets run on Redis's own TIME (production: one clock for every
        worker and host); a clock (tests' ManualClock) is passed to the script instead."""
        self._redis = redis
        self._scripts = scripts
        self._prefix = settings.key_prefix
        self._rates: dict[LimitName, float] = {
            "ingest": settings.rate_limit_ingest,
            "read": settings.rate_limit_read,
            "project_events": settings.rate_limit_project_events,
        }
        self._metrics = metrics
        self._clock = clock
        self._warned_at = 0.0

    def rate(self, limit: LimitName) -> float:
        """Tokens per second of a limit (0: off)."""
        return self._rates[limit]

    async def charge(self, project: str, key_digest: str, limit: KeyLimit) -> Decision | None:
        """Charges one request to the key's bucket (kept in the slot of `project`, the key's
        own project). None when the limit is off or Redis cannot be reached (fail open)."""
        keys = ProjectKeys(self._prefix, project)
        return await self._charge(keys.rate_key(key_digest), limit, 1)

    async def charge_requests(
        self, project: str, key_digest: str, limit: KeyLimit, n: int
    ) -> tuple[int, Decision] | None:
        """Charges n requests of one key at once (the pixel's group commit), one token each,
        as many as the bucket holds: (how many passed, the bucket after them). The first
        passed ones are the first n - refused in arrival order; a refused request takes
        nothing and counts in rate_limited{limit}. Decision.allowed is False when any was
        refused (retry_after_ms is then the wait for the next token). None when the limit is
        off, n < 1 or Redis cannot be reached (fail open)."""
        rate = self._rates[limit]
        if rate <= 0 or n < 1:
            return None
        burst = max(1, round(rate * BURST_SECONDS))
        now = "" if self._clock is None else str(self._clock.now_ms())
        key = ProjectKeys(self._prefix, project).rate_key(key_digest)
        try:
            passed, remaining, reset_ms, retry_ms = await self._scripts.ratelimit(
                keys=[key], args=[repr(float(rate)), burst, n, now, "1"]
            )
        except REDIS_ERRORS as exc:
            self._warn(exc)
            return None
        passed = int(passed)
        if passed < n:
            self._metrics.rate_limited.labels(limit).inc(n - passed)
        decision = Decision(
            passed == n, limit, burst, BURST_SECONDS, int(remaining), int(reset_ms), int(retry_ms)
        )
        return passed, decision

    async def charge_events(self, project: str, n: int) -> Decision | None:
        """Charges n events to the project's events-per-second bucket. None when the limit is
        off, n < 1 or Redis cannot be reached (fail open)."""
        if n < 1:
            return None
        return await self._charge(
            ProjectKeys(self._prefix, project).rate_events, "project_events", n
        )

    async def _charge(self, key: str, limit: LimitName, cost: int) -> Decision | None:
        rate = self._rates[limit]
        if rate <= 0:
            return None
        burst = max(1, round(rate * BURST_SECONDS))
        now = "" if self._clock is None else str(self._clock.now_ms())
        try:
            allowed, remaining, reset_ms, retry_ms = await self._scripts.ratelimit(
                keys=[key], args=[repr(float(rate)), burst, cost, now]
            )
        except REDIS_ERRORS as exc:
            self._warn(exc)
            return None
        decision = Decision(
            bool(allowed), limit, burst, BURST_SECONDS, int(remaining), int(reset_ms), int(retry_ms)
        )
        if not decision.allowed:
            self._metrics.rate_limited.labels(limit).inc()
        return decision

    def _warn(self, exc: BaseException) -> None:
        """Logs a fail-open at most every 10 s (an outage would otherwise log per request)."""
        now = time.monotonic()
        if now - self._warned_at >= 10:
            self._warned_at = now
            log.warning("rate limiter: redis unreachable, letting requests through: %s", exc)
