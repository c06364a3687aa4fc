"""Helpers every handler shares: state access, JSON replies, authorization."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.cors import key_origins
from api.limits import charge_key
from api.state import AppState
from counters.core.errors import Forbidden, NotFound, Unauthorized
from counters.core.keys import INGEST_SCOPES, KeyInfo
from counters.engines.read.context import ReadContext
from counters.engines.read.limits import ReadLimits
from counters.engines.retention import minute_edge, raw_edge
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
    return tagged_response(request, _encoder.encode(body), "application/json")


def tagged_response(
    request: Request, data: bytes, media_type: str, headers: dict[str, str] | None = None
) -> Response:
    """200 with `data` and an ETag of its bytes, or 304 when If-None-Match holds it."""
    tag = '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'
    headers = {**(headers or {}), "ETag": tag, "Cache-Control": "no-cache"}
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, 200, headers, media_type=media_type)


def read_context(state: AppState, project: str, now_ms: int) -> ReadContext:
    """The read engine's context for one project, from one clock read of the request,
    with the request's limits (points, raw rows, retention edges) from the settings."""
    settings = state.settings
    limits = ReadLimits(
        max_points=settings.max_points,
        raw_row_budget=settings.raw_row_budget,
        oldest_raw=raw_edge(now_ms, settings.raw_retention_days),
    )
    home, *shards = state.services.shards.keys_of(settings.key_prefix, project)
    return ReadContext(
        state.pool,
        state.redis,
        state.scripts,
        home,
        minute_edge(now_ms, settings.minute_retention_days),
        state.restore,
        limits,
        state.services.read_cache,
        now_ms,
        tuple(shards),
    )


def bearer_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


class Access(msgspec.Struct, frozen=True):
    """What authorization grants a request: the project it acts on and the key's record
    (its scope, allowed origins and names for the pixel checks)."""

    project: str
    key: KeyInfo


def _allows(key_scope: str, scope: str) -> bool:
    if key_scope == "admin":
        return True
    if scope == "ingest":
        return key_scope in INGEST_SCOPES
    return key_scope == scope


async def authenticate(state: AppState, key: str | None) -> KeyInfo:
    """The presented key's record; 401 when it is missing, unknown, revoked or expired
    (checked here, without asking Postgres); 503 when Postgres is needed and down."""
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    found = await state.keys.lookup(state.pool, key, state.redis, state.settings.key_prefix)
    if found is None:
        raise Unauthorized("unknown API key")
    if found.expired(int(time.time() * 1000)):
        raise Unauthorized("this API key has expired", code="key_expired")
    return found


async def authorize_key(
    state: AppState, key: str | None, *, scope: str, project: str | None = None
) -> Access:
    """The project the key may act on with this scope, and the key; raises 401 (no,
    unknown, revoked or expired key), 404 unknown_project (the named project does not
    exist OR the key does not cover it: the same answer, so a key cannot probe which
    projects exist), 403 (the key's own project, wrong scope) or 429 (the key is over its
    rate limit: every authenticated request counts against its key)."""
    info = await authenticate(state, key)
    assert key is not None  # authenticate refused a missing key
    await charge_key(state, key, info.projects[0], scope, key_origins(info))
    if project is not None and (not PROJECT_PATTERN.match(project) or project not in info.projects):
        raise NotFound(f"unknown project {project!r}", code="unknown_project")
    check_scope(info, scope)
    return Access(project if project is not None else info.projects[0], info)


def check_scope(info: KeyInfo, scope: str) -> None:
    """403 when the key's scope does not allow `scope` (ingest, read, admin)."""
    if not _allows(info.scope, scope):
        action = {"ingest": "write events", "read": "read", "admin": "manage keys"}
        raise Forbidden(f"a {info.scope} key cannot {action.get(scope, scope)}")


async def authorize(
    state: AppState, key: str | None, *, scope: str, project: str | None = None
) -> str:
    """The project the key may act on with this scope (see authorize_key for the errors)."""
    return (await authorize_key(state, key, scope=scope, project=project)).project
