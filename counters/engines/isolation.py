"""Keeping one project's persister failures away from the others.

`is_outage` tells a backend that is down (every project would fail: the whole loop backs
off) from a failure of one project (its data, a bug on its path: only that project is
skipped for a while). `ProjectBackoff` remembers each failing project: it is retried on
the next pass, then after 1, 3, 7, ... skipped passes (at most MAX_SKIPPED_PASSES); each
failure is counted in counters_persister_project_errors_total{project}, and logged once
per change of state (failing with a new error, recovered), not on every pass."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from redis.exceptions import ResponseError

from counters.core.errors import Unavailable
from counters.metrics import Metrics

log = logging.getLogger("counters.persister")

MAX_SKIPPED_PASSES = 31
"""Longest run of passes a failing project sits out between tries (about 30 s at the
default persist_interval_seconds of 1 s)."""

_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
"""Connection exception, insufficient resources, operator intervention (shutdown, cannot
connect now), system error: the server, not the project."""
_PROJECT_REDIS_REPLIES = ("ERR", "WRONGTYPE")
"""Redis error replies that blame the command or its data (a script error, a key of the
wrong type), not the server (BUSY, LOADING, OOM, READONLY, MASTERDOWN... are outages)."""


def is_outage(exc: BaseException) -> bool:
    """Whether exc means a backend is down (back off the whole loop) rather than a failure
    of the one project being persisted (isolate that project, go on with the others).
    Only an Unavailable can be an outage; one caused by a Postgres error of a class that
    blames the statement or its data (22 data, 23 integrity, 42 syntax or access, ...), or
    by a Redis error reply that blames the command, is the project's own failure."""
    if not isinstance(exc, Unavailable):
        return False
    cause = exc.__cause__
    if isinstance(cause, asyncpg.PostgresError):
        sqlstate = str(getattr(cause, "sqlstate", "") or "")
        return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    if isinstance(cause, ResponseError):
        return not str(cause).startswith(_PROJECT_REDIS_REPLIES)
    return True


@dataclass
class _Failing:
    failures: int
    skip: int
    reason: str


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


class ProjectBackoff:
    """Which projects are failing, how many passes each sits out, and the log and metric
    of their failures. One instance per persister loop."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._failing: dict[str, _Failing] = {}

    def due(self, project: str) -> bool:
        """Whether this pass should try the project (always, unless it is failing and
        still sitting out passes; each call for a skipped project uses up one pass)."""
        state = self._failing.get(project)
        if state is None or state.skip <= 0:
            return True
        state.skip -= 1
        return False

    def failing(self) -> dict[str, int]:
        """Failing projects and their consecutive failures."""
        return {p: s.failures for p, s in self._failing.items()}

    def failed(self, project: str, exc: BaseException) -> None:
        """Counts a failure of the project's pass and sets how many passes it sits out;
        logs it when the project was not failing or failed differently before (with the
        traceback if it is not a known kind of failure)."""
        self.metrics.persister_project_errors.labels(self.metrics.project(project)).inc()
        reason = _reason(exc)
        state = self._failing.get(project)
        if state is None:
            state = self._failing[project] = _Failing(0, 0, "")
        state.failures += 1
        state.skip = min(2 ** (state.failures - 1) - 1, MAX_SKIPPED_PASSES)
        if reason == state.reason:
            log.debug("persister: %s still failing (%d): %s", project, state.failures, exc)
            return
        state.reason = reason
        known = isinstance(exc, Unavailable) or hasattr(exc, "reason")
        log.warning(
            "persister: project %s failed, the other projects go on: %s",
            project,
            exc,
            exc_info=None if known else exc,
        )

    def succeeded(self, project: str) -> None:
        """The project's pass went through: it is no longer failing (logged once)."""
        state = self._failing.pop(project, None)
        if state is not None:
            log.info(
                "persister: project %s persisted again after %d failed passes",
                project,
                state.failures,
            )
