"""GET /v1/pixel.gif: one event from a query string, always answered with a 1x1 GIF.

Concurrent pixel requests are group-committed: they join the project's collecting batch and
share one script call (several batches may be in flight); each request answers only after
Redis has its event."""

from __future__ import annotations

import asyncio
import base64
import logging
import urllib.parse
from collections import defaultdict
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize_key
from api.scope import PIXEL_REASON, check_names, check_origin
from counters.core.errors import CountersError, Invalid
from counters.core.models import EventWire, RawEvent, validate_events
from counters.engines.ingest import Ingestor

log = logging.getLogger("counters.pixel")

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
GIF_HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate", "Pragma": "no-cache"}


def gif() -> Response:
    """The 1x1 transparent GIF, never cached."""
    return Response(GIF, 200, GIF_HEADERS, media_type="image/gif")


MAX_BATCHES_IN_FLIGHT = 4
"""Script calls one project may have in flight at once: while some wait on Redis, the next
batch is already collecting."""


class GroupCommitter:
    """Joins concurrent single events of one project into batches: at most one batch is
    collecting at a time, and up to MAX_BATCHES_IN_FLIGHT are being applied."""

    def __init__(
        self,
        ingestor: Ingestor,
        max_in_flight: int = MAX_BATCHES_IN_FLIGHT,
        charge: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._charge = charge
        """Charges a batch's events to the project's events rate limit before it is applied
        (one script call per batch, not per hit); what it raises goes to every waiter."""
        self._max = max_in_flight
        self._pending: dict[str, list[tuple[RawEvent, asyncio.Future[None]]]] = defaultdict(list)
        self._collecting: set[str] = set()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, project: str, event: RawEvent) -> None:
        """Returns once the event is counted (or raises what the batch raised)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[project].append((event, future))
        if project not in self._collecting and self._in_flight[project] < self._max:
            self._collecting.add(project)
            self._in_flight[project] += 1
            task = asyncio.create_task(self._flush(project))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future

    async def _flush(self, project: str) -> None:
        """Collects one batch, applies it, and goes on with what piled up meanwhile if no
        other batch is collecting it."""
        try:
            while True:
                await asyncio.sleep(0)  # let requests already parsed join this batch
                batch = self._pending.pop(project, [])
                self._collecting.discard(project)
                if batch:
                    await self._apply(project, batch)
                if not self._pending.get(project) or project in self._collecting:
                    return
                self._collecting.add(project)
        finally:
            self._in_flight[project] -= 1
            if not self._in_flight[project]:
                del self._in_flight[project]

    async def _apply(
        self, project: str, batch: list[tuple[RawEvent, asyncio.Future[None]]]
    ) -> None:
        refused: list[RawEvent] = []
        try:
            if self._charge is not None:
                await self._charge(project, len(batch))
            await self._ingestor.apply(project, [ev for ev, _ in batch], refused=refused)
            over = {id(ev) for ev in refused}  # over a name cap: refused alone
            for ev, fut in batch:
                if id(ev) in over and not fut.done():
                    fut.set_exception(Invalid("over a per-day name cap", code="name_cap"))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


def _strict_query(request: Request) -> dict[str, str]:
    """The query parameters (the last of repeated ones, as Starlette's), decoded as strict
    UTF-8: a `%FF` or an encoded surrogate raises UnicodeDecodeError instead of becoming
    U+FFFD."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True, errors="strict"))


def event_from_query(request: Request) -> EventWire:
    """The event a pixel URL describes (`name`, `ts`, `id`, `uid`, `value`, `d.<dim>`).
    Raises UnicodeDecodeError for a query string that is not UTF-8."""
    q = _strict_query(request)
    raw: dict[str, object] = {"name": q.get("name", "")}
    for field in ("ts", "id", "uid"):
        if field in q:
            raw[field] = q[field]
    if "value" in q:
        try:
            raw["value"] = float(q["value"])
        except ValueError:
            raw["value"] = q["value"]
    dims = {k[2:]: v for k, v in q.items() if k.startswith("d.")}
    if dims:
        raw["dims"] = dims
    return msgspec.convert(raw, EventWire)


async def pixel(request: Request) -> Response:
    """Counts one event if it is valid; the GIF is returned whatever happens. HEAD answers
    the GIF's headers and counts nothing (a link checker or prefetch is not a hit)."""
    if request.method == "HEAD":
        return gif()
    state = app_state(request)
    committer: GroupCommitter = request.state.pixel
    try:
        access = await authorize_key(state, request.query_params.get("key"), scope="ingest")
        project = access.project
        check_origin(access.key, request)
        try:
            event = event_from_query(request)
        except UnicodeDecodeError as exc:
            state.metrics.rejected.labels("invalid_string").inc()
            log.debug("pixel rejected: query string is not UTF-8: %s", exc)
            return gif()
        except msgspec.ValidationError as exc:
            state.metrics.rejected.labels("invalid").inc()
            log.debug("pixel rejected: %s", exc)
            return gif()
        check_names(access.key, (event.name,))
        raw = validate_events([event], now_ms=state.clock.now_ms(), limits=state.limits)
        (stored,) = await state.services.hash_uids(project, raw)  # no plain uid is stored
        await committer.submit(project, stored)
        state.metrics.events_accepted.labels(state.metrics.project(project)).inc()
    except CountersError as exc:
        state.metrics.rejected.labels(PIXEL_REASON.get(exc.code, exc.code)).inc()
    return gif()
