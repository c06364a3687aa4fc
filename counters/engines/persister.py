"""The persister loop: every persist_interval, one pass over all projects runs the
seal-then-copy protocol (docs/ARCHITECTURE.md) under the project's lock; a pass that fails
on a backend is counted, backed off from and retried. Every step may be re-run after a
crash at any point without double counting.

Each project is on its own: a failure of one project (not a backend outage) is counted and
logged for that project, which then sits out a growing number of passes (isolation.py),
while the others are persisted in the same pass. The gauges are updated after every pass,
also when projects failed, so a stalled project shows as a growing lag and backlog.

The steps live in their own modules: seal.py (seal and copy buckets), late.py (late
generations), rawcopy.py (raw log), restore.py (watermarks after a Redis loss)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
import msgspec
from redis.asyncio import RedisCluster

from counters.core.buckets import GRAINS, Grain, bucket_start
from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.engines.isolation import ProjectBackoff, is_outage
from counters.engines.late import LateApplier
from counters.engines.rawcopy import RawCopier
from counters.engines.restore import RestoreGate
from counters.engines.retention import apply_retention
from counters.engines.seal import Sealer
from counters.engines.slots import ensure_slot_settled
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys
from persist.db import Conn, postgres_unavailable
from persist.deadletter import count_dead_letters
from persist.locks import project_lock
from persist.projects import list_projects
from persist.schema import stream_order
from persist.state import PersistState, load_state, load_states

log = logging.getLogger("counters.persister")

RETENTION_EVERY_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 5.0
"""Longest wait between tries while a backend is down (catch-up starts within it)."""


class Cut(msgspec.Struct, frozen=True):
    """A consistent cut: late generations up to last_gen, watermarks, raw-log position."""

    last_gen: int
    sealed: dict[Grain, int]
    stream_id: str


class ProjectReport(msgspec.Struct):
    """What one pass did for one project."""

    buckets_copied: int = 0
    late_generations: int = 0
    raw_events: int = 0


class Risk(msgspec.Struct):
    """What Redis alone holds, over some projects: raw-log events not copied yet, buckets
    per grain with data not in Postgres (the dirty index: hot, or sealed and not copied),
    and per grain how far the Postgres watermark lags now (worst project, seconds)."""

    raw_backlog: int = 0
    minute_lag: float = 0.0
    redis_only: dict[Grain, int] = msgspec.field(default_factory=lambda: dict.fromkeys(GRAINS, 0))
    lag: dict[Grain, float] = msgspec.field(default_factory=lambda: dict.fromkeys(GRAINS, 0.0))

    def add(
        self, rawn: int, cards: list[int], state: PersistState, now_ms: int, sealable: int
    ) -> None:
        """Adds one project: its rawn, ZCARD of dirty:<g> per grain and its state row."""
        self.raw_backlog += rawn
        self.minute_lag = max(self.minute_lag, (sealable - state.minute_until) / 1000)
        for grain, card in zip(GRAINS, cards, strict=True):
            self.redis_only[grain] += int(card)
            self.lag[grain] = max(self.lag[grain], (now_ms - state.until(grain)) / 1000)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Persister:
    """Drains every project's closed buckets, late deltas and raw log into Postgres."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        scripts: Scripts,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        gate: RestoreGate | None = None,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.sealer = Sealer(redis, scripts, settings, metrics)
        self.late = LateApplier(redis, scripts, settings, metrics)
        self.raw = RawCopier(
            redis, scripts, metrics, deadletter_after=settings.deadletter_after_attempts
        )
        self.backoff = ProjectBackoff(metrics)
        self.gate = gate or RestoreGate(pool, redis, scripts, settings, clock)
        self._retention_due = 0.0
        self._cluster = isinstance(redis, RedisCluster)

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Passes over all projects every persist_interval until stop is set; backs off while
        a backend is down and catches up when it returns."""
        delay = self.settings.persist_interval_seconds
        self.metrics.processes.labels("persister").set(1)
        while not stop.is_set():
            try:
                await self.tick()
                delay = self.settings.persist_interval_seconds
            except Exception as exc:  # the loop must outlive any single bad pass
                await self._failed(exc)
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
        self.metrics.processes.labels("persister").set(0)

    async def _failed(self, exc: Exception) -> None:
        """Counts and logs a failed pass; after a Postgres failure the pool's connections are
        replaced (they may be broken)."""
        if not isinstance(exc, Unavailable):
            self.metrics.persister_errors.labels("other").inc()
            log.exception("persister: pass failed", exc_info=exc)
            return
        self.metrics.persister_errors.labels(exc.backend).inc()
        log.warning("persister: %s", exc.message)
        if exc.backend == "postgres":
            await self.pool.expire_connections()

    async def tick(self) -> dict[str, ProjectReport]:
        """One pass over every project; returns what it did per project it held the lock of.
        A project that fails (other than by a backend outage) is counted and left out of
        the reply, and the other projects are persisted all the same; a failing project
        sits out a growing number of passes. A backend outage ends the pass (Unavailable;
        the loop backs off). Applies retention at most once an hour, and updates the gauges
        (observe) after every pass, also when projects failed or a backend went down."""
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                projects = await list_projects(conn)
                if time.monotonic() >= self._retention_due:
                    await self._retention(conn)
        reports: dict[str, ProjectReport] = {}
        for project in projects:
            if not self.backoff.due(project):
                continue
            try:
                report = await self.persist_project(project)
            except Exception as exc:
                if is_outage(exc) and not self._own_outage(exc):
                    with contextlib.suppress(Unavailable):
                        await self.observe(projects)
                    raise
                self.backoff.failed(project, exc)
                continue
            self.backoff.succeeded(project)
            if report is not None:
                reports[project] = report
        await self.observe(projects)
        return reports

    def _own_outage(self, exc: BaseException) -> bool:
        """On a Redis Cluster a Redis outage is one master's (or one slot's): it sits out
        that project only, and the projects of the other masters are persisted."""
        return self._cluster and isinstance(exc, Unavailable) and exc.backend == "redis"

    async def observe(self, projects: list[str]) -> Risk:
        """Sets the persister gauges from these projects (cheap: one Redis pipeline, one
        state query for all projects and one count of the dead letters): the raw backlog,
        the buckets per grain held only in Redis, the lag of each grain's Postgres
        watermark (worst project) and the dead letters waiting. The Redis-only gauges are
        set before Postgres is asked, so they stay current while Postgres is down."""
        now = self.clock.now_ms()
        sealable = bucket_start(now - int(self.settings.grace_seconds * 1000), Grain.minute)
        risk = Risk()
        with redis_unavailable():
            pipe = self.redis.pipeline(transaction=False)
            for project in projects:
                keys = ProjectKeys(self.settings.key_prefix, project)
                pipe.hget(keys.watermarks, "rawn")
                for grain in GRAINS:
                    pipe.zcard(keys.dirty(grain))
            replies = await pipe.execute()
        per = 1 + len(GRAINS)
        backlog = 0
        redis_only = dict.fromkeys(GRAINS, 0)
        for i in range(len(projects)):
            rawn, *cards = replies[i * per : (i + 1) * per]
            backlog += int(rawn or 0)
            for grain, card in zip(GRAINS, cards, strict=True):
                redis_only[grain] += int(card)
        self.metrics.raw_backlog.set(backlog)
        for grain in GRAINS:
            self.metrics.redis_only_buckets.labels(grain.name).set(redis_only[grain])
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                states = await load_states(conn, projects)
                dead_letters = await count_dead_letters(conn)
        for i, project in enumerate(projects):
            rawn, *cards = replies[i * per : (i + 1) * per]
            risk.add(int(rawn or 0), cards, states[project], now, sealable)
        self.metrics.persister_lag.set(risk.minute_lag)
        for grain in GRAINS:
            self.metrics.grain_lag.labels(grain.name).set(risk.lag[grain])
        self.metrics.deadletter_entries.set(dead_letters)
        return risk

    async def _retention(self, conn: Conn) -> None:
        done = await apply_retention(
            conn,
            self.clock.now_ms(),
            raw_days=self.settings.raw_retention_days,
            minute_days=self.settings.minute_retention_days,
        )
        if done is None:
            return
        self._retention_due = time.monotonic() + RETENTION_EVERY_SECONDS
        self.raw.forget_partitions()
        if done.dropped_partitions or done.minute_rows_deleted:
            log.info(
                "retention: dropped %s, deleted %d minute rows",
                ", ".join(done.dropped_partitions) or "no partitions",
                done.minute_rows_deleted,
            )

    async def persist_project(self, project: str) -> ProjectReport | None:
        """Runs the protocol once for one project, unless another persister holds it (None)."""
        with postgres_unavailable():
            async with self.pool.acquire() as conn:
                async with project_lock(conn, project, wait=False) as held:
                    if not held:
                        return None
                    keys = ProjectKeys(self.settings.key_prefix, project)
                    return await self.run_protocol(conn, keys)

    async def run_protocol(self, conn: Conn, keys: ProjectKeys) -> ProjectReport:
        """The seal-then-copy protocol, in docs/ARCHITECTURE.md's order; the caller holds the
        project's lock."""
        await ensure_slot_settled(self.redis, keys)
        await self.restore(keys)
        report = ProjectReport()
        # 1. seal what has closed and close the open late generation (Redis only)
        await self.sealer.seal(keys, self.clock.now_ms())
        open_gen = await self.late.rotate(keys)
        # 2. the raw log, drained past every event step 1 sealed or closed: each event a row
        #    or delta below counts has its raw row (and so its dedupe id) in Postgres first
        report.raw_events += await self.raw.copy(conn, keys)
        # 3. every sealed bucket not copied yet (from this pass or an earlier one)
        report.buckets_copied += await self.sealer.copy_sealed(conn, keys)
        # 4. late deltas of the closed generations: every bucket they touch is in Postgres
        report.late_generations += await self.late.apply_closed(conn, keys, open_gen)
        return report

    async def restore(self, keys: ProjectKeys) -> bool:
        """Restores the project's watermarks into Redis if Redis lost them."""
        return await self.gate.restore(keys.project, lock_held=True)

    async def drain_to_cut(self, conn: Conn, keys: ProjectKeys) -> Cut:
        """Takes a cut of the project's write stream and brings Postgres exactly to it: every
        bucket below the cut's watermarks then holds exactly the events of the raw log up to
        the cut's stream id (all of which are in raw_events). The caller holds the lock."""
        await ensure_slot_settled(self.redis, keys)
        await self.restore(keys)
        with redis_unavailable():
            reply = await self.scripts.cut(keys=[keys.watermarks, keys.raw])
        if _s(reply[0]) == "NOWM":  # pragma: no cover - restored just above
            raise RuntimeError("watermarks vanished during the cut")
        cut = Cut(
            last_gen=int(reply[0]),
            sealed={g: int(v) for g, v in zip(GRAINS, reply[1:4], strict=True)},
            stream_id=_s(reply[4]),
        )
        # raw rows first, as in run_protocol: nothing is counted in Postgres before its raw row
        with postgres_unavailable():
            state = await load_state(conn, keys.project)
        while stream_order(state.raw_stream_id) < stream_order(cut.stream_id):
            if not await self.raw.copy(conn, keys):
                break
            with postgres_unavailable():
                state = await load_state(conn, keys.project)
        await self.sealer.copy_sealed(conn, keys)
        for gen in range(state.late_applied + 1, cut.last_gen + 1):
            await self.late.apply(conn, keys, gen)
        return cut
