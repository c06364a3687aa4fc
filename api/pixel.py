"""GET /v1/pixel.gif: one event from a query string, always answered with a 1x1 GIF.

Concurrent pixel requests are group-committed (api/group_commit.py): they join the
project's collecting batch, which charges their keys' and the project's rate limits in one
script call, hashes their uids and applies their events in one more (several batches may be
in flight); each request answers only after Redis has its event. `count_hit` is the whole
of it, without HTTP: the lean ASGI route (api/pixel_route.py) and the Starlette endpoint
`pixel` both call it."""

from __future__ import annotations

import base64
import logging
import urllib.parse
from typing import NamedTuple

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authenticate, check_scope
from api.cors import key_origins
from api.group_commit import MAX_BATCHES_IN_FLIGHT, RATE_LIMITED, GroupCommitter, Hit
from api.limits import current_notes, enforce_events, key_digest, limit_for
from api.scope import PIXEL_REASON, check_names, check_origin_of
from api.state import AppState
from counters.core.errors import CountersError
from counters.core.models import EventWire, RawEvent, validate_events
from counters.engines.ratelimit import Decision

__all__ = [
    "GIF",
    "GIF_HEADERS",
    "MAX_BATCHES_IN_FLIGHT",
    "GroupCommitter",
    "Seen",
    "build_committer",
    "count_hit",
    "event_from_params",
    "gif",
    "pixel",
    "strict_query",
]

log = logging.getLogger("counters.pixel")

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
GIF_HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate", "Pragma": "no-cache"}
PIXEL_LIMIT = limit_for("ingest")
"""The per-key limit a pixel hit counts against."""


def gif() -> Response:
    """The 1x1 transparent GIF, never cached."""
    return Response(GIF, 200, GIF_HEADERS, media_type="image/gif")


class Seen(NamedTuple):
    """What the answer's headers need to know of a hit: the origins its key allows (None:
    any, or no key found) and the key's rate-limit decision (None: not charged)."""

    origins: tuple[str, ...] | None
    decision: Decision | None


NOTHING_SEEN = Seen(None, None)


def strict_query(raw: bytes) -> dict[str, str]:
    """The query parameters (the last of repeated ones, as Starlette's), decoded as strict
    UTF-8: a `%FF` or an encoded surrogate raises UnicodeDecodeError instead of becoming
    U+FFFD. The same pairs as `parse_qsl(text, keep_blank_values=True, errors="strict")`,
    without its per-pair overhead: only a part holding `+` or `%` is rewritten."""
    out: dict[str, str] = {}
    for part in raw.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = _unquote(name, errors="strict")
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = _unquote(value, errors="strict")
        out[name] = value
    return out


_unquote = urllib.parse.unquote


def event_from_params(q: dict[str, str]) -> EventWire:
    """The event a pixel URL's parameters describe (`name`, `ts`, `id`, `uid`, `value`,
    `d.<dim>`); raises msgspec.ValidationError for a malformed one."""
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


def _reason(exc: CountersError) -> str:
    return PIXEL_REASON.get(exc.code, exc.code)


_digests: dict[str, str] = {}


def _bucket(key: str) -> str:
    """The key's rate-limit bucket id (sha256 once per key and process)."""
    found = _digests.get(key)
    if found is None:
        if len(_digests) > 10_000:
            _digests.clear()
        found = _digests[key] = key_digest(key)
    return found


async def count_hit(
    state: AppState,
    committer: GroupCommitter,
    query: bytes,
    origin: str | None,
    referer: str | None,
) -> Seen:
    """Counts the event a pixel query string describes if it is valid, its key allows it
    (scope, origin from the raw `Origin` / `Referer` values, names) and the key and project
    are within their rate limits; returns once Redis holds it. Every refusal is counted in
    rejected{reason}, never raised (the pixel answers its GIF whatever happens); only an
    unexpected failure (not a CountersError) propagates. Every hit whose key was found is
    charged to the key's bucket, refused or not, as authorize_key charges every request."""
    metrics = state.metrics
    text_error: UnicodeDecodeError | None = None
    try:
        q = strict_query(query)
    except UnicodeDecodeError as exc:
        text_error = exc
        q = dict(urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    key = q.get("key")
    try:
        info = await authenticate(state, key)
    except CountersError as exc:
        metrics.rejected.labels(_reason(exc)).inc()
        return NOTHING_SEEN
    assert key is not None  # authenticate refused a missing key
    project = info.projects[0]
    event: RawEvent | None = None
    refusal: str | None = None
    try:
        check_scope(info, "ingest")
        check_origin_of(info, origin, referer)
        if text_error is not None:
            refusal = "invalid_string"
            log.debug("pixel rejected: query string is not UTF-8: %s", text_error)
        else:
            try:
                wire = event_from_params(q)
            except msgspec.ValidationError as exc:
                refusal = "invalid"
                log.debug("pixel rejected: %s", exc)
            else:
                check_names(info, (wire.name,))
                (event,) = validate_events([wire], now_ms=state.clock.now_ms(), limits=state.limits)
    except CountersError as exc:
        refusal = _reason(exc)
    origins = key_origins(info)
    charged = state.services.limiter.rate(PIXEL_LIMIT) > 0
    if refusal is not None and not charged:  # nothing to charge: no need to wait
        metrics.rejected.labels(refusal).inc()
        return Seen(origins, None)
    hit = Hit(event if refusal is None else None, _bucket(key) if charged else None, refusal)
    await committer.join(project, hit)
    if hit.refusal is not None:
        metrics.rejected.labels(hit.refusal).inc()
    elif hit.error is not None:
        if not isinstance(hit.error, CountersError):
            raise hit.error
        metrics.rejected.labels(_reason(hit.error)).inc()
    return Seen(origins, hit.decision)


async def charge_hits(state: AppState, project: str, hits: list[Hit]) -> None:
    """The group commit's rate-limit charge, one script call for the batch: the hits of
    each key (usually one key) to its bucket, the first ones passing and those over the
    limit refused `rate_limited`, each with its own decision (remaining counted down in
    arrival order, as if charged alone); then the events of the passed hits to the
    project's bucket, raising 429 rate_limited (after the hits are marked) when refused."""
    by_bucket: dict[str, list[Hit]] = {}
    loose = 0
    for hit in hits:
        if hit.bucket is not None:
            by_bucket.setdefault(hit.bucket, []).append(hit)
        elif hit.event is not None:
            loose += 1
    masks = {
        bucket: "".join("0" if h.event is None else "1" for h in group)
        for bucket, group in by_bucket.items()
    }
    charged = await state.services.limiter.charge_batch(project, masks, loose)
    if charged is None:
        return  # limits off or Redis unreachable: fail open
    per_key, events = charged
    for (passed, d), group in zip(per_key, by_bucket.values(), strict=False):
        refused = d._replace(allowed=False, remaining=0)
        for i, hit in enumerate(group):
            if i < passed:
                hit.decision = d._replace(
                    allowed=True, remaining=d.remaining + passed - 1 - i, retry_after_ms=0
                )
            else:
                hit.decision = refused
                hit.refusal = RATE_LIMITED
    enforce_events(state, project, events)


def build_committer(state: AppState) -> GroupCommitter:
    """The pixel's group committer over the app's services: key and project rate limits,
    uid hashing and events_accepted counted per batch."""
    metrics = state.metrics

    async def charge(project: str, hits: list[Hit]) -> None:
        await charge_hits(state, project, hits)

    def counted(project: str, n: int) -> None:
        if n:
            metrics.events_accepted.labels(metrics.project(project)).inc(n)

    return GroupCommitter(
        state.ingestor,
        charge=charge,
        hash_uids=state.services.hash_uids,
        counted=counted,
    )


async def pixel(request: Request) -> Response:
    """Counts one event if it is valid; the GIF is returned whatever happens. HEAD answers
    the GIF's headers and counts nothing (a link checker or prefetch is not a hit). The
    Starlette endpoint, for a request the lean route (api/pixel_route.py) does not take: its
    decision reaches the middleware's headers through the request notes."""
    if request.method == "HEAD":
        return gif()
    seen = await count_hit(
        app_state(request),
        request.state.pixel,
        request.scope.get("query_string", b""),
        request.headers.get("origin"),
        request.headers.get("referer"),
    )
    notes = current_notes()
    if notes is not None and seen is not NOTHING_SEEN:
        notes.key_seen = True
        notes.origins = seen.origins
        if seen.decision is not None:
            notes.rate = seen.decision
    return gif()
