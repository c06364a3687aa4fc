"""The risk gauges the persister sets on every pass: buckets per grain held only in Redis
(hot minutes; the hour and day in progress once minutes are merged into them) and the lag
of each grain's Postgres watermark."""

from __future__ import annotations

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS
from counters.metrics import Metrics
from tests.support import T0, Harness


def gauge(metrics: Metrics, name: str) -> dict[str, float]:
    return {
        s.labels["grain"]: s.value
        for m in metrics.registry.collect()
        if m.name == name
        for s in m.samples
    }


async def observe(h: Harness) -> tuple[dict[str, float], dict[str, float]]:
    await h.persister.observe([h.project])
    metrics = h.services.metrics
    return (
        gauge(metrics, "counters_redis_only_buckets"),
        gauge(metrics, "counters_persister_grain_lag_seconds"),
    )


async def test_gauges_follow_ingest_seal_and_copy(harness: Harness) -> None:
    h = harness
    grace = int(h.settings.grace_seconds * 1000)
    h.clock.set(T0 + MINUTE_MS)
    await h.ingest(*[{"name": "click", "ts": T0 + i * MINUTE_MS + 1000} for i in range(1, 6)])
    only, _ = await observe(h)
    assert only == {"minute": 5, "hour": 0, "day": 0}  # hot minutes, nothing merged yet

    now = T0 + 4 * MINUTE_MS + grace  # minutes 1..3 close; 4 and 5 stay hot
    h.clock.set(now)
    await h.persist()
    only, lag = await observe(h)
    assert only == {"minute": 2, "hour": 1, "day": 1}  # the hour and day in progress
    assert lag["minute"] == (now - (T0 + 4 * MINUTE_MS)) / 1000
    assert lag["hour"] == (now - T0) / 1000
    assert lag["day"] == (now - (T0 - T0 % DAY_MS)) / 1000
    text = h.services.metrics.render().decode()
    assert 'counters_redis_only_buckets{grain="hour"} 1.0' in text
    assert 'counters_persister_grain_lag_seconds{grain="minute"}' in text
    assert "counters_persister_lag_seconds " in text  # the minute gauge stays as it was

    now = T0 + HOUR_MS + grace  # the hour seals and is copied; the day holds it
    h.clock.set(now)
    await h.persist()
    only, lag = await observe(h)
    assert only == {"minute": 0, "hour": 0, "day": 1}
    assert lag["hour"] == grace / 1000
    assert lag["minute"] == grace / 1000
