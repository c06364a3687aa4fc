"""Issue 11, found 1: a failing project is logged once per change of state (not on every
pass), counted per project, retried less and less often; and a rebuild or reconcile of a
range holding dead letters warns that recomputing it would drop their events."""

from __future__ import annotations

import logging
import uuid

import pytest

from counters.core.buckets import to_datetime
from counters.engines.rawcopy import RawEntryBlocked
from counters.metrics import Metrics
from tests.support import T0, Harness


def test_failures_logged_once_counted_and_backed_off(caplog: pytest.LogCaptureFixture) -> None:
    from counters.engines.isolation import ProjectBackoff

    metrics = Metrics()
    backoff = ProjectBackoff(metrics)
    tried = []
    with caplog.at_level(logging.INFO, logger="counters.persister"):
        for n in range(40):
            if backoff.due("p"):
                tried.append(n)
                backoff.failed("p", RawEntryBlocked("p", "1-0", len(tried), 3, "NUL"))
    assert tried[:5] == [0, 1, 3, 7, 15]  # sits out 0, 1, 3, 7... passes
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same failure again is not logged again
    assert metrics.persister_project_errors.labels(metrics.project("p"))._value.get() == len(tried)
    with caplog.at_level(logging.INFO, logger="counters.persister"):
        backoff.succeeded("p")
    assert backoff.due("p") and not backoff.failing()
    assert any("persisted again" in r.getMessage() for r in caplog.records)


async def test_reconcile_warns_about_dead_letters_in_range(harness: Harness) -> None:
    from counters.engines.reconcile import reconcile_projects

    async with harness.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO raw_dead_letters (project, stream_id, events, payload, ts_from, ts_to,"
            " error, attempts, first_failed_at, last_failed_at)"
            " VALUES ($1, $2, 7, '\\x00'::bytea, $3, $3, 'x', 3, now(), now())",
            harness.project,
            f"{T0}-{uuid.uuid4().int % 1000}",
            to_datetime(T0),
        )
    harness.clock.set(T0 + 3_600_000)
    lines: list[str] = []
    await reconcile_projects(
        harness.services.rebuilder,
        [harness.project],
        now_ms=harness.clock.now_ms(),
        days=1,
        write=False,
        echo=lines.append,
    )
    assert any("dead-lettered" in line and "7 events" in line for line in lines), lines
