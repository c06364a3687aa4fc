"""What a fault run's verification found: failures, notes and the figures it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from counters.harness.faults.cluster import Log


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: int = 0
    double: int = 0
    cells: int = 0
    bad_cells: int = 0
    raw_rows: int = 0
    raw_missing: int = 0
    raw_extra: int = 0
    raw_repeated: int = 0
    uniques: dict[str, tuple[int, int]] = field(default_factory=dict)
    drain_seconds: float = 0.0
    losses: int = 0
    at_risk: int = 0
    """Acknowledged events a Redis total loss could take (not in Postgres at the loss)."""
    lost_to_loss: int = 0
    """Of those, gone from the raw log at the end: exactly what the losses cost."""
    reaccepted: int = 0
    """Of the at-risk events, how many came back through a client re-send."""
    uncounted: int = 0
    """Events in the raw log missing from the minute totals right after the drain (their
    counts lived only in Redis); a rebuild of the range then puts them back."""
    in_progress_short: int = 0
    """After the repair: how far the day totals still in progress fall short of the truth
    (counts of late events whose generation went with Redis; the reconcile after the day
    seals repairs them)."""
    hour_day_rows_differ: int = 0
    repaired: int | None = None
    """Buckets that rebuild rewrote after a loss (None: no loss)."""

    def fail(self, text: str, log: Log) -> None:
        self.failures.append(text)
        log("verify: FAILURE " + text)

    def note(self, text: str, log: Log) -> None:
        self.notes.append(text)
        log("verify: note: " + text)
