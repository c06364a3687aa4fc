"""Issue 11, part batch, on the in-process harness: per-day caps on event names and dim
names (found 9, built 3), dedupe per (name, id) with hashed markers (found 9, built 5 and
9) and the script budget (found 4, built 3)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.errors import Invalid, PayloadTooLarge
from counters.core.models import EventIn
from tests.support import T0, Harness

DAY = bucket_start(T0, Grain.day)


def capped(h: Harness, **overrides: Any) -> Harness:
    return Harness.build(h.settings, h.redis, h.pool, h.scripts, h.project, **overrides)


async def slot_keys(h: Harness) -> set[str]:
    return {k.decode() async for k in h.redis.scan_iter(match=h.keys.base + "*", count=1000)}


def ev(name: str = "click", **kw: Any) -> dict[str, Any]:
    return {"name": name, "ts": T0, **kw}


# --- event name cap and dim name cap ---------------------------------------------------------


async def test_event_name_cap_refuses_the_whole_batch_and_known_names_pass(
    harness: Harness,
) -> None:
    h = capped(harness, event_name_cap=3)
    assert (await h.ingest(ev("a"), ev("b"), ev("c"))).accepted == 3
    before = await slot_keys(h)
    stream = await h.redis.xlen(h.keys.raw)
    with pytest.raises(Invalid) as err:
        await h.ingest(ev("a", id="x1"), ev("d"), ev("e"))
    assert err.value.code == "event_name_cap"
    assert err.value.status == 422
    assert "event_name_cap" in err.value.message and "3" in err.value.message
    assert "'d'" in err.value.message  # the first offending name
    # nothing applied: no marker for x1, no new keys, no raw-log entry
    assert await slot_keys(h) == before
    assert await h.redis.xlen(h.keys.raw) == stream
    assert not await h.redis.exists(h.keys.event_id("a", "x1"))
    # names already known that day always pass, also in a large batch
    assert (await h.ingest(*[ev(n) for n in "abc" * 100])).accepted == 300
    assert await h.total("a", DAY, DAY + DAY_MS) == 101
    assert await h.redis.scard(h.keys.event_names(DAY)) == 3


async def test_event_name_cap_is_per_utc_day(harness: Harness) -> None:
    h = capped(harness, event_name_cap=2)
    assert (await h.ingest(ev("a"), ev("b"))).accepted == 2
    with pytest.raises(Invalid):
        await h.ingest(ev("c"))
    yesterday = T0 - DAY_MS
    assert (await h.ingest(ev("c", ts=yesterday), ev("d", ts=yesterday))).accepted == 2
    h.clock.advance(DAY_MS)  # next day: a fresh set
    assert (await h.ingest(ev("c", ts=T0 + DAY_MS), ev("e", ts=T0 + DAY_MS))).accepted == 2
    ttl = await h.redis.pttl(h.keys.event_names(DAY + DAY_MS))
    assert 0 < ttl <= 2 * DAY_MS


async def test_a_batch_alone_over_the_name_cap_is_refused_before_the_script(
    harness: Harness,
) -> None:
    h = capped(harness, event_name_cap=5)
    await h.redis.slowlog_reset()
    with pytest.raises(Invalid) as err:
        await h.ingest(*[ev(f"n{i}") for i in range(50)])
    assert err.value.code == "event_name_cap"
    assert "'n5'" in err.value.message
    assert not await h.redis.exists(h.keys.event_names(DAY))


async def test_dim_name_cap_refuses_the_whole_batch_and_known_dims_pass(harness: Harness) -> None:
    h = capped(harness, dim_name_cap=2)
    assert (await h.ingest(ev(dims={"country": "DE", "source": "web"}))).accepted == 1
    before = await slot_keys(h)
    with pytest.raises(Invalid) as err:
        await h.ingest(ev(dims={"country": "FR"}), ev(dims={"device": "ios"}))
    assert err.value.code == "dim_name_cap"
    assert "dim_name_cap" in err.value.message and "'device'" in err.value.message
    assert await slot_keys(h) == before
    assert (await h.ingest(ev(dims={"country": "FR", "source": "ads"}))).accepted == 1
    assert await h.total("click", DAY, DAY + DAY_MS) == 2
    h.clock.advance(DAY_MS)
    assert (await h.ingest(ev(ts=T0 + DAY_MS, dims={"device": "ios"}))).accepted == 1


# --- dedupe per (name, id), hashed ids --------------------------------------------------------


async def test_an_id_pre_burnt_under_another_name_does_not_block(harness: Harness) -> None:
    h = harness
    assert (await h.ingest(ev("pageview", id="order-1001"))).accepted == 1  # the attacker
    reply = await h.ingest(ev("purchase", id="order-1001", value=99))  # the real purchase
    assert (reply.accepted, reply.duplicates) == (1, 0)
    again = await h.ingest(ev("purchase", id="order-1001", value=99))
    assert (again.accepted, again.duplicates) == (0, 1)  # same name, same id: deduped
    assert await h.total("purchase", DAY, DAY + DAY_MS, "sum") == 99


async def test_in_batch_dedupe_is_per_name_and_id(harness: Harness) -> None:
    reply = await harness.ingest(ev("a", id="1"), ev("b", id="1"), ev("a", id="1"))
    assert (reply.accepted, reply.duplicates) == (2, 1)


async def test_no_event_id_appears_in_a_key_name(harness: Harness) -> None:
    h = harness
    await h.ingest(ev(id="secret-order-77"), ev("view", id="secret-order-77"))
    names = await slot_keys(h)
    assert not [n for n in names if "secret-order-77" in n]
    assert h.keys.event_id("click", "secret-order-77") in names
    assert h.keys.event_id("view", "secret-order-77") in names


async def test_restored_markers_are_per_name_and_id(harness: Harness) -> None:
    """After Redis loses everything, the markers restored from Postgres's raw log are the
    hashed (name, id) ones: the retry is a duplicate, the same id under another name not."""
    h = harness
    assert (await h.ingest(ev(id="o-1"))).accepted == 1
    h.clock.advance(2 * MINUTE_MS)
    await h.persist()
    await h.persist()
    async for key in h.redis.scan_iter(match=h.keys.base + "*", count=1000):
        await h.redis.delete(key)
    now = h.clock.now_ms()
    assert (await h.ingest(ev(id="o-1"))).duplicates == 1
    assert (await h.ingest(ev("view", ts=now, id="o-1"))).accepted == 1


# --- script budget: max_batch_groups ----------------------------------------------------------


def diverse(n: int, dims: int = 16) -> list[dict[str, Any]]:
    """The batch of found 4: every event its own name and its own dim names."""
    return [
        {"name": f"e{i}", "ts": T0, "dims": {f"d{i}_{k}": "v" for k in range(dims)}}
        for i in range(n)
    ]


async def test_the_10k_diverse_batch_is_a_413_before_anything_is_applied(harness: Harness) -> None:
    h = capped(harness, event_name_cap=0, dim_name_cap=0)
    before = await slot_keys(h)
    with pytest.raises(PayloadTooLarge) as err:
        await h.ingest(*diverse(10_000))
    assert err.value.code == "batch_too_complex"
    assert err.value.status == 413
    assert "max_batch_groups" in err.value.message
    assert "Send at most ~" in err.value.message
    assert await slot_keys(h) == before


async def test_the_413_suggestion_fits_the_budget(harness: Harness) -> None:
    h = capped(harness, event_name_cap=0, dim_name_cap=0)
    with pytest.raises(PayloadTooLarge) as err:
        await h.ingest(*diverse(2_000))
    fit = int(err.value.message.split("Send at most ~")[1].split(" ")[0])
    assert 0 < fit < 2_000
    assert (await h.ingest(*diverse(fit))).accepted == fit


async def test_sealed_minutes_cost_more(harness: Harness) -> None:
    """A batch of minutes already sealed does three times the work per group."""
    h = capped(harness, max_batch_groups=1_000)
    hot = [{"name": "a", "ts": T0, "dims": {"d": f"v{i}"}} for i in range(300)]
    assert (await h.ingest(*hot)).accepted == 300  # 301 groups + 300 dim values
    h.clock.advance(3 * HOUR_MS)
    with pytest.raises(PayloadTooLarge):
        await h.ingest(*hot)


async def test_uid_heavy_batches_of_usual_shape_pass(harness: Harness) -> None:
    """5,000 events over a dim with a uid each fit the default budget (10,000 do not: their
    20,000 PFADD arguments took ~70 ms)."""
    h = harness
    events = [
        {"name": "view", "ts": T0, "uid": f"u{i}", "dims": {"country": f"c{i % 20}"}}
        for i in range(5_000)
    ]
    assert (await h.ingest(*events)).accepted == 5_000


def test_max_batch_groups_default_is_the_measured_budget() -> None:
    from counters.core.config import Settings

    assert Settings().max_batch_groups == 4_000


async def test_joined_requests_over_a_name_cap_are_refused_alone(harness: Harness) -> None:
    """The pixel joins concurrent requests into one batch: one over a cap must not take the
    others down with it (refused mode)."""
    h = capped(harness, event_name_cap=1, dim_name_cap=1)
    assert (await h.ingest(ev("a", dims={"x": "1"}))).accepted == 1
    decoded = [
        msgspec.convert(e, EventIn)
        for e in (ev("a"), ev("new"), ev("a", dims={"y": "2"}), ev("a", dims={"x": "3"}))
    ]
    raw = h.services.validate(decoded, now_ms=h.clock.now_ms())
    refused: list[Any] = []
    reply = await h.ingestor.apply(h.project, raw, refused=refused)
    assert reply.accepted == 2
    assert sorted(e.name + str(e.dims) for e in refused) == ["a{'y': '2'}", "new{}"]
    assert await h.total("a", DAY, DAY + DAY_MS) == 3
