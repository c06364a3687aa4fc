"""Issue 11, found 1 and 9: strings Postgres `text` cannot hold or the rules exclude (NUL,
C0/C1 controls, U+2028/9, lone surrogates, invalid UTF-8) and duplicate JSON keys are
refused at the edge: 422 naming the field for POST, the GIF plus rejected{reason} for the
pixel, and nothing counted."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from counters.harness.service import Service, create_key

BAD = ["u\x00v", "a\x1fb", "a\x7fb", "a\x85b", "a\u2028b", "a\u2029b", "a\x9bb"]


@pytest.fixture(scope="module")
def keys(service: Service) -> tuple[str, str, str]:
    project = "edge" + uuid.uuid4().hex[:8]
    return (
        project,
        create_key(service.env, project, "ingest"),
        create_key(service.env, project, "read"),
    )


@pytest.fixture()
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as c:
        yield c


def rejected(c: httpx.Client, reason: str) -> float:
    text = c.get("/metrics").text
    pattern = r'counters_events_rejected_total\{reason="' + reason + r'"\} ([0-9.e+]+)'
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def total(c: httpx.Client, keys: tuple[str, str, str], name: str) -> int:
    project, _, read = keys
    r = c.get(
        f"/v1/projects/{project}/total",
        params={"name": name, "grain": "minute", "excluding_current": "false"},
        headers={"Authorization": f"Bearer {read}"},
    )
    assert r.status_code == 200, r.text
    value: int = r.json()["value"]
    return value


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", ["uid", "id", "dims.city"])
def test_post_refuses_bad_characters(
    client: httpx.Client, keys: tuple[str, str, str], field: str, bad: str
) -> None:
    event: dict[str, object] = {"name": "click"}
    if field.startswith("dims."):
        event["dims"] = {"city": bad}
    else:
        event[field] = bad
    r = client.post(
        "/v1/events",
        json=[{"name": "click"}, event],
        headers={"Authorization": f"Bearer {keys[1]}"},
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_string"
    assert error["message"].startswith(f"$[1].{field}:")


def test_bad_name_refused(client: httpx.Client, keys: tuple[str, str, str]) -> None:
    r = client.post(
        "/v1/events", json=[{"name": "cl\x00ick"}], headers={"Authorization": f"Bearer {keys[1]}"}
    )
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("$[0].name")


@pytest.mark.parametrize(
    "body",
    [
        rb'[{"name":"click","uid":"\ud800"}]',  # lone high surrogate escape
        rb'[{"name":"click","uid":"x\udc00"}]',  # lone low surrogate escape
        b'[{"name":"click","uid":"\xff\xfe"}]',  # invalid UTF-8
        b'[{"name":"click","uid":"\xed\xa0\x80"}]',  # an encoded surrogate
    ],
)
def test_post_refuses_surrogates_and_invalid_utf8(
    client: httpx.Client, keys: tuple[str, str, str], body: bytes
) -> None:
    r = client.post(
        "/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {keys[1]}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_string"
    assert r.json()["error"]["message"].startswith("$[0].uid")


@pytest.mark.parametrize(
    "query",
    [
        "uid=%00",
        "id=a%00b",
        "uid=a%C2%85b",
        "uid=a%E2%80%A8b",
        "d.city=x%1Fy",
        "uid=%FF",
        "id=%ED%A0%80",
        "name=cl%00ick",
    ],
)
def test_pixel_refuses_bad_characters(
    client: httpx.Client, keys: tuple[str, str, str], query: str
) -> None:
    name = "px" + uuid.uuid4().hex[:6]
    before = rejected(client, "invalid_string") + rejected(client, "invalid")
    r = client.get(f"/v1/pixel.gif?key={keys[1]}&name={name}&{query}")
    assert r.status_code == 200 and r.content.startswith(b"GIF")
    assert rejected(client, "invalid_string") + rejected(client, "invalid") == before + 1
    assert total(client, keys, name) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "where"),
    [
        (b'[{"name":"bad","name":"good"}]', "application/json", "$[0].name"),
        (b'{"name":"bad","name":"good"}', "application/json", "$[0].name"),
        (
            b'[{"name":"a"},{"name":"a","dims":{"k":"1","k":"2"}}]',
            "application/json",
            "$[1].dims.k",
        ),
        (b'{"name":"a"}\n{"name":"a","uid":"x","uid":"y"}\n', "application/x-ndjson", "$[1].uid"),
        (
            b'[{"name":"a","ts":"2026-03-01T10:00:00Z","ts":"2026-03-01T10:00:01Z"}]',
            "application/json",
            "$[0].ts",
        ),
        (rb'[{"name":"bad","name":"good","uid":"\u003a"}]', "application/json", "$[0].name"),
    ],
)
def test_duplicate_keys_refused(
    client: httpx.Client, keys: tuple[str, str, str], body: bytes, content_type: str, where: str
) -> None:
    r = client.post(
        "/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {keys[1]}", "Content-Type": content_type},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "duplicate_key"
    assert r.json()["error"]["message"].startswith(where)


def test_clean_strings_still_accepted(client: httpx.Client, keys: tuple[str, str, str]) -> None:
    """Non-ASCII text, emoji with ZWJ, colons and spelled-out defaults are fine."""
    name = "ok" + uuid.uuid4().hex[:6]
    events = [
        {"name": name, "uid": "Zoë 😀‍👩", "dims": {"url": "https://x.example/a:b"}},
        {"name": name, "ts": None, "id": None, "dims": {}, "value": None},
        {"name": name, "ts": "2026-03-01T10:00:00Z"},
    ]
    r = client.post("/v1/events", json=events, headers={"Authorization": f"Bearer {keys[1]}"})
    # the third event may be older than max_event_age on some clocks; the others count
    if r.status_code == 422:
        assert "ts" in r.json()["error"]["message"]
        r = client.post(
            "/v1/events", json=events[:2], headers={"Authorization": f"Bearer {keys[1]}"}
        )
    assert r.status_code == 200, r.text


def test_duplicate_key_in_a_large_body(client: httpx.Client, keys: tuple[str, str, str]) -> None:
    """A body over SLOW_INLINE_BYTES takes the exact pass in a thread: same answer."""
    events = b",".join([b'{"name":"click","dims":{"k":"%d"}}' % i for i in range(3000)])
    body = b"[" + events + b',{"name":"click","uid":"a","uid":"b"}]'
    assert len(body) > 65_536
    r = client.post(
        "/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {keys[1]}", "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("$[3000].uid: duplicate JSON key")
