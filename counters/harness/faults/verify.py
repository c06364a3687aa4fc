"""After the chaos: wait (condition with a deadline) until the persister caught up, then hold
the system to the invariants of docs/ARCHITECTURE.md against the driver's log of
acknowledged events."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, format_ts, parse_ts
from counters.harness.faults.cluster import Cluster, Log, log_tail, now_ms, poll_until
from counters.harness.faults.driver import DIMS, Event
from lua.client import open_redis
from lua.keys import ProjectKeys

GRAINS = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
Series = tuple[str, tuple[str, ...], tuple[str, ...]]
"""(event name, rollup dims, their values)."""
Cell = tuple[Series, int, int]
"""(series, grain ms, bucket start)."""


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: int = 0
    double: int = 0
    cells: int = 0
    bad_cells: int = 0
    raw_rows: int = 0
    raw_missing: int = 0
    raw_extra: int = 0
    raw_repeated: int = 0
    uniques: dict[str, tuple[int, int]] = field(default_factory=dict)
    drain_seconds: float = 0.0

    def fail(self, text: str, log: Log) -> None:
        self.failures.append(text)
        log("verify: FAILURE " + text)

    def note(self, text: str, log: Log) -> None:
        self.notes.append(text)
        log("verify: note: " + text)


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
    raw log (tests/test_e2e.py drained(), plus the hll index of the open generation)."""
    keys = ProjectKeys(cluster.prefix, cluster.project)
    edge = now_ms() - cluster.grace_seconds * 1000
    began = time.monotonic()

    async def probe() -> tuple[int, int, int, int, int]:
        conn = await asyncpg.connect(cluster.database_url, timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT minute_until, late_applied FROM persist_state WHERE project = $1",
                cluster.project,
            )
        finally:
            await conn.close()
        redis = open_redis(cluster.redis_url)
        try:
            gen = int(await redis.hget(keys.watermarks, "gen") or 0)
            rawn = int(await redis.hget(keys.watermarks, "rawn") or 0)
            open_late = int(await redis.exists(keys.late(gen), keys.late_hll_index(gen)))
        finally:
            await redis.aclose()
        assert row is not None
        return row["minute_until"], row["late_applied"], gen, rawn, open_late

    drained = await poll_until(
        probe,
        lambda s: s[0] >= edge - edge % MINUTE_MS and s[1] == s[2] - 1 and s[3] == 0 and s[4] == 0,
        timeout=timeout,
        interval=0.1,
    )
    ok, state = drained
    took = time.monotonic() - began
    log(
        f"verify: drained={ok} after {took:.1f}s: (minute_until, late_applied, gen, rawn,"
        f" open late keys) = {state}"
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


def _count_line(text: str) -> int | None:
    """N of a `discrepancies: N` (or `... differ...: N`) line of rebuild/reconcile output."""
    for pattern in (r"discrepanc\w*\s*[:=]\s*(\d+)", r"differ\w*[^\n\d]*?[:=]\s*(\d+)"):
        found = re.findall(pattern, text, re.IGNORECASE)
        if found:
            return max(int(n) for n in found)
    return None


async def verify(
    cluster: Cluster,
    acked: list[Event],
    range_start: int,
    log: Log = print,
    *,
    drain_timeout: float = 180.0,
    full: bool = True,
) -> Findings:
    """Every invariant check; failures are collected, not raised, so one report shows all."""
    f = Findings()
    ok, state, f.drain_seconds = await wait_drained(cluster, drain_timeout, log)
    if not ok:
        f.fail(
            f"the persister did not catch up within {drain_timeout}s; last (minute_until,"
            f" late_applied, gen, rawn, open late keys) = {state}",
            log,
        )
    tabs = rollups(cluster.crosstabs)
    began = time.monotonic()
    agg = aggregate(acked, tabs)
    range_end = max(ev[2] for ev in acked) + 1 if acked else now_ms()
    log(
        f"verify: ground truth {len(acked)} events, {len(agg)} cells"
        f" ({time.monotonic() - began:.1f}s)"
    )
    checks = [
        _check_reads(cluster, agg, range_start, range_end, f, log),
        _check_raw_log(cluster, acked, f, log),
        _check_uniques(cluster, acked, range_start, range_end, f, log),
    ]
    if full:
        checks.append(_check_rebuild_and_reconcile(cluster, range_start, range_end, f, log))
    for check in checks:
        try:
            await check
        except Exception as exc:  # noqa: BLE001 - report every check, not just the first
            name = getattr(check, "__qualname__", check)
            f.fail(f"{name} could not run: {type(exc).__name__}: {exc}", log)
    _check_logs(cluster, f, log)
    return f


async def _check_reads(
    cluster: Cluster,
    agg: dict[Cell, list[int]],
    range_start: int,
    range_end: int,
    f: Findings,
    log: Log,
) -> None:
    """1. Every (name, rollup, dims, bucket) at minute, hour and day grain equals the truth."""
    all_series = sorted({cell[0] for cell in agg})
    headers = {"Authorization": f"Bearer {cluster.read_key}"}
    sem = asyncio.Semaphore(8)
    path = f"/v1/projects/{cluster.project}/series"
    mismatches: list[str] = []

    async def one(client: httpx.AsyncClient, series: Series, grain: str) -> None:
        g = GRAINS[grain]
        name, dims, values = series
        lo = range_start - range_start % g
        hi = range_end - range_end % g + g
        got: dict[str, dict[int, int | float]] = {}
        async with sem:
            for measure in ("count", "sum"):
                params = {
                    "name": name,
                    "measure": measure,
                    "grain": grain,
                    "from": str(lo),
                    "to": str(hi),
                    "excluding_current": "false",
                    **dict(zip(dims, values, strict=True)),
                }
                body = await _get(client, path, params)
                got[measure] = {parse_ts(p["bucket"]): p["value"] for p in body["data"]}
        expected_buckets = {cell[2] for cell in cells_by_series[(series, g)]}
        missing = expected_buckets - set(got["count"])
        if missing:
            f.fail(f"{series} {grain}: buckets not in the answer: {sorted(missing)[:5]}", log)
        for b in sorted(got["count"]):
            count, micros = agg.get((series, g, b), (0, 0))
            f.cells += 1
            api_count, api_sum = got["count"][b], got["sum"].get(b)
            if api_count != count or api_sum != micros / 1_000_000:
                f.bad_cells += 1
                if len(mismatches) < 30:
                    mismatches.append(
                        f"{name} {','.join(dims) or 'total'}={','.join(values)} {grain}"
                        f" {format_ts(b)}: count {api_count} (truth {count}),"
                        f" sum {api_sum} (truth {micros / 1_000_000})"
                    )
            if grain == "minute" and not dims:
                diff = int(api_count) - count
                if diff > 0:
                    f.double += diff
                else:
                    f.lost -= diff

    cells_by_series: defaultdict[tuple[Series, int], list[Cell]] = defaultdict(list)
    for cell in agg:
        cells_by_series[(cell[0], cell[1])].append(cell)
    began = time.monotonic()
    async with httpx.AsyncClient(base_url=cluster.url, timeout=60, headers=headers) as client:
        await asyncio.gather(*(one(client, s, g) for s in all_series for g in GRAINS))
    log(
        f"verify: reads: {len(all_series)} series x 3 grains, {f.cells} buckets compared,"
        f" {f.bad_cells} differ, lost {f.lost}, double-counted {f.double}"
        f" ({time.monotonic() - began:.1f}s)"
    )
    if f.bad_cells:
        f.fail(
            f"{f.bad_cells} of {f.cells} (name, rollup, dims, bucket) cells differ from the"
            f" truth (lost {f.lost}, double-counted {f.double} in the minute totals); first:\n  "
            + "\n  ".join(mismatches),
            log,
        )


async def _check_raw_log(cluster: Cluster, acked: list[Event], f: Findings, log: Log) -> None:
    """2. raw_events holds every acknowledged event exactly once, as it was sent."""
    conn = await asyncpg.connect(cluster.database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_id, name, (extract(epoch FROM ts) * 1000)::bigint AS ts,"
            " dims::text AS dims, value_micros, uid FROM raw_events WHERE project = $1",
            cluster.project,
        )
        counts = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT event_id) FROM raw_events WHERE project = $1",
            cluster.project,
        )
        assert counts is not None  # an aggregate always returns one row
        total, distinct = counts
    finally:
        await conn.close()
    truth = {ev[0]: ev for ev in acked}
    ids = Counter(r["event_id"] for r in rows)
    f.raw_rows = total
    f.raw_missing = sum(1 for i in truth if i not in ids)
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
        f" content differs {len(differ)}"
    )
    if not total == distinct == len(truth) or f.raw_missing or f.raw_extra:
        examples = [i for i in truth if i not in ids][:5] + [
            i for i, n in ids.items() if n > 1 or i not in truth
        ][:5]
        f.fail(
            f"raw_events: count(*)={total} count(distinct event_id)={distinct}, acknowledged"
            f" {len(truth)}; missing {f.raw_missing}, unacknowledged {f.raw_extra}, repeated"
            f" {f.raw_repeated}; e.g. {examples}",
            log,
        )
    if differ:
        f.fail(f"raw_events: {len(differ)} rows differ from what was sent: {differ[:3]}", log)


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


async def _check_rebuild_and_reconcile(
    cluster: Cluster, range_start: int, range_end: int, f: Findings, log: Log
) -> None:
    """3. reconcile finds nothing to fix; 4a. a dry-run rebuild finds no differing bucket
    (counts, sums and HLL registers). Skipped with a note while the commands do not exist."""
    if await asyncio.to_thread(cluster.has_command, "reconcile"):
        proc = await asyncio.to_thread(cluster.cli, "reconcile", "--dry-run", "--days", "1")
        out = proc.stdout + proc.stderr
        n = _count_line(out)
        log(f"verify: reconcile --dry-run --days 1: exit {proc.returncode}, discrepancies {n}")
        if proc.returncode != 0 or n is None or n != 0:
            f.fail(f"reconcile --dry-run --days 1: exit {proc.returncode}:\n{out[-3000:]}", log)
    else:
        f.note("`counters reconcile` does not exist yet: reconcile check skipped", log)
    if await asyncio.to_thread(cluster.has_command, "rebuild"):
        lo = range_start - range_start % MINUTE_MS
        hi = range_end - range_end % MINUTE_MS + MINUTE_MS
        args = ["--project", cluster.project, "--from", format_ts(lo), "--to", format_ts(hi)]
        proc = await asyncio.to_thread(cluster.cli, "rebuild", *args, "--dry-run")
        out = proc.stdout + proc.stderr
        n = _count_line(out)
        log(f"verify: rebuild --dry-run: exit {proc.returncode}, differing {n}")
        if proc.returncode != 0 or (n is not None and n != 0):
            f.fail(
                f"rebuild --dry-run {' '.join(args)}: exit {proc.returncode}:\n{out[-3000:]}", log
            )
        elif n is None:
            f.note(f"rebuild --dry-run printed no count of differing buckets:\n{out[-1000:]}", log)
    else:
        f.note("`counters rebuild` does not exist yet: rebuild --dry-run check skipped", log)


BENIGN_BEFORE_TRACEBACK = ("WARNING asyncpg.pool",)
"""Log records that come with a traceback but are not errors: asyncpg retrying its pool's
minimum size while Postgres restarts."""
SURVIVED_BEFORE_TRACEBACK = ("persister: pass failed",)
"""A pass that failed on something unexpected, logged, and retried: noted, not a failure
(the data checks say whether it mattered)."""


def _check_logs(cluster: Cluster, f: Findings, log: Log) -> None:
    """Never a 500 and no crash: the service log holds no unexpected error, no process log a
    traceback (other than asyncpg's own pool warnings while Postgres restarts; a persister
    pass that failed and was retried is noted)."""
    procs = [*cluster.persisters, *([cluster.service] if cluster.service else [])]
    for p in procs:
        lines = log_tail(p.log_path, 50_000_000).splitlines()
        survived: list[int] = []
        for i, line in enumerate(lines):
            before = lines[i - 1] if i else ""
            if line.startswith("Traceback") and any(b in before for b in SURVIVED_BEFORE_TRACEBACK):
                survived.append(i)
                continue
            bad = "unexpected error" in line or (
                line.startswith("Traceback")
                and not any(b in before for b in BENIGN_BEFORE_TRACEBACK)
            )
            if bad:
                excerpt = "\n".join(lines[max(0, i - 3) : i + 40])
                f.fail(f"{p.name} log ({p.log_path}) holds an error:\n{excerpt}", log)
                break
        if survived:
            i = survived[0]
            last = next((x for x in lines[i + 1 : i + 80] if x and not x.startswith(" ")), "")
            f.note(
                f"{p.name}: {len(survived)} passes failed and were retried, e.g."
                f" {lines[i - 1][:200]} ... {last[:300]}",
                log,
            )
