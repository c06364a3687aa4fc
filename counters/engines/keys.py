"""The key lifecycle on both backends: create, list, revoke and rotate. A revocation or a
rotation is written to Redis first (the `{keys}` change log every worker's key cache polls,
so it takes effect everywhere within a second, even while Postgres is down), then to
Postgres (so a worker that starts later, or whose cache misses, refuses the key too)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from counters.core.errors import Conflict, NotFound
from counters.core.keys import (
    KEY_ID_PATTERN,
    MAX_NAMES,
    MAX_ORIGINS,
    KeyRecord,
    NewKey,
    parse_duration,
    parse_origin,
)
from counters.core.models import NAME_PATTERN
from lua.client import RedisClient, redis_unavailable
from lua.keys import KeyRegistryKeys
from persist import projects as pg
from persist.db import Conn

_NAME = re.compile(NAME_PATTERN)


def revoked_member(key_id: str) -> str:
    """Change-log member saying the key is revoked."""
    return key_id


def expiry_member(key_id: str, expires_ms: int) -> str:
    """Change-log member saying the key now expires at expires_ms (epoch ms)."""
    return f"{key_id}@{expires_ms}"


async def publish_change(redis: RedisClient, prefix: str, member: str) -> None:
    """Adds a change to the `{keys}` log and bumps the epoch, atomically (one MULTI).
    Unavailable("redis") when Redis is down."""
    keys = KeyRegistryKeys(prefix)
    with redis_unavailable():
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.changes, {member: int(time.time() * 1000)})
            pipe.incr(keys.epoch)
            await pipe.execute()


def check_options(
    scope: str, expires: str | None, origins: Sequence[str], names: Sequence[str]
) -> tuple[int | None, list[str], list[str]]:
    """(expires in seconds, normalised origins, names) of a create request; ValueError
    naming what is wrong."""
    seconds = None if expires is None else parse_duration(expires)
    if (origins or names) and scope != "pixel":
        raise ValueError("allowed origins and names apply to pixel keys only")
    if len(origins) > MAX_ORIGINS or len(names) > MAX_NAMES:
        raise ValueError(f"at most {MAX_ORIGINS} origins and {MAX_NAMES} names per key")
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"event name {name!r} must match {NAME_PATTERN}")
    return seconds, [parse_origin(o) for o in origins], list(names)


async def create(
    conn: Conn,
    projects: Sequence[str],
    scope: str,
    *,
    expires: str | None = None,
    origins: Sequence[str] = (),
    names: Sequence[str] = (),
) -> NewKey:
    """A new key (projects created if new); the secret is in the reply only. ValueError on
    bad input (scope, duration, origin, name, several projects for a non-read key)."""
    seconds, origins_ok, names_ok = check_options(scope, expires, origins, names)
    return await pg.new_key(
        conn, list(projects), scope, expires_in=seconds, origins=origins_ok, names=names_ok
    )


async def list_keys(conn: Conn, project: str | None = None) -> list[KeyRecord]:
    """Every key, or those covering the project; never a secret or its hash."""
    return await pg.list_keys(conn, project)


async def _owned(conn: Conn, key_id: str, project: str | None) -> KeyRecord:
    record = None if not KEY_ID_PATTERN.match(key_id) else await pg.get_key(conn, key_id)
    if record is None or (project is not None and project not in record.projects):
        raise NotFound(f"unknown key id {key_id!r}", code="unknown_key")
    return record


async def revoke(
    conn: Conn,
    redis: RedisClient,
    prefix: str,
    key_id: str,
    *,
    project: str | None = None,
    caller_id: str | None = None,
) -> KeyRecord:
    """Revokes the key: RedisClient first (every worker refuses it within a second), then
    Postgres. With project, only a key covering that project is found (NotFound otherwise);
    a caller cannot revoke the key it is using (Conflict). Idempotent."""
    record = await _owned(conn, key_id, project)
    if caller_id == key_id:
        raise Conflict("a key cannot revoke itself; use another admin key", code="self_revoke")
    await publish_change(redis, prefix, revoked_member(key_id))
    await pg.mark_revoked(conn, key_id)
    return record


async def rotate(
    conn: Conn, redis: RedisClient, prefix: str, key_id: str, grace_seconds: int
) -> NewKey:
    """A new secret for the key (same projects, scope, expiry, origins, names, a new id);
    the old secret keeps working for grace_seconds (or until its own earlier expiry), and
    every worker learns the old one's new expiry through Redis. NotFound for an unknown or
    revoked id."""
    record = await _owned(conn, key_id, None)
    if record.revoked_at is not None:
        raise NotFound(f"key {key_id!r} is revoked", code="unknown_key")
    new, old_expiry = await pg.rotate_key(conn, key_id, grace_seconds)
    await publish_change(redis, prefix, expiry_member(key_id, old_expiry))
    return new
