"""Redis loses everything (issue 10 items 1 and 2): Postgres is the authority. After the
loss every answer that needs only persisted minutes is the same as before, at every grain
and in a half-hour time zone; the hour and day rows written later are what a rebuild would
write; concurrent restorers put the persisted part back once; and a retry of events the
raw log holds counts nothing twice."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start, format_ts
from counters.core.rollups import encode_field
from counters.engines.read.engine import read_series, read_total
from counters.engines.read.parse import parse_read
from lua.keys import ProjectKeys, count_field, parse_key, restore_member
from persist.state import load_state
from tests.support import T0, Harness

DAY = bucket_start(T0, Grain.day)
HOUR = bucket_start(T0, Grain.hour)  # 10:00Z, the hour in progress at the loss
MEASURES = ("count", "sum", "uniques")
COUNTRIES = ("DE", "FR", "US")


async def lose_everything(h: Harness) -> None:
    """Deletes every key in the project's slot (what FLUSHALL does to this project)."""
    names = [k async for k in h.redis.scan_iter(match=h.keys.base + "*", count=1000)]
    for start in range(0, len(names), 500):
        await h.redis.delete(*names[start : start + 500])
    assert not await h.redis.exists(h.keys.watermarks)


def event(ts: int, n: int, **kw: Any) -> dict[str, Any]:
    dims = {"country": COUNTRIES[n % 3], "source": "web" if n % 2 else "app"}
    if n % 5 == 0:
        dims["device"] = "ios"
    return {"name": "click", "ts": ts, "uid": f"u{n % 41}", "value": 1.25 + n % 7, "dims": dims}


async def feed(h: Harness, first: int, last: int, step: int) -> int:
    """Ingests a few events in every step-th minute of [first, last), each while its minute
    is hot, and persists at every hour boundary; returns how many."""
    n = 0
    h.clock.set(first)
    for minute in range(first, last, step * MINUTE_MS):
        if h.clock.now_ms() // HOUR_MS != (minute + 1000) // HOUR_MS:
            await h.persist()
        h.clock.set(minute + 1000)
        batch = [event(minute + 100 * i, n + i) for i in range(1 + minute // MINUTE_MS % 4)]
        await h.ingest(*batch)
        n += len(batch)
    return n


async def engine_reads(h: Harness) -> list[bytes]:
    """Replies of the read engine, as the API would encode them: a Kolkata day and month,
    and totals (uniques included) over today."""
    ctx = h.read_context()
    now = h.clock.now_ms()
    crosstabs = h.settings.crosstabs
    out = []
    for measure in MEASURES:
        common = {"name": "click", "measure": measure, "excluding_current": "false"}
        for precision, since in (("1d", DAY - DAY_MS), ("1mo", DAY)):
            params = {**common, "precision": precision, "tz": "Asia/Kolkata"}
            params |= {"from": format_ts(since), "to": format_ts(HOUR + 25 * MINUTE_MS)}
            q = parse_read(params, now, crosstabs, oldest_minute=ctx.oldest_minute)
            out.append(msgspec.json.encode(await read_series(ctx, q)))
        params = {**common, "from": format_ts(DAY), "to": format_ts(HOUR + 25 * MINUTE_MS)}
        q = parse_read({**params, "precision": "1m"}, now, crosstabs)
        out.append(msgspec.json.encode(await read_total(ctx, q)))
        q = parse_read({**params, "precision": "1h", "country": "DE"}, now, crosstabs)
        out.append(msgspec.json.encode(await read_total(ctx, q)))
    return out


async def answers(h: Harness, until: int) -> dict[str, Any]:
    """Every grain's answer over the persisted part of today (minutes before `until`)."""
    out: dict[str, Any] = {}
    for m in MEASURES:
        for dims in ({}, {"country": "DE"}, {"country": "DE", "source": "web"}):
            tag = f"{m}:{sorted(dims.items())}"
            out["1m:" + tag] = await h.series("click", Grain.minute, HOUR, until, m, **dims)
            out["1h:" + tag] = await h.series("click", Grain.hour, DAY, HOUR + HOUR_MS, m, **dims)
            out["1d:" + tag] = await h.series("click", Grain.day, DAY, DAY + DAY_MS, m, **dims)
            out["total:" + tag] = await h.total("click", DAY, until, m, **dims)
            out["hour:" + tag] = await h.total("click", HOUR, HOUR + HOUR_MS, m, **dims)
    out["engine"] = await engine_reads(h)
    return out


async def build_today(h: Harness) -> tuple[int, int]:
    """Events from 07:50 to 10:24 (hours 07-09 sealed and copied, the minutes of 10:00-10:24
    sealed and copied, hour 10 and the day unsealed), plus a late event for 10:03 applied;
    returns (events, minute watermark)."""
    n = await feed(h, DAY + 7 * HOUR_MS + 50 * MINUTE_MS, HOUR + 25 * MINUTE_MS, 3)
    h.clock.set(HOUR + 25 * MINUTE_MS + 30_000)
    await h.persist()
    late = event(HOUR + 3 * MINUTE_MS, 999)
    late["uid"] = "late-uid"
    await h.ingest(late)
    await h.persist()  # applies the late generation: minute row 10:03 holds it
    async with h.pool.acquire() as conn:
        state = await load_state(conn, h.project)
    assert (state.minute_until, state.hour_until, state.day_until) == (
        HOUR + 25 * MINUTE_MS,
        HOUR,
        DAY,
    )
    assert state.late_applied >= 1
    return n + 1, state.minute_until


def with_crosstab(h: Harness) -> Harness:
    return Harness.build(
        h.settings, h.redis, h.pool, h.scripts, h.project, crosstabs=(("country", "source"),)
    )


async def test_every_answer_and_the_later_rows_survive_a_total_loss(harness: Harness) -> None:
    h = with_crosstab(harness)
    n, until = await build_today(h)
    before = await answers(h, until)
    assert before["total:count:[]"] == n
    assert before["hour:count:[]"] > 0

    await lose_everything(h)
    after = await answers(h, until)  # the first read restores, then answers
    assert after == before

    # the hour and the day seal from the restored parts: their rows are complete
    h.clock.set(DAY + DAY_MS + 2 * MINUTE_MS)
    for _ in range(3):
        await h.persist()
    async with h.pool.acquire() as conn:
        state = await load_state(conn, h.project)
        assert state.day_until == DAY + DAY_MS
        hour_row = await conn.fetchval(
            "SELECT count FROM rollups_hour WHERE project = $1 AND rollup = ''"
            " AND bucket = to_timestamp($2 / 1000.0)",
            h.project,
            HOUR,
        )
        minutes = await conn.fetchval(
            "SELECT sum(count) FROM rollups_minute WHERE project = $1 AND rollup = ''"
            " AND bucket >= to_timestamp($2 / 1000.0) AND bucket < to_timestamp($3 / 1000.0)",
            h.project,
            HOUR,
            HOUR + HOUR_MS,
        )
    assert hour_row == minutes == before["hour:count:[]"]
    report = await h.services.rebuilder.run(h.project, DAY, DAY + DAY_MS, write=False)
    assert report.discrepancies == 0, report.diffs[:5]
    assert await answers(h, until) == before  # and nothing drifts once sealed


async def test_concurrent_restores_add_the_persisted_part_once(harness: Harness) -> None:
    h = with_crosstab(harness)
    _, until = await build_today(h)
    before = await answers(h, until)
    await lose_everything(h)
    results = await asyncio.gather(
        h.services.restore(h.project),
        h.persister.restore(h.keys),
        h.services.restore(h.project),
        h.services.restore(h.project),
    )
    assert sorted(results) == [False, False, False, True]
    stray = [
        parse_key(k).kind async for k in h.redis.scan_iter(match=h.keys.base + "*", count=1000)
    ]
    assert not [k for k in stray if k.startswith("restore") or k == "tmp"], stray
    total_field = count_field(encode_field("click", (), ()))
    hour_hash = await h.redis.hget(h.keys.hot(Grain.hour, HOUR), total_field)
    assert int(hour_hash or 0) == before["hour:count:[]"]
    assert await h.redis.zscore(h.keys.dirty(Grain.hour), HOUR) == HOUR
    assert await h.redis.zscore(h.keys.dirty(Grain.day), DAY) == DAY
    assert await answers(h, until) == before
    # only the watermarks lost (Redis kept the rest): the restore does not add twice
    await h.redis.delete(h.keys.watermarks)
    assert await h.services.restore(h.project)
    assert await answers(h, until) == before


async def test_a_retry_after_the_loss_counts_nothing_twice(harness: Harness) -> None:
    h = harness
    batch = [
        {"name": "click", "ts": T0 + i, "id": f"order-{i}", "uid": f"u{i}", "value": 2}
        for i in range(500)
    ]
    assert (await h.ingest(*batch)).accepted == 500
    h.clock.advance(2 * MINUTE_MS)
    await h.persist()  # minute and raw log in Postgres
    h.clock.advance(4 * MINUTE_MS)  # 6 minutes later, well inside the 1 h window
    await lose_everything(h)

    reply = await h.ingest(*batch)  # the client retries: ingest restores first
    assert (reply.accepted, reply.duplicates) == (0, 500)
    ttl = await h.redis.pttl(h.keys.event_id("click", "order-7"))
    window = h.settings.dedupe_window_seconds * 1000
    assert window - 6 * MINUTE_MS - 5_000 <= ttl <= window - 6 * MINUTE_MS
    fresh = await h.ingest({"name": "click", "ts": h.clock.now_ms(), "id": "order-new"})
    assert fresh.accepted == 1
    h.clock.advance(HOUR_MS)
    await h.persist()
    assert await h.total("click", HOUR, HOUR + HOUR_MS) == 501
    assert await h.total("click", HOUR, HOUR + HOUR_MS, "sum") == 1000


async def test_markers_older_than_the_window_are_not_restored(harness: Harness) -> None:
    h = harness
    await h.ingest({"name": "click", "ts": T0, "id": "old"}, {"name": "click", "ts": T0})
    h.clock.advance(2 * MINUTE_MS)
    await h.persist()
    h.clock.advance(h.settings.dedupe_window_seconds * 1000)
    await lose_everything(h)
    assert await h.services.restore(h.project)
    assert not await h.redis.exists(h.keys.event_id("click", "old"))
    assert (await h.ingest({"name": "click", "ts": h.clock.now_ms(), "id": "old"})).accepted


def test_restore_keys_parse() -> None:
    keys = ProjectKeys("ctr", "acme")
    for name in (
        keys.restore_index("tok"),
        keys.restore_hot("tok", Grain.hour, HOUR),
        keys.restore_hll("tok", Grain.day, DAY, "click\x1fcountry\x1fa:b"),
    ):
        parsed = parse_key(name)
        assert parsed.kind.startswith("restore") and parsed.name == "tok"
        assert parsed.key() == name


async def test_minutes_only_the_raw_log_holds_come_back(harness: Harness) -> None:
    """The raw copy runs ahead of the minute copy: events of a minute not sealed yet are in
    Postgres's raw log only. After the loss they are back in their minute (and a retry of
    them is a duplicate), so the minute, hour and day rows written later are exact."""
    h = harness
    batch = [
        {"name": "click", "ts": T0 + 40_000 + i, "id": f"r{i}", "uid": f"u{i % 7}", "value": 1}
        for i in range(20)
    ]
    h.clock.set(T0 + 40_000)
    await h.ingest(*batch)
    h.clock.set(T0 + 50_000)
    await h.persist()  # the minute is not sealed; the raw log is copied
    before = [await h.total("click", T0, T0 + MINUTE_MS, m) for m in MEASURES]
    assert before == [20, 20, 7]
    await lose_everything(h)
    assert [await h.total("click", T0, T0 + MINUTE_MS, m) for m in MEASURES] == before
    reply = await h.ingest(*batch)
    assert (reply.accepted, reply.duplicates) == (0, 20)
    h.clock.set(DAY + DAY_MS + 2 * MINUTE_MS)
    for _ in range(3):
        await h.persist()
    assert [await h.total("click", DAY, DAY + DAY_MS, m) for m in MEASURES] == before
    report = await h.services.rebuilder.run(h.project, DAY, DAY + DAY_MS, write=False)
    assert report.discrepancies == 0, report.diffs[:5]


async def test_restore_refuses_staging_that_expired(harness: Harness) -> None:
    """lua/restore.lua writes nothing when a staged key is gone (its TTL ran out): the
    restorer stages again rather than put back part of an hour."""
    h = harness
    token = "expired"
    await h.redis.hset(h.keys.restore_hot(token, Grain.hour, HOUR), "c\x1fclick\x1f\x1f", 3)
    members = [restore_member(Grain.hour, HOUR), restore_member(Grain.hour, HOUR, "x")]
    await h.redis.sadd(h.keys.restore_index(token), *members)
    args = [0, 0, 0, 1, "0-0", h.keys.base, h.keys.restore_base(token), 2]
    keys = [h.keys.watermarks, h.keys.restore_index(token)]
    assert await h.scripts.restore(keys=keys, args=args) == -1
    assert not await h.redis.exists(h.keys.watermarks, h.keys.hot(Grain.hour, HOUR))
    assert not await h.redis.exists(h.keys.restore_index(token))
    assert not await h.redis.exists(h.keys.restore_hot(token, Grain.hour, HOUR))
