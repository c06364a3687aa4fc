"""Hot-tenant shards at run time: every process's view of the shard plans (ShardDirectory,
refreshed from Postgres every shard_refresh_seconds) and the ingest front that routes a
batch of a split project over its shards (ShardedIngestor). The rules are
counters/core/shards.py's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence

import asyncpg

from counters.core.errors import Unavailable
from counters.core.models import IngestReply, RawEvent
from counters.core.shards import SINGLE, ShardPlan, shard_project, shard_projects, token_shard
from counters.engines.ingest import Idempotency, Ingestor
from lua.keys import ProjectKeys, event_id_token
from persist.db import postgres_unavailable
from persist.shards import load_plans


class ShardDirectory:
    """The shard plan of every project, as of at most refresh_seconds ago (one query for
    all projects). While Postgres is down the last plans it gave are kept."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        refresh_seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._refresh = refresh_seconds
        self._monotonic = monotonic
        self._plans: dict[str, ShardPlan] | None = None
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Reads every plan now. Raises Unavailable("postgres") when Postgres is down."""
        with postgres_unavailable():
            async with self._pool.acquire() as conn:
                plans = await load_plans(conn)
        self._plans = plans
        self._loaded_at = self._monotonic()

    def _stale(self) -> bool:
        return self._monotonic() - self._loaded_at >= self._refresh

    def _refresh_soon(self) -> None:
        """Starts one background refresh (none when one is running); its failure keeps the
        plans as they are."""
        if self._loading is not None and not self._loading.done():
            return

        async def quietly() -> None:
            with contextlib.suppress(Unavailable):
                await self.refresh()

        self._loading = asyncio.get_running_loop().create_task(quietly())

    async def plan(self, project: str) -> ShardPlan:
        """The project's plan: read from Postgres first when no plan was ever read (then a
        Postgres outage is Unavailable: nothing may be routed blind), refreshed in the
        background when older than refresh_seconds."""
        if self._plans is None:
            await self.refresh()
        elif self._stale():
            self._refresh_soon()
        assert self._plans is not None
        return self._plans.get(project, SINGLE)

    def known(self, project: str) -> ShardPlan:
        """The project's plan as last read (one shard when none was read yet), refreshed in
        the background when stale: for reads, which must not wait on Postgres here."""
        if self._stale():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to refresh on
                self._refresh_soon()
        return (self._plans or {}).get(project, SINGLE)

    def keys_of(self, prefix: str, project: str) -> list[ProjectKeys]:
        """Every shard's keys of the project, shard 0 first (one entry when never split)."""
        return [ProjectKeys(prefix, p) for p in shard_projects(project, self.known(project).span)]


def _add(a: IngestReply, b: IngestReply) -> IngestReply:
    return IngestReply(accepted=a.accepted + b.accepted, duplicates=a.duplicates + b.duplicates)


class ShardedIngestor:
    """Ingestor.apply for projects that may be split: a project of one shard goes straight
    through; a split one is routed by counters/core/shards.py's rules, each shard's part
    applied all or nothing by lua/ingest.lua in that shard's slot."""

    def __init__(self, inner: Ingestor, directory: ShardDirectory) -> None:
        self.inner = inner
        self.directory = directory
        self._turn = itertools.count()

    async def apply(
        self,
        project: str,
        events: list[RawEvent],
        *,
        idempotency: Idempotency | None = None,
        refused: list[RawEvent] | None = None,
    ) -> IngestReply:
        """Ingestor.apply's guarantees, per shard: a batch without event ids, or with an
        Idempotency-Key, is one shard's part and so all or nothing. A batch with ids is
        split by (name, id): every part is checked first (a 413 or 422 applies nothing), and
        the part holding the events without ids is applied last, only once every other part
        is applied, so a failure (503: retry) leaves at most parts whose every event has an
        id, which the retry finds as duplicates."""
        plan = await self.directory.plan(project)
        if not plan.split:
            return await self.inner.apply(project, events, idempotency=idempotency, refused=refused)
        now = max((ev.received for ev in events), default=0)
        if idempotency is not None:
            shard = token_shard(idempotency.token, plan.ids_over(now))
            return await self.inner.apply(
                shard_project(project, shard), events, idempotency=idempotency, refused=refused
            )
        over = plan.ids_over(now)
        parts: dict[int, list[RawEvent]] = {}
        plain: list[RawEvent] = []
        for ev in events:
            if ev.id is None:
                plain.append(ev)
            else:
                parts.setdefault(token_shard(event_id_token(ev.name, ev.id), over), []).append(ev)
        if not parts:
            shard = next(self._turn) % plan.shards
            return await self.inner.apply(shard_project(project, shard), plain, refused=refused)
        last = min(parts, key=lambda s: (-len(parts[s]), s))
        parts[last] = parts[last] + plain
        first = [s for s in sorted(parts) if s != last]
        if refused is None:  # bad input (413, 422) is refused before any part is applied
            for s in sorted(parts):
                await self.inner.precheck(shard_project(project, s), parts[s])
        reply = IngestReply(accepted=0, duplicates=0)
        if first:
            done = await asyncio.gather(
                *(self._part(project, s, parts[s], refused) for s in first),
                return_exceptions=True,
            )
            for one in done:
                if isinstance(one, BaseException):
                    raise one
            for one in done:
                assert isinstance(one, IngestReply)
                reply = _add(reply, one)
        tail = await self._part(project, last, parts[last], refused)
        return _add(reply, tail)

    async def _part(
        self, project: str, shard: int, events: Sequence[RawEvent], refused: list[RawEvent] | None
    ) -> IngestReply:
        return await self.inner.apply(shard_project(project, shard), list(events), refused=refused)
