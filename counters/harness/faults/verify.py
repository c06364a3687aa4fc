"""After the chaos: wait (condition with a deadline) until the persister caught up, then hold
the system to the invariants of docs/ARCHITECTURE.md against the driver's log of
acknowledged events."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import httpx

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, format_ts, parse_ts
from counters.core.uid import UidHasher
from counters.harness.faults.cluster import Cluster, Log, now_ms, poll_until
from counters.harness.faults.commands import check_rebuild_and_reconcile, repair
from counters.harness.faults.driver import DIMS, Event, Span
from counters.harness.faults.findings import Findings
from counters.harness.faults.logs import check_logs
from counters.harness.faults.loss import (
    Loss,
    account,
    check_hours_days_are_their_minutes,
    persisted_state,
)
from lua.client import open_redis
from lua.keys import ProjectKeys

T = TypeVar("T")
GRAINS = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
Series = tuple[str, tuple[str, ...], tuple[str, ...]]
"""(event name, rollup dims, their values)."""
Cell = tuple[Series, int, int]
"""(series, grain ms, bucket start)."""


def rollups(crosstabs: str) -> list[tuple[str, ...]]:
    """The total, one rollup per dim, and the declared cross-tabs (env form a:b,c:d)."""
    out: list[tuple[str, ...]] = [(), *((d,) for d in sorted(DIMS))]
    for grp in crosstabs.split(","):
        tab = tuple(sorted({d for d in grp.split(":") if d}))
        if len(tab) > 1 and tab not in out:
            out.append(tab)
    return out


def aggregate(events: Iterable[Event], tabs: Sequence[tuple[str, ...]]) -> dict[Cell, list[int]]:
    """Ground truth: count and sum (millionths) of every cell the events touch."""
    agg: defaultdict[Cell, list[int]] = defaultdict(lambda: [0, 0])
    multi = [t for t in tabs if len(t) > 1]
    for _eid, name, ts, dims, micros, _uid in events:
        series: list[Series] = [(name, (), ())]
        series.extend((name, (k,), (v,)) for k, v in dims)
        if multi:
            d = dict(dims)
            series.extend(
                (name, t, tuple(d[x] for x in t)) for t in multi if all(x in d for x in t)
            )
        buckets = (
            (MINUTE_MS, ts - ts % MINUTE_MS),
            (HOUR_MS, ts - ts % HOUR_MS),
            (DAY_MS, ts - ts % DAY_MS),
        )
        for s in series:
            for g, b in buckets:
                a = agg[(s, g, b)]
                a[0] += 1
                a[1] += micros
    return agg


async def wait_drained(cluster: Cluster, timeout: float, log: Log) -> tuple[bool, Any, float]:
    """Until Postgres holds every closed minute, every closed late generation and the whole
    raw log (tests/test_e2e.py drained(), plus the hll index of the open generation), of
    every shard of the project."""
    edge = now_ms() - cluster.grace_seconds * 1000
    began = time.monotonic()
    Drain = tuple[int, int, int, int, int]

    async def probe() -> list[Drain]:
        out: list[Drain] = []
        conn = await asyncpg.connect(cluster.database_url, timeout=5)
        redis = open_redis(cluster.redis_url)
        try:
            for stored in cluster.stored:
                keys = ProjectKeys(cluster.prefix, stored)
                row = await conn.fetchrow(
                    "SELECT minute_until, late_applied FROM persist_state WHERE project = $1",
                    stored,
                )
                gen = int(await redis.hget(keys.watermarks, "gen") or 0)
                rawn = int(await redis.hget(keys.watermarks, "rawn") or 0)
                open_late = int(await redis.exists(keys.late(gen), keys.late_hll_index(gen)))
                assert row is not None
                out.append((row["minute_until"], row["late_applied"], gen, rawn, open_late))
        finally:
            await redis.aclose()
            await conn.close()
        return out

    def done(s: Drain) -> bool:
        return s[0] >= edge - edge % MINUTE_MS and s[1] == s[2] - 1 and s[3] == 0 and s[4] == 0

    drained = await poll_until(
        probe, lambda states: all(done(s) for s in states), timeout=timeout, interval=0.1
    )
    ok, state = drained
    took = time.monotonic() - began
    log(
        f"verify: drained={ok} after {took:.1f}s: (minute_until, late_applied, gen, rawn,"
        f" open late keys) per shard = {state}"
    )
    return ok, state, took


async def _get(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> Any:
    for _ in range(20):
        r = await client.get(path, params=params)
        if r.status_code != 503:
            break
        await asyncio.sleep(0.5)
    if r.status_code != 200:
        raise AssertionError(f"GET {path} {params}: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


async def verify(
    cluster: Cluster,
    acked: list[Event],
    range_start: int,
    log: Log = print,
    *,
    drain_timeout: float = 180.0,
    full: bool = True,
    losses: Sequence[Loss] = (),
    spans: Sequence[Span] = (),
    reaccepted: Sequence[tuple[float, list[Event], int]] = (),
) -> Findings:
    """Every invariant check; failures are collected, not raised, so one report shows all.
    After Redis total losses, only events at risk at a loss (loss.py) may be missing; the
    rest must hold exactly, for the events that survived."""
    f = Findings()
    ok, state, f.drain_seconds = await wait_drained(cluster, drain_timeout, log)
    if not ok:
        f.fail(
            f"the persister did not catch up within {drain_timeout}s; last (minute_until,"
            f" late_applied, gen, rawn, open late keys) = {state}",
            log,
        )
    tabs = rollups(cluster.crosstabs)
    risk = account(losses, acked, spans, cluster.grace_seconds * 1000)
    f.losses = len(losses)
    f.at_risk = len(risk.at_risk)
    for line in risk.per_loss:
        f.note("loss: " + line, log)
    range_end = max(ev[2] for ev in acked) + 1 if acked else now_ms()
    survivors = acked
    try:
        present = await _check_raw_log(cluster, acked, risk.at_risk, f, log)
        survivors = [ev for ev in acked if ev[0] in present]
    except Exception as exc:  # noqa: BLE001 - report every check, not just the first
        f.fail(f"_check_raw_log could not run: {type(exc).__name__}: {exc}", log)
    if losses:
        _check_reaccepted(reaccepted, risk.at_risk, f, log)
    began = time.monotonic()
    agg = aggregate(survivors, tabs)
    log(
        f"verify: ground truth {len(survivors)} events ({len(acked)} acknowledged), {len(agg)}"
        f" cells ({time.monotonic() - began:.1f}s)"
    )

    async def guarded(check: Awaitable[T]) -> T | None:
        try:
            return await check
        except Exception as exc:  # noqa: BLE001 - report every check, not just the first
            f.fail(f"{check!r} could not run: {type(exc).__name__}: {exc}", log)
            return None

    floor: dict[Cell, list[int]] | None = None
    sealed: tuple[int, int] | None = None
    if losses:
        floor = aggregate((ev for ev in survivors if ev[0] not in risk.count_at_risk), tabs)
        await guarded(_check_reads(cluster, agg, range_start, range_end, f, log, floor=floor))
        await guarded(_check_hours_days(cluster, f, log))
        await guarded(repair(cluster, range_start, range_end, f, log))
        state = await guarded(persisted_state(cluster))
        sealed = (0, 0)
        if state is not None:
            sealed = (int(str(state["hour_until"])), int(str(state["day_until"])))
    await guarded(
        _check_reads(cluster, agg, range_start, range_end, f, log, floor=floor, sealed=sealed)
    )
    await guarded(_check_uniques(cluster, survivors, range_start, range_end, f, log))
    if full:
        await guarded(check_rebuild_and_reconcile(cluster, range_start, range_end, f, log))
    check_logs(cluster, f, log)
    return f


def _check_reaccepted(
    reaccepted: Sequence[tuple[float, list[Event], int]],
    at_risk: set[str],
    f: Findings,
    log: Log,
) -> None:
    """A re-send accepted again after a loss is fine only for events that were at risk (their
    first copy went with Redis); then the re-send is what counts them, once. A batch of a
    split project is one raw-log entry per shard, each copied on its own, so a re-send may
    be accepted in part: at most as many events as the batch had at risk."""
    bad = [
        evs[0][0]
        for _, evs, accepted in reaccepted
        if accepted > sum(1 for ev in evs if ev[0] in at_risk)
    ]
    f.reaccepted = sum(accepted for _, _, accepted in reaccepted)
    if bad:
        f.fail(
            f"{len(bad)} re-sent batches were accepted again for more events than were at risk"
            " (Postgres held the rest at the loss: dedupe did not survive it), e.g. event ids"
            f" {bad[:5]}",
            log,
        )


async def _check_hours_days(cluster: Cluster, f: Findings, log: Log) -> None:
    """After a loss, before the repair: how many sealed hour and day rows in Postgres differ
    from the sum of their minute rows (noted: a late event whose generation went with Redis
    is missing from both, but a rebuild during the run may have put it back in the minutes
    only; the reads and the repair hold the rows to the truth)."""
    differ = await check_hours_days_are_their_minutes(cluster, log)
    f.hour_day_rows_differ = len(differ)
    if differ:
        f.note(
            f"after the loss, {len(differ)} sealed hour/day rows differ from the sum of"
            " their minute rows (first 20):\n  " + "\n  ".join(differ),
            log,
        )


async def _read_cells(
    cluster: Cluster, series_list: Sequence[Series], range_start: int, range_end: int
) -> dict[Cell, tuple[int, int]]:
    """(count, sum in millionths) the API answers for every bucket of every series at minute,
    hour and day grain over the range."""
    headers = {"Authorization": f"Bearer {cluster.read_key}"}
    sem = asyncio.Semaphore(8)
    path = f"/v1/projects/{cluster.project}/series"
    out: dict[Cell, tuple[int, int]] = {}

    async def one(client: httpx.AsyncClient, series: Series, grain: str) -> None:
        g = GRAINS[grain]
        name, dims, values = series
        got: dict[str, dict[int, Any]] = {}
        async with sem:
            for measure in ("count", "sum"):
                params = {
                    "name": name,
                    "measure": measure,
                    "grain": grain,
                    "from": str(range_start - range_start % g),
                    "to": str(range_end - range_end % g + g),
                    "excluding_current": "false",
                    **dict(zip(dims, values, strict=True)),
                }
                body = await _get(client, path, params)
                got[measure] = {parse_ts(p["bucket"]): p["value"] for p in body["data"]}
        for b, count in got["count"].items():
            total = got["sum"].get(b)
            micros = -(1 << 62) if total is None else round(float(total) * 1_000_000)
            out[(series, g, b)] = (int(count), micros)

    async with httpx.AsyncClient(base_url=cluster.url, timeout=60, headers=headers) as client:
        await asyncio.gather(*(one(client, s, g) for s in series_list for g in GRAINS))
    return out


def _describe(cell: Cell) -> str:
    (name, dims, values), g, b = cell
    grain = {v: k for k, v in GRAINS.items()}[g]
    return f"{name} {','.join(dims) or 'total'}={','.join(values)} {grain} {format_ts(b)}"


async def _check_reads(
    cluster: Cluster,
    agg: dict[Cell, list[int]],
    range_start: int,
    range_end: int,
    f: Findings,
    log: Log,
    *,
    floor: dict[Cell, list[int]] | None = None,
    sealed: tuple[int, int] | None = None,
) -> None:
    """1. Every (name, rollup, dims, bucket) at minute, hour and day grain equals the truth.

    After Redis total losses (floor given): right after the drain (sealed None) every count
    lies between the floor (the truth without the events whose count may have gone with
    Redis) and the truth, f.uncounted = the minute totals' shortfall. After the repair
    (sealed = Postgres's hour_until, day_until): minutes and sealed hours and days are exact;
    an hour or day still in progress lies within [floor, truth] (its shortfall, which only
    the reconcile after it seals repairs, is f.in_progress_short for the day totals)."""
    all_series = sorted({cell[0] for cell in agg})
    buckets: defaultdict[tuple[Series, int], set[int]] = defaultdict(set)
    for cell in agg:
        buckets[(cell[0], cell[1])].add(cell[2])
    began = time.monotonic()
    got = await _read_cells(cluster, all_series, range_start, range_end)
    answered: defaultdict[tuple[Series, int], set[int]] = defaultdict(set)
    for s, g, b in got:
        answered[(s, g)].add(b)
    for key, want in buckets.items():
        if want - answered[key]:
            f.fail(f"{key}: buckets not in the answer: {sorted(want - answered[key])[:5]}", log)
    bracketed: list[str] = []
    mismatches: list[str] = []
    for cell, (api_count, api_micros) in sorted(got.items()):
        series, g, b = cell
        count, micros = agg.get(cell, (0, 0))
        in_progress = sealed is not None and g != MINUTE_MS and b >= sealed[g == DAY_MS]
        if floor is not None and (sealed is None or in_progress):
            least = floor.get(cell, [0, 0])[0]
            if not least <= api_count <= count:
                bracketed.append(
                    f"{_describe(cell)}: count {api_count}, not within [{least}, {count}]"
                )
            if sealed is None and g == MINUTE_MS and not series[1]:
                f.uncounted += count - api_count
            if in_progress and g == DAY_MS and not series[1]:
                f.in_progress_short += count - api_count
            continue
        f.cells += 1
        if api_count != count or api_micros != micros:
            f.bad_cells += 1
            if len(mismatches) < 30:
                mismatches.append(
                    f"{_describe(cell)}: count {api_count} (truth {count}), sum"
                    f" {api_micros / 1e6} (truth {micros / 1e6})"
                )
        if g == MINUTE_MS and not series[1]:
            diff = api_count - count
            if diff > 0:
                f.double += diff
            else:
                f.lost -= diff
    took = time.monotonic() - began
    if floor is not None:
        when = "right after the loss" if sealed is None else "hours and days in progress"
        log(
            f"verify: reads, {when}: {len(bracketed)} cells outside [floor, truth]; minute"
            f" totals short {f.uncounted}, day totals in progress short {f.in_progress_short}"
            f" ({took:.1f}s)"
        )
        if bracketed:
            f.fail(
                f"reads {when}: {len(bracketed)} cells outside [truth without the events whose"
                " count may have gone with Redis, truth]; first:\n  " + "\n  ".join(bracketed[:30]),
                log,
            )
        if sealed is None:
            return
    log(
        f"verify: reads: {len(all_series)} series x 3 grains, {f.cells} buckets compared,"
        f" {f.bad_cells} differ, lost {f.lost}, double-counted {f.double} ({took:.1f}s)"
    )
    if f.bad_cells:
        f.fail(
            f"{f.bad_cells} of {f.cells} (name, rollup, dims, bucket) cells differ from the"
            f" truth (lost {f.lost}, double-counted {f.double} in the minute totals); first:\n  "
            + "\n  ".join(mismatches),
            log,
        )


async def _check_raw_log(
    cluster: Cluster, acked: list[Event], at_risk: set[str], f: Findings, log: Log
) -> set[str]:
    """2. raw_events holds every acknowledged event exactly once, as it was sent (its uid
    as the project's keyed hash), except
    events at risk at a Redis total loss, which may be missing (f.lost_to_loss counts them;
    f.raw_missing counts every other missing one). Returns the ids present."""
    conn = await asyncpg.connect(cluster.database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_id, name, (extract(epoch FROM ts) * 1000)::bigint AS ts,"
            " dims::text AS dims, value_micros, uid FROM raw_events WHERE project = ANY($1)",
            cluster.stored,
        )
        counts = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT event_id) FROM raw_events WHERE project = ANY($1)",
            cluster.stored,
        )
        assert counts is not None  # an aggregate always returns one row
        total, distinct = counts
        secret = await conn.fetchval(
            "SELECT uid_secret FROM projects WHERE project = $1", cluster.project
        )
    finally:
        await conn.close()
    # the service stores each uid as its keyed hash (counters.core.uid), never as sent
    hasher = UidHasher(bytes(secret))
    truth = {ev[0]: ev if ev[5] is None else (*ev[:5], hasher(ev[5])) for ev in acked}
    ids = Counter(r["event_id"] for r in rows)
    f.raw_rows = total
    gone = {i for i in truth if i not in ids}
    f.lost_to_loss = len(gone & at_risk)
    f.raw_missing = len(gone) - f.lost_to_loss
    f.raw_extra = sum(1 for i in ids if i not in truth)
    f.raw_repeated = sum(n - 1 for n in ids.values() if n > 1)
    differ = []
    for r in rows:
        ev = truth.get(r["event_id"])
        if ev is None:
            continue
        stored = (
            r["event_id"],
            r["name"],
            r["ts"],
            tuple(sorted(json.loads(r["dims"]).items())),
            r["value_micros"],
            r["uid"],
        )
        if stored != ev:
            differ.append(f"{stored} != {ev}")
    log(
        f"verify: raw log: {total} rows, {distinct} distinct ids, {len(truth)} acknowledged;"
        f" missing {f.raw_missing}, not acknowledged {f.raw_extra}, repeated {f.raw_repeated},"
        f" content differs {len(differ)}; lost with Redis {f.lost_to_loss} of {len(at_risk)}"
        " at risk"
    )
    expect = len(truth) - f.lost_to_loss
    if not total == distinct == expect or f.raw_missing or f.raw_extra:
        examples = [i for i in gone if i not in at_risk][:5] + [
            i for i, n in ids.items() if n > 1 or i not in truth
        ][:5]
        f.fail(
            f"raw_events: count(*)={total} count(distinct event_id)={distinct}, acknowledged"
            f" {len(truth)} ({f.lost_to_loss} of them at risk at a Redis loss and gone);"
            f" missing otherwise {f.raw_missing}, unacknowledged {f.raw_extra}, repeated"
            f" {f.raw_repeated}; e.g. {examples}",
            log,
        )
    if differ:
        f.fail(f"raw_events: {len(differ)} rows differ from what was sent: {differ[:3]}", log)
    return set(ids)


async def _check_uniques(
    cluster: Cluster,
    acked: list[Event],
    range_start: int,
    range_end: int,
    f: Findings,
    log: Log,
) -> None:
    """4b. Uniques over the whole range within 2% of the exact distinct uid count."""
    exact: defaultdict[str, set[str]] = defaultdict(set)
    for ev in acked:
        if ev[5] is not None:
            exact[ev[1]].add(ev[5])
    headers = {"Authorization": f"Bearer {cluster.read_key}"}
    async with httpx.AsyncClient(base_url=cluster.url, timeout=60, headers=headers) as client:
        for name, uids in sorted(exact.items()):
            body = await _get(
                client,
                f"/v1/projects/{cluster.project}/total",
                {
                    "name": name,
                    "measure": "uniques",
                    "grain": "minute",
                    "from": str(range_start - range_start % MINUTE_MS),
                    "to": str(range_end),
                    "excluding_current": "false",
                },
            )
            value = int(body["value"])
            f.uniques[name] = (value, len(uids))
            if abs(value - len(uids)) > 0.02 * len(uids):
                f.fail(f"uniques of {name}: API {value}, exact {len(uids)} (over 2% off)", log)
    log(
        "verify: uniques (API, exact): "
        + ", ".join(f"{n} {a}/{e} ({(a - e) / e:+.2%})" for n, (a, e) in f.uniques.items())
    )
