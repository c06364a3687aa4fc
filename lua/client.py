"""Opening the Redis client (the one place its timeouts and pool size are chosen)."""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.errors import unavailable

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What a Redis that is down, restarting or unreachable raises (answered with a 503)."""


SOCKET_TIMEOUT_SECONDS = 12.0
"""How long a call waits for Redis's reply. Longer than any script can run: ingest.lua is
kept under ~50 ms by max_batch_groups, and a script still running after Valkey's
busy-reply-threshold (lua-time-limit, 5 s) makes Valkey answer BUSY to the calls queued
behind it, so a call either gets its reply or an error before this. A timeout is then a
server that stopped answering, not a script that applied a batch after we gave up: a 503
for a script call means nothing was applied."""


def open_redis(url: str) -> Redis:
    """An asyncio client that fails fast when the server is down (callers answer 503) and
    waits for a script's reply longer than any script runs (SOCKET_TIMEOUT_SECONDS)."""
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=256,
    )


def redis_unavailable() -> contextlib.AbstractContextManager[None]:
    """`with redis_unavailable(): await redis...`: a Redis failure becomes a 503 naming redis."""
    return unavailable("redis", REDIS_ERRORS)
