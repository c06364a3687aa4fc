"""Helpers every handler shares: state access, JSON replies, authorization."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.cors import key_origins
from api.limits import charge_key
from api.state import AppState
from counters.core.errors import Forbidden, NotFound, Unauthorized
from counters.engines.read.context import ReadContext
from counters.engines.read.limits import ReadLimits
from counters.engines.retention import minute_edge, raw_edge
from lua.keys import ProjectKeys
from persist.projects import PROJECT_PATTERN

_encoder = msgspec.json.Encoder(decimal_format="number")
"""Sums are Decimals built from integer micros: sent as exact JSON numbers, never floats."""


def app_state(request: Request) -> AppState:
    """The state the lifespan built."""
    state: AppState = request.state.counters
    return state


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """msgspec-encoded JSON reply."""
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


def etag_response(request: Request, body: Any) -> Response:
    """200 with the msgspec-encoded body and an ETag, or 304 when the caller already holds
    this exact answer."""
    data = _encoder.encode(body)
    tag = '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, 200, headers, media_type="application/json")


def read_context(state: AppState, project: str, now_ms: int) -> ReadContext:
    """The read engine's context for one project, from one clock read of the request,
    with the request's limits (points, raw rows, retention edges) from the settings."""
    settings = state.settings
    limits = ReadLimits(
        max_points=settings.max_points,
        raw_row_budget=settings.raw_row_budget,
        oldest_raw=raw_edge(now_ms, settings.raw_retention_days),
    )
    return ReadContext(
        state.pool,
        state.redis,
        state.scripts,
        ProjectKeys(settings.key_prefix, project),
        minute_edge(now_ms, settings.minute_retention_days),
        state.restore,
        limits,
    )


def bearer_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


async def authorize(
    state: AppState, key: str | None, *, scope: str, project: str | None = None
) -> str:
    """The project the key may act on with this scope; raises 401 (no or unknown key),
    429 (the key is over its rate limit: every authenticated request counts), 404 (the
    named project does not exist) or 403 (wrong project or scope)."""
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    found = await state.keys.lookup(state.pool, key)
    if found is None:
        raise Unauthorized("unknown API key")
    key_projects, key_scope = found
    await charge_key(state, key, key_projects[0], scope, key_origins(found))
    if project is not None and not PROJECT_PATTERN.match(project):
        raise NotFound(f"unknown project {project!r}", code="unknown_project")
    if project is not None and project not in key_projects:
        if not await state.keys.exists(state.pool, project):
            raise NotFound(f"unknown project {project!r}", code="unknown_project")
        raise Forbidden(f"this key does not cover project {project!r}")
    if key_scope != scope and key_scope != "admin":
        raise Forbidden(
            f"a {key_scope} key cannot {'write events' if scope == 'ingest' else 'read'}"
        )
    return project if project is not None else key_projects[0]
