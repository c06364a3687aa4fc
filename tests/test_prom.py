"""The Prometheus-HTTP-API surface under /prom, served by uvicorn on a real port in-process
(real Redis and Postgres, manual clock): Prometheus' JSON shapes over HTTP (GET and POST
form), the PromQL subset and its refusals, and Debian's promtool driving query_range."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio
import uvicorn

from counters.core.buckets import MINUTE_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.harness.servers import free_port
from persist.projects import create_key
from tests.support import wait_for

NOW = parse_ts("2026-04-15T12:00:30Z")
BASE = parse_ts("2026-04-15T11:00:00Z")


class Prom(msgspec.Struct):
    url: str
    project: str
    read: str
    client: httpx.AsyncClient


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def prom(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Prom]:
    from api.app import create_app

    project = "pm" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, persister_enabled=False, reconcile_enabled=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(s, ManualClock(NOW)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        await wait_for(lambda: _up(client), bool, what="uvicorn up")
        events = [
            {
                "name": "click",
                "ts": BASE + i * MINUTE_MS + 1,
                "dims": {"source": src},
                "uid": f"u{i % 3}",
                "value": 1.5,
            }
            for i, src in enumerate(["google", "bing", "google", "duck", "google", "bing"])
        ]
        events.append({"name": "signup", "ts": BASE + 2 * MINUTE_MS, "dims": {"country": "DE"}})
        # dims named like the fixed labels, and like read parameters
        clashing = {"name": "promo", "project": "apollo", "limit": "5"}
        events.append({"name": "tagged", "ts": BASE + 2 * MINUTE_MS, "dims": clashing})
        r = await client.post(
            "/v1/events", json=events, headers={"Authorization": f"Bearer {ingest}"}
        )
        assert r.status_code == 200, r.text
        try:
            yield Prom(url, project, read, client)
        finally:
            server.should_exit = True
            await task


async def _up(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def get(p: Prom, path: str, **params: Any) -> Any:
    r = await p.client.get(
        f"/prom/api/v1/{path}", params=params, headers={"Authorization": f"Bearer {p.read}"}
    )
    return r.status_code, r.json()


RANGE = {"start": str(BASE / 1000), "end": str((BASE + 6 * MINUTE_MS) / 1000), "step": "60"}


async def test_query_range_matrix(prom: Prom) -> None:
    status, body = await get(prom, "query_range", query='counters_count{name="click"}', **RANGE)
    assert status == 200 and body["status"] == "success", body
    assert body["data"]["resultType"] == "matrix"
    (series,) = body["data"]["result"]
    assert series["metric"] == {
        "__name__": "counters_count",
        "project": prom.project,
        "name": "click",
    }
    # the sample at t is [t - 1m, t): the first minute's event is at BASE + 1m
    assert series["values"][:2] == [[BASE / 1000, "0"], [(BASE + MINUTE_MS) / 1000, "1"]]
    assert [v for _, v in series["values"]] == ["0"] + ["1"] * 6
    status, body = await get(prom, "query_range", query='sum(counters_sum{name="click"})', **RANGE)
    assert [v for _, v in body["data"]["result"][0]["values"]] == ["0"] + ["1.5"] * 6
    assert body["data"]["result"][0]["metric"] == {}


async def test_sum_by_topk_and_matchers(prom: Prom) -> None:
    def totals(body: Any, label: str) -> dict[str, int]:
        return {
            s["metric"].get(label, ""): sum(int(v) for _, v in s["values"])
            for s in body["data"]["result"]
        }

    _, body = await get(
        prom, "query_range", query='sum by (source) (counters_count{name="click"})', **RANGE
    )
    assert totals(body, "source") == {"google": 3, "bing": 2, "duck": 1}
    _, body = await get(
        prom,
        "query_range",
        query='topk(1, sum by (source) (counters_count{name="click"}))',
        **RANGE,
    )
    assert totals(body, "source") == {"google": 3}
    _, body = await get(
        prom, "query_range", query='counters_count{name="click",source!="google"}', **RANGE
    )
    assert totals(body, "source") == {"bing": 2, "duck": 1}
    _, body = await get(
        prom, "query_range", query='counters_count{name="click",source=~"g.*|d.*"}', **RANGE
    )
    assert totals(body, "source") == {"google": 3, "duck": 1}
    _, body = await get(
        prom, "query_range", query='counters_count{name="click",source!~"g.*"}', **RANGE
    )
    assert totals(body, "source") == {"bing": 2, "duck": 1}
    _, body = await get(
        prom, "query_range", query='counters_count{name="click",source="bing"}', **RANGE
    )
    assert totals(body, "source") == {"bing": 2}
    _, body = await get(
        prom, "query_range", query='sum by (name) (counters_count{name=~"click|signup"})', **RANGE
    )
    assert totals(body, "name") == {"click": 6, "signup": 1}


async def test_post_form_instant_and_scalar(prom: Prom) -> None:
    r = await prom.client.post(
        "/prom/api/v1/query_range",
        data={"query": 'counters_uniques{name="click"}', **RANGE},
        headers={"Authorization": f"Bearer {prom.read}"},
    )
    assert r.status_code == 200 and r.json()["data"]["result"][0]["values"][1][1] == "1"
    t = (BASE + 3 * MINUTE_MS) / 1000
    _, body = await get(prom, "query", query='counters_count{name="click"}', time=str(t))
    assert body["data"]["resultType"] == "vector"
    assert body["data"]["result"][0]["value"] == [t, "1"]
    hour = parse_ts("2026-04-15T12:00:00Z") / 1000
    _, body = await get(
        prom, "query", query='counters_count{name="click"}', time=str(hour), step="1h"
    )
    assert body["data"]["result"][0]["value"] == [hour, "6"]
    _, body = await get(prom, "query", query="1+1", time=str(t))
    assert body["data"] == {"resultType": "scalar", "result": [t, "2"]}


async def test_metadata_endpoints(prom: Prom) -> None:
    _, body = await get(prom, "labels")
    assert {"__name__", "project", "name", "source", "country"} <= set(body["data"])
    _, body = await get(prom, "label/__name__/values")
    assert body["data"] == ["counters_count", "counters_sum", "counters_uniques"]
    _, body = await get(prom, "label/source/values")
    assert body["data"] == ["bing", "duck", "google"]
    _, body = await get(prom, "label/project/values")
    assert body["data"] == [prom.project]
    _, body = await get(prom, "series", **{"match[]": 'counters_count{name="signup"}'})
    assert body["data"] == [
        {"__name__": "counters_count", "project": prom.project, "name": "signup"}
    ]
    _, body = await get(prom, "status/buildinfo")
    assert body["status"] == "success" and body["data"]["version"]


async def test_dims_named_like_fixed_labels_are_exported(prom: Prom) -> None:
    """A dim `name` or `project` is the label exported_name / exported_project (Prometheus'
    convention for a clash), never overwriting the fixed labels; a dim named like a read
    parameter (`limit`) is a filter like any other."""
    query = 'counters_count{name="tagged",exported_name="promo",exported_project=~"a.*",limit="5"}'
    _, body = await get(prom, "query_range", query=query, **RANGE)
    (series,) = body["data"]["result"]
    assert series["metric"] == {
        "__name__": "counters_count",
        "project": prom.project,
        "name": "tagged",
        "exported_name": "promo",
        "exported_project": "apollo",
        "limit": "5",
    }
    _, body = await get(
        prom,
        "query_range",
        query='sum by (exported_name) (counters_count{exported_project="apollo",limit="5"})',
        **RANGE,
    )
    (series,) = body["data"]["result"]
    assert series["metric"] == {"exported_name": "promo"}
    assert sum(int(v) for _, v in series["values"]) == 1
    _, body = await get(
        prom, "query_range", query='counters_count{name="tagged",limit="6"}', **RANGE
    )
    assert all(v == "0" for s in body["data"]["result"] for _, v in s["values"])
    _, body = await get(prom, "labels")
    assert {"exported_name", "exported_project", "limit"} <= set(body["data"])
    _, body = await get(prom, "label/exported_name/values")
    assert body["data"] == ["promo"]


async def test_errors_in_prometheus_shape(prom: Prom) -> None:
    for query, words in [
        ("rate(counters_count[5m])", "function rate"),
        ("avg(counters_count)", "aggregation avg"),
        ("counters_count + 1", "binary operator '+'"),
        ("counters_count{", "expected a label name"),
    ]:
        status, body = await get(prom, "query_range", query=query, **RANGE)
        assert status == 400 and body["status"] == "error" and body["errorType"] == "bad_data"
        assert words in body["error"], body
    status, body = await get(prom, "query_range", query="counters_count", **{**RANGE, "step": "2d"})
    assert status == 400 and "step" in body["error"]
    r = await prom.client.get("/prom/api/v1/labels")
    assert r.status_code == 401 and r.json()["status"] == "error"


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package prometheus; `make promtool` as root)",
)
async def test_promtool_query_range(prom: Prom) -> None:
    proc = await asyncio.create_subprocess_exec(
        "promtool", "query", "range", "--header", f"Authorization=Bearer {prom.read}",
        "--start", str(BASE // 1000), "--end", str((BASE + 6 * MINUTE_MS) // 1000), "--step", "1m",
        "-o", "json", prom.url + "/prom", 'sum by (source) (counters_count{name="click"})',
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    got = {s["metric"]["source"]: sum(int(v) for _, v in s["values"]) for s in result}
    assert got == {"google": 3, "bing": 2, "duck": 1}
