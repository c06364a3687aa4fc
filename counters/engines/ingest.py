"""The write path: plan a validated batch (counters.core.grouping), then apply it with one
lua/ingest.lua call. This module only talks to Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from counters.core.buckets import DAY_MS
from counters.core.config import Settings
from counters.core.errors import BacklogFull, Unavailable
from counters.core.grouping import first_occurrences, fold_over_cap, plan_batch
from counters.core.models import IngestReply, RawEvent, raw_encoder
from counters.core.rollups import Rollup
from lua import Scripts
from lua.client import redis_unavailable
from lua.keys import ProjectKeys

RestoreWatermarks = Callable[[str], Awaitable[object]]

_payload_encoder = msgspec.msgpack.Encoder()
_MAX_ATTEMPTS = 8
DIM_SET_TTL_MS = 2 * DAY_MS
"""How long a dim's set of values of one day lives after its last new value."""
DURABLE_TIMEOUT_MS = 2000


class Ingestor:
    """Applies batches for any project; safe to share between concurrent requests."""

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        *,
        key_prefix: str,
        crosstabs: Sequence[Rollup],
        dedupe_window_ms: int,
        backlog_cap: int,
        restore_watermarks: RestoreWatermarks,
        durable_ack: bool = False,
        dim_cap: int = 0,
        on_fold: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._prefix = key_prefix
        self._crosstabs = tuple(crosstabs)
        self._dedupe_ms = dedupe_window_ms
        self._cap = backlog_cap
        self._restore = restore_watermarks
        self._durable = durable_ack
        self._dim_cap = dim_cap
        self._on_fold = on_fold
        self._waitaof: bool | None = None  # None: not probed yet

    @classmethod
    def from_settings(
        cls,
        redis: Redis,
        scripts: Scripts,
        settings: Settings,
        restore_watermarks: RestoreWatermarks,
        on_fold: Callable[[int], None] | None = None,
    ) -> Ingestor:
        """An ingestor configured the way the service runs it."""
        return cls(
            redis,
            scripts,
            key_prefix=settings.key_prefix,
            crosstabs=settings.crosstabs,
            dedupe_window_ms=settings.dedupe_window_seconds * 1000,
            backlog_cap=settings.raw_backlog_cap,
            restore_watermarks=restore_watermarks,
            durable_ack=settings.durable_ack,
            dim_cap=settings.dim_cardinality_cap,
            on_fold=on_fold,
        )

    async def _wait_on_disk(self) -> None:
        """Returns once everything this client wrote is fsynced to the AOF."""
        if self._waitaof is not False:
            try:
                local, _ = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "WAITAOF", 1, 0, DURABLE_TIMEOUT_MS
                )
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise Unavailable("redis", f"WAITAOF failed: {exc}") from exc
                self._waitaof = False
            else:
                self._waitaof = True
                if int(local) < 1:
                    raise Unavailable("redis", "the batch is not on disk yet (WAITAOF timed out)")
                return
        config: dict[Any, Any] = await self._redis.config_get("appendfsync")
        if {config.get("appendfsync"), config.get(b"appendfsync")} & {"always", b"always"}:
            return
        raise Unavailable(
            "redis", "durable_ack needs WAITAOF (Redis 7.2+, Valkey) or appendfsync always"
        )

    async def apply(self, project: str, events: list[RawEvent]) -> IngestReply:
        """Counts every event exactly once unless its id was seen inside the dedupe window;
        all or nothing. Raises Unavailable (Redis down) or BacklogFull; then nothing counted."""
        keys = ProjectKeys(self._prefix, project)
        pending, duplicates = first_occurrences(events)
        for _ in range(_MAX_ATTEMPTS):
            if not pending:
                return IngestReply(accepted=0, duplicates=duplicates)
            ids = [ev.id for ev in pending if ev.id is not None]
            groups, dim_values = plan_batch(pending, self._crosstabs, dim_values=self._dim_cap > 0)
            payload = _payload_encoder.encode(
                [
                    self._dedupe_ms,
                    self._cap,
                    ids,
                    groups,
                    len(pending),
                    self._dim_cap,
                    dim_values,
                    DIM_SET_TTL_MS,
                ]
            )
            with redis_unavailable():
                reply = await self._scripts.ingest(
                    keys=[keys.watermarks, keys.raw],
                    args=[keys.base, payload, raw_encoder.encode(pending)],
                )
            status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if status == "OK":
                if self._durable:
                    with redis_unavailable():
                        await self._wait_on_disk()
                return IngestReply(accepted=len(pending), duplicates=duplicates)
            if status == "DUP":
                seen = {ids[i - 1] for i in reply[1:]}
                kept = [ev for ev in pending if ev.id is None or ev.id not in seen]
                duplicates += len(pending) - len(kept)
                pending = kept
            elif status == "CAP":
                over = {tuple(dim_values[i - 1]) for i in reply[1:]}
                pending, folded = fold_over_cap(pending, over)
                if self._on_fold is not None:
                    self._on_fold(folded)
            elif status == "NOWM":
                await self._restore(project)
            elif status == "BACKLOG":
                raise BacklogFull(
                    f"raw-log backlog holds {reply[1]} events (cap {self._cap}); retry later"
                )
            else:  # pragma: no cover - the script returns nothing else
                raise RuntimeError(f"ingest script answered {reply!r}")
        raise Unavailable("redis", "batch kept colliding with concurrent duplicates; retry")
