"""Terminal output of rebuild and reconcile: progress lines and one line per differing row."""

from __future__ import annotations

import asyncio
from pathlib import Path

from counters.cli.report import Ticker
from counters.core.buckets import DAY_MS, HOUR_MS
from counters.engines.rebuild import BucketDiff
from counters.engines.reconcile import describe
from tests.service import cli, service_env
from tests.support import T0, Backends, Harness


def test_ticker_reports_at_most_every_interval_and_at_the_end() -> None:
    lines: list[str] = []
    tick = Ticker("rebuild p", 10, lines.append, every=1e12)
    tick(4)  # within the interval: silent
    tick(4)
    tick(2)  # done: always a line
    assert len(lines) == 1
    assert lines[0].startswith("rebuild p: 10/10 events (100%)") and lines[0].endswith("ETA 0s")
    every: list[str] = []
    tick = Ticker("x", 4, every.append, every=0.0)
    tick(1)
    tick(1)
    assert [line.split(",")[0] for line in every] == ["x: 1/4 events (25%)", "x: 2/4 events (50%)"]


def test_describe_names_what_differs() -> None:
    diff = BucketDiff(
        "hour", "2026-03-01T10:00:00Z", "click", "country,source", ["DE", "a"], 5, 7, 0, 0, True
    )
    assert describe(diff) == (
        "hour 2026-03-01T10:00:00Z click country=DE,source=a:"
        " count 5 -> 7 (+2), uniques sketch differs"
    )
    total = BucketDiff("day", "2026-03-01T00:00:00Z", "buy", "", [], 3, 3, 1_500_000, 0, False)
    assert describe(total) == "day 2026-03-01T00:00:00Z buy (total): sum 1.5 -> 0 (-1.5)"


def test_describe_prints_exact_sums() -> None:
    """Not 6 significant digits (`4406.79`): every micro, never through a float."""
    diff = BucketDiff(
        "hour", "2026-03-01T10:00:00Z", "buy", "", [], 3, 3, 4_406_789_044, 4_406_789_045, False
    )
    assert describe(diff).endswith(": sum 4406.789044 -> 4406.789045 (+0.000001)")
    big = BucketDiff(
        "day", "2026-03-01T00:00:00Z", "buy", "", [], 12, 12, 0, 11_999_999_999_999_988, False
    )
    assert describe(big).endswith(": sum 0 -> 11999999999.999988 (+11999999999.999988)")
    whole = BucketDiff("day", "2026-03-01T00:00:00Z", "b", "", [], 1, 1, 10**7, -(10**7), False)
    assert describe(whole).endswith(": sum 10 -> -10 (-20)")


async def test_rebuild_dry_run_prints_exact_sums(
    harness: Harness, backends: Backends, tmp_path: Path
) -> None:
    """`counters rebuild --dry-run` names a one-micro difference of a sum exactly (the old
    `:g` format printed `sum 4406.79 -> 4406.79`)."""
    h = harness
    h.clock.set(T0 + 2 * HOUR_MS)
    await h.ingest(*[{"name": "buy", "ts": T0 + i * 1000, "value": 1101.697261} for i in range(4)])
    await h.persist()
    async with h.pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_hour SET sum_micros = sum_micros + 1"
            " WHERE project = $1 AND name = 'buy' AND rollup = ''",
            h.project,
        )
    env = service_env(backends, tmp_path, COUNTERS_RAW_RETENTION_DAYS="1000")
    day = T0 - T0 % DAY_MS
    out = await asyncio.to_thread(
        cli,
        env,
        *("rebuild", "--project", h.project, "--from", str(day), "--to", str(day + DAY_MS)),
        "--dry-run",
    )
    assert "hour 2026-03-01T10:00:00Z buy (total): sum 4406.789045 -> 4406.789044 (-0.000001)" in (
        out
    ), out
    assert out.strip().endswith("discrepancies: 1"), out
