"""What a dashboard needs to know before it asks for numbers: which projects a key covers,
and which event names and dims a project has seen lately."""

from __future__ import annotations

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize, bearer_key, json_response
from counters.core.buckets import DAY_MS, Grain, bucket_start, to_datetime
from counters.core.errors import Unauthorized, Unavailable
from counters.engines.read.query import read_hot
from lua.keys import US, ProjectKeys
from persist.db import PG_ERRORS

CATALOG_DAYS = 30


class WhoAmI(msgspec.Struct):
    projects: list[str]
    scope: str


class NameDims(msgspec.Struct):
    name: str
    dims: list[str]


class Catalog(msgspec.Struct):
    project: str
    names: list[NameDims]


async def whoami(request: Request) -> Response:
    """GET /v1/whoami: the projects and scope of the presented key."""
    state = app_state(request)
    key = bearer_key(request)
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    found = await state.keys.lookup(state.pool, key)
    if found is None:
        raise Unauthorized("unknown API key")
    return json_response(WhoAmI(list(found[0]), found[1]))


async def catalog(request: Request) -> Response:
    """GET /v1/projects/{project}/catalog: event names of the last 30 days and their dims."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    now = state.clock.now_ms()
    seen: dict[str, set[str]] = {}
    try:
        async with state.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT name, rollup FROM rollups_day WHERE project = $1"
                " AND bucket >= $2 AND position(',' in rollup) = 0",
                project,
                to_datetime(bucket_start(now, Grain.day) - CATALOG_DAYS * DAY_MS),
            )
    except PG_ERRORS as exc:
        raise Unavailable("postgres", str(exc) or type(exc).__name__) from exc
    for r in rows:
        dims = seen.setdefault(r["name"], set())
        if r["rollup"]:
            dims.add(r["rollup"])
    keys = ProjectKeys(state.settings.key_prefix, project)
    today = bucket_start(now, Grain.day)
    try:
        # today's and yesterday's hot days, with their minutes not merged into them yet
        cells = await read_hot(
            state.scripts, keys, None, [(Grain.day, today - DAY_MS), (Grain.day, today)]
        )
        for cell in cells:
            for h in cell.hashes:
                for f in h:
                    kind, name, rollup, *_ = f.decode().split(US)
                    if kind == "c":
                        dims = seen.setdefault(name, set())
                        if rollup and "," not in rollup:
                            dims.add(rollup)
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    names = [NameDims(n, sorted(d)) for n, d in sorted(seen.items())]
    return json_response(Catalog(project, names))
