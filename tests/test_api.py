"""The HTTP API through a real uvicorn server: auth, validation errors (4xx, nothing
changed), NDJSON, duplicates, the pixel, health and metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from api.pixel import GroupCommitter
from counters.core.models import RawEvent
from tests.service import Service, create_key
from tests.support import wait_for


@dataclass(frozen=True)
class Keys:
    project: str
    ingest: str
    read: str
    admin: str
    other_project: str
    other_read: str


@pytest.fixture(scope="module")
def keys(service: Service) -> Keys:
    project = "api" + uuid.uuid4().hex[:8]
    other = "oth" + uuid.uuid4().hex[:8]
    return Keys(
        project,
        create_key(service.env, project, "ingest"),
        create_key(service.env, project, "read"),
        create_key(service.env, project, "admin"),
        other,
        create_key(service.env, other, "read"),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def total(client: httpx.AsyncClient, keys: Keys, name: str, **params: str) -> int | float:
    r = await client.get(
        f"/v1/projects/{keys.project}/total",
        params={"name": name, "grain": "minute", "excluding_current": "false", **params},
        headers=auth(keys.read),
    )
    assert r.status_code == 200, r.text
    value: int | float = r.json()["value"]
    return value


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_ingest_and_read_back(client: httpx.AsyncClient, keys: Keys) -> None:
    name = "ok" + uuid.uuid4().hex[:6]
    body = [{"name": name, "dims": {"source": "g"}, "uid": "u1", "value": 2.5}]
    r = await client.post("/v1/events", json=body, headers=auth(keys.ingest))
    assert (r.status_code, r.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert await total(client, keys, name) == 1
    assert await total(client, keys, name, measure="sum", source="g") == 2.5
    series = await client.get(
        f"/v1/projects/{keys.project}/series",
        params={"name": name, "grain": "minute", "excluding_current": "false"},
        headers=auth(keys.admin),
    )
    body_json = series.json()
    assert {"name", "measure", "grain", "from", "to", "data"} <= set(body_json)
    assert (body_json["precision"], body_json["tz"], body_json["source"]) == (
        "1m",
        "UTC",
        "rollups",
    )
    assert len(body_json["data"]) == 30 and body_json["data"][-1]["value"] == 1
    assert body_json["data"][0]["bucket"].endswith("Z")


async def test_ndjson_and_duplicates(client: httpx.AsyncClient, keys: Keys) -> None:
    name = "nd" + uuid.uuid4().hex[:6]
    lines = "\n".join(json.dumps({"name": name, "id": f"e{i % 3}"}) for i in range(5))
    headers = {**auth(keys.ingest), "Content-Type": "application/x-ndjson"}
    r = await client.post("/v1/events", content=lines, headers=headers)
    assert r.json() == {"accepted": 3, "duplicates": 2}
    r = await client.post("/v1/events", content=lines, headers=headers)
    assert r.json() == {"accepted": 0, "duplicates": 5}
    assert await total(client, keys, name) == 3


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"[{", "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "empty body"),
        (b'[{"name": 5}]', "application/json", 422, "$[0].name"),
        (b'[{"name": "ok"}, {"name": "Bad Name"}]', "application/json", 422, "$[1].name"),
        (b'[{"name": "ok", "value": "x"}]', "application/json", 422, "$[0].value"),
        (b'[{"name": "ok", "value": 1e300}]', "application/json", 422, "$[0].value"),
        (b'[{"name": "ok", "extra": 1}]', "application/json", 422, "extra"),
        (b'[{"name": "ok", "ts": "yesterday"}]', "application/json", 422, "$[0].ts"),
        (b'[{"name": "ok", "ts": 0}]', "application/json", 422, "max_event_age"),
        (b'[{"name": "ok", "ts": 99999999999999}]', "application/json", 422, "future"),
        (b'[{"name": "ok", "dims": {"Bad": "x"}}]', "application/json", 422, "dims"),
        (b'{"name": "ok"}\n{"name": 1}', "application/x-ndjson", 422, "$[1].name"),
    ],
)
async def test_bad_input_is_4xx_and_changes_nothing(
    client: httpx.AsyncClient, keys: Keys, body: bytes, content_type: str, status: int, needle: str
) -> None:
    before = await total(client, keys, "ok")
    r = await client.post(
        "/v1/events", content=body, headers={**auth(keys.ingest), "Content-Type": content_type}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert error["code"]
    assert await total(client, keys, "ok") == before


async def test_huge_dimension_value_and_too_many_dims(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    r = await client.post(
        "/v1/events", json=[{"name": "ok", "dims": {"link": "é" * 200}}], headers=auth(keys.ingest)
    )
    assert r.status_code == 422 and "256 bytes" in r.json()["error"]["message"]
    dims = {f"d{i}": "x" for i in range(17)}
    r = await client.post(
        "/v1/events", json=[{"name": "ok", "dims": dims}], headers=auth(keys.ingest)
    )
    assert r.status_code == 422 and "dims" in r.json()["error"]["message"]


async def test_oversize_body_and_batch(client: httpx.AsyncClient, keys: Keys) -> None:
    big = b"[" + b",".join([b'{"name":"ok","dims":{"a":"' + b"x" * 250 + b'"}}'] * 20_000) + b"]"
    r = await client.post("/v1/events", content=big, headers=auth(keys.ingest))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    many = [{"name": "ok"}] * 10_001
    r = await client.post("/v1/events", json=many, headers=auth(keys.ingest))
    assert r.status_code == 413 and "10000" in r.json()["error"]["message"]


async def test_auth_errors(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post("/v1/events", json=[{"name": "ok"}])
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await client.post("/v1/events", json=[{"name": "ok"}], headers=auth("ck_nope"))
    assert r.status_code == 401 and "unknown API key" in r.json()["error"]["message"]
    r = await client.post("/v1/events", json=[{"name": "ok"}], headers=auth(keys.read))
    assert r.status_code == 403
    path = f"/v1/projects/{keys.project}/series?name=ok"
    assert (await client.get(path, headers=auth(keys.ingest))).status_code == 403
    # another project's key gets what a missing project gets: no 403/404 oracle
    r = await client.get(path, headers=auth(keys.other_read))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_project"
    r = await client.get("/v1/projects/nosuchproject/series?name=ok", headers=auth(keys.read))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_project"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "name is required"),
        ({"name": "ok", "measure": "avg"}, "measure"),
        ({"name": "ok", "grain": "week"}, "grain"),
        ({"name": "ok", "from": "nope"}, "from/to"),
        ({"name": "ok", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "before"),
        ({"name": "ok", "Bad-Param": "x"}, "unknown parameter"),
        ({"name": "ok", "grain": "hour", "from": "0"}, "looks like epoch seconds"),
        ({"name": "ok", "grain": "hour", "from": "100000000000"}, "at most 10000"),
    ],
)
async def test_bad_read_parameters(
    client: httpx.AsyncClient, keys: Keys, params: dict[str, str], needle: str
) -> None:
    r = await client.get(
        f"/v1/projects/{keys.project}/series", params=params, headers=auth(keys.read)
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


async def test_crosstab_filter(client: httpx.AsyncClient, keys: Keys) -> None:
    name = "xt" + uuid.uuid4().hex[:6]
    events = [
        {"name": name, "dims": {"source": "g", "country": "DE"}},
        {"name": name, "dims": {"source": "g", "country": "FR"}},
        {"name": name, "dims": {"source": "b", "country": "DE"}},
    ]
    await client.post("/v1/events", json=events, headers=auth(keys.ingest))
    assert await total(client, keys, name, source="g", country="DE") == 1
    assert await total(client, keys, name, country="DE") == 2


async def test_pixel_counts_and_always_returns_gif(client: httpx.AsyncClient, keys: Keys) -> None:
    name = "px" + uuid.uuid4().hex[:6]
    good = {"key": keys.ingest, "name": name, "d.source": "mail", "uid": "v1", "value": "3"}
    for params in (good, {**good, "name": "BAD"}, {**good, "key": "wrong"}, {"name": name}):
        r = await client.get("/v1/pixel.gif", params=params)
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/gif"
        assert r.headers["cache-control"].startswith("no-store")
        assert r.content.startswith(b"GIF89a")
    assert await total(client, keys, name) == 1
    assert await total(client, keys, name, measure="sum", source="mail") == 3
    metrics = (await client.get("/metrics")).text
    assert 'counters_events_rejected_total{reason="invalid"}' in metrics
    assert 'counters_events_rejected_total{reason="unauthorized"}' in metrics


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.json() == {"status": "ok", "checks": {"redis": "ok", "postgres": "ok"}}
    text = (await client.get("/metrics")).text
    for metric in (
        "counters_events_accepted_total",
        "counters_persister_lag_seconds",
        "counters_raw_backlog_events",
        "counters_buckets_drained_total",
    ):
        assert metric in text


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_minute_series_past_retention_is_400(client: httpx.AsyncClient, keys: Keys) -> None:
    frm = str(now_ms() - 20 * 86_400_000)
    r = await client.get(
        f"/v1/projects/{keys.project}/series",
        params={"name": "ok", "grain": "minute", "from": frm, "to": str(int(frm) + 600_000)},
        headers=auth(keys.read),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "past_retention"
    assert "oldest available minute" in r.json()["error"]["message"]
    r = await client.get(
        f"/v1/projects/{keys.project}/total",
        params={"name": "ok", "grain": "minute", "from": frm},
        headers=auth(keys.read),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "past_retention"
    text = (await client.get("/metrics")).text
    assert "counters_reconcile_discrepancies" in text


async def test_late_event_is_readable_at_once(client: httpx.AsyncClient, keys: Keys) -> None:
    name = "late" + uuid.uuid4().hex[:6]
    old = now_ms() - 20 * 60_000  # 20 minutes ago: sealed (grace is 1 s here)
    r = await client.post(
        "/v1/events", json=[{"name": name, "ts": old, "value": 4}], headers=auth(keys.ingest)
    )
    assert r.status_code == 200
    assert await total(client, keys, name, **{"from": str(old - 60_000)}) == 1
    assert await total(client, keys, name, measure="sum", **{"from": str(old - 60_000)}) == 4


async def test_huge_minute_range_is_refused_fast(client: httpx.AsyncClient, keys: Keys) -> None:
    """Found by schemathesis: 1m precision over years must be refused before any work."""
    t0 = time.monotonic()
    r = await client.get(
        f"/v1/projects/{keys.project}/series",
        params={"name": "ok", "precision": "1h", "from": "2024-05-01T00:00:00Z"},
        headers=auth(keys.read),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_buckets"
    assert time.monotonic() - t0 < 2


class _SlowIngestor:
    """Stands in for Ingestor in the group-commit unit test: records batches, and holds
    each call until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()

    async def apply(self, project: str, events: list[RawEvent], **_: object) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.batches.append([ev.id for ev in events])
        await self.release.wait()
        self.in_flight -= 1
        if any(ev.id == "boom" for ev in events):
            raise RuntimeError("batch failed")


async def test_pixel_group_commit_batches_in_flight() -> None:
    """Concurrent pixel events share script calls, several calls run at once (never more
    than the limit), every event is applied exactly once, and a failing batch fails only
    its own waiters."""
    slow = _SlowIngestor()
    committer = GroupCommitter(slow, max_in_flight=3)  # type: ignore[arg-type]
    ids: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for wave in range(6):  # six waves while nothing completes: three calls, then queueing
        new = [f"{wave}-{i}" for i in range(10)] + (["boom"] if wave == 4 else [])
        ids += new
        tasks += [
            asyncio.create_task(committer.submit("p", RawEvent("click", 0, i, {}, 0, None, 0)))
            for i in new
        ]
        for _ in range(3):
            await asyncio.sleep(0)

    async def in_flight() -> int:
        return slow.in_flight

    await wait_for(in_flight, lambda n: n == 3, timeout=5, what="three calls in flight")
    slow.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    applied = [i for batch in slow.batches for i in batch]
    assert sorted(applied) == sorted(ids)
    assert slow.most_in_flight == 3
    assert len(slow.batches) < len(ids)
    failed_batch = set(next(batch for batch in slow.batches if "boom" in batch))
    for event_id, result in zip(ids, results, strict=True):
        assert isinstance(result, RuntimeError) == (event_id in failed_batch), event_id
