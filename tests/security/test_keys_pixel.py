"""Public pixel keys (issue 11, build 5): single events only, optional allowed origins
(Origin, else the Referer's origin) and event names; a pixel key cannot read. Ingest keys
keep working as before (no origin check)."""

from __future__ import annotations

import uuid

import httpx
import msgspec

from tests.service import Service, cli


def new_key(service: Service, project: str, scope: str, *extra: str) -> str:
    out = cli(
        service.env, "keys", "create", "--project", project, "--scope", scope, "--json", *extra
    )
    record = msgspec.json.decode(out.strip().splitlines()[-1])
    assert record["scope"] == scope
    return str(record["key"])


def rejected(c: httpx.Client, reason: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'counters_events_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_pixel_key_sends_single_events_only(service: Service) -> None:
    project = "px" + uuid.uuid4().hex[:8]
    key = new_key(service, project, "pixel")
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.url, timeout=10) as c:
        r = c.post("/v1/events", json=[{"name": "pv"}] * 50, headers=auth)
        assert r.status_code == 403 and r.json()["error"]["code"] == "pixel_key_single_event"
        assert (
            c.post("/v1/events", json=[{"name": "pv"}, {"name": "pv"}], headers=auth).status_code
            == 403
        )
        assert c.post("/v1/events", json=[{"name": "pv"}], headers=auth).status_code == 200
        assert c.post("/v1/events", json={"name": "pv"}, headers=auth).status_code == 200
        g = c.get("/v1/pixel.gif", params={"key": key, "name": "pv"})
        assert g.status_code == 200 and g.content.startswith(b"GIF")
        # a pixel key cannot read
        r = c.get(f"/v1/projects/{project}/total?name=pv", headers=auth)
        assert r.status_code == 403
        reader = new_key(service, project, "read")
        r = c.get(
            f"/v1/projects/{project}/total",
            params={"name": "pv", "grain": "minute", "excluding_current": "false"},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert r.json()["value"] == 3  # the 50- and 2-event batches counted nothing
    # an ingest key keeps sending batches
    ingest = new_key(service, project, "ingest")
    r = httpx.post(
        service.url + "/v1/events",
        json=[{"name": "pv"}] * 50,
        headers={"Authorization": f"Bearer {ingest}", "Origin": "https://evil.example"},
    )
    assert r.status_code == 200


def test_pixel_key_allowed_origins(service: Service) -> None:
    project = "px" + uuid.uuid4().hex[:8]
    key = new_key(
        service,
        project,
        "pixel",
        "--origin",
        "https://shop.example",
        "--origin",
        "http://localhost:8080",
    )
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.url, timeout=10) as c:
        ok = [
            {"Origin": "https://shop.example"},
            {"Origin": "https://SHOP.example:443"},
            {"Origin": "http://localhost:8080"},
            {"Referer": "https://shop.example/cart?x=1"},
        ]
        for headers in ok:
            r = c.post("/v1/events", json=[{"name": "pv"}], headers={**auth, **headers})
            assert r.status_code == 200, (headers, r.text)
        refused = [
            {},
            {"Origin": "https://evil.example"},
            {"Origin": "http://shop.example"},  # other scheme
            {"Origin": "https://shop.example:8443"},  # other port
            {"Origin": "https://shop.example.evil.example"},
            {"Origin": "null"},
            {"Referer": "https://evil.example/https://shop.example"},
        ]
        for headers in refused:
            r = c.post("/v1/events", json=[{"name": "pv"}], headers={**auth, **headers})
            assert r.status_code == 403, (headers, r.text)
            assert r.json()["error"]["code"] == "origin_not_allowed"
        before = rejected(c, "origin")
        g = c.get(
            "/v1/pixel.gif",
            params={"key": key, "name": "pv"},
            headers={"Referer": "https://evil.example/page"},
        )
        assert g.status_code == 200 and g.content.startswith(b"GIF")
        assert rejected(c, "origin") == before + 1
        g = c.get(
            "/v1/pixel.gif",
            params={"key": key, "name": "pv"},
            headers={"Referer": "https://shop.example/page"},
        )
        assert g.status_code == 200 and rejected(c, "origin") == before + 1


def test_pixel_key_allowed_names(service: Service) -> None:
    project = "px" + uuid.uuid4().hex[:8]
    key = new_key(service, project, "pixel", "--name", "pageview", "--name", "signup")
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.url, timeout=10) as c:
        assert c.post("/v1/events", json=[{"name": "signup"}], headers=auth).status_code == 200
        r = c.post("/v1/events", json=[{"name": "purchase"}], headers=auth)
        assert r.status_code == 403 and r.json()["error"]["code"] == "name_not_allowed"
        before = rejected(c, "name")
        g = c.get("/v1/pixel.gif", params={"key": key, "name": "purchase"})
        assert g.status_code == 200 and rejected(c, "name") == before + 1


def test_origins_and_names_are_for_pixel_keys_and_validated(service: Service) -> None:
    import subprocess
    import sys

    project = "px" + uuid.uuid4().hex[:8]
    for extra in (
        ["--scope", "ingest", "--origin", "https://a.example"],
        ["--scope", "pixel", "--origin", "https://a.example/path"],
        ["--scope", "pixel", "--origin", "ftp://a.example"],
        ["--scope", "pixel", "--name", "Bad Name"],
        ["--scope", "pixel", "--expires", "soon"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "counters", "keys", "create", "--project", project, *extra],
            env=service.env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0 and "Error" in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
