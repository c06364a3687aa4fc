"""The process-log check of a fault run: no unexpected error, no crash."""

from __future__ import annotations

from counters.harness.faults.cluster import Cluster, Log, log_tail
from counters.harness.faults.findings import Findings

BENIGN_BEFORE_TRACEBACK = ("WARNING asyncpg.pool",)
"""Log records that come with a traceback but are not errors: asyncpg retrying its pool's
minimum size while Postgres restarts."""
SURVIVED_BEFORE_TRACEBACK = ("persister: pass failed",)
"""A pass that failed on something unexpected, logged, and retried: noted, not a failure
(the data checks say whether it mattered)."""


def _exception_of(lines: list[str], at: int) -> list[str]:
    """The last frames and the exception line of the traceback at or after lines[at] (what
    names the error; a traceback's middle is mostly the framework's frames)."""
    start = next(
        (j for j in range(at, min(at + 3, len(lines))) if lines[j].startswith("Traceback")), None
    )
    if start is None:
        return []
    end = start + 1
    while end < len(lines) and (lines[end].startswith(" ") or not lines[end]):
        end += 1
    return ["  [...]", *lines[max(start + 1, end - 12) : end + 1]]


def check_logs(cluster: Cluster, f: Findings, log: Log) -> None:
    """Never a 500 and no crash: the service log holds no unexpected error, no process log a
    traceback (other than asyncpg's own pool warnings while Postgres restarts; a persister
    pass that failed and was retried is noted)."""
    procs = [*cluster.persisters, *([cluster.service] if cluster.service else [])]
    for p in procs:
        lines = log_tail(p.log_path, 50_000_000).splitlines()
        survived: list[int] = []
        for i, line in enumerate(lines):
            before = lines[i - 1] if i else ""
            if line.startswith("Traceback") and any(b in before for b in SURVIVED_BEFORE_TRACEBACK):
                survived.append(i)
                continue
            bad = "unexpected error" in line or (
                line.startswith("Traceback")
                and not any(b in before for b in BENIGN_BEFORE_TRACEBACK)
            )
            if bad:
                excerpt = "\n".join(lines[max(0, i - 3) : i + 3] + _exception_of(lines, i))
                f.fail(f"{p.name} log ({p.log_path}) holds an error:\n{excerpt}", log)
                break
        if survived:
            i = survived[0]
            last = next((x for x in lines[i + 1 : i + 80] if x and not x.startswith(" ")), "")
            f.note(
                f"{p.name}: {len(survived)} passes failed and were retried, e.g."
                f" {lines[i - 1][:200]} ... {last[:300]}",
                log,
            )
