"""Verification steps that run the `counters` CLI against the fault run's cluster: the
rebuild that repairs the range after a Redis total loss, and the dry-run rebuild and
reconcile that must then find nothing to change."""

from __future__ import annotations

import asyncio
import re

from counters.core.buckets import MINUTE_MS, format_ts
from counters.harness.faults.cluster import Cluster, Log
from counters.harness.faults.findings import Findings


def count_line(text: str) -> int | None:
    """N of a `discrepancies: N` (or `... differ...: N`) line of rebuild/reconcile output."""
    for pattern in (r"discrepanc\w*\s*[:=]\s*(\d+)", r"differ\w*[^\n\d]*?[:=]\s*(\d+)"):
        found = re.findall(pattern, text, re.IGNORECASE)
        if found:
            return max(int(n) for n in found)
    return None


async def repair(cluster: Cluster, range_start: int, range_end: int, f: Findings, log: Log) -> None:
    """After a loss: `counters rebuild` of the run's range (what the nightly reconcile does)
    puts back the counts of raw events whose minutes were not yet persisted at the loss."""
    lo = range_start - range_start % MINUTE_MS
    hi = range_end - range_end % MINUTE_MS + MINUTE_MS
    args = ["--project", cluster.project, "--from", format_ts(lo), "--to", format_ts(hi)]
    proc = await asyncio.to_thread(cluster.cli, "rebuild", *args)
    out = proc.stdout + proc.stderr
    f.repaired = count_line(out)
    log(f"verify: after the loss, rebuild: exit {proc.returncode}, rewrote {f.repaired} buckets")
    if proc.returncode != 0 or f.repaired is None:
        f.fail(f"rebuild {' '.join(args)}: exit {proc.returncode}:\n{out[-3000:]}", log)


async def check_rebuild_and_reconcile(
    cluster: Cluster, range_start: int, range_end: int, f: Findings, log: Log
) -> None:
    """3. reconcile finds nothing to fix; 4a. a dry-run rebuild finds no differing bucket
    (counts, sums and HLL registers). Skipped with a note while the commands do not exist."""
    if await asyncio.to_thread(cluster.has_command, "reconcile"):
        proc = await asyncio.to_thread(cluster.cli, "reconcile", "--dry-run", "--days", "1")
        out = proc.stdout + proc.stderr
        n = count_line(out)
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
        n = count_line(out)
        log(f"verify: rebuild --dry-run: exit {proc.returncode}, differing {n}")
        if proc.returncode != 0 or (n is not None and n != 0):
            f.fail(
                f"rebuild --dry-run {' '.join(args)}: exit {proc.returncode}:\n{out[-3000:]}", log
            )
        elif n is None:
            f.note(f"rebuild --dry-run printed no count of differing buckets:\n{out[-1000:]}", log)
    else:
        f.note("`counters rebuild` does not exist yet: rebuild --dry-run check skipped", log)
