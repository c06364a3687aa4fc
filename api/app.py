"""The Starlette application: routes, error mapping, and the lifespan that opens the
backends, registers the scripts and runs the persister."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from redis.exceptions import RedisError
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
from api.routes import starlette_routes
from api.state import AppState, KeyCache
from counters.core.clock import Clock, SystemClock
from counters.core.config import Settings, load_settings
from counters.core.errors import CountersError, Unavailable
from counters.engines.ingest import Ingestor
from counters.engines.persister import Persister
from counters.engines.rebuild import Rebuilder
from counters.engines.restore import restore_watermarks
from counters.engines.schedule import nightly_reconcile
from counters.metrics import Metrics
from counters.services import resolve_settings
from lua import Scripts
from lua.client import open_redis
from persist.db import create_pool

log = logging.getLogger("counters.api")
STATIC = Path(__file__).parent / "static"


async def dashboard(request: Request) -> Response:
    """GET /: the dashboard page."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _error_body(exc: CountersError) -> dict[str, dict[str, str]]:
    return {"error": {"code": exc.code, "message": exc.message}}


async def _counters_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CountersError)
    state = getattr(request.state, "counters", None)
    if state is not None and 400 <= exc.status < 500 and request.url.path.startswith("/v1/events"):
        state.metrics.rejected.labels(exc.code).inc()
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    return json_response(_error_body(exc), exc.status, headers)


async def _backend_error(request: Request, exc: Exception) -> Response:
    backend = "redis" if isinstance(exc, RedisError) else "postgres"
    return await _counters_error(request, Unavailable(backend, str(exc) or type(exc).__name__))


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
    """Adds `Server-Timing: app;dur=<ms>` (time to the response head) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={dur:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> Starlette:
    """The service. Backends are opened in the lifespan: the configured URLs, else the
    embedded servers. Runs the persister in-process unless settings turn it off."""
    base_settings = settings if settings is not None else load_settings()
    the_clock = clock if clock is not None else SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        resolved = await asyncio.to_thread(resolve_settings, base_settings)
        metrics = Metrics()
        assert resolved.redis_url and resolved.database_url
        redis = open_redis(resolved.redis_url)
        pool = await create_pool(resolved.database_url)
        scripts = Scripts(redis)

        async def restore(project: str) -> None:
            await restore_watermarks(pool, redis, scripts, resolved.key_prefix, project)

        ingestor = Ingestor.from_settings(
            redis, scripts, resolved, restore, on_fold=metrics.dims_folded.inc
        )
        state = AppState(
            resolved,
            the_clock,
            redis,
            pool,
            scripts,
            ingestor,
            metrics,
            KeyCache(resolved.key_cache_seconds),
        )
        stop = asyncio.Event()
        persister = Persister(pool, redis, scripts, resolved, the_clock, metrics)
        tasks: list[asyncio.Task[None]] = []
        if resolved.persister_enabled:
            tasks.append(asyncio.create_task(persister.run(stop)))
        if resolved.reconcile_enabled:
            tasks.append(
                asyncio.create_task(
                    nightly_reconcile(
                        Rebuilder(pool, redis, resolved, persister),
                        pool,
                        the_clock,
                        metrics,
                        at=resolved.reconcile_at,
                        days=resolved.reconcile_days,
                        stop=stop,
                    )
                )
            )
        # Everything built so far lives as long as the process: keep the cyclic collector
        # from re-scanning it (a full collection over it was the 15-25 ms tail of reads).
        gc.freeze()
        try:
            yield {"counters": state, "pixel": pixel.GroupCommitter(ingestor)}
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await pool.close()
            await redis.aclose()

    routes = [
        *starlette_routes(),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(ServerTiming)],
        lifespan=lifespan,
        exception_handlers={
            CountersError: _counters_error,
            RedisError: _backend_error,
            OSError: _backend_error,
            asyncpg.PostgresError: _backend_error,
            asyncpg.InterfaceError: _backend_error,
            asyncpg.InternalClientError: _backend_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
