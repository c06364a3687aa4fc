"""Keys of a project over HTTP, for its admin keys: GET/POST /v1/projects/{project}/keys
and DELETE /v1/projects/{project}/keys/{id}. An admin key of P manages the keys covering P
only; a key never revokes itself (409)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize_key, bearer_key, json_response
from api.ingest import read_body
from counters.core.errors import BadRequest, Invalid
from counters.core.keys import MAX_NAMES, MAX_ORIGINS
from counters.engines import keys as key_engine
from persist.db import postgres_unavailable

MAX_KEY_REQUEST_BYTES = 64 * 1024


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Body of POST /v1/projects/{project}/keys."""

    scope: str
    expires: str | None = None
    """Lifetime: 30d, 12h, 15m or 3600s (at most 3650d); none = no expiry."""
    origins: list[str] = msgspec.field(default_factory=list)
    """Pixel keys: allowed origins, scheme://host[:port]."""
    names: list[str] = msgspec.field(default_factory=list)
    """Pixel keys: allowed event names."""


KEY_REQUEST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scope"],
    "properties": {
        "scope": {"type": "string", "enum": ["ingest", "read", "admin", "pixel"]},
        "expires": {
            "anyOf": [{"type": "string", "pattern": "^[0-9]{1,9}[smhd]$"}, {"type": "null"}]
        },
        "origins": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ORIGINS},
        "names": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_NAMES},
    },
}
"""The OpenAPI schema of KeyRequest (what the server checks, in JSON Schema)."""

_decoder = msgspec.json.Decoder(KeyRequest)


async def list_keys(request: Request) -> Response:
    """GET: the keys covering the project (never a secret)."""
    state = app_state(request)
    access = await authorize_key(
        state, bearer_key(request), scope="admin", project=request.path_params["project"]
    )
    with postgres_unavailable():
        async with state.pool.acquire() as conn:
            return json_response(await key_engine.list_keys(conn, access.project))


async def create_key(request: Request) -> Response:
    """POST: a new key of the project; 201 with the secret, shown this once."""
    state = app_state(request)
    access = await authorize_key(
        state, bearer_key(request), scope="admin", project=request.path_params["project"]
    )
    body = await read_body(request, MAX_KEY_REQUEST_BYTES)
    try:
        wanted = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Invalid(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from exc
    with postgres_unavailable():
        async with state.pool.acquire() as conn:
            try:
                new = await key_engine.create(
                    conn,
                    [access.project],
                    wanted.scope,
                    expires=wanted.expires,
                    origins=wanted.origins,
                    names=wanted.names,
                )
            except ValueError as exc:
                raise Invalid(str(exc)) from exc
    return json_response(new, status=201)


async def revoke_key(request: Request) -> Response:
    """DELETE: revokes a key of the project (every worker refuses it within a second);
    204, 404 for an id that is not a key of this project, 409 for the caller's own key."""
    state = app_state(request)
    access = await authorize_key(
        state, bearer_key(request), scope="admin", project=request.path_params["project"]
    )
    with postgres_unavailable():
        async with state.pool.acquire() as conn:
            await key_engine.revoke(
                conn,
                state.redis,
                state.settings.key_prefix,
                request.path_params["key_id"],
                project=access.project,
                caller_id=access.key.id,
            )
    state.keys.revoke(request.path_params["key_id"])
    return Response(status_code=204)
