"""StatsD / DogStatsD over UDP (issue 14 item 1), with the real PyPI clients `statsd` and
`datadog`: a real `counters serve --workers 2` (every worker on the SO_REUSEPORT UDP
address) receives counters, sets, timers, histograms and distributions with tags and
sample rates, read back through the HTTP read API; every refused line is counted in
counters_statsd_rejected_total{reason} and nothing of it is applied. In-process: the
project's events rate limit and a Redis outage drop lines, counted with their reason."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
import statsd
from datadog.dogstatsd import DogStatsd
from datadog.dogstatsd import base as dogstatsd_base
from prometheus_client.parser import text_string_to_metric_families

from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.harness.servers import Backends, free_port
from counters.harness.service import Service, cli, run_cli, service_env
from tests.support import T0, InProcessApp, wait_for

pytestmark = pytest.mark.e2e


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Setup(msgspec.Struct):
    svc: Service
    port: int
    main: str
    other: str
    read: dict[str, str]


@pytest.fixture(scope="module")
def setup(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    main, other = "sd" + uuid.uuid4().hex[:8], "sdo" + uuid.uuid4().hex[:8]
    port = free_udp_port()
    workdir = tmp_path_factory.mktemp("statsd")
    env = service_env(
        backends,
        workdir,
        COUNTERS_STATSD_LISTEN=f"127.0.0.1:{port}",
        COUNTERS_STATSD_PROJECT=main,
        COUNTERS_STATSD_PROJECTS=f"{other},sdunused",
    )
    svc = Service(env, workdir / "service.log", ["--workers", "2"])
    svc.start()
    try:
        out = cli(env, "keys", "create", "--scope", "read", "--project", main, "--project", other)
        read = {"Authorization": "Bearer " + out.strip().splitlines()[-1]}
        yield Setup(svc, port, main, other, read)
    finally:
        svc.stop()


@pytest.fixture(autouse=True)
def always_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both clients drop a sampled metric when random() > rate: with 0.0 they send every
    one, so a rate of 0.25 is one line standing for 4 events, deterministically."""
    monkeypatch.setattr(random, "random", lambda: 0.0)
    monkeypatch.setattr(dogstatsd_base, "random", lambda: 0.0)


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """Makes real clients (statsd.StatsClient for kind "statsd", DogStatsd for "dog", with
    telemetry and origin detection off) and closes their sockets after the test."""
    made: list[Any] = []

    def make(kind: str, port: int, **kw: Any) -> Any:
        if kind == "statsd":
            client: Any = statsd.StatsClient("127.0.0.1", port, **kw)
        else:
            client = DogStatsd(
                host="127.0.0.1",
                port=port,
                disable_telemetry=True,
                origin_detection_enabled=False,
                **kw,
            )
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, DogStatsd):
            client.close_socket()
        else:
            client.close()


async def _total(s: Setup, project: str, name: str, measure: str = "count", **dims: str) -> Any:
    params = {"name": name, "measure": measure, "grain": "minute", "excluding_current": "false"}
    async with httpx.AsyncClient(base_url=s.svc.url, timeout=10) as c:
        r = await c.get(f"/v1/projects/{project}/total", params={**params, **dims}, headers=s.read)
    assert r.status_code == 200, r.text
    return r.json()["value"]


async def totals_reach(s: Setup, project: str, want: dict[tuple[str, ...], Any]) -> None:
    """Waits (deadline 10 s) until every (name, measure, dim=value...) total is as wanted."""

    async def probe() -> dict[tuple[str, ...], Any]:
        out = {}
        for key in want:
            name, measure, *filters = key
            dims = dict(f.split("=", 1) for f in filters)
            out[key] = await _total(s, project, name, measure, **dims)
        return out

    await wait_for(probe, lambda got: got == want, timeout=10, what=f"totals {want}")


def rejected(s: Setup) -> dict[str, float]:
    """counters_statsd_rejected_total by reason, summed over the workers."""
    text = httpx.get(s.svc.url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "counters_statsd_rejected":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["reason"]] = sample.value
    return out


async def test_statsd_client_counters_sets_timers_and_pipeline(
    setup: Setup, clients: Callable[..., Any]
) -> None:
    c = clients("statsd", setup.port, prefix="Shop")
    c.incr("Page Views")  # -> shop.page_views
    c.incr("orders", 3, rate=0.5)  # 6 events, sum 6
    c.timing("checkout", 120)
    c.timing("checkout", 80.5)
    for who in ("alice", "bob", "alice"):
        c.set("visitors", who)
    with c.pipeline() as pipe:  # one datagram, several lines
        pipe.incr("pipe")
        pipe.incr("pipe", 2)
        pipe.timing("pipe.time", 5)
    await totals_reach(
        setup,
        setup.main,
        {
            ("shop.page_views", "count"): 1,
            ("shop.orders", "count"): 6,
            ("shop.orders", "sum"): 6,
            ("shop.checkout", "count"): 2,
            ("shop.checkout", "sum"): 200.5,
            ("shop.visitors", "count"): 3,
            ("shop.visitors", "uniques"): 2,
            ("shop.pipe", "count"): 3,
            ("shop.pipe.time", "sum"): 5,
        },
    )


async def test_dogstatsd_tags_rates_histograms_distributions_projects(
    setup: Setup, clients: Callable[..., Any]
) -> None:
    d = clients("dog", setup.port, constant_tags=["env:prod"])
    d.increment("dd.hits", tags=["source:google"], sample_rate=0.25)  # 4 events
    d.increment("dd.hits", tags=["source:bing"])
    d.histogram("dd.latency", 10, tags=["Route.Name:/home"])
    d.histogram("dd.latency", 30, tags=["Route.Name:/home"])
    d.distribution("dd.size", 7)
    d.timing("dd.timer", 3)
    d.set("dd.users", "u1", tags=[f"project:{setup.other}"])
    d.set("dd.users", "u2", tags=[f"project:{setup.other}"])
    d.increment("dd.other", 5, tags=[f"project:{setup.other}", "source:x"])
    past = int(time.time()) // 60 * 60 - 600  # |T: the event time, ten minutes ago
    d.count_with_timestamp("dd.backfill", 2, timestamp=past)
    await totals_reach(
        setup,
        setup.main,
        {
            ("dd.hits", "count"): 5,
            ("dd.hits", "count", "source=google"): 4,
            ("dd.hits", "count", "env=prod"): 5,
            ("dd.latency", "sum", "route_name=/home"): 40,
            ("dd.latency", "count"): 2,
            ("dd.size", "sum"): 7,
            ("dd.timer", "sum"): 3,
            ("dd.users", "count"): 0,  # the project tag sent them elsewhere
            ("dd.backfill", "count", f"from={past * 1000}", f"to={(past + 60) * 1000}"): 2,
        },
    )
    await totals_reach(
        setup,
        setup.other,
        {
            ("dd.users", "uniques"): 2,
            ("dd.other", "count", "source=x"): 5,
            ("dd.other", "count", "env=prod"): 5,
        },
    )


async def test_refusals_are_counted_and_apply_nothing(
    setup: Setup, clients: Callable[..., Any]
) -> None:
    before = rejected(setup)
    assert set(before) >= {"gauge", "malformed", "invalid_project", "project_not_allowed"}
    d = clients("dog", setup.port)
    d.gauge("bad.gauge", 3)
    d.increment("bad.project", tags=["project:Not A Project"])  # the client sends Not_A_Project
    d.increment("bad.notallowed", tags=["project:sdnotlisted"])
    clients("statsd", setup.port).gauge("bad.gauge", 7)
    # several lines in one datagram: four refused, two counted, in that order
    lines = [
        "bad.gauge:1|g",
        "bad.malformed",
        "bad.malformed:x|c",
        "bad.project:1|c|#project:",
        "ok.sentinel:1|c|#k:v",
        "ok.sentinel:2|ms|#k:v",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto("\n".join(lines).encode(), ("127.0.0.1", setup.port))
    await totals_reach(setup, setup.main, {("ok.sentinel", "count", "k=v"): 2})
    want = {
        "gauge": 3,
        "malformed": 1,
        "invalid_value": 1,
        "invalid_tag": 1,
        "invalid_project": 1,
        "project_not_allowed": 1,
    }

    def grown() -> dict[str, float]:
        now = rejected(setup)
        return {reason: now.get(reason, 0) - before.get(reason, 0) for reason in want}

    deadline = time.monotonic() + 10
    while grown() != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert grown() == want
    for name in ("bad.gauge", "bad.project", "bad.notallowed", "bad.malformed"):
        assert await _total(setup, setup.main, name) == 0
        assert await _total(setup, setup.other, name) == 0


# -- in-process: the rate limit and a backend outage ------------------------------------


async def _listening_app(settings: Settings, project: str, **overrides: Any) -> InProcessApp:
    port = free_udp_port()
    app = InProcessApp(
        msgspec.structs.replace(
            settings, statsd_listen=f"127.0.0.1:{port}", statsd_project=project, **overrides
        ),
        ManualClock(T0),  # frozen: no rate-limit refill during the test
    )
    app.statsd_port = port  # type: ignore[attr-defined]
    return app


def _metric(app: InProcessApp) -> Callable[[str], float]:
    registry = app.state["services"].metrics.registry

    def value(reason: str) -> float:
        return registry.get_sample_value("counters_statsd_rejected_total", {"reason": reason}) or 0

    return value


async def test_over_the_project_rate_limit_lines_are_dropped(
    settings: Settings, clients: Callable[..., Any]
) -> None:
    project = "sdr" + uuid.uuid4().hex[:8]
    app = await _listening_app(settings, project, rate_limit_project_events=1)  # burst 2
    async with app:
        client = clients("statsd", app.statsd_port)  # type: ignore[attr-defined]
        rejected_of = _metric(app)
        accepted = app.state["services"].metrics.events_accepted

        def counted() -> float:
            return sum(s.value for m in accepted.collect() for s in m.samples if "_total" in s.name)

        # a full bucket lets one batch through whatever its size (as for HTTP); the clock
        # is frozen, so nothing refills and the next line is refused whole
        client.incr("burst", 5)
        await wait_for(lambda: _async(counted()), lambda v: v == 5, what="5 events counted")
        client.incr("burst", 2)
        await wait_for(
            lambda: _async(rejected_of("rate_limited")), lambda v: v == 1, what="rate_limited"
        )
        assert counted() == 5


async def test_a_redis_outage_drops_lines_with_a_reason(
    settings: Settings, clients: Callable[..., Any]
) -> None:
    project = "sdx" + uuid.uuid4().hex[:8]
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = await _listening_app(settings, project, redis_url=dead, redis_cluster="off")
    async with app:
        d = clients("dog", app.statsd_port)  # type: ignore[attr-defined]
        rejected_of = _metric(app)
        d.increment("lost", tags=["a:b"])
        d.histogram("lost.h", 4)
        await wait_for(
            lambda: _async(rejected_of("redis_unavailable")),
            lambda v: v == 2,
            what="two lines dropped as redis_unavailable",
        )


async def _async(value: float) -> float:
    return value


@pytest.mark.serial  # measures loop lag: runs alone, after the parallel pass
async def test_a_full_datagram_never_holds_the_event_loop(
    settings: Settings, clients: Callable[..., Any]
) -> None:
    """A 64 KB datagram of 9,000 lines is ~100-150 ms of parsing: the listener gives the
    loop back every couple of milliseconds, so a task ticking every millisecond never
    waits long, and every line is counted."""
    project = "sdl" + uuid.uuid4().hex[:8]
    app = await _listening_app(settings, project)
    async with app:
        accepted = app.state["services"].metrics.events_accepted
        lines = 9_000
        datagram = "\n".join(["t:1|ms"] * lines).encode()
        assert len(datagram) < 65_000
        gaps: list[float] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(datagram, ("127.0.0.1", app.statsd_port))  # type: ignore[attr-defined]

        def counted() -> float:
            return sum(s.value for m in accepted.collect() for s in m.samples if "_total" in s.name)

        try:
            await wait_for(lambda: _async(counted()), lambda v: v == lines, what="all counted")
        finally:
            ticker.cancel()
        # sliced: ~45 ms at worst here (the batches' own ingest work, as for HTTP, and a
        # shared machine); parsed in one go, the datagram held the loop 152 ms
        assert max(gaps) < 0.1, f"the loop was held {max(gaps) * 1000:.0f} ms"


def test_a_busy_udp_address_fails_serve_at_once(
    backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Another program on the UDP port: serve exits 1 naming statsd_listen before any
    worker starts (not a worker restarted forever)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env = service_env(
            backends,
            tmp_path_factory.mktemp("statsd-busy"),
            COUNTERS_STATSD_LISTEN=f"127.0.0.1:{port}",
            COUNTERS_STATSD_PROJECT="sdbusy",
        )
        proc = run_cli(env, "serve", "--port", str(free_port()), "--workers", "2", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"statsd_listen 127.0.0.1:{port}" in proc.stderr
    assert "Address already in use" in proc.stderr
