"""Prometheus metrics, one registry per app or persister (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    """Every metric counters exports."""

    def __init__(self, *, project_labels: bool = True) -> None:
        self.project_labels = project_labels
        """Whether project names appear as label values (settings.metrics_project_labels)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_accepted = Counter(
            "counters_events_accepted", "Events counted", ["project"], registry=r
        )
        self.duplicates = Counter(
            "counters_events_duplicate",
            "Events dropped as repeats of a seen id",
            ["project"],
            registry=r,
        )
        self.rejected = Counter(
            "counters_events_rejected",
            "Requests or events refused, by reason",
            ["reason"],
            registry=r,
        )
        self.persister_lag = Gauge(
            "counters_persister_lag_seconds",
            "How far Postgres lags the newest closed minute bucket, worst project",
            registry=r,
        )
        self.grain_lag = Gauge(
            "counters_persister_grain_lag_seconds",
            "Now minus the Postgres watermark of each grain (every bucket before it is in"
            " Postgres), worst project",
            ["grain"],
            registry=r,
        )
        self.redis_only_buckets = Gauge(
            "counters_redis_only_buckets",
            "Buckets of each grain whose data is only in Redis (hot, or sealed and not yet"
            " copied; for hour and day this includes the current hour and day holding merged"
            " minutes), all projects",
            ["grain"],
            registry=r,
        )
        self.raw_backlog = Gauge(
            "counters_raw_backlog_events",
            "Raw-log events in Redis not yet copied to Postgres, all projects",
            registry=r,
        )
        self.buckets_drained = Counter(
            "counters_buckets_drained", "Closed buckets copied to Postgres", ["grain"], registry=r
        )
        self.late_applied = Counter(
            "counters_late_deltas_applied", "Late-event deltas applied to Postgres", registry=r
        )
        self.raw_copied = Counter(
            "counters_raw_events_copied", "Raw-log events copied to Postgres", registry=r
        )
        self.dims_folded = Counter(
            "counters_events_dims_folded",
            "Events whose dim values went to __other__ (cardinality cap)",
            registry=r,
        )
        self.reconcile_discrepancies = Gauge(
            "counters_reconcile_discrepancies",
            "Rollup rows the latest reconcile of each project found different from the raw log"
            " or, for hours and days, from the minute rows they are made of",
            registry=r,
        )
        self.persister_errors = Counter(
            "counters_persister_errors", "Persister passes that failed", ["backend"], registry=r
        )

        self.persister_project_errors = Counter(
            "counters_persister_project_errors",
            "Persister passes that failed for one project (the others go on)",
            ["project"],
            registry=r,
        )
        self.deadletter_moved = Counter(
            "counters_deadletter_moved",
            "Raw-log entries moved to the dead-letter table after repeated copy failures",
            registry=r,
        )
        self.deadletter_entries = Gauge(
            "counters_deadletter_entries",
            "Raw-log entries waiting in the dead-letter table, all projects",
            registry=r,
        )
        self.rate_limited = Counter(
            "counters_rate_limited",
            "Requests refused by a rate limit, by limit (ingest, read, project_events)",
            ["limit"],
            registry=r,
        )

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts one HTTP request answered outside the Starlette middleware stack (today the
        pixel's lean route, api/pixel_route.py, calls it once per request with its route
        template, method, status and time to the response head). The single hook for the
        HTTP request metrics (counters_http_requests_total{route,method,status} and the
        duration histogram): it records nothing until they exist."""

    def project(self, name: str) -> str:
        """The label value for a project: its name when metrics_project_labels is on, else
        "_" (so /metrics never lists tenants unless asked to)."""
        return name if self.project_labels else "_"

    def render(self) -> bytes:
        """Prometheus text exposition of everything."""
        return generate_latest(self.registry)
