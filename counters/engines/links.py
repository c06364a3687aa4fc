"""Click-tracking links: creating, listing and disabling them (Postgres, then a version bump
in Redis), and the per-process LinkCache the redirect route reads, so a follow never waits
on Postgres."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import asyncpg

from counters.core.errors import BadRequest, NotFound, Unavailable
from counters.core.links import (
    DEFAULT_NAME,
    Link,
    check_target,
    is_link_id,
    new_link_id,
    parse_dims,
)
from counters.core.models import NAME_PATTERN
from lua.client import REDIS_ERRORS, RedisClient
from lua.keys import LinkKeys
from persist import links as pg
from persist.db import PG_ERRORS, Conn, postgres_unavailable
from persist.projects import project_exists

log = logging.getLogger("counters.links")

POLL_SECONDS = 0.25
"""How often each worker GETs the links' version key (a disable is honoured within it plus
one Postgres read)."""
RELOAD_SECONDS = 30.0
"""A full reload from Postgres at least this often, whatever the version key says (a lost
version bump, a flushed Redis)."""
OUTAGE_RELOAD_SECONDS = 2.0
"""While Redis cannot be read, links are reloaded from Postgres this often instead."""

_RELOAD_ERRORS: tuple[type[Exception], ...] = (*PG_ERRORS, Unavailable)
_NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("\\Z").removesuffix("$"))


async def create_link(
    conn: Conn,
    redis: RedisClient | None,
    prefix: str,
    project: str,
    target: str,
    *,
    name: str = DEFAULT_NAME,
    dims: tuple[str, ...] = (),
) -> Link:
    """Registers a link of an existing project (NotFound `unknown project 'x'` otherwise)
    to an absolute http(s) target under a fresh random id, and tells the workers (a
    version bump; without Redis they see it within RELOAD_SECONDS). BadRequest naming the
    bad target, name or dim; nothing is stored then."""
    url = check_target(target)
    if _NAME.fullmatch(name) is None:
        raise BadRequest(f"--name {name!r}: must match {NAME_PATTERN}")
    parsed = parse_dims(dims)
    with postgres_unavailable():
        if not await project_exists(conn, project):
            raise NotFound(f"unknown project {project!r}", code="unknown_project")
        for _ in range(5):
            link = await pg.insert_link(conn, new_link_id(), project, url, name, parsed)
            if link is not None:
                break
        else:  # pragma: no cover - 62 random bits
            raise RuntimeError("no free link id after 5 draws")
    await bump_version(redis, prefix)
    return link


async def list_links(conn: Conn, project: str | None = None) -> list[Link]:
    """Every link (of one existing project: NotFound otherwise), oldest first."""
    with postgres_unavailable():
        if project is not None and not await project_exists(conn, project):
            raise NotFound(f"unknown project {project!r}", code="unknown_project")
        return await pg.list_links(conn, project)


async def disable_link(conn: Conn, redis: RedisClient | None, prefix: str, link_id: str) -> Link:
    """Disables the link (its URL answers 404 in every worker within about a second) and
    returns it; NotFound `unknown link 'x'` when there is none."""
    with postgres_unavailable():
        link = await pg.disable_link(conn, link_id) if is_link_id(link_id) else None
    if link is None:
        raise NotFound(f"unknown link {link_id!r}", code="unknown_link")
    await bump_version(redis, prefix)
    return link


async def bump_version(redis: RedisClient | None, prefix: str) -> bool:
    """INCRs the links' version key so every worker reloads; False (logged) when Redis
    cannot be reached (the workers' periodic reload still picks the change up)."""
    if redis is None:
        return False
    try:
        await redis.incr(LinkKeys(prefix).version)
    except REDIS_ERRORS as exc:
        log.warning(
            "links: redis unreachable (%s); workers see the change within %g s",
            exc,
            RELOAD_SECONDS,
        )
        return False
    return True


class LinkCache:
    """This process's copy of every active link, read by the redirect route without I/O.
    `run` keeps it fresh: every POLL_SECONDS one GET of the version key in Redis, and a
    reload of all active links from Postgres when it moved, RELOAD_SECONDS passed, or
    (Redis down) OUTAGE_RELOAD_SECONDS passed. A failed reload keeps the last copy."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        prefix: str,
        *,
        on_loaded: Callable[[set[str]], Awaitable[None]] | None = None,
    ) -> None:
        """on_loaded(projects): awaited after each successful reload with the projects
        that have links (the app warms their uid hashers with it)."""
        self._pool = pool
        self._redis = redis
        self._keys = LinkKeys(prefix)
        self._on_loaded = on_loaded
        self._links: dict[str, Link] = {}
        self._version: bytes | str | None = None
        self._loaded_at: float | None = None
        self.loaded = False
        """Whether one reload has succeeded (before that, nothing can be answered)."""

    def get(self, link_id: str) -> Link | None:
        """The active link with this id, or None (unknown or disabled)."""
        return self._links.get(link_id)

    async def refresh(self) -> bool:
        """One look at the version key, and a reload when due (see the class). Returns
        whether links were reloaded."""
        now = time.monotonic()
        try:
            version = await self._redis.get(self._keys.version)
            due = RELOAD_SECONDS
        except REDIS_ERRORS as exc:
            log.debug("links: version not read: %s", exc)
            version, due = self._version, OUTAGE_RELOAD_SECONDS
        stale = self._loaded_at is None or now - self._loaded_at >= due
        if version == self._version and not stale:
            return False
        try:
            async with self._pool.acquire() as conn:
                links = await pg.list_links(conn, active_only=True)
        except _RELOAD_ERRORS as exc:
            log.debug("links: not reloaded: %s", exc)
            return False
        self._links = {link.id: link for link in links}
        self._version, self._loaded_at, self.loaded = version, now, True
        if self._on_loaded is not None:
            await self._on_loaded({link.project for link in links})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refreshes every POLL_SECONDS until stop is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("links: refresh failed")
            try:
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
