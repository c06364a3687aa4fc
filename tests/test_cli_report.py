"""Terminal output of rebuild and reconcile: progress lines and one line per differing row."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from counters.core.buckets import DAY_MS, HOUR_MS
from counters.engines.rebuild import BucketDiff
from counters.engines.reconcile import describe
from counters.harness.service import run_cli
from tests.service import cli, service_env
from tests.support import T0, Backends, Harness


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


PROGRESS = re.compile(r"^rebuild \S+: (\d+)/(\d+) events \((\d+)%\), [\d,]+ events/s, ETA")


async def test_rebuild_progress_lines_end_at_100_percent_and_never_show_more(
    harness: Harness, backends: Backends, tmp_path: Path
) -> None:
    """The plan (raw events per day, counted before the run) misses the 30 events still in
    the write stream, which the rebuild's cut copies and counts: the lines never go past
    100 % (the old single count printed `150/120 events (125%)`) and the last is exact."""
    h = harness
    day = T0 - T0 % DAY_MS
    for d in range(3):
        h.clock.set(day + d * DAY_MS + 10 * HOUR_MS)
        await h.ingest(*[{"name": "click", "ts": h.clock.now_ms() - i * 1000} for i in range(40)])
        await h.persist()
    await h.ingest(*[{"name": "click", "ts": h.clock.now_ms() + i} for i in range(30)])
    env = service_env(backends, tmp_path, COUNTERS_RAW_RETENTION_DAYS="1000")
    args = ("rebuild", "--project", h.project, "--from", str(day), "--to", str(day + 3 * DAY_MS))
    proc = await asyncio.to_thread(run_cli, env, *args, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"rebuild {h.project}: 150 events" in proc.stdout, proc.stdout
    lines = [m.groups() for m in map(PROGRESS.match, proc.stderr.splitlines()) if m]
    assert len(lines) >= 2, proc.stderr  # a line per new tenth done, and the last
    for done, total, pct in lines:
        assert int(done) <= int(total) and int(pct) <= 100, proc.stderr
    assert lines[-1] == ("150", "150", "100"), proc.stderr
    assert lines[0][1] == "120", proc.stderr  # the plan: what was in the raw log
