"""Opening the Redis client (the one place its timeouts and pool size are chosen)."""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.errors import unavailable

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What a Redis that is down, restarting or unreachable raises (answered with a 503)."""


def open_redis(url: str) -> Redis:
    """An asyncio client that fails fast when the server is down (callers answer 503)."""
    return Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=256,
    )


def redis_unavailable() -> contextlib.AbstractContextManager[None]:
    """`with redis_unavailable(): await redis...`: a Redis failure becomes a 503 naming redis."""
    return unavailable("redis", REDIS_ERRORS)
