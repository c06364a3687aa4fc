"""The write path: group a validated batch in Python, then apply it with one script call."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from counters.core.config import Settings
from counters.core.errors import BacklogFull, Unavailable
from counters.core.models import IngestReply, RawEvent, raw_encoder
from counters.core.rollups import OTHER, Rollup, fields_for
from lua import Scripts
from lua.keys import US, ProjectKeys

RestoreWatermarks = Callable[[str], Awaitable[None]]
Group = list[Any]

_payload_encoder = msgspec.msgpack.Encoder()
_MAX_ATTEMPTS = 8
DIM_SET_TTL_MS = 2 * 86_400_000
DURABLE_TIMEOUT_MS = 2000


class _Acc:
    """Counts, sums and uids per field, for one bucket."""

    __slots__ = ("counts", "sums", "uids")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sums: dict[str, int] = {}
        self.uids: dict[str, set[str]] = {}


def _minute_accs(events: Iterable[RawEvent], crosstabs: Sequence[Rollup]) -> dict[int, _Acc]:
    """Per minute bucket, the counts, sums and uids of every field."""
    out: dict[int, _Acc] = {}
    for ev in events:
        ts = ev.ts
        minute = ts - ts % 60_000
        acc = out.get(minute)
        if acc is None:
            acc = out[minute] = _Acc()
        fields = fields_for(ev.name, ev.dims, crosstabs)
        acc.counts.update(fields)
        value = ev.value
        if value:
            sums = acc.sums
            for f in fields:
                sums[f] = sums.get(f, 0) + value
        uid = ev.uid
        if uid is not None:
            uids = acc.uids
            for f in fields:
                known = uids.get(f)
                if known is None:
                    uids[f] = {uid}
                else:
                    known.add(uid)
    return out


def compact_groups(events: Iterable[RawEvent], crosstabs: Sequence[Rollup]) -> list[Group]:
    """The batch as groups `[minute start (str), field, count, sum (str), uids]` for
    lua/ingest.lua, one per (minute, field): ingest writes minutes only, and sealing a
    minute merges it into its hour and day."""
    return _groups_of(_minute_accs(events, crosstabs))


def plan_batch(
    events: Iterable[RawEvent], crosstabs: Sequence[Rollup]
) -> tuple[list[Group], list[list[str]]]:
    """compact_groups of the batch, and every distinct [dim, day start, value] in it (other
    than __other__), sorted, read off the grouped fields rather than every event."""
    minutes = _minute_accs(events, crosstabs)
    seen: set[tuple[str, str, str]] = set()
    for minute, acc in minutes.items():
        day = str(minute - minute % 86_400_000)
        # a field is name US rollup US values; the same (dim, value) recurs for every name
        for rest in {f[f.index(US) + 1 :] for f in acc.counts}:
            rollup, _, value = rest.partition(US)
            if rollup and "," not in rollup and value != OTHER:
                seen.add((rollup, day, value))
    return _groups_of(minutes), [list(t) for t in sorted(seen)]


def _groups_of(minutes: dict[int, _Acc]) -> list[Group]:
    out: list[Group] = []
    for minute, acc in minutes.items():
        bucket = str(minute)
        sums = acc.sums
        uids = acc.uids
        for f, n in acc.counts.items():
            u = uids.get(f)
            out.append([bucket, f, n, str(sums.get(f, 0)), list(u) if u else []])
    return out


def group_events(events: Iterable[RawEvent], crosstabs: Sequence[Rollup]) -> list[Group]:
    """One group `[grain, bucket (str), field, count, sum (str), sorted uids]` per (grain,
    bucket, field) the batch touches; applying them equals applying every event one by one."""
    cells: dict[tuple[int, int, str], list[Any]] = {}
    for minute, acc in _minute_accs(events, crosstabs).items():
        for grain, bucket in (
            (0, minute),
            (1, minute - minute % 3_600_000),
            (2, minute - minute % 86_400_000),
        ):
            for f, n in acc.counts.items():
                cell = cells.get((grain, bucket, f))
                if cell is None:
                    cell = cells[(grain, bucket, f)] = [0, 0, set()]
                cell[0] += n
                cell[1] += acc.sums.get(f, 0)
                cell[2] |= acc.uids.get(f, set())
    names = ("m", "h", "d")
    return [
        [names[g], str(b), f, c, str(total), sorted(uids)]
        for (g, b, f), (c, total, uids) in sorted(cells.items())
    ]


def _first_occurrences(events: list[RawEvent]) -> tuple[list[RawEvent], int]:
    """Drop repeats of an event id inside one batch; returns (kept, dropped count)."""
    seen: set[str] = set()
    kept: list[RawEvent] = []
    for ev in events:
        if ev.id is not None:
            if ev.id in seen:
                continue
            seen.add(ev.id)
        kept.append(ev)
    return kept, len(events) - len(kept)


def _fold(events: list[RawEvent], over: set[tuple[str, ...]]) -> tuple[list[RawEvent], int]:
    """Events with every over-cap (dim, day, value) replaced by __other__; and how many
    events changed."""
    out: list[RawEvent] = []
    folded = 0
    for ev in events:
        day = str(ev.ts - ev.ts % 86_400_000)
        dims = {d: (OTHER if (d, day, v) in over else v) for d, v in ev.dims.items()}
        if dims != ev.dims:
            folded += 1
            ev = msgspec.structs.replace(ev, dims=dims)
        out.append(ev)
    return out, folded


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
        pending, duplicates = _first_occurrences(events)
        for _ in range(_MAX_ATTEMPTS):
            if not pending:
                return IngestReply(accepted=0, duplicates=duplicates)
            ids = [ev.id for ev in pending if ev.id is not None]
            groups, dim_values = plan_batch(pending, self._crosstabs)
            if not self._dim_cap:
                dim_values = []
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
            try:
                reply = await self._scripts.ingest(
                    keys=[keys.watermarks, keys.raw],
                    args=[keys.base, payload, raw_encoder.encode(pending)],
                )
            except (RedisError, OSError) as exc:
                raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
            status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if status == "OK":
                if self._durable:
                    try:
                        await self._wait_on_disk()
                    except (RedisError, OSError) as exc:
                        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
                return IngestReply(accepted=len(pending), duplicates=duplicates)
            if status == "DUP":
                seen = {ids[i - 1] for i in reply[1:]}
                kept = [ev for ev in pending if ev.id is None or ev.id not in seen]
                duplicates += len(pending) - len(kept)
                pending = kept
            elif status == "CAP":
                over = {tuple(dim_values[i - 1]) for i in reply[1:]}
                pending, folded = _fold(pending, over)
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
