"""The real PostHog and Segment Python SDKs, unchanged, pointed at a running counters."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from posthog import Posthog
from segment.analytics import Client as SegmentClient
from segment.analytics.request import APIError as SegmentError
from segment.analytics.request import post as segment_post

from counters.core.models import normalize_name
from tests.service import Service, create_key
from tests.support import wait_for


class Project:
    def __init__(self, service: Service) -> None:
        self.name = "sdk" + uuid.uuid4().hex[:6]
        self.ingest = create_key(service.env, self.name, "ingest")
        self.read = create_key(service.env, self.name, "read")
        self.url = service.url


@pytest.fixture(scope="module")
def proj(service: Service) -> Project:
    return Project(service)


async def total(p: Project, name: str, **params: str) -> float:
    async with httpx.AsyncClient(base_url=p.url) as c:
        r = await c.get(
            f"/v1/projects/{p.name}/total",
            params={"name": name, "grain": "minute", "excluding_current": "false", **params},
            headers={"Authorization": f"Bearer {p.read}"},
        )
    assert r.status_code == 200, r.text
    value: float = r.json()["value"]
    return value


def dropped(p: Project, source: str) -> float:
    text = httpx.get(p.url + "/metrics").text
    found = re.search(rf'counters_dims_dropped_total{{source="{source}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_normalise() -> None:
    assert normalize_name("Order Completed") == "order_completed"
    assert normalize_name("$pageview") == "_pageview"
    assert normalize_name("A  /-b.C") == "a_-b.c"
    assert len(normalize_name("x" * 100)) == 64


async def test_posthog_sdk(proj: Project) -> None:
    errors: list[object] = []
    ph = Posthog(
        proj.ingest,
        host=proj.url + "/posthog",
        gzip=True,
        on_error=lambda e, batch: errors.append(e),
        enable_exception_autocapture=False,
    )
    props = {"plan": "pro", "revenue": 12.5, "$lib_x": "ignored", "n": 3}
    for i in range(3):
        ph.capture("Order Completed", distinct_id=f"u{i % 2}", properties=props)
    many = {f"p{i:02d}": "v" for i in range(20)}
    before = dropped(proj, "posthog")
    ph.capture("wide", distinct_id="u9", properties=many)
    ph.flush()
    ph.shutdown()
    assert errors == []
    assert await total(proj, "order_completed") == 3
    assert await total(proj, "order_completed", measure="sum", plan="pro") == 37.5
    assert await total(proj, "order_completed", measure="uniques") == 2
    assert await total(proj, "wide") == 1
    await wait_for(
        lambda: _async(dropped(proj, "posthog")), lambda v: v >= before + 4, what="dropped"
    )

    bad: list[Exception] = []
    ph2 = Posthog("nosuchkey", host=proj.url + "/posthog", on_error=lambda e, b: bad.append(e))
    ph2.capture("x", distinct_id="u")
    ph2.flush()
    ph2.shutdown()
    assert len(bad) == 1 and getattr(bad[0], "status", None) == 401
    assert "unknown API key" in str(bad[0])


async def _async(v: float) -> float:
    return v


async def test_segment_sdk(proj: Project) -> None:
    errors: list[object] = []
    seg = SegmentClient(
        proj.ingest, host=proj.url + "/segment", on_error=lambda e, b: errors.append(e)
    )
    for i in range(4):
        seg.track(f"user{i % 3}", "Order Completed", {"plan": "team", "revenue": 10})
    seg.page("user1", name="Home", properties={"path": "/"})
    seg.identify("user1", {"email": "a@b.c"})
    seg.flush()
    seg.join()
    assert errors == []
    assert await total(proj, "order_completed", plan="team") == 4
    assert await total(proj, "order_completed", measure="sum", plan="team") == 40
    assert await total(proj, "order_completed", measure="uniques", plan="team") == 3
    assert await total(proj, "page", path="/") == 1

    with pytest.raises(SegmentError) as bad:
        segment_post("nosuchkey", proj.url + "/segment", batch=[{"type": "track", "event": "x"}])
    assert (bad.value.status, bad.value.code) == (401, "unauthorized")

    big = {"type": "track", "event": "big", "userId": "u", "properties": {"blob": "x" * 40_000}}
    with pytest.raises(SegmentError) as too_big:
        segment_post(proj.ingest, proj.url + "/segment", batch=[big])
    assert (too_big.value.status, too_big.value.code) == (400, "message_too_large")
    assert await total(proj, "big") == 0

    r = httpx.post(
        proj.url + "/segment/v1/track",
        json={"writeKey": proj.ingest, "event": "Signed Up", "anonymousId": "a1"},
    )
    assert (r.status_code, r.json()) == (200, {"success": True})
    assert await total(proj, "signed_up") == 1


async def test_posthog_js_bodies(proj: Project) -> None:
    """What posthog-js sends: an array with the token in properties, gzip by
    ?compression=gzip-js, or the base64 form field `data`."""
    import base64
    import gzip
    import json

    events = [{"event": "JS Click", "properties": {"token": proj.ingest, "distinct_id": "j1"}}]
    raw = json.dumps(events).encode()
    r1 = httpx.post(
        proj.url + "/posthog/i/v0/e/?compression=gzip-js",
        content=gzip.compress(raw),
        headers={"Content-Type": "text/plain"},
    )
    r2 = httpx.post(proj.url + "/posthog/e/", data={"data": base64.b64encode(raw).decode()})
    assert [r1.status_code, r2.status_code] == [200, 200] and r1.json() == {"status": 1}
    assert await total(proj, "js_click", measure="uniques") == 1
    assert await total(proj, "js_click") == 2
    bomb = httpx.post(
        proj.url + "/posthog/batch/",
        content=gzip.compress(b" " * 6_000_000),
        headers={"Content-Encoding": "gzip"},
    )
    assert bomb.status_code == 413 and bomb.json()["code"] == "payload_too_large"
