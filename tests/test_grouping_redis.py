"""Property: live ingest (lua/ingest.lua) + sealing (lua/seal.lua) on a real Redis give
exactly the hour and day totals that counters.core.grouping.roll_up computes: counts, sums
and uniques registers, and reads of hot hours and days (lua/read_hot.lua) see them at every
step. Rebuild recomputes Postgres rows with roll_up, so its exactness rests on this."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from counters.core.buckets import HOUR_MS, MINUTE_MS, Grain, bucket_ceil, bucket_start
from counters.core.config import Settings
from counters.core.grouping import Totals, group_minutes, roll_up
from counters.core.models import RawEvent
from counters.core.rollups import Rollup
from counters.engines.ingest import Ingestor
from lua import Scripts
from lua.client import RedisClient
from lua.keys import COUNT, ProjectKeys, parse_late_field, parse_measure_field
from persist.hll import registers

DAY0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z
START = DAY0 + 23 * HOUR_MS + 30 * MINUTE_MS  # the window crosses an hour and a day boundary
SPAN = 2 * HOUR_MS
CROSSTABS: list[Rollup] = [("country", "source")]

events_st = st.builds(
    lambda offset, name, dims, value, uid: RawEvent(
        name, START + offset, None, dims, value, uid, START
    ),
    st.integers(0, SPAN - 1),
    st.sampled_from(["click", "view"]),
    st.dictionaries(
        st.sampled_from(["country", "source", "device"]),
        st.sampled_from(["DE", "FR", "日本", "a:b"]),
        max_size=3,
    ),
    st.one_of(st.just(0), st.integers(-5_000_000, 5_000_000)),
    st.one_of(st.none(), st.sampled_from([f"u{i}" for i in range(40)])),
)
# batches, each with the minute (offset in minutes from START) sealed after it, or None
steps_st = st.lists(
    st.tuples(
        st.lists(events_st, min_size=1, max_size=40),
        st.one_of(st.none(), st.integers(0, SPAN // MINUTE_MS)),
    ),
    min_size=1,
    max_size=4,
)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _seal(scripts: Scripts, keys: ProjectKeys, minute_until: int) -> None:
    """Seals minutes below minute_until (merging them into their hours and days); hours
    and days stay hot, so events for sealed minutes reach them through ingest."""
    await scripts.seal(
        keys=[keys.watermarks, keys.dirty(Grain.minute)],
        args=[minute_until, DAY0, DAY0, keys.base, 1_000_000],
    )


def _measures(flat: dict[Any, Any]) -> tuple[Counter[str], Counter[str]]:
    """(counts, sums) per rollup field of one hot hash."""
    counts: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    for k, v in flat.items():
        measure, field = parse_measure_field(k)
        (counts if measure == COUNT else sums)[field] += int(v)
    return counts, sums


def _expected(totals: Totals) -> tuple[Counter[str], Counter[str]]:
    return Counter(totals.counts), Counter({f: s for f, s in totals.sums.items()})


def _clean(counts: Counter[str], sums: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Sums of 0 are the same as no sum field."""
    return dict(counts), {f: s for f, s in sums.items() if s}


async def _read_hot(
    redis: RedisClient, scripts: Scripts, keys: ProjectKeys, grain: Grain, buckets: list[int]
) -> list[tuple[dict[str, int], dict[str, int]]]:
    """Per hour or day cell: its own hash plus its minutes not merged yet, as reads see."""
    reply = await scripts.read_hot(
        keys=[keys.watermarks, keys.dirty(Grain.minute)],
        args=[keys.base, 0, *(f"{grain.short}:{b}" for b in buckets)],
    )
    out = []
    for entry in reply:
        counts: Counter[str] = Counter()
        sums: Counter[str] = Counter()
        for flat in entry[1:]:
            c, s = _measures(dict(zip(flat[::2], flat[1::2], strict=True)))
            counts += c
            sums.update(s)
        out.append(_clean(counts, sums))
    return out


async def _same_sketch(redis: RedisClient, keys: ProjectKeys, key: str, uids: set[str]) -> bool:
    """Whether the HLL at key holds exactly the registers of PFADD of these uids."""
    scratch = keys.tmp(uuid.uuid4().hex)
    await redis.pfadd(scratch, *uids)
    try:
        built, expected = await redis.get(key), await redis.get(scratch)
    finally:
        await redis.delete(scratch)
    if built is not None and built[4] == expected[4] == 0:  # both dense: compare registers
        return bool(built[16:] == expected[16:])
    return registers(built) == registers(expected)


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps_st)
async def test_ingest_and_seal_equal_roll_up(
    steps: list[tuple[list[RawEvent], int | None]],
    redis: RedisClient,
    scripts: Scripts,
    settings: Settings,
) -> None:
    keys = ProjectKeys(settings.key_prefix, "rollup" + uuid.uuid4().hex[:10])

    async def restore(project: str) -> None:
        await scripts.restore(keys=[keys.watermarks], args=[DAY0, DAY0, DAY0, 1, "0-0"])

    ingestor = Ingestor(
        redis,
        scripts,
        key_prefix=settings.key_prefix,
        crosstabs=CROSSTABS,
        dedupe_window_ms=60_000,
        backlog_cap=0,
        restore_watermarks=restore,
    )
    everything: list[RawEvent] = []
    sealed = START
    try:
        for batch, seal_at in steps:
            reply = await ingestor.apply(keys.project, batch)
            assert reply.accepted == len(batch)
            everything += batch
            if seal_at is not None:
                sealed = max(sealed, bucket_start(START, Grain.minute) + seal_at * MINUTE_MS)
                await _seal(scripts, keys, sealed)
            # reads of hot hours and days see every event so far, exactly once
            rolled = roll_up(group_minutes(everything, CROSSTABS))
            for grain in (Grain.hour, Grain.day):
                want = rolled.buckets(grain)
                got = await _read_hot(redis, scripts, keys, grain, list(want))
                assert got == [_clean(*_expected(t)) for t in want.values()]

        await _seal(scripts, keys, bucket_ceil(START + SPAN, Grain.hour))
        rolled = roll_up(group_minutes(everything, CROSSTABS))
        for grain in (Grain.hour, Grain.day):
            want = rolled.buckets(grain)
            # every minute is merged now: the hashes alone hold the totals
            assert await redis.zcard(keys.dirty(grain)) == len(want)
            for bucket, totals in want.items():
                got = _clean(*_measures(await redis.hgetall(keys.hot(grain, bucket))))
                assert got == _clean(*_expected(totals)), (grain, bucket)
                for field in totals.counts:
                    uids = totals.uids.get(field)
                    key = keys.hll(grain, bucket, field)
                    if uids is None:
                        assert not await redis.exists(key)
                    else:
                        assert await _same_sketch(redis, keys, key, uids), (grain, bucket, field)

        # minutes: the hot hash, plus the late deltas of events for minutes already sealed
        minutes: dict[int, tuple[Counter[str], Counter[str]]] = {}
        for minute in rolled.minutes:
            minutes[minute] = _measures(await redis.hgetall(keys.hot(Grain.minute, minute)))
        gen = int(await redis.hget(keys.watermarks, "gen"))
        for name, value in (await redis.hgetall(keys.late(gen))).items():
            grain, bucket, measure_field = parse_late_field(name)
            if grain is Grain.minute:
                measure, field = parse_measure_field(measure_field)
                counts, sums = minutes[bucket]
                (counts if measure == COUNT else sums)[field] += int(value)
            else:  # the hours and days were hot all along
                raise AssertionError(f"late delta for a hot {grain.name}: {_s(name)}")
        for minute, totals in rolled.minutes.items():
            assert _clean(*minutes[minute]) == _clean(*_expected(totals)), minute
    finally:
        names = [k async for k in redis.scan_iter(match=keys.base + "*", count=1000)]
        if names:
            await redis.delete(*names)
