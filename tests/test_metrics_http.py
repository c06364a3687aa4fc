"""The HTTP metrics in one process (no multiprocess directory): request tallies flushed into
counters_http_requests_total and http_request_duration_seconds exactly as one observe() per
request would give, counted by route template through the real app; build info."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.metrics import HTTP_DURATION_BUCKETS, Metrics
from tests.support import T0, InProcessApp


def lines(text: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric's samples ('' for none)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            out[head[len(name) :]] = float(value)
    return out


def test_tallies_render_as_one_observe_per_request() -> None:
    metrics = Metrics(project_labels=False)
    reference = CollectorRegistry()
    ref = Histogram(
        "http_request_duration_seconds",
        "x",
        ["route", "method"],
        buckets=HTTP_DURATION_BUCKETS,
        registry=reference,
    )
    durations = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.2, 9.0, 11.0, 0.0005]
    for d in durations:
        metrics.observe_request("/v1/events", "POST", 200, d)
        ref.labels("/v1/events", "POST").observe(d)
    metrics.observe_request("/v1/events", "BREW", 404, 0.01)
    text = metrics.render().decode()
    want = generate_latest(reference).decode()
    for suffix in ("_bucket", "_count", "_sum"):
        name = "http_request_duration_seconds" + suffix
        got = {k: v for k, v in lines(text, name).items() if 'method="POST"' in k}
        assert got == lines(want, name)
    requests = lines(text, "counters_http_requests_total")
    assert requests['{method="POST",route="/v1/events",status="200"}'] == len(durations)
    assert requests['{method="other",route="/v1/events",status="404"}'] == 1
    metrics.flush_http()  # nothing new: nothing added
    assert lines(metrics.render().decode(), "counters_http_requests_total") == requests


async def test_app_counts_by_route_template(settings: Settings) -> None:
    async with InProcessApp(settings, ManualClock(T0)) as app:
        assert app.client is not None
        project = "h" + uuid.uuid4().hex[:8]
        for _ in range(3):
            r = await app.client.get(f"/v1/projects/{project}/total", params={"name": "x"})
            assert r.status_code == 401
        assert (await app.client.get("/no/such/" + project)).status_code == 404
        assert (await app.client.delete("/healthz")).status_code == 405
        text = (await app.client.get("/metrics")).text
    assert project not in text
    requests = lines(text, "counters_http_requests_total")
    assert requests['{method="GET",route="/v1/projects/{project}/total",status="401"}'] == 3
    assert requests['{method="GET",route="unmatched",status="404"}'] == 1
    assert requests['{method="DELETE",route="/healthz",status="405"}'] == 1
    (build,) = lines(text, "counters_build_info").items()
    assert 'version="' in build[0] and build[1] == 1
    assert lines(text, "counters_processes") == {'{role="api"}': 1.0}
