"""The write path: plan a validated batch (counters.core.grouping), then apply it with one
lua/ingest.lua call. This module only talks to Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError

from counters.core.buckets import DAY_MS, MINUTE_MS, format_ts
from counters.core.config import Settings
from counters.core.errors import BacklogFull, Invalid, PayloadTooLarge, Unavailable
from counters.core.grouping import Plan, Sealed, first_occurrences, fold_over_cap, plan_batch
from counters.core.models import IngestReply, RawEvent, raw_encoder
from counters.core.rollups import Rollup
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.durable import call_and_wait_aof
from lua.keys import ProjectKeys, event_id_token, ingest_keys

RestoreWatermarks = Callable[[str], Awaitable[object]]

_payload_encoder = msgspec.msgpack.Encoder()
_MAX_ATTEMPTS = 8
DIM_SET_TTL_MS = 2 * DAY_MS
"""How long a dim's set of values of one day lives after its last new value."""
DURABLE_TIMEOUT_MS = 2000

UIDS_PER_GROUP = 4
"""Cost model of one ingest.lua call, in groups (max_batch_groups' unit), measured on the
reference machine (README "Security", batch budget): a (minute, field) group, an event id
(EXISTS + SET), a dim value, event name or dim name to check against its cap (SISMEMBER,
SCARD, SADD, PEXPIRE) each cost about one group (~8-18 us); a uid passed to PFADD about a
quarter; a group of a sealed minute about three (its minute's late delta, its hour and its
day). A late cell (a sealed minute's totals rolled up per (grain, bucket, field) before the
call) costs about one group: one HINCRBY and one PFADD, like a hot group."""
LATE_GROUP_COST = 3
LATE_CELL_COST = 1


class Idempotency(NamedTuple):
    """An Idempotency-Key of one request: its marker's token and the hash of the body."""

    token: str
    body_hash: str


def plan_cost(plan: Plan, n_ids: int, late_before: int | None = None) -> int:
    """What one ingest.lua call with this plan costs, in groups (max_batch_groups' unit):
    every group (LATE_GROUP_COST for a minute before late_before, likely sealed), id and
    cap check, plus the uids at UIDS_PER_GROUP a group."""
    cost = len(plan.groups) + n_ids + len(plan.dim_values) + len(plan.names)
    cost += (plan.n_late_cells + len(plan.hot_cells)) * LATE_CELL_COST
    cost += len(plan.dim_names) + plan.uid_entries // UIDS_PER_GROUP
    if late_before is not None:
        edge = str(late_before)
        for g in plan.groups:
            minute = g[0]
            if len(minute) < len(edge) or (len(minute) == len(edge) and minute < edge):
                cost += LATE_GROUP_COST - 1
    return cost


def _day(day_ms: str) -> str:
    return format_ts(int(day_ms))[:10]


class Ingestor:
    """Applies batches for any project; safe to share between concurrent requests."""

    def __init__(
        self,
        redis: RedisClient,
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
        name_cap: int = 0,
        dim_name_cap: int = 0,
        max_groups: int = 0,
        grace_ms: int = 0,
        minute_keep_ms: int = 0,
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
        self._name_cap = name_cap
        self._dim_name_cap = dim_name_cap
        self._max_groups = max_groups
        self._grace_ms = grace_ms
        self._minute_keep_ms = minute_keep_ms
        self._waitaof: bool | None = None  # None: not probed yet
        self._declare = isinstance(redis, RedisCluster)
        """On a cluster every key a call touches is declared (lua/keys.py ingest_keys)."""
        self._gens: dict[str, str] = {}
        """Last late generation seen per project (for the declared late keys)."""
        self._sealed: dict[str, Sealed] = {}
        """Per project, the minute watermark the last script call answered (a lower bound
        of the current one: watermarks only go down when Redis lost them, and the script
        refuses a plan whose edge is past its watermark)."""

    @classmethod
    def from_settings(
        cls,
        redis: RedisClient,
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
            name_cap=settings.event_name_cap,
            dim_name_cap=settings.dim_name_cap,
            max_groups=settings.max_batch_groups,
            grace_ms=int(settings.grace_seconds * 1000),
            minute_keep_ms=settings.minute_retention_days * DAY_MS,
        )

    def _hot_from(self, events: list[RawEvent]) -> int:
        """The first minute surely not sealed yet when the batch arrives: a minute seals
        grace after its end (one more minute of margin); ingest.lua checks it (HOTEDGE).
        The same edge tells _late_edges when its known watermarks lag the clock."""
        now = max((ev.received for ev in events), default=0)
        edge = now - self._grace_ms - 2 * MINUTE_MS
        return edge - edge % MINUTE_MS

    def _check_on_disk(self, waited: Any) -> bool:
        """Raises unless the WAITAOF that followed the script (on its connection) says its
        writes are fsynced; False when the server has no WAITAOF (it must then run
        appendfsync always)."""
        if isinstance(waited, ResponseError):
            if "unknown command" not in str(waited).lower():
                raise Unavailable("redis", f"WAITAOF failed: {waited}") from waited
            return False
        if isinstance(waited, BaseException):
            raise waited
        if int(waited[0]) < 1:
            raise Unavailable("redis", "the batch is not on disk yet (WAITAOF timed out)")
        return True

    async def _check_fsync_always(self) -> None:
        """For a server without WAITAOF: every write is on disk only with appendfsync always."""
        config: dict[Any, Any] = await self._redis.config_get("appendfsync")
        if {config.get("appendfsync"), config.get(b"appendfsync")} & {"always", b"always"}:
            return
        raise Unavailable(
            "redis", "durable_ack needs WAITAOF (Redis 7.2+, Valkey) or appendfsync always"
        )

    async def _call(self, keys: ProjectKeys, args: list[Any], declared: list[str]) -> Any:
        """One ingest.lua call; with durable_ack, returns only once its writes are on disk
        (WAITAOF on the script's own connection, see lua/durable.py)."""
        script_keys = [keys.watermarks, keys.raw, *declared]
        if not self._durable:
            return await self._scripts.ingest(keys=script_keys, args=args)
        if self._waitaof is False:
            reply = await self._scripts.ingest(keys=script_keys, args=args)
            await self._check_fsync_always()
            return reply
        reply, waited = await call_and_wait_aof(
            self._redis, self._scripts.ingest, script_keys, args, DURABLE_TIMEOUT_MS
        )
        self._waitaof = self._check_on_disk(waited)
        if not self._waitaof:
            await self._check_fsync_always()
        return reply

    async def _late_edges(
        self, keys: ProjectKeys, events: list[RawEvent]
    ) -> tuple[Sealed | None, int]:
        """(sealed, minute_from) for plan_batch: the watermarks taken as sealed (the
        project's as the last script call answered them, read again when they lag the
        clock; the script refuses with EDGE ones that are too high), and the oldest minute
        whose row is still kept (minute_retention_days; 0 = all)."""
        now = max((ev.received for ev in events), default=0)
        sealed = self._sealed.get(keys.project)
        if sealed is None or sealed.minute < self._hot_from(events):
            # unknown, or lagging what the persister seals by now: ask (one HMGET)
            with redis_unavailable():
                wm = await self._redis.hmget(keys.watermarks, ["m", "h", "d"])
            known = [int(x) for x in wm if x is not None]
            sealed = None
            if len(known) == 3:
                sealed = self._sealed[keys.project] = Sealed(*known)
        minute_from = 0
        if self._minute_keep_ms:
            minute_from = now - now % MINUTE_MS - self._minute_keep_ms
        return sealed, minute_from

    def _check_budget(self, plan: Plan, n_ids: int, events: list[RawEvent]) -> None:
        """Raises 413 batch_too_complex when one script call with this plan would run over
        the budget (max_batch_groups), saying how many such events fit in one batch."""
        if not self._max_groups:
            return
        now = max((ev.received for ev in events), default=0)
        cost = plan_cost(plan, n_ids, now - self._grace_ms - MINUTE_MS)
        if cost <= self._max_groups:
            return
        n_events = len(events)
        fit = max(1, n_events * self._max_groups // cost)
        raise PayloadTooLarge(
            f"batch too complex: {n_events} events make {cost} groups of work (one per minute"
            f" and rollup field, plus uids, ids and cap checks); one batch may make at most"
            f" {self._max_groups} (setting max_batch_groups). Send at most ~{fit} events per"
            " batch with this many names, dims and minutes; nothing was applied",
            code="batch_too_complex",
        )

    def _check_names_alone(self, plan: Plan) -> None:
        """Refuses before the script a batch whose own names already pass a per-day cap."""
        for cap, pairs, refuse in (
            (self._name_cap, plan.names, self._name_cap_error),
            (self._dim_name_cap, plan.dim_names, self._dim_name_cap_error),
        ):
            if not cap:
                continue
            per_day: dict[str, int] = {}
            for pair in pairs:
                n = per_day[pair[0]] = per_day.get(pair[0], 0) + 1
                if n > cap:
                    raise refuse(pair)

    def _name_cap_error(self, pair: list[str]) -> Invalid:
        return Invalid(
            f"event name cap reached: at most {self._name_cap} distinct event names per project"
            f" per UTC day (setting event_name_cap); {pair[1]!r} would be a new one on"
            f" {_day(pair[0])}; nothing was applied",
            code="event_name_cap",
        )

    def _dim_name_cap_error(self, pair: list[str]) -> Invalid:
        return Invalid(
            f"dim name cap reached: at most {self._dim_name_cap} distinct dim names per project"
            f" per UTC day (setting dim_name_cap); {pair[1]!r} would be a new one on"
            f" {_day(pair[0])}; nothing was applied",
            code="dim_name_cap",
        )

    async def precheck(self, project: str, events: list[RawEvent]) -> None:
        """Raises what apply would raise before its first script call (413 over the script
        budget, 422 for a batch whose own names pass a per-day cap), applying nothing: a
        caller that splits one request over several calls checks every part first."""
        pending, _ = first_occurrences(events)
        plan, _, _ = await self._plan(ProjectKeys(self._prefix, project), pending)
        self._check_names_alone(plan)
        self._check_budget(plan, sum(1 for ev in pending if ev.id is not None), pending)

    async def _plan(
        self, keys: ProjectKeys, pending: list[RawEvent]
    ) -> tuple[Plan, Sealed | None, int]:
        """The batch's plan against the project's known watermarks, with those watermarks
        and the oldest minute kept (see _late_edges)."""
        sealed, minute_from = await self._late_edges(keys, pending)
        plan = plan_batch(
            pending,
            self._crosstabs,
            dim_values=self._dim_cap > 0,
            names=bool(self._name_cap or self._dim_name_cap),
            sealed=sealed,
            minute_from=minute_from,
        )
        return plan, sealed, minute_from

    async def apply(
        self,
        project: str,
        events: list[RawEvent],
        *,
        idempotency: Idempotency | None = None,
        refused: list[RawEvent] | None = None,
    ) -> IngestReply:
        """Counts every event exactly once unless its (name, id) was seen inside the dedupe
        window; all or nothing. With idempotency, a batch whose key was applied before inside
        the window counts nothing and returns the stored reply (replayed=True); the same key
        with another body is a 422. Raises 413 (batch over the script budget) or 422 (a
        per-day name cap) before anything is applied, Unavailable (Redis down; nothing
        applied) or BacklogFull. With a refused list (events of several requests joined into
        one batch, the pixel's group commit) an event over a name cap is moved there instead
        and the rest is applied."""
        keys = ProjectKeys(self._prefix, project)
        pending, duplicates = first_occurrences(events)
        checked = False
        edge_refused = False
        replan = True  # the budget is checked on the first plan and on one after EDGE
        for _ in range(_MAX_ATTEMPTS):
            if not pending and idempotency is None:
                return IngestReply(accepted=0, duplicates=duplicates)
            ids = [event_id_token(ev.name, ev.id) for ev in pending if ev.id is not None]
            plan, sealed, minute_from = await self._plan(keys, pending)
            if not checked:
                if refused is None:
                    self._check_names_alone(plan)
                checked = True
            if replan:
                self._check_budget(plan, len(ids), pending)
                replan = False
            groups, dim_values = plan.groups, plan.dim_values
            idem = idempotency or Idempotency("", "")
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
                    self._name_cap,
                    plan.names,
                    self._dim_name_cap,
                    plan.dim_names,
                    idem.token,
                    idem.body_hash,
                    f"{idem.body_hash} {len(pending)} {duplicates}",
                    list(sealed) if sealed is not None else [],
                    plan.hot_cells,
                    minute_from,
                    plan.late_cells,
                ]
            )
            args = [keys.base, payload, raw_encoder.encode(pending)]
            declared: list[str] = []
            if self._declare:
                gen = self._gens.get(project, "?")  # "?": unknown, the script says which
                day_pairs = (("names", plan.names), ("dimnames", plan.dim_names))
                hot_from = None if edge_refused else self._hot_from(pending)
                declared = ingest_keys(
                    keys,
                    gen,
                    groups,
                    ids,
                    idem.token,
                    day_pairs,
                    dim_values,
                    hot_from,
                    cells=plan.hot_cells,
                    late_cells=plan.late_cells,
                )
                args += [gen, "" if hot_from is None else str(hot_from)]
            with redis_unavailable():
                reply = await self._call(keys, args, declared)
            status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if status in ("OK", "EDGE"):
                self._sealed[project] = Sealed(*(int(x) for x in reply[-3:]))
            if status == "OK":
                return IngestReply(accepted=len(pending), duplicates=duplicates)
            if status == "GEN":
                self._gens[project] = bytes(reply[1]).decode()
                continue
            if status == "HOTEDGE":
                edge_refused = True
                continue
            if status == "DUP":
                seen = {ids[i - 1] for i in reply[1:]}
                kept = [
                    ev
                    for ev in pending
                    if ev.id is None or event_id_token(ev.name, ev.id) not in seen
                ]
                duplicates += len(pending) - len(kept)
                pending = kept
            elif status == "CAP":
                over = {tuple(dim_values[i - 1]) for i in reply[1:]}
                pending, folded = fold_over_cap(pending, over)
                if self._on_fold is not None:
                    self._on_fold(folded)
            elif status == "IDEM":
                _, accepted, dups = bytes(reply[1]).decode().split(" ")
                return IngestReply(accepted=int(accepted), duplicates=int(dups), replayed=True)
            elif status == "IDEMDIFF":
                raise Invalid(
                    "this Idempotency-Key was already used with another request body inside"
                    " the dedupe window; use a new key for a new batch",
                    code="idempotency_key_reused",
                )
            elif status in ("NAMECAP", "DIMNAMECAP"):
                pairs = plan.names if status == "NAMECAP" else plan.dim_names
                if refused is None:
                    first = pairs[int(reply[1]) - 1]
                    if status == "NAMECAP":
                        raise self._name_cap_error(first)
                    raise self._dim_name_cap_error(first)
                over = {(pairs[i - 1][0], pairs[i - 1][1]) for i in reply[1:]}
                kept = []
                for ev in pending:
                    day = str(ev.ts - ev.ts % DAY_MS)
                    if status == "NAMECAP":
                        hit = (day, ev.name) in over
                    else:
                        hit = any((day, d) in over for d in ev.dims)
                    (refused if hit else kept).append(ev)
                pending = kept
            elif status == "EDGE":
                replan = True  # planned again with the watermark it answered
            elif status == "NOWM":
                self._sealed.pop(project, None)
                await self._restore(project)
            elif status == "BACKLOG":
                raise BacklogFull(
                    f"raw-log backlog holds {reply[1]} events (cap {self._cap}); retry later"
                )
            else:  # pragma: no cover - the script returns nothing else
                raise RuntimeError(f"ingest script answered {reply!r}")
        raise Unavailable("redis", "batch kept colliding with concurrent duplicates; retry")
