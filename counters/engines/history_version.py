"""The per-project history version: a random token in Redis (ProjectKeys.history_version,
in the project's slot) replaced by every writer that rewrites rollup rows below the
Postgres watermarks, so each process's read cache (engines/read/history_cache.py) sees the
change on its next read.

The rule, written once: a writer that changes rows a reader may already hold (a rebuild's
day, a reconcile's repair of hours and days from their parts, a restore after a Redis loss)
calls bump_history() after its Postgres transaction commits and before it reports done.
Writers that only add rows above the watermarks (the persister's copy) or whose change is
still readable from Redis for keep_after_copy_seconds (late generations applied after a
cached snapshot) need no bump: a cached snapshot is then exactly an older snapshot, which
the read path already merges correctly (ARCHITECTURE §6), and the cache never keeps one
longer than half of keep_after_copy_seconds. Minute retention deletes only rows a read is
refused for (older than minute_retention_days).

A cached part is also tied to the project's Redis watermarks (sealed-until per grain and the
open late generation) as read before its snapshot: every seal and every late rotation ends
it. Applying a late generation changes no watermark, so `LateApplier.apply` replaces the
history version after its Postgres commit and before the generation's keys get a TTL: a
part read before the commit (which lacks the generation and adds it from those keys) is
stale before the keys can go. So a part never outlives the Redis copy of what the
persister copied after it was read (even when Redis drops those keys early, as a maxmemory
eviction or an operator would)."""

from __future__ import annotations

import uuid
from typing import Any

from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys


def new_token() -> str:
    """A token no earlier version of any project ever had (random, 128 bits)."""
    return uuid.uuid4().hex


def queue_bump(pipe: Any, keys: ProjectKeys) -> None:
    """bump_history() queued on a pipeline (run with the writer's other calls)."""
    pipe.set(keys.history_version, new_token())


async def bump_history(redis: RedisClient, keys: ProjectKeys) -> str:
    """Replaces the project's history version; every cached Postgres part of the project,
    in every process, is stale from the next read on. Returns the new token. Raises
    Unavailable("redis") when Redis does not answer."""
    token = new_token()
    with redis_unavailable():
        await redis.set(keys.history_version, token)
    return token


WATERMARK_FIELDS = ("m", "h", "d", "gen")


def queue_version(pipe: Any, keys: ProjectKeys) -> None:
    """Queues the two reads version_of() joins (the token, the watermarks) on a pipeline."""
    pipe.get(keys.history_version)
    pipe.hmget(keys.watermarks, list(WATERMARK_FIELDS))


def version_of(token: Any, watermarks: Any) -> bytes:
    """What a cached part is valid under: the history token and the watermarks."""
    marks = b",".join(x if isinstance(x, bytes) else str(x).encode() for x in watermarks)
    tok = token if isinstance(token, bytes) else str(token).encode()
    return tok + b"|" + marks


async def history_token(redis: RedisClient, keys: ProjectKeys) -> bytes:
    """The project's current history version (version_of: token and watermarks),
    creating a token if Redis has none (a new
    project, or Redis lost its data: a fresh random token never equals one cached before).
    Raises Unavailable("redis") when Redis does not answer."""
    with redis_unavailable():
        pipe = redis.pipeline(transaction=False)
        pipe.set(keys.history_version, new_token(), nx=True)
        queue_version(pipe, keys)
        _, token, watermarks = await pipe.execute()
    return version_of(token, watermarks)
