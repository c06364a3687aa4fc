"""Helpers every handler shares: state access, JSON replies, authorization."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.state import AppState
from counters.core.errors import Forbidden, NotFound, Unauthorized
from persist.projects import PROJECT_PATTERN

_encoder = msgspec.json.Encoder()


def app_state(request: Request) -> AppState:
    """The state the lifespan built."""
    state: AppState = request.state.counters
    return state


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """msgspec-encoded JSON reply."""
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


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
    404 (the named project does not exist) or 403 (wrong project or scope)."""
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    found = await state.keys.lookup(state.pool, key)
    if found is None:
        raise Unauthorized("unknown API key")
    key_projects, key_scope = found
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
