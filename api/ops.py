"""GET /healthz and GET /metrics."""

from __future__ import annotations

import asyncio
import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, bearer_key, json_response
from api.state import AppState
from counters.core.errors import Unauthorized
from counters.engines.schedule import latest_discrepancies
from persist.catalog import ping

CHECK_TIMEOUT = 2.0


def has_metrics_token(state: AppState, request: Request) -> bool:
    """Whether the request may see operational details: always when settings.metrics_token
    is unset, else only with `Authorization: Bearer <metrics_token>` (compared in constant
    time)."""
    token = state.settings.metrics_token
    if not token:
        return True
    given = bearer_key(request)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def healthz(request: Request) -> Response:
    """200 when Redis and Postgres both answer; 503 naming the one(s) that do not. When
    settings.metrics_token is set and the request does not carry it, the body is only
    {"status": "ok"|"unavailable"} (the status code is the same)."""
    state = app_state(request)
    details = has_metrics_token(state, request)

    async def redis_ok() -> bool:
        try:
            return bool(await asyncio.wait_for(state.redis.ping(), CHECK_TIMEOUT))
        except Exception:  # noqa: BLE001 - any failure means down
            return False

    async def postgres_ok() -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                return await ping(state.pool)
        except Exception:  # noqa: BLE001 - any failure means down
            return False

    r, p = await asyncio.gather(redis_ok(), postgres_ok())
    checks = {"redis": "ok" if r else "down", "postgres": "ok" if p else "down"}
    if not details:
        if r and p:
            return json_response({"status": "ok"})
        return json_response({"status": "unavailable"}, 503, {"Retry-After": "1"})
    if r and p:
        return json_response({"status": "ok", "checks": checks})
    down = [k for k, v in checks.items() if v == "down"]
    return json_response(
        {
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "unavailable", "message": f"{' and '.join(down)} down"},
        },
        503,
        {"Retry-After": "1"},
    )


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (reconcile figures refreshed from Postgres when it
    answers). When settings.metrics_token is set, 401 unless the request carries
    `Authorization: Bearer <metrics_token>`."""
    state = app_state(request)
    if not has_metrics_token(state, request):
        raise Unauthorized("/metrics needs `Authorization: Bearer <metrics_token>`")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with state.pool.acquire() as conn:
                state.metrics.reconcile_discrepancies.set(await latest_discrepancies(conn))
    except Exception:  # noqa: BLE001 - metrics must render even with Postgres down
        pass
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
