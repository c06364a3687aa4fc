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

    async def charge_batch(
        self, project: str, hits: dict[str, str], loose: int = 0
    ) -> tuple[list[tuple[int, Decision]], Decision | None] | None:
        """Charges one group-committed batch of pixel hits in ONE script call
        (lua/ratelimit_batch.lua): each key's bucket (hits: key digest -> one character a
        hit in arrival order, '1' carrying an event, '0' not) one token a hit, as many as
        fit, then the project's events bucket for the events of the hits that passed plus
        `loose` events of hits charged to no key, all or nothing. Returns per key, in the
        order of `hits`, (how many passed, the bucket after them; allowed False when any
        was refused) — empty when the ingest limit is off — and the events decision (None
        when no event was charged or that limit is off). Refusals count in
        rate_limited{limit} (per refused hit for a key, once for the events). None when
        both limits are off or Redis cannot be reached (fail open)."""
        key_rate, ev_rate = self._rates["ingest"], self._rates["project_events"]
        if key_rate <= 0 and ev_rate <= 0:
            return None
        keys = ProjectKeys(self._prefix, project)
        charged = hits if key_rate > 0 else {}
        key_burst = max(1, round(key_rate * BURST_SECONDS))
        ev_burst = max(1, round(ev_rate * BURST_SECONDS))
        now = "" if self._clock is None else str(self._clock.now_ms())
        args: list[str | int] = [now, repr(float(key_rate)), key_burst, repr(float(ev_rate))]
        if not charged:
            loose += sum(m.count("1") for m in hits.values())
            if not loose:
                return [], None
        args += [ev_burst, loose, *charged.values()]
        try:
            reply = await self._scripts.ratelimit_batch(
                keys=[*(keys.rate_key(d) for d in charged), keys.rate_events], args=args
            )
        except REDIS_ERRORS as exc:
            self._warn(exc)
            return None
        out = []
        for i, mask in enumerate(charged.values()):
            passed, remaining, reset_ms, retry_ms = (int(x) for x in reply[4 * i : 4 * i + 4])
            out.append(
                (
                    passed,
                    Decision(
                        passed == len(mask),
                        "ingest",
                        key_burst,
                        BURST_SECONDS,
                        remaining,
                        reset_ms,
                        retry_ms,
                    ),
                )
            )
            if passed < len(mask):
                self._metrics.rate_limited.labels("ingest").inc(len(mask) - passed)
        events: Decision | None = None
        allowed, remaining, reset_ms, retry_ms = (int(x) for x in reply[-4:])
        if ev_rate > 0 and (allowed or retry_ms):
            events = Decision(
                bool(allowed),
                "project_events",
                ev_burst,
                BURST_SECONDS,
                remaining,
                reset_ms,
                retry_ms,
            )
            if not allowed:
                self._metrics.rate_limited.labels("project_events").inc()
        return out, events

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
