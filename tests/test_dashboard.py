"""The dashboard page in headless Chromium (Debian's, driven by Playwright): it loads, shows
the numbers the API returns, updates live after new events, and leaves a screenshot in
tests/artifacts/."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from tests.service import Service, create_key

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium missing (make test installs it)"
)


async def test_dashboard_shows_and_updates(service: Service) -> None:
    project = "dash" + uuid.uuid4().hex[:6]
    ingest = create_key(service.env, project, "ingest")
    read = create_key(service.env, project, "read")
    now = time.time_ns() // 1_000_000
    events = [
        {
            "name": "click",
            "ts": now - i * 97_000,
            "dims": {"source": ["google", "bing", "mail"][i % 3], "country": ["DE", "FR"][i % 2]},
            "uid": f"u{i}",
        }
        for i in range(120)
    ] + [
        {"name": "signup", "ts": now - i * 600_000, "dims": {"source": "google"}} for i in range(7)
    ]
    auth = {"Authorization": f"Bearer {ingest}"}
    async with httpx.AsyncClient(base_url=service.url) as c:
        assert (await c.post("/v1/events", json=events, headers=auth)).status_code == 200

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(service.url + "/")
                await page.fill("#key", read)
                await page.click("button[type=submit]")
                click_total = page.locator('.card[data-name="click"] .total')
                await click_total.wait_for()
                await page.wait_for_function(
                    "() => document.querySelector('.card[data-name=\"click\"] .total')"
                    "?.dataset.value === '120'",
                    timeout=15_000,
                )
                # each card fills in on its own: wait for the signup card too (a condition
                # with a deadline), then read its value
                await page.wait_for_function(
                    "() => document.querySelector('.card[data-name=\"signup\"] .total')"
                    "?.dataset.value === '7'",
                    timeout=15_000,
                )
                signup = page.locator('.card[data-name="signup"] .total')
                assert await signup.get_attribute("data-value") == "7"
                # the numbers are the API's
                api = await c.get(
                    f"/v1/projects/{project}/total",
                    params={
                        "name": "click",
                        "precision": "1h",
                        "from": str(now - 86_400_000),
                        "excluding_current": "false",
                    },
                    headers={"Authorization": f"Bearer {read}"},
                )
                assert api.json()["value"] == 120
                table = page.locator('.card[data-name="click"] table[data-dim="source"] td.v')
                assert await table.first.text_content() == "40"
                assert await page.locator(".spark path").first.get_attribute("d")

                # live: new events show up without touching the page
                more = [{"name": "click", "dims": {"source": "google"}} for _ in range(5)]
                assert (await c.post("/v1/events", json=more, headers=auth)).status_code == 200
                await page.wait_for_function(
                    "() => document.querySelector('.card[data-name=\"click\"] .total')"
                    "?.dataset.value === '125'",
                    timeout=15_000,
                )
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            finally:
                await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
