"""/openapi.json is generated from the models and routes, served, and a schemathesis run
against a real server finds no 5xx and no response that breaks the schema."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import msgspec

from api.routes import document as build
from counters.harness.fuzz import schemathesis_command
from tests.service import Service, create_key


def test_document_covers_every_route() -> None:
    from api.app import create_app

    doc = build()
    paths = set(doc["paths"])
    routes = {getattr(r, "path", "") for r in create_app().routes}
    routes -= {"/openapi.json", "/", "/static"}  # the document itself and the dashboard
    routes = {r for r in routes if not r.startswith("/prom/")}  # Prometheus' own API
    assert routes == paths
    for schema in ("EventIn", "SeriesReply", "MultiSeriesReply", "ErrorReply"):
        assert schema in doc["components"]["schemas"]
    event = doc["components"]["schemas"]["EventIn"]
    assert event["required"] == ["name"] and event["additionalProperties"] is False


def test_served_document_matches(service: Service) -> None:
    served = httpx.get(service.url + "/openapi.json").json()
    assert served == msgspec.json.decode(msgspec.json.encode(build()))


def test_schemathesis_finds_no_server_errors(service: Service, tmp_path: Path) -> None:
    project = "st" + uuid.uuid4().hex[:8]
    key = create_key(service.env, project, "admin")
    proc = subprocess.run(
        schemathesis_command(
            service.url, key, max_examples=15, max_time=60, seed=1, report_dir=tmp_path
        ),
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
