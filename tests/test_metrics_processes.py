"""Processes that add up: `serve --workers 2` with its persister in a process of its own.
/metrics is one view of every worker and the persister process (a scrape on any connection
sees every event counted so far, never one worker's share), the HTTP metrics count by route
template, a killed persister process is restarted and loses and doubles nothing in
Postgres, and a standalone `counters persist --metrics-port` answers /metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.service import Service, create_key, free_port, service_env
from tests.support import Backends, wait_for

pytestmark = pytest.mark.e2e

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of one metric in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((m.group(2) or "", float(m.group(3))))
    return out


def total(text: str, name: str, *labels: str) -> float:
    """Sum of the samples of name whose labels contain every one of labels."""
    return sum(v for lab, v in samples(text, name) if all(x in lab for x in labels))


CLIENT = httpx.Client(headers={"Connection": "close"}, timeout=10)
"""Every request on a new connection (so they reach either worker)."""


def scrape(svc: Service) -> str:
    """/metrics, from whichever worker takes the connection."""
    r = CLIENT.get(svc.url + "/metrics")
    assert r.status_code == 200, r.text
    return r.text


def scrape_until(svc: Service, accept: Callable[[str], bool], timeout: float = 10) -> str:
    """The first scrape accept() holds for (AssertionError with the last one after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(svc)
        if accept(text):
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


def post(svc: Service, key: str, events: list[dict[str, object]]) -> None:
    r = CLIENT.post(svc.url + "/v1/events", json=events, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events)


def children(pid: int) -> list[int]:
    """The child processes of pid (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(p) for p in text)
    return out


def children_running(svc: Service, marker: bytes) -> list[int]:
    """serve's child processes whose command line holds marker."""
    out = []
    for pid in children(svc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            out.append(pid)
    return out


def persister_pid(svc: Service) -> int | None:
    """The pid of serve's persister process (its `--serve-child` child), if running."""
    pids = children_running(svc, b"--serve-child")
    return pids[0] if pids else None


@pytest.fixture(scope="module")
def two_workers(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("two-workers")
    svc = Service(service_env(backends, workdir), workdir / "service.log", ["--workers", "2"])
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def ingest_key(two_workers: Service) -> tuple[str, str]:
    """A project of the module and an ingest key of it."""
    project = "m" + uuid.uuid4().hex[:10]
    return project, create_key(two_workers.env, project, "ingest")


def test_metrics_are_one_view_of_every_worker(
    two_workers: Service, ingest_key: tuple[str, str]
) -> None:
    svc = two_workers
    project, key = ingest_key
    before = scrape(svc)
    accepted0 = total(before, "counters_events_accepted_total")
    posts0 = total(
        before, "counters_http_requests_total", 'route="/v1/events"', 'method="POST"', '"200"'
    )
    batches0 = total(before, "counters_ingest_batch_size_count")
    sent = 0
    seen = []
    for i in range(30):  # each on a new connection: both workers take some
        n = 1 + i % 7
        post(svc, key, [{"name": "click"} for _ in range(n)])
        sent += n
        # every scrape, whichever worker answers, sees every event counted so far
        seen.append(total(scrape(svc), "counters_events_accepted_total") - accepted0)
    assert seen[-1] == sent
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False)), seen
    assert seen == sorted(seen) and all(s > 0 for s in seen)

    text = scrape(svc)
    assert total(text, "counters_events_accepted_total") - accepted0 == sent
    assert total(text, "counters_ingest_batch_size_count") - batches0 == 30
    assert total(text, "counters_ingest_batch_size_sum") >= sent
    r = CLIENT.get(svc.url + f"/v1/projects/{project}/total", params={"name": "click"})
    assert r.status_code == 401
    assert CLIENT.get(svc.url + "/nowhere/" + project).status_code == 404

    # by route template, never the raw path; each worker adds its requests every 0.5 s
    def http_counted(text: str) -> bool:
        def requests(*labels: str) -> float:
            return total(text, "counters_http_requests_total", *labels)

        return (
            requests('route="/v1/events"', 'method="POST"', 'status="200"') - posts0 == 30
            and requests('route="/metrics"', 'method="GET"') >= 31
            and requests('route="/v1/projects/{project}/total"', 'status="401"') == 1
            and requests('route="unmatched"', 'status="404"') >= 1
            and total(text, "http_request_duration_seconds_count", 'route="/v1/events"') >= 30
        )

    text = scrape_until(svc, http_counted)
    assert project not in text
    # one build, two live workers and one persister process (livesum of the live ones)
    (build,) = samples(text, "counters_build_info")
    assert 'version="' in build[0] and 'python="' in build[0] and build[1] == 1
    assert total(text, "counters_processes", 'role="api"') == 2


async def test_a_dead_worker_keeps_its_counts_and_drops_out_of_the_live_gauges(
    two_workers: Service, ingest_key: tuple[str, str]
) -> None:
    svc = two_workers
    _, key = ingest_key
    for _ in range(6):
        post(svc, key, [{"name": "click"}])
    before = total(scrape(svc), "counters_events_accepted_total")
    workers = children_running(svc, b"counters.cli.worker")  # the HTTP workers
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)

    async def replaced() -> list[int]:
        return children_running(svc, b"counters.cli.worker")

    now = await wait_for(
        replaced, lambda w: len(w) == 2 and workers[0] not in w, timeout=15, what="a new worker"
    )
    (new,) = set(now) - set(workers)
    metrics_dir = Path(svc.env["COUNTERS_DATA_DIR"]) / "metrics" / f"serve-{svc.port}"

    def live(pid: int) -> bool:
        return (metrics_dir / f"gauge_livesum_{pid}.db").exists()

    # the dead worker's counts stay in the sum (rate() sees no reset); its live gauge goes
    text = scrape_until(
        svc,
        lambda t: (
            live(new) and not live(workers[0]) and total(t, "counters_processes", 'role="api"') == 2
        ),
    )
    assert total(text, "counters_events_accepted_total") == before


async def test_killed_persister_process_is_restarted_and_loses_nothing(
    two_workers: Service, ingest_key: tuple[str, str], pool: asyncpg.Pool
) -> None:
    svc = two_workers
    project, key = ingest_key
    now = time.time_ns() // 1_000_000
    sent = 0

    def batch(tag: str, n: int) -> None:
        nonlocal sent
        events: list[dict[str, object]] = [
            {"name": "kill", "id": f"{tag}{i}", "ts": now - (1 + i % 5) * 60_000} for i in range(n)
        ]
        post(svc, key, events)
        sent += n

    async def pid() -> int | None:
        return persister_pid(svc)

    first = await wait_for(pid, lambda p: p is not None, what="the persister process")
    assert first is not None
    batch("before", 200)
    os.kill(first, signal.SIGKILL)
    batch("while", 200)  # ingest does not need the persister
    second = await wait_for(
        pid, lambda p: p is not None and p != first, timeout=15, what="a new persister process"
    )
    batch("after", 200)

    async def in_postgres() -> tuple[int, int, int]:
        async with pool.acquire() as conn:
            raw = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM raw_events"
                " WHERE project = $1 AND name = 'kill'",
                project,
            )
            counted = await conn.fetchval(
                "SELECT coalesce(sum(count), 0) FROM rollups_minute"
                " WHERE project = $1 AND name = 'kill' AND rollup = ''",
                project,
            )
        assert raw is not None
        return raw["n"], raw["ids"], int(counted)

    got = await wait_for(
        in_postgres, lambda g: g == (sent, sent, sent), timeout=30, what="every event once"
    )
    assert got == (600, 600, 600)
    assert persister_pid(svc) == second
    # the dead one's live gauge is reaped: one persister process, as before
    scrape_until(svc, lambda t: total(t, "counters_processes", 'role="persister"') == 1)


def test_standalone_persist_serves_its_own_metrics(two_workers: Service) -> None:
    port = free_port()
    env = {**two_workers.env, "COUNTERS_METRICS_TOKEN": "s3cret"}
    log = two_workers.log_path.with_name("persist.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "counters", "persist", "--metrics-port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                r = httpx.get(url, headers=auth, timeout=2)
                if "counters_raw_events_copied_total" in r.text:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        assert r.status_code == 200
        assert samples(r.text, "counters_build_info")
        assert httpx.get(url, timeout=2).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
