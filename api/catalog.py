"""GET /v1/whoami (the projects and scope of a key) and GET /v1/projects/{project}/catalog
(the names and dims a project has seen lately)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.common import (
    app_state,
    authenticate,
    authorize,
    bearer_key,
    etag_response,
    json_response,
    read_context,
)
from api.limits import charge_key
from counters.engines.read.catalog import WhoAmI, read_catalog


async def whoami(request: Request) -> Response:
    """GET /v1/whoami: the projects and scope of the presented key."""
    state = app_state(request)
    key = bearer_key(request)
    found = await authenticate(state, key)
    assert key is not None  # authenticate refused a missing key
    await charge_key(state, key, found.projects[0], "read")  # whoami counts like a read
    return json_response(WhoAmI(list(found.projects), found.scope))


async def catalog(request: Request) -> Response:
    """GET /v1/projects/{project}/catalog: event names of the last 30 days and their dims,
    with an ETag (304 when unchanged)."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    now = state.clock.now_ms()
    return etag_response(request, await read_catalog(read_context(state, project, now), now))
