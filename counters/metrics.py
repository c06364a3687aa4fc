"""Prometheus metrics, one Metrics object per app or persister (no process globals).

One process alone (an app in a test, a standalone `counters persist`): the values live in
the Metrics' own registry. Under `counters serve`, every worker and the persister process
write their values to files in one directory (prometheus_client's multiprocess mode,
PROMETHEUS_MULTIPROC_DIR, set by serve before any worker starts), and a scrape of any
worker renders the sum over all of them (MultiProcessCollector): counters add up across
processes and stay monotonic when a worker is replaced, gauges use the mode that fits."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import glob
import hmac
import os
import platform
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
    values,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from counters.core.buckets import GRAINS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where every process of one `counters serve` run writes its metric values."""

HTTP_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route label of a request no route matched (never the raw path)."""


def multiprocess_dir() -> str | None:
    """The directory this process writes its metric values to, when prometheus_client runs
    in multiprocess mode (PROMETHEUS_MULTIPROC_DIR was set before the first metric)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and getattr(values.ValueClass, "_multiprocess", False):
        return path
    return None


def use_multiprocess_dir(path: Path) -> None:
    """Empties (creates) path and makes this process and every child started after it
    write metric values there. Call before the first metric of the process is built."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks its value class on import; this process may have imported it
    # already (no metric exists yet: the values of those built from now on go to the files)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


_PID_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def reap_dead_processes(path: str) -> list[int]:
    """mark_process_dead for every process that wrote live gauges to path and is gone (its
    livesum/livemax/... values then drop out of the sum); returns their pids."""
    pids = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _PID_FILE.search(name)
        if m:
            pids.add(int(m.group(1)))
    dead = []
    for pid in sorted(pids):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
            dead.append(pid)
        except PermissionError:
            pass
    return dead


class DeadProcessReaper:
    """While entered, a thread runs reap_dead_processes(path) every `every` seconds (in
    `counters serve`'s main process: uvicorn replaces dead workers, this drops their live
    gauges)."""

    def __init__(self, path: str, every: float = 1.0) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-reaper", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            reap_dead_processes(self.path)

    def __enter__(self) -> DeadProcessReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _version() -> str:
    try:
        return metadata.version("counters")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a plain checkout
        return "unknown"


class Metrics:
    """Every metric counters exports."""

    def __init__(self, *, project_labels: bool = True) -> None:
        self.project_labels = project_labels
        """Whether project names appear as label values (settings.metrics_project_labels)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir()
        """Set: values are in files shared by every process of the run, render sums them."""
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
        self.dims_dropped = Counter(
            "counters_dims_dropped",
            "SDK properties not kept as dims (past the dim limit or not storable), by source",
            ["source"],
            registry=r,
        )
        self.sdk_ignored = Counter(
            "counters_sdk_ignored",
            "SDK messages that are not events (identify, alias, ...), by source",
            ["source"],
            registry=r,
        )
        self.persister_lag = Gauge(
            "counters_persister_lag_seconds",
            "How far Postgres lags the newest closed minute bucket, worst project",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.grain_lag = Gauge(
            "counters_persister_grain_lag_seconds",
            "Now minus the Postgres watermark of each grain (every bucket before it is in"
            " Postgres), worst project",
            ["grain"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.redis_only_buckets = Gauge(
            "counters_redis_only_buckets",
            "Buckets of each grain whose data is only in Redis (hot, or sealed and not yet"
            " copied; for hour and day this includes the current hour and day holding merged"
            " minutes), all projects",
            ["grain"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.raw_backlog = Gauge(
            "counters_raw_backlog_events",
            "Raw-log events in Redis not yet copied to Postgres, all projects",
            registry=r,
            multiprocess_mode="mostrecent",
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
            multiprocess_mode="mostrecent",
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
            multiprocess_mode="mostrecent",
        )
        self.link_clicks = Counter(
            "counters_link_clicks",
            "Follows of click-tracking links (GET /r/<id>) counted as events",
            registry=r,
        )
        self.link_clicks_dropped = Counter(
            "counters_link_clicks_dropped",
            "Follows of links redirected but not counted, by reason (rate_limited,"
            " unavailable, invalid, ...)",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "counters_rate_limited",
            "Requests refused by a rate limit, by limit (ingest, read, project_events)",
            ["limit"],
            registry=r,
        )

        self.http_requests = Counter(
            "counters_http_requests",
            "HTTP requests answered, by route template (unmatched: no route), method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response's end, by route template",
            ["route", "method"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=r,
        )
        self.ingest_batch_size = Histogram(
            "counters_ingest_batch_size",
            "Events per accepted POST /v1/events batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "counters_build_info",
            "Always 1: the counters version and the Python running it",
            ["version", "python"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.processes = Gauge(
            "counters_processes",
            "Live counters processes of this run by role (api worker, persister)",
            ["role"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.statsd_lines = Counter(
            "counters_statsd_lines",
            "StatsD / DogStatsD lines received over UDP (counted or refused)",
            registry=r,
        )
        self.statsd_rejected = Counter(
            "counters_statsd_rejected",
            "StatsD / DogStatsD lines not counted, by reason (a datagram dropped unread"
            " because the listener's queue was full counts once, as queue_full)",
            ["reason"],
            registry=r,
        )
        self._tallies: dict[tuple[str, str, int], _Tally] = {}
        # Series of the known label values exist from the start, at 0 (rate() needs the
        # zero, and in multiprocess mode a metric with no series is not listed at all).
        for grain in GRAINS:
            for per_grain in (self.buckets_drained, self.grain_lag, self.redis_only_buckets):
                per_grain.labels(grain.name)
        if not project_labels:
            self.events_accepted.labels("_")
            self.duplicates.labels("_")
        for backend in ("redis", "postgres", "other"):
            self.persister_errors.labels(backend)
        for limit in ("ingest", "read", "project_events"):
            self.rate_limited.labels(limit)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts one answered request and its duration (route: the route template or
        UNMATCHED; a method outside METHODS counts as "other"). Cheap on the request path
        (plain Python numbers, about half a microsecond): the tallies reach the Prometheus
        values at the next flush_http (a render, or flush_http_every's loop)."""
        tally = self._tallies.get((route, method, status))
        if tally is None:
            tally = self._tally(route, method, status)
        tally.count += 1
        tally.seconds += seconds
        tally.buckets[bisect.bisect_left(HTTP_DURATION_BUCKETS, seconds)] += 1

    def _tally(self, route: str, method: str, status: int) -> _Tally:
        shown = method if method in METHODS else "other"
        tally = _Tally(
            self.http_requests.labels(route, shown, str(status)),
            self.http_duration.labels(route, shown),
        )
        if len(self._tallies) < 10_000:  # bounded: routes x methods x statuses
            self._tallies[(route, method, status)] = tally
        else:  # pragma: no cover - a flood of odd methods: counted at once, not cached
            tally.flush()
        return tally

    def flush_http(self) -> None:
        """Moves the request tallies of observe_request into the Prometheus values (in
        multiprocess mode: into this process's file, where every scrape sees them)."""
        for tally in self._tallies.values():
            if tally.count:
                tally.flush()

    async def flush_http_every(self, seconds: float, stop: asyncio.Event) -> None:
        """flush_http every `seconds` until stop is set (then once more): another worker's
        scrape sees this worker's requests at most that late."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            self.flush_http()

    def project(self, name: str) -> str:
        """The label value for a project: its name when metrics_project_labels is on, else
        "_" (so /metrics never lists tenants unless asked to)."""
        return name if self.project_labels else "_"

    def exposition_registry(self) -> CollectorRegistry:
        """The registry a scrape renders: this process's own, or in multiprocess mode one
        that sums the files of every process of the run."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return registry

    def render(self) -> bytes:
        """Prometheus text exposition of everything (of every process of the run in
        multiprocess mode; this process's request tallies flushed first)."""
        self.flush_http()
        return generate_latest(self.exposition_registry())


class _Tally:
    """Requests of one (route, method, status) not yet in the Prometheus values."""

    __slots__ = ("requests", "duration", "count", "seconds", "buckets")

    def __init__(self, requests: Any, duration: Any) -> None:
        self.requests = requests
        self.duration = duration
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(HTTP_DURATION_BUCKETS) + 1)

    def flush(self) -> None:
        """Adds the tally to the counter and the histogram (whose per-bucket values are
        prometheus_client's own: one observe() per request would cost ~3 us each in
        multiprocess mode), then zeroes it."""
        self.requests.inc(self.count)
        self.duration._sum.inc(self.seconds)
        for i, n in enumerate(self.buckets):
            if n:
                self.duration._buckets[i].inc(n)
                self.buckets[i] = 0
        self.count = 0
        self.seconds = 0.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


class MetricsServer:
    """GET /metrics of one Metrics on its own port (threads, for `counters persist
    --metrics-port`); with a token, 401 unless `Authorization: Bearer <token>`."""

    def __init__(self, metrics: Metrics, host: str, port: int, token: str | None) -> None:
        inner = make_wsgi_app(metrics.exposition_registry())

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            given = environ.get("HTTP_AUTHORIZATION", "")
            if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                start_response("401 Unauthorized", [("Content-Type", "application/json")])
                return [b'{"error":{"code":"unauthorized","message":"/metrics needs a token"}}']
            result: Iterable[bytes] = inner(environ, start_response)
            return result

        self.server = make_server(host, port, app, ThreadingWSGIServer, _QuietHandler)
        self.port = int(self.server.server_port)
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-server", daemon=True
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[MetricsServer]:
        """Serves while entered."""
        self._thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(5)
