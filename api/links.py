"""GET /r/<id>: follow a click-tracking link. Counts one event (the link's name and dims,
link=<id>, valid `utm_*` query parameters as dims, the `counters_uid` cookie as uid) and
answers 302 to the link's registered target, read from the process's LinkCache (never from
Postgres). Only registered targets are redirected to: nothing in the request changes the
target, and an unknown or disabled id is a 404 page. The redirect is answered even when
counting fails (a refusal or an outage is counted in counters_link_clicks_dropped)."""

from __future__ import annotations

import asyncio
import html
import logging
import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.common import app_state
from api.group_commit import GroupCommitter, Hit
from api.limits import current_notes
from api.pixel import strict_query
from api.state import AppState
from counters.core.errors import CountersError, Invalid, Unavailable
from counters.core.links import UID_COOKIE, UID_COOKIE_PATTERN, Link, click_event, is_link_id
from counters.core.models import RawEvent, validate_events
from counters.engines.links import LinkCache

log = logging.getLogger("counters.links")

COUNT_WAIT_SECONDS = 1.0
"""Longest a follow waits for its event to be counted before redirecting anyway (the count
goes on in the background)."""
COOKIE_MAX_AGE = 400 * 24 * 3600
"""The uid cookie's lifetime: 400 days, the most browsers keep a cookie."""
NO_STORE = {"Cache-Control": "no-store"}
"""A redirect is never cached: each follow reaches the service and counts."""

_background: set[asyncio.Task[str | None]] = set()


def _page(status: int, title: str, text: str, headers: dict[str, str] | None = None) -> Response:
    body = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(body, status, {"Cache-Control": "no-store", **(headers or {})})


def not_found() -> Response:
    """The 404 page of an unknown or disabled link (never a redirect)."""
    return _page(404, "Link not found", "This link does not exist or was disabled.")


def _query(raw: bytes) -> dict[str, str]:
    try:
        return strict_query(raw)
    except UnicodeDecodeError:  # the utm dims are left out; the click still counts
        return {}


def _event(state: AppState, link: Link, query: dict[str, str], uid: str | None) -> RawEvent:
    """The click's event, validated; the utm dims are dropped when they make it invalid
    (an over-long value in total, say). Invalid only if the link itself cannot count."""
    now = state.clock.now_ms()
    try:
        (event,) = validate_events([click_event(link, query, uid)], now_ms=now, limits=state.limits)
    except Invalid:
        (event,) = validate_events([click_event(link, {}, uid)], now_ms=now, limits=state.limits)
    return event


async def count_click(
    state: AppState, committer: GroupCommitter, link: Link, query: dict[str, str], uid: str | None
) -> str | None:
    """Counts one follow of link through the pixel's group commit (charged to the link's
    own rate-limit bucket, at the ingest-key rate, and to its project's events bucket);
    returns None when counted, else why not (also counted in link_clicks_dropped)."""
    metrics = state.metrics
    reason: str | None
    try:
        event = _event(state, link, query, uid)
    except Invalid:
        reason = "invalid"
    else:
        charged = state.services.limiter.rate("ingest") > 0
        hit = Hit(event, f"link.{link.id}" if charged else None)
        await committer.join(link.project, hit)
        notes = current_notes()
        if notes is not None and hit.decision is not None:
            notes.rate = hit.decision
        if hit.refusal is not None:
            reason = hit.refusal
        elif hit.error is None:
            reason = None
        elif isinstance(hit.error, Unavailable):
            reason = "unavailable"
        elif isinstance(hit.error, CountersError):
            reason = hit.error.code
        else:
            log.warning("link %s: click not counted: %r", link.id, hit.error)
            reason = "unavailable"
    if reason is None:
        metrics.link_clicks.inc()
    else:
        metrics.link_clicks_dropped.labels(reason).inc()
    return reason


async def follow_link(request: Request) -> Response:
    """302 to the link's target after counting the click (at most COUNT_WAIT_SECONDS);
    HEAD redirects without counting; 404 page for an unknown or disabled id; 503 page
    while this worker has not loaded its links yet."""
    link_id = request.path_params["id"]
    cache: LinkCache = request.state.links
    if not cache.loaded:
        return _page(503, "Try again", "Links are not loaded yet.", {"Retry-After": "1"})
    link = cache.get(link_id) if is_link_id(link_id) else None
    if link is None:
        return not_found()
    state = app_state(request)
    cookie = request.cookies.get(UID_COOKIE)
    new_uid: str | None = None
    if cookie is None or UID_COOKIE_PATTERN.fullmatch(cookie) is None:
        cookie = None
        if state.settings.link_uid_cookie:
            cookie = new_uid = secrets.token_urlsafe(16)
    if request.method != "HEAD":
        query = _query(request.scope.get("query_string", b""))
        task = asyncio.create_task(count_click(state, request.state.pixel, link, query, cookie))
        done, _ = await asyncio.wait({task}, timeout=COUNT_WAIT_SECONDS)
        if not done:  # counted (or dropped) in the background; the user goes on
            _background.add(task)
            task.add_done_callback(_background.discard)
    response = RedirectResponse(link.target, 302, headers=NO_STORE)
    if new_uid is not None:
        response.set_cookie(
            UID_COOKIE,
            new_uid,
            max_age=COOKIE_MAX_AGE,
            path="/r/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",
        )
    return response
