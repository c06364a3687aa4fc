"""Issue 11, browsers for real: a page on another origin (headless Chromium, as in
tests/test_dashboard.py) sends navigator.sendBeacon to the service and a preflighted fetch
with an Authorization header; both are counted, and the fetch can read its answer and the
RateLimit field (CORS). On the code before issue 11 the beacon was a 401 and the fetch failed
its preflight."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright

from counters.harness.servers import free_port
from tests.service import Service, create_key
from tests.support import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium missing (make test installs it)"
)

PAGE = b"<!doctype html><title>shop</title><p>another origin</p>"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """A page served from http://localhost:<port> (the service is on 127.0.0.1: another
    origin, both on loopback)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_send_beacon_and_cors_fetch_from_another_origin(service: Service, site: str) -> None:
    project = "br" + uuid.uuid4().hex[:8]
    ingest = create_key(service.env, project, "ingest")
    read = create_key(service.env, project, "read")
    now = time.time_ns() // 1_000_000

    async def total(name: str) -> int:
        async with httpx.AsyncClient(base_url=service.url) as c:
            r = await c.get(
                f"/v1/projects/{project}/total",
                params={"name": name, "from": str(now - 3_600_000), "excluding_current": "false"},
                headers={"Authorization": f"Bearer {read}"},
            )
            assert r.status_code == 200, r.text
            value: int = r.json()["value"]
            return value

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(site + "/")
            queued = await page.evaluate(
                "([url, key]) => navigator.sendBeacon(url + '/v1/events?key=' + key,"
                " JSON.stringify([{name: 'beacon', dims: {page: location.pathname}}]))",
                [service.url, ingest],
            )
            assert queued is True
            await wait_for(lambda: total("beacon"), lambda v: v == 1, what="the beacon counted")

            reply = await page.evaluate(
                """async ([url, key]) => {
                    const r = await fetch(url + '/v1/events', {
                        method: 'POST',
                        headers: {'Authorization': 'Bearer ' + key,
                                  'Content-Type': 'application/json'},
                        body: JSON.stringify([{name: 'fetched'}]),
                    });
                    return {status: r.status, body: await r.json(),
                            ratelimit: r.headers.get('RateLimit')};
                }""",
                [service.url, ingest],
            )
            assert reply["status"] == 200 and reply["body"]["accepted"] == 1, reply
            assert reply["ratelimit"] and reply["ratelimit"].startswith('"default";r='), reply
            assert await total("fetched") == 1
        finally:
            await browser.close()
