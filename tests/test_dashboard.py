"""The dashboard page in headless Chromium (Debian's, driven by Playwright), as a user drives
it: a link with the view in its fragment opens that view with the API's numbers; a quiet
dashboard costs one batch request per poll, answered 304; clicking a top-N row filters
every card; the measure pickers, hover and touch values, comparison, card pinning and the
zero state work. Screenshots of each state (desktop 1280x800 and phone 375x812) go to
tests/artifacts/ (copies in docs/screenshots/)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    Page,
    Request,
    Response,
    ViewportSize,
    async_playwright,
)

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
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 812}
WAIT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium missing (make test installs it)"
)


class Project:
    """A project with an ingest and a read key."""

    def __init__(self, service: Service) -> None:
        self.name = "dash" + uuid.uuid4().hex[:6]
        self.ingest = create_key(service.env, self.name, "ingest")
        self.read = create_key(service.env, self.name, "read")
        self.url = service.url

    async def send(self, c: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
        r = await c.post(
            "/v1/events", json=events, headers={"Authorization": f"Bearer {self.ingest}"}
        )
        assert r.status_code == 200, r.text

    async def get(self, c: httpx.AsyncClient, route: str, params: list[tuple[str, str]]) -> Any:
        r = await c.get(
            f"/v1/projects/{self.name}/{route}",
            params=tuple(params),
            headers={"Authorization": f"Bearer {self.read}"},
        )
        assert r.status_code == 200, r.text
        return r.json()

    def link(self, **view: str) -> str:
        """The dashboard URL with this view in its fragment (fast polls for the tests)."""
        frag = {"project": self.name, "key": self.read, "range": "24h", "tz": "UTC"}
        frag.update({"refresh": "400"}, **view)
        return f"{self.url}/#{urllib.parse.urlencode(frag)}"


def seed_events(now: int) -> list[dict[str, Any]]:
    """click 120 (five dims, uids), signup 20 (source google), purchase 12 (values) in the
    last hours; 30 clicks a day earlier (the previous period)."""
    sources = ["google", "bing", "mail"]
    clicks = [
        {
            "name": "click",
            "ts": now - 60_000 - i * 97_000,
            "dims": {
                "source": sources[i % 3],
                "country": ["DE", "FR"][i % 2],
                "device": ["mobile", "desktop", "tablet", "tv"][i % 4],
                "browser": ["firefox", "chrome"][i % 2],
                "page": ["/", "/docs", "/pricing"][i % 3],
            },
            "uid": f"u{i % 50}",
        }
        for i in range(120)
    ]
    earlier = [
        {"name": "click", "ts": now - 86_400_000 - 3_600_000 - i * 60_000, "uid": f"v{i}"}
        for i in range(30)
    ]
    signups = [
        {"name": "signup", "ts": now - 60_000 - i * 300_000, "dims": {"source": "google"}}
        for i in range(20)
    ]
    purchases = [
        {
            "name": "purchase",
            "ts": now - 60_000 - i * 600_000,
            "dims": {"plan": ["pro", "team"][i % 2]},
            "uid": f"u{i % 5}",
            "value": 2.5 + i,
        }
        for i in range(12)
    ]
    return clicks + earlier + signups + purchases


class Watch:
    """Every request the page makes and every response it gets."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        page.on("request", lambda r: self.requests.append(r))
        page.on("response", lambda r: self.responses.append(r))

    def batches(self) -> list[Request]:
        return [r for r in self.requests if "/query?" in r.url]

    def last_batch(self) -> dict[str, Any]:
        return batch_of(self.batches()[-1].url)


def batch_of(url: str) -> dict[str, Any]:
    """The batch a /query URL carries in q=."""
    (q,) = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["q"]
    batch: dict[str, Any] = json.loads(q)
    return batch


def params_of(common: dict[str, Any], **extra: str | list[str]) -> list[tuple[str, str]]:
    """A batch's common parameters (plus extra) as a single route's query string."""
    out: list[tuple[str, str]] = []
    for k, v in {**common, **extra}.items():
        out.extend((k, one) for one in ([v] if isinstance(v, str) else v))
    return out


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def wait_js(page: Page, expr: str, arg: Any = None) -> None:
    await page.wait_for_function(expr, arg=arg, timeout=WAIT_MS)


async def card_value(page: Page, name: str) -> str | None:
    return await page.get_attribute(f'.card[data-name="{name}"] .total', "data-value")


async def wait_card(page: Page, name: str, value: str, measure: str = "count") -> None:
    """Waits until the card shows value for measure."""
    await wait_js(
        page,
        """([n, v, m]) => {
            const t = document.querySelector(`.card[data-name="${n}"] .total`);
            return t && t.dataset.value === v && t.dataset.measure === m;
        }""",
        [name, value, measure],
    )


async def shoot(page: Page, name: str, sizes: tuple[str, ...] = ("desktop", "phone")) -> None:
    """Screenshots of the page at desktop and phone width (tests/artifacts/<name>-*.png)."""
    ARTIFACTS.mkdir(exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        if label not in sizes:
            continue
        await page.set_viewport_size(size)
        # the charts redraw at the new width
        await wait_js(
            page,
            """(w) => [...document.querySelectorAll('.chart svg.plot')].every(
                s => Number(s.getAttribute('width')) <= w)""",
            size["width"],
        )
        # nothing wider than the screen (no sideways scrolling on a phone)
        width = await page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= size["width"], (name, label, width)
        path = ARTIFACTS / f"{name}-{label}.png"
        await page.screenshot(path=str(path))
        assert path.stat().st_size > 5_000
    await page.set_viewport_size(DESKTOP)


@pytest.fixture(scope="module")
def now() -> int:
    return time.time_ns() // 1_000_000


async def seeded(service: Service, c: httpx.AsyncClient, now: int) -> Project:
    p = Project(service)
    await p.send(c, seed_events(now))
    return p


async def test_link_opens_the_view_with_the_apis_numbers(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(precision="1h"))
        await wait_card(page, "click", "120")
        common = watch.last_batch()["common"]
        assert common["precision"] == "1h" and common["tz"] == "UTC"
        totals = await p.get(c, "total", params_of(common, name=["click", "signup", "purchase"]))
        by_name = {t["name"]: t["value"] for t in totals["totals"]}
        assert by_name == {"click": 120, "signup": 20, "purchase": 12}
        for name, value in by_name.items():
            await wait_card(page, name, str(value))
        kpi = await page.get_attribute('.kpi[data-measure="count"] .kv', "data-value")
        assert kpi == str(sum(by_name.values()))
        # cards by volume, not alphabetically
        order = await page.eval_on_selector_all(
            "#cards .card", "els => els.map(e => e.dataset.name)"
        )
        assert order == ["click", "signup", "purchase"]
        # four dims listed (alphabetically), the fifth behind "more"
        tables = '.card[data-name="click"] .dims table'
        assert await page.locator(tables).count() == 4
        await page.click('.card[data-name="click"] .more')
        await wait_js(page, f"() => document.querySelectorAll('{tables}').length === 5")
        assert "more=click" in await page.evaluate("location.hash")
        # top-N rows are the API's breakdown, with shares of the total
        common = watch.last_batch()["common"]
        for dim, want in (
            ("source", {"google": 40, "bing": 40, "mail": 40}),
            ("country", {"DE": 60, "FR": 60}),
        ):
            top = await p.get(c, "series", params_of(common, name="click", group_by=dim, limit="5"))
            api_rows = {s["dims"][dim]: s["total"] for s in top["series"] if s["total"]}
            rows = page.locator(f'.card[data-name="click"] table[data-dim="{dim}"] tr.row')
            got = {
                await r.get_attribute("data-value"): int(
                    await r.locator("td.v").text_content() or ""
                )
                for r in await rows.all()
            }
            assert got == api_rows == want
            share = f"{100 * next(iter(want.values())) // 120}%"
            assert await rows.first.locator("td.pct").text_content() == share
        # the key stays in the fragment: never in a URL the page asks for, only the header
        assert watch.batches()
        assert all(p.read not in r.url for r in watch.requests)
        assert all(r.headers["authorization"] == f"Bearer {p.read}" for r in watch.batches())
        await shoot(page, "overview")

        # pinning and moving cards is kept in the URL: the link opens the same order
        await page.click('.card[data-name="purchase"] .pin')
        await page.click('.card[data-name="click"] .down')
        order_now = ["purchase", "signup", "click"]
        await wait_js(
            page,
            "(w) => JSON.stringify([...document.querySelectorAll('#cards .card')]"
            ".map(e => e.dataset.name)) === JSON.stringify(w)",
            order_now,
        )
        link = await page.evaluate("location.href")
        assert "pin=purchase" in link and "order=signup%2Cclick" in link
        again = await browser.new_page(viewport=DESKTOP)
        await again.goto(link)
        await wait_card(again, "click", "120")
        order = await again.eval_on_selector_all(
            "#cards .card", "els => els.map(e => e.dataset.name)"
        )
        assert order == order_now


async def test_a_full_link_reproduces_the_view(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        link = p.link(
            range="7d",
            precision="1h",
            tz="Europe/Berlin",
            measure="sum",
            compare="previous_period",
            pin="signup",
            **{"d.plan": "pro"},
        )
        await page.goto(link)
        await wait_js(page, "() => document.querySelector('.card .total')?.dataset.value")
        batch = watch.last_batch()
        common = batch["common"]
        assert (common["tz"], common["precision"], common["d.plan"]) == (
            "Europe/Berlin",
            "1h",
            "pro",
        )
        assert int(common["to"]) - int(common["from"]) == 7 * 86_400_000
        reads = [q for q in batch["queries"] if q["kind"] == "series" and "group_by" not in q]
        assert reads and all(q["measure"] == "sum" for q in reads)
        assert all(q.get("compare") == "previous_period" for q in reads)
        for sel, value in (("#range", "7d"), ("#precision", "1h"), ("#tz", "Europe/Berlin")):
            assert await page.input_value(sel) == value
        assert await page.input_value("#compare") == "previous_period"
        assert await page.locator('.chip[data-dim="plan"][data-value="pro"]').count() == 1
        names = await page.eval_on_selector_all(
            "#cards .card", "els => els.map(e => e.dataset.name)"
        )
        assert names[0] == "signup"
        total = await p.get(c, "total", params_of(common, name="purchase", measure="sum"))
        assert total["value"] == sum(2.5 + i for i in range(0, 12, 2))  # the pro plan's
        await wait_card(page, "purchase", str(total["value"]), "sum")
        assert await page.get_attribute('.kpi[data-measure="sum"]', "aria-pressed") == "true"


async def test_typed_key_goes_to_the_fragment_and_errors_show(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(service.url + "/")
        await page.fill("#key", "not-a-key")
        await page.click("button[type=submit]")
        await wait_js(
            page, "() => document.getElementById('status').textContent.startsWith('error: ')"
        )
        await page.fill("#key", p.read)
        await page.click("button[type=submit]")
        await wait_card(page, "click", "120")
        frag = urllib.parse.parse_qs((await page.evaluate("location.hash"))[1:])
        assert frag["key"] == [p.read] and frag["project"] == [p.name]


async def test_polls_never_undo_what_the_user_is_typing(service: Service, now: int) -> None:
    """A control the user is typing in keeps its text through polls (each poll shows the
    state in the controls; it used to put the old time zone back mid-typing, so the change
    that followed changed nothing)."""
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(p.link(refresh="200"))
        await wait_card(page, "click", "120")
        polls = "() => Number(document.documentElement.dataset.polls || 0)"
        start = await page.evaluate(polls)
        await page.fill("#tz", "Asia/Kolk")  # typing, no change event yet
        await wait_js(page, f"() => ({polls})() >= {start + 4}")
        assert await page.input_value("#tz") == "Asia/Kolk"


async def test_quiet_dashboard_costs_one_304_per_poll(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(refresh="300"))
        await wait_card(page, "click", "120")
        polls = "() => Number(document.documentElement.dataset.polls || 0)"
        start_polls = await page.evaluate(polls)
        start = len(watch.requests)
        await wait_js(page, f"() => ({polls})() >= {start_polls + 6}")
        done_polls = await page.evaluate(polls)
        since = watch.requests[start:]
        # every request after the first load is the one batch of a poll, the same URL
        assert all("/query?" in r.url for r in since), [r.url for r in since]
        assert done_polls - start_polls - 2 <= len(since) <= done_polls - start_polls
        assert len({r.url for r in since}) == 1
        answered = [r for r in watch.responses if r.request in since]
        assert len(answered) >= 4
        assert {r.status for r in answered} == {304}

        # live: new events show up without touching the page (a 200, then 304s again)
        mark = len(watch.responses)
        await p.send(c, [{"name": "click", "dims": {"source": "google"}} for _ in range(5)])
        await wait_card(page, "click", "125")
        assert any(r.status == 200 for r in watch.responses[mark:])


async def test_clicking_a_row_filters_every_card(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(more="click"))
        await wait_card(page, "click", "120")
        before = len(watch.batches())
        await page.click(
            '.card[data-name="click"] table[data-dim="source"] tr.row[data-value="google"]'
        )
        await wait_card(page, "click", "40")
        sent = [batch_of(r.url) for r in watch.batches()[before:]]
        # the batch after the click has the filter (a poll may have left just before it),
        # and so has every batch since
        first = next(i for i, b in enumerate(sent) if "d.source" in b["common"])
        assert first <= 1 and all("d.source" in b["common"] for b in sent[first:])
        batch = sent[first]
        # the filter is in the common part, which every query of the batch takes
        assert batch["common"]["d.source"] == "google"
        # ...but the source table lists every value (its filter dropped: an empty list)
        for q in batch["queries"]:
            assert q.get("d.source") == ([] if q.get("group_by") == "source" else None), q
        assert any(q.get("group_by") == "source" for q in batch["queries"])
        assert {q["kind"] for q in batch["queries"]} == {"catalog", "total", "series"}
        totals = await p.get(
            c, "total", params_of(batch["common"], name=["click", "signup", "purchase"])
        )
        for t in totals["totals"]:
            await wait_card(page, t["name"], str(t["value"]))
        assert {t["name"]: t["value"] for t in totals["totals"]} == {
            "click": 40,
            "signup": 20,
            "purchase": 0,
        }
        chip = page.locator('.chip[data-dim="source"][data-value="google"]')
        assert "source = google" in (await chip.text_content() or "")
        assert "d.source=google" in await page.evaluate("location.hash")
        await shoot(page, "filtered")
        # a second value of the same dim: any of them (google or bing)
        source = '.card[data-name="click"] table[data-dim="source"]'
        assert (
            await page.get_attribute(f'{source} tr[data-value="google"]', "aria-selected") == "true"
        )
        await page.click(f'{source} tr.row[data-value="bing"]')
        await wait_card(page, "click", "80")
        both = watch.last_batch()["common"]
        assert both["d.source"] == ["google", "bing"]
        total = await p.get(c, "total", params_of(both, name="click"))
        assert total["value"] == 80
        # clicking a picked row again drops it
        await page.click(f'{source} tr.row[data-value="bing"]')
        await wait_card(page, "click", "40")
        chip = page.locator('.chip[data-dim="source"][data-value="google"]')
        # removing the chip removes the filter from the next batch
        before = len(watch.batches())
        await chip.locator("button").click()
        await wait_card(page, "click", "120")
        assert "d.source" not in watch.last_batch()["common"]
        assert await page.locator(".chip").count() == 0


async def test_measure_pickers_show_the_apis_sum_and_uniques(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link())
        await wait_card(page, "purchase", "12")
        await page.click('.card[data-name="purchase"] .measure button[data-m="sum"]')
        common = watch.last_batch()["common"]
        total = await p.get(c, "total", params_of(common, name="purchase", measure="sum"))
        assert total["value"] == sum(2.5 + i for i in range(12))
        await wait_card(page, "purchase", str(total["value"]), "sum")
        assert "sum of values" in (
            await page.text_content('.card[data-name="purchase"] .mlabel') or ""
        )
        await page.click('.card[data-name="click"] .measure button[data-m="uniques"]')
        common = watch.last_batch()["common"]
        total = await p.get(c, "total", params_of(common, name="click", measure="uniques"))
        assert 45 <= total["value"] <= 55  # 50 uids, a HyperLogLog estimate
        await wait_card(page, "click", str(total["value"]), "uniques")
        hash_ = await page.evaluate("location.hash")
        assert "m.purchase=sum" in hash_ and "m.click=uniques" in hash_
        await shoot(page, "measures")
        # the KPI row chooses the measure of every card; uniques do not add up across
        # names, so its headline is the API's union of them (a uid under two names once)
        await page.click('.kpi[data-measure="uniques"]')
        common = watch.last_batch()["common"]
        totals = await p.get(
            c,
            "total",
            params_of(common, name=["click", "signup", "purchase"], measure="uniques"),
        )
        for t in totals["totals"]:
            await wait_card(page, t["name"], str(t["value"]), "uniques")
        union = totals["union"]["value"]
        assert union < sum(t["value"] for t in totals["totals"])  # the same uids, several names
        assert await page.get_attribute('.kpi[data-measure="uniques"] .kv', "data-value") == str(
            union
        )
        assert await page.get_attribute('.kpi[data-measure="uniques"]', "aria-pressed") == "true"


async def test_hover_and_touch_show_a_bucket_value(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(precision="1h"))
        await wait_card(page, "click", "120")
        common = watch.last_batch()["common"]
        series = await p.get(c, "series", params_of(common, name="click"))
        chart = page.locator('.card[data-name="click"] .chart')
        box = await chart.locator("svg.plot").bounding_box()
        assert box is not None
        # the y axis has labels, the x axis times
        assert await chart.locator("text.ylab").count() >= 2
        assert await chart.locator("text.xlab").count() >= 2
        await page.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] / 2)
        tip = chart.locator(".tip")
        await tip.wait_for(state="visible", timeout=WAIT_MS)
        i = int(await tip.get_attribute("data-index") or "-1")
        point = series["data"][i]
        assert await tip.get_attribute("data-bucket") == point["bucket"]
        assert await tip.locator(".tv").text_content() == f"{point['value']:,}"
        assert await tip.locator("time").text_content()
        await shoot(page, "hover", ("desktop",))

        phone = await browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
        touch = await phone.new_page()
        await touch.goto(p.link(precision="1h"))
        await wait_card(touch, "click", "120")
        tchart = touch.locator('.card[data-name="click"] .chart')
        tbox = await tchart.locator("svg.plot").bounding_box()
        assert tbox is not None
        await touch.touchscreen.tap(tbox["x"] + tbox["width"] / 2, tbox["y"] + tbox["height"] / 2)
        ttip = tchart.locator(".tip")
        await ttip.wait_for(state="visible", timeout=WAIT_MS)
        j = int(await ttip.get_attribute("data-index") or "-1")
        assert await ttip.locator(".tv").text_content() == f"{series['data'][j]['value']:,}"
        await touch.screenshot(path=str(ARTIFACTS / "hover-phone.png"))
        await phone.close()


async def test_comparison_draws_a_second_series(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(precision="1h", compare="previous_period"))
        await wait_card(page, "click", "120")
        chart = '.card[data-name="click"] .chart'
        await wait_js(page, f"() => document.querySelector('{chart}')?.dataset.series === '2'")
        batch = watch.last_batch()
        assert all(
            q.get("compare") == "previous_period"
            for q in batch["queries"]
            if "group_by" not in q and q["kind"] != "catalog"
        )
        series = await p.get(
            c, "series", params_of(batch["common"], name="click", compare="previous_period")
        )
        total = await p.get(
            c, "total", params_of(batch["common"], name="click", compare="previous_period")
        )
        before = total["comparison"]["value"]
        assert before == 30
        assert sum(pt["value"] for pt in series["comparison"]["data"]) == before
        assert await page.locator(f"{chart} path.cmp").count() == 1
        assert await page.locator(f"{chart} path.line").count() >= 1
        # the bucket in progress is drawn dashed and marked partial
        assert series["data"][-1].get("partial") is True
        assert await page.locator(f"{chart} path.partial").count() == 1
        assert await page.locator(f"{chart} text.plabel").text_content() == "partial"
        # +300% on the card and on the KPI (120 against 30)
        delta = await page.text_content('.card[data-name="click"] .delta') or ""
        assert delta.startswith("+300%"), delta
        kd = await page.text_content('.kpi[data-measure="count"] .kd') or ""
        assert kd.startswith("+") and "previous period" in kd
        await shoot(page, "compare")


async def test_zero_state_teaches_then_shows_the_first_event(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = Project(service)
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(p.link())
        zero = page.locator("#zero")
        await zero.wait_for(state="visible", timeout=WAIT_MS)
        curl = await page.text_content('#zero .snippet[data-snippet="curl"]') or ""
        pixel = await page.text_content('#zero .snippet[data-snippet="pixel"]') or ""
        assert f"{service.url}/v1/events" in curl and p.name in curl and "Bearer" in curl
        assert f'<img src="{service.url}/v1/pixel.gif?key=' in pixel and p.name in pixel
        assert await page.locator(".card").count() == 0
        await shoot(page, "zero")
        # the first event appears without a reload
        await p.send(c, [{"name": "pageview", "dims": {"page": "/"}, "uid": "visitor-1"}])
        await wait_card(page, "pageview", "1")
        assert await zero.is_hidden()
        await shoot(page, "first-event")


async def test_offered_precisions_never_fail(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(p.link())
        await wait_card(page, "click", "120")
        offered: dict[str, Any] = await page.evaluate(
            """() => {
                const out = {};
                const now = Date.now();
                for (const tz of ["UTC", "Asia/Kolkata", "America/New_York"]) {
                    for (const range of Object.keys(RANGES)) {
                        const st = { ...state, tz, range };
                        out[tz + " " + range] = workingPrecisions(st, now).map(
                            (pr) => ({ pr, ...windowFor(st, pr, now) }));
                    }
                }
                return out;
            }"""
        )
        assert "1m" not in [o["pr"] for o in offered["UTC 30d"]]
        assert offered["Asia/Kolkata 30d"] == []  # half-hour zones read minutes: 14 days
        assert [o["pr"] for o in offered["UTC 24h"]][:2] == ["1m", "5m"]
        for key, options in offered.items():
            tz = key.split()[0]
            for o in options:
                for route, extra in (
                    ("series", {}),
                    ("series", {"group_by": "source"}),
                    ("total", {}),
                ):
                    r = await c.get(
                        f"/v1/projects/{p.name}/{route}",
                        params={
                            "name": "click",
                            "precision": o["pr"],
                            "tz": tz,
                            "from": str(o["from"]),
                            "to": str(o["to"]),
                            "excluding_current": "false",
                            **extra,
                        },
                        headers={"Authorization": f"Bearer {p.read}"},
                    )
                    assert r.status_code == 200, (key, o, route, r.text)
        # a range no precision answers is not offered
        await page.fill("#tz", "Asia/Kolkata")
        await page.dispatch_event("#tz", "change")
        await wait_js(page, "() => document.querySelector('#range option[value=\"30d\"]').disabled")


async def test_custom_range_and_many_names(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = await seeded(service, c, now)
        # more names than one query takes (20): the batch splits them, every card reads
        extra = [
            {"name": f"ev{i:02d}", "ts": now - 60_000} for i in range(22) for _ in range(i + 1)
        ]
        await p.send(c, extra)
        day = 86_400_000
        first = time.strftime("%Y-%m-%d", time.gmtime((now - day) / 1000))
        last = time.strftime("%Y-%m-%d", time.gmtime(now / 1000))
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        await page.goto(p.link(range="custom", **{"from": first, "to": last}))
        await wait_card(page, "ev21", "22")
        assert await page.input_value("#from") == first and await page.is_visible("#to")
        batch = watch.last_batch()
        assert int(batch["common"]["from"]) == (now - day) // day * day  # midnight UTC
        assert len(batch["queries"]) <= 50
        assert all(len(q.get("name", [])) <= 20 for q in batch["queries"])
        assert await page.locator(".card").count() == 25
        names = ["click", "signup", "purchase", *(f"ev{i:02d}" for i in range(22))]
        values = {}
        for part in (names[:20], names[20:]):
            totals = await p.get(c, "total", params_of(batch["common"], name=part))
            values.update({t["name"]: t["value"] for t in totals["totals"]})
        for name, value in values.items():
            assert await card_value(page, name) == str(value), name
        assert await page.get_attribute('.kpi[data-measure="count"] .kv', "data-value") == str(
            sum(values.values())
        )


async def test_other_and_none_rows(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = Project(service)
        events: list[dict[str, Any]] = [
            {"name": "tagged", "ts": now - 60_000, "dims": {"k": f"v{i}"}}
            for i in range(7)
            for _ in range(10 - i)
        ]
        events.append({"name": "tagged", "ts": now - 60_000})
        await p.send(c, events)
        page = await browser.new_page(viewport=DESKTOP)
        await page.goto(p.link())
        await wait_card(page, "tagged", str(len(events)))
        rows = page.locator('.card[data-name="tagged"] table[data-dim="k"] tr.row')
        labels = [await r.locator("td.k").text_content() for r in await rows.all()]
        assert labels == ["v0", "v1", "v2", "v3", "v4", "Other", "(none)"]
        values = [await r.locator("td.v").text_content() for r in await rows.all()]
        assert values == ["10", "9", "8", "7", "6", "9", "1"]  # Other: v5 (5) + v6 (4)
        # Other and (none) are no value to filter on
        assert await page.locator('.card[data-name="tagged"] tr.rest').count() == 2
        await page.click('.card[data-name="tagged"] tr.rest >> nth=0')
        assert "d.k" not in await page.evaluate("location.hash")  # set synchronously on click


async def test_a_heavy_view_stays_within_one_reply(service: Service, now: int) -> None:
    async with httpx.AsyncClient(base_url=service.url) as c, chromium() as browser:
        p = Project(service)
        dims = {"a": "1", "b": "2", "c": "3", "d": "4"}
        await p.send(c, [{"name": n, "ts": now - 60_000, "dims": dims} for n in ("x", "y", "z")])
        page = await browser.new_page(viewport=DESKTOP)
        watch = Watch(page)
        # 1441 minute buckets: 12 breakdowns of 7 series would be 121k points, past the
        # 100k one reply holds; the page leaves the last ones out instead of failing
        await page.goto(p.link(precision="1m", compare="previous_period"))
        for name in ("x", "y", "z"):
            await wait_card(page, name, "1")
        assert not (await page.text_content("#status") or "").startswith("error")
        batch = watch.last_batch()
        answered = [r for r in watch.responses if r.request.url == watch.batches()[-1].url]
        assert answered and answered[-1].status in (200, 304)
        read = sum(len(q["name"]) for q in batch["queries"] if "group_by" in q)
        assert read * 7 * 1441 <= 100_000 - 3 * 2 * 1441  # the series (compared) come first
        missing = await page.locator("td.muted", has_text="not loaded").count()
        assert missing > 0 and read + missing == 12
