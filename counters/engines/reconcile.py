"""Reconcile: compare (and optionally correct) recent rollups of many projects against the
raw log, reporting one line per project and per differing row (the nightly run logs them,
the CLI prints them)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from counters.core.buckets import DAY_MS
from counters.core.measures import micros_text
from counters.core.rollups import parse_rollup_id
from counters.engines.deadletter import DeadLetters, range_warning
from counters.engines.progress import DayProgress
from counters.engines.rebuild import BucketDiff, Rebuilder, RebuildReport
from counters.engines.shard_runs import planned_shard_days, run_shards, stored_names


def describe(diff: BucketDiff) -> str:
    """One line for a differing bucket; sums exact (micros as decimals, never rounded)."""
    dims = ",".join(
        f"{d}={v}" for d, v in zip(parse_rollup_id(diff.rollup), diff.dims, strict=True)
    )
    parts = [f"{diff.grain} {diff.bucket} {diff.name}" + (f" {dims}" if dims else " (total)")]
    if diff.stored_count != diff.rebuilt_count:
        parts.append(
            f"count {diff.stored_count} -> {diff.rebuilt_count}"
            f" ({diff.rebuilt_count - diff.stored_count:+d})"
        )
    if diff.stored_sum != diff.rebuilt_sum:
        delta = diff.rebuilt_sum - diff.stored_sum
        parts.append(
            f"sum {micros_text(diff.stored_sum)} -> {micros_text(diff.rebuilt_sum)}"
            f" ({'+' if delta > 0 else ''}{micros_text(delta)})"
        )
    if diff.uniques_differ:
        parts.append("uniques sketch differs")
    return ": ".join([parts[0], ", ".join(parts[1:])])


async def reconcile_projects(
    rebuilder: Rebuilder,
    projects: list[str],
    *,
    now_ms: int,
    days: int,
    write: bool,
    echo: Callable[[str], None],
    progress_for: Callable[[str, dict[int, int]], DayProgress] | None = None,
    on_report: Callable[[RebuildReport], None] | None = None,
    nice: int = 0,
) -> int:
    """Compares every rollup of the last `days` days with the raw log, and every sealed hour
    and day row with the minute rows it is made of (while those are kept), for each project;
    reports what differs and (write=True) corrects it. With progress_for, each project's
    run reports to progress_for(project, its planned raw events per day); on_report is
    handed each project's report (the CLI's --json); nice: see Rebuilder.run. Returns the
    number of differing rows found (a row found on both bases counts once)."""
    total = 0
    for project in projects:
        start = now_ms - days * DAY_MS
        names = await stored_names(rebuilder.pool, project)  # a split project's every shard
        letters = await DeadLetters(rebuilder.pool).overlapping(project, start, now_ms)
        warning = range_warning(letters, project, "fixing a day recomputes it")
        if warning:  # the project's and its shards' dead letters
            echo(warning)
        with contextlib.ExitStack() as stack:
            progress = None
            if progress_for is not None:
                plan = await planned_shard_days(rebuilder.pool, names, start, now_ms, None)
                progress = stack.enter_context(progress_for(project, plan))
            report = await run_shards(
                rebuilder,
                project,
                names,
                start,
                now_ms,
                write=write,
                kind="reconcile",
                against_parts=True,
                progress=progress,
                nice=nice,
            )
        total += report.discrepancies
        if on_report is not None:
            on_report(report)
        echo(
            f"{project}: {report.events} events, {report.rows} rollup rows checked,"
            f" {report.rows_vs_parts} hour/day rows checked against their parts,"
            f" {report.discrepancies} differ"
            + (" (fixed)" if write and report.discrepancies else "")
        )
        for diff in report.diffs:
            basis = "" if diff.basis == "raw" else f" [vs its {diff.basis}]"
            echo("  " + describe(diff) + basis)
    echo(f"discrepancies: {total}")
    return total
