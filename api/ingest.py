"""POST /v1/events: a JSON array (or NDJSON) of events, counted all or nothing."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize_key, bearer_key, json_response
from api.idempotency import REPLAYED_HEADER, idempotency_of
from api.limits import charge_events
from api.scope import check_batch, check_names, check_origin
from counters.core.errors import BadRequest, Invalid, PayloadTooLarge
from counters.core.models import (
    EventWire,
    batch_decoder,
    event_decoder,
    validate_events,
)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as it is longer than limit bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid(exc: msgspec.ValidationError, offset: int | None = None) -> Invalid:
    text = str(exc)
    if offset is not None:
        text = text.replace("`$", f"`$[{offset}]", 1)
    return Invalid(text)


def decode_events(body: bytes, content_type: str) -> list[EventWire]:
    """Events of a JSON array, a single JSON object or NDJSON; 400 for malformed input,
    422 naming the event index and field for a wrong value."""
    if not body.strip():
        raise BadRequest("empty body: send a JSON array of events", code="empty_body")
    if "ndjson" in content_type or "jsonlines" in content_type:
        events: list[EventWire] = []
        for index, line in enumerate(body.splitlines()):
            if not line.strip():
                continue
            try:
                events.append(event_decoder.decode(line))
            except msgspec.ValidationError as exc:
                raise _invalid(exc, index) from exc
            except msgspec.DecodeError as exc:
                raise BadRequest(
                    f"line {index + 1}: malformed JSON: {exc}", code="malformed_json"
                ) from exc
        return events
    try:
        if body.lstrip()[:1] == b"{":
            return [event_decoder.decode(body)]
        return batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from exc


async def post_events(request: Request) -> Response:
    """Counts a batch; replies {"accepted", "duplicates"}. The key comes from
    `Authorization: Bearer`, else from `?key=` (navigator.sendBeacon cannot set headers).
    With an Idempotency-Key seen before: the original reply with "replayed": true and
    Idempotency-Replayed: true."""
    state = app_state(request)
    settings = state.settings
    key = bearer_key(request) or request.query_params.get("key")
    access = await authorize_key(state, key, scope="ingest")
    project = access.project
    check_origin(access.key, request)
    body = await read_body(request, settings.max_body_bytes)
    idempotency = idempotency_of(request, body)
    events = decode_events(body, request.headers.get("content-type", ""))
    check_batch(access.key, len(events))
    check_names(access.key, (e.name for e in events))
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(
            f"{len(events)} events in one batch; the limit is {settings.max_batch_events}",
            code="too_many_events",
        )
    raw = validate_events(events, now_ms=state.clock.now_ms(), limits=state.limits)
    await charge_events(state, project, len(raw))
    raw = await state.services.hash_uids(project, raw)  # no plain uid is ever stored
    reply = await state.ingestor.apply(project, raw, idempotency=idempotency)
    if reply.replayed:
        return json_response(reply, headers={REPLAYED_HEADER: "true"})
    label = state.metrics.project(project)
    state.metrics.events_accepted.labels(label).inc(reply.accepted)
    if reply.duplicates:
        state.metrics.duplicates.labels(label).inc(reply.duplicates)
    return json_response(reply)
