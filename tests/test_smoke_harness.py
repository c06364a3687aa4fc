from counters.buckets import HOUR_MS, MINUTE_MS, Grain
from tests.support import T0, Harness


async def test_harness_roundtrip(harness: Harness) -> None:
    reply = await harness.ingest({"name": "click", "ts": T0, "uid": "a", "value": 1.5})
    assert reply.accepted == 1
    assert await harness.series("click", Grain.minute, T0, T0 + MINUTE_MS) == [1]
    harness.clock.advance(HOUR_MS)
    await harness.persist()
    assert await harness.series("click", Grain.minute, T0, T0 + MINUTE_MS) == [1]
    assert await harness.total("click", T0, T0 + HOUR_MS, "sum") == 1.5
