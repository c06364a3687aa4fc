"""The Starlette application: routes, error mapping, and the lifespan that opens the
backends, registers the scripts and runs the persister."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import pixel
from api.common import json_response
from api.cors import Cors
from api.limits import RateLimitHeaders
from api.pixel_route import PixelRoute, takes
from api.routes import starlette_routes
from api.state import AppState, KeyCache
from api.statsd import start_statsd
from counters.core.clock import Clock, SystemClock
from counters.core.config import Settings, load_settings
from counters.core.errors import CountersError, TooManyRequests, Unavailable, as_unavailable
from counters.engines.links import LinkCache
from counters.metrics import UNMATCHED
from counters.services import (
    SETTINGS_ENV,
    Services,
    decode_settings,
    is_resolved,
    open_services,
    resolve_settings,
)

log = logging.getLogger("counters.api")
HTTP_FLUSH_SECONDS = 0.5
"""Longest delay before a scrape of another worker sees this worker's HTTP requests."""
STATIC = Path(__file__).parent / "static"


async def dashboard(request: Request) -> Response:
    """GET /: the dashboard page."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _error_body(exc: CountersError) -> dict[str, dict[str, str]]:
    return {"error": {"code": exc.code, "message": exc.message}}


_last_logged: dict[str, float] = {}
UNAVAILABLE_LOG_EVERY = 10.0
"""Seconds between two WARNING lines about one backend's failures (the rest: DEBUG)."""


def _log_unavailable(exc: Unavailable) -> None:
    """The raw failure (address, server text) goes to the log, at most one WARNING per
    backend every UNAVAILABLE_LOG_EVERY seconds; the reply names only the kind."""
    now = time.monotonic()
    if now - _last_logged.get(exc.backend, -UNAVAILABLE_LOG_EVERY) >= UNAVAILABLE_LOG_EVERY:
        _last_logged[exc.backend] = now
        log.warning("%s: %s", exc.message, exc.detail)
    else:
        log.debug("%s: %s", exc.message, exc.detail)


async def _counters_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CountersError)
    if isinstance(exc, Unavailable):
        _log_unavailable(exc)
    state = getattr(request.state, "counters", None)
    if state is not None and 400 <= exc.status < 500 and request.url.path.startswith("/v1/events"):
        state.metrics.rejected.labels(exc.code).inc()
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after), **exc.headers}
    if exc.status == 408 or exc.code == "client_disconnected":
        headers = {"Connection": "close"}  # the rest of the body is not read
    return json_response(_error_body(exc), exc.status, headers)


async def _backend_error(request: Request, exc: Exception) -> Response:
    backend = "redis" if isinstance(exc, (RedisError, RedisClusterException)) else "postgres"
    return await _counters_error(request, as_unavailable(backend, exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response(
        {"error": {"code": code, "message": str(exc.detail)}},
        exc.status_code,
        dict(exc.headers or {}),
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>` (time to the response head) to every response,
    and counts every answered request in the app's metrics (http_requests by route
    template, method and status; http_request_duration_seconds to the response's end)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes (the server's error handler answers 500)

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                dur = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={dur:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            state = scope.get("state")
            counters = state.get("counters") if state else None
            if counters is not None:
                route = scope.get("route")  # set by the router: the template, not the path
                counters.metrics.observe_request(
                    getattr(route, "path", UNMATCHED),
                    scope["method"],
                    status,
                    time.perf_counter() - started,
                )


async def _error_reply(request: Request, exc: Exception) -> Response:
    """The answer the exception handlers below give to an exception, for a route that runs
    outside them (the pixel's lean route)."""
    if isinstance(exc, CountersError):
        return await _counters_error(request, exc)
    if isinstance(exc, BACKEND_ERRORS):
        return await _backend_error(request, exc)
    return await _unexpected(request, exc)


BACKEND_ERRORS = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""Exceptions answered 503 naming the backend (with Retry-After)."""


class CountersApp(Starlette):
    """The Starlette app with GET and HEAD /v1/pixel.gif handed to the pixel's lean ASGI
    route before the middleware stack and the router (it adds the fields the middleware
    would, api/pixel_route.py); everything else goes through Starlette as usual."""

    def __init__(self, pixel_route: PixelRoute, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pixel_route = pixel_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if takes(scope):
            await self.pixel_route(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def link_cache(services: Services) -> LinkCache:
    """The process's cache of click-tracking links; each reload warms the uid hashers of
    the projects that have links, so a follow does not wait on Postgres for a secret."""

    async def warm(projects: set[str]) -> None:
        for project in projects:
            with contextlib.suppress(CountersError, *BACKEND_ERRORS):
                await services.uid_secrets.hasher(project)

    return LinkCache(services.pool, services.redis, services.settings.key_prefix, on_loaded=warm)


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> Starlette:
    """The service. Backends are opened in the lifespan: the configured URLs, else the
    embedded servers (started only when a URL is unset). The lifespan does not wait for
    them: the app starts with Redis or Postgres down and answers 503 naming the backend
    until it comes (healthz names it too). Runs the persister and the nightly reconcile
    in-process unless settings turn them off."""
    base_settings = settings if settings is not None else load_settings()
    the_clock = clock if clock is not None else SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        resolved = base_settings
        if not is_resolved(resolved):
            resolved = await asyncio.to_thread(resolve_settings, resolved)
        async with open_services(resolved, the_clock, lazy=True) as services:
            state = AppState(services, KeyCache(resolved.key_cache_seconds))
            services.metrics.processes.labels("api").set(1)
            # shard plans before the first request (reads route by them without waiting);
            # with Postgres down, ingest reads them on its first batch
            with contextlib.suppress(Unavailable):
                await services.shards.refresh()
            # StatsD over UDP when statsd_listen is set (api/statsd.py); a busy address
            # fails the start, as a busy HTTP port does
            statsd = await start_statsd(state)
            stop = asyncio.Event()
            background = asyncio.create_task(services.run_background(stop))
            links = link_cache(services)
            links_task = asyncio.create_task(links.run(stop))
            # this worker's request tallies reach the shared metrics every HTTP_FLUSH_SECONDS
            flusher = asyncio.create_task(
                services.metrics.flush_http_every(HTTP_FLUSH_SECONDS, stop)
            )
            # Everything built so far lives as long as the process: keep the cyclic collector
            # from re-scanning it (a full collection over it was the 15-25 ms tail of reads).
            gc.freeze()
            try:
                yield {
                    "counters": state,
                    "pixel": pixel.build_committer(state),
                    "services": services,
                    "links": links,
                }
            finally:
                if statsd is not None:
                    await statsd.close()
                stop.set()
                await background
                await flusher
                await links_task

    routes = [
        *starlette_routes(),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = CountersApp(
        PixelRoute(_error_reply),
        routes=routes,
        middleware=[Middleware(ServerTiming), Middleware(RateLimitHeaders), Middleware(Cors)],
        lifespan=lifespan,
        exception_handlers={
            CountersError: _counters_error,
            **dict.fromkeys(BACKEND_ERRORS, _backend_error),
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    # `/v1/whoami/` is a 404, never a 307 to a URL built from the Host header.
    app.router.redirect_slashes = False
    return app


def create_app_from_env() -> Starlette:
    """The uvicorn factory `counters serve` starts its workers with
    (`api.app:create_app_from_env`). Its settings come from ONE channel: the environment
    variable COUNTERS_RESOLVED_SETTINGS, msgspec JSON of the Settings `serve` resolved
    (both URLs set), so a worker never reads the config file or COUNTERS_* again and never
    starts embedded servers. Raises KeyError / ValueError when the variable is missing or
    holds unresolved settings."""
    return create_app(decode_settings(os.environ[SETTINGS_ENV]))
