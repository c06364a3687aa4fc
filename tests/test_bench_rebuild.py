"""The `bench rebuild` loader builds what live ingest would have: a dry-run rebuild (and a
reconcile, which also checks hours and days against their minutes) of the loaded history
finds nothing to change. A cross-check of the loader against the engine."""

from __future__ import annotations

from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.engines.rebuild import Rebuilder
from counters.engines.retention import minute_edge
from tests.support import T0, Harness


async def test_loaded_history_matches_the_rebuild(harness: Harness) -> None:
    from bench.rebuild_data import generate
    from bench.rebuild_load import load

    h = harness
    end = bucket_start(T0, Grain.day)
    events = generate(2_000, end - 3 * DAY_MS, end, uids=500, seed=7)
    loaded = await load(
        h.pool,
        h.redis,
        h.keys.tmp("bench-rebuild-check"),
        h.project,
        events,
        end_ms=end,
        minute_low=minute_edge(h.clock.now_ms(), h.settings.minute_retention_days),
        uids=500,
    )
    assert loaded.events == 2_000 and loaded.rollup_rows > 0
    rebuilder = Rebuilder(h.pool, h.redis, h.settings, h.persister)
    report = await rebuilder.run(h.project, end - 3 * DAY_MS, end, write=False)
    assert report.events == 2_000
    assert report.rows == loaded.rollup_rows
    assert report.discrepancies == 0, report.diffs[:5]
    checked = await rebuilder.run(
        h.project, end - 3 * DAY_MS, end, write=False, kind="reconcile", against_parts=True
    )
    assert checked.rows_vs_parts > 0
    assert checked.discrepancies == 0, checked.diffs[:5]
