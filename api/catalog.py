"""GET /v1/whoami (the projects and scope of a key) and GET /v1/projects/{project}/catalog
(the names and dims a project has seen lately)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authenticate, authorize, bearer_key, json_response, read_context
from counters.engines.read.catalog import WhoAmI, read_catalog


async def whoami(request: Request) -> Response:
    """GET /v1/whoami: the projects and scope of the presented key."""
    state = app_state(request)
    found = await authenticate(state, bearer_key(request))
    return json_response(WhoAmI(list(found.projects), found.scope))


async def catalog(request: Request) -> Response:
    """GET /v1/projects/{project}/catalog: event names of the last 30 days and their dims."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    now = state.clock.now_ms()
    return json_response(await read_catalog(read_context(state, project, now), now))
